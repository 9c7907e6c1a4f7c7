//! The analysis pipeline: `queued → analysing → reported → delivered`, or
//! `failed` with its reason, driven by the database.
//!
//! Jobs are claimed under a lease: a process that dies mid-analysis leaves
//! them `analysing`, and once the lease expires any worker takes them again.
//! The report's SOP Instance UID is derived from the source's and the
//! model's hash, and an existing report is reused rather than rebuilt, so a
//! job analysed twice never yields a second report under another UID.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_object::DefaultDicomObject;
use pneumo_imaging::{grey_image, tensor_from_grey, CropMode, PreprocessReport};
use pneumo_inference::{InferenceEngine, InferenceError, LungSegmenter, Prediction, WeightsKind};
use pneumo_report::{
    build_companion_sc, build_sr, not_analysed_series_instance_uid, sc_sop_instance_uid,
    sr_sop_instance_uid, AnalysisResult, EarlierReport, GreyImage as ReportGreyImage,
    ModelIdentity as ReportModel, NodeIdentity, PixelRegion, Replacement, ReportOptions,
    ReportTime, SourceInstance, WeightsKind as ReportWeights,
};
use pneumo_store::{ClaimedJob, Incoming, IngestOutcome, MadeInstances, Store, UidLocks};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify, Semaphore};
use tracing::{info, info_span, warn, Instrument};

use crate::metrics::Metrics;

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSection {
    /// Jobs analysed at once (decoding runs on blocking threads; inference
    /// batches them).
    pub concurrency: usize,
    /// A job claimed by a process that died is taken again after this long.
    pub lease_s: u64,
    /// A job whose analysis was started this many times without finishing
    /// (the process died each time) fails instead of being taken again.
    pub max_attempts: u32,
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection {
            concurrency: 4,
            lease_s: 300,
            max_attempts: 3,
        }
    }
}

pub struct Pipeline {
    pub store: Arc<Store>,
    pub engine: Arc<InferenceEngine>,
    /// The lung segmentation model (`inference.lung_segmentation_model`),
    /// for a classifier whose contract says crop `lung-box`.
    pub segmenter: Option<Arc<LungSegmenter>>,
    pub node: NodeIdentity,
    pub report: ReportOptions,
    /// Where reports go.
    pub results: crate::routing::ResultRouting,
    pub settings: PipelineSection,
    pub metrics: Arc<Metrics>,
    /// Woken when jobs are queued.
    pub wake: Arc<Notify>,
    pub wake_outbox: Arc<Notify>,
    /// This process's lease owner name.
    pub owner: String,
    /// Report creation one at a time per report UID: two jobs whose sources
    /// share a SOP Instance UID (one data set received twice with different
    /// bytes) make one report, not two versions under one UID.
    pub report_locks: UidLocks,
}

/// What an analysis produced, kept on the job as JSON.
#[derive(serde::Serialize)]
struct ResultRecord<'a> {
    prediction: &'a Prediction,
    decision: &'static str,
    preprocessing: &'a PreprocessReport,
    sr_sop_instance_uid: &'a str,
    /// What the report states when it is not this run's result (a report
    /// an earlier run, or a copy with the same model input, made): the
    /// PACS shows these numbers, not `prediction`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    report_states: Option<StatedResult>,
    /// SHA-256 of the model's input tensor: a later copy under the same
    /// UID with the same input has this result, whatever the last digits
    /// of its own run.
    model_input_sha256: &'a str,
    /// The report made for an earlier copy under the same UID that this
    /// one replaces (docs/sr.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces_sr_sop_instance_uid: Option<&'a str>,
    /// Where the job's time went, in milliseconds.
    timings_ms: Timings,
}

/// A report's probability and decision (`ResultRecord::report_states`).
#[derive(serde::Serialize)]
struct StatedResult {
    p_positive: f64,
    decision: String,
}

#[derive(serde::Serialize, Default)]
struct Timings {
    /// Reading the file, decoding and preprocessing.
    imaging: f64,
    /// Waiting for and running the model (batched with other jobs).
    inference: f64,
    /// Building and storing the report.
    report: f64,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Pipeline {
    /// Claims and analyses jobs until `stopping` turns true; then waits
    /// for the analyses in progress (at most `grace`) and puts back the
    /// jobs still held, their attempt not counted.
    pub async fn run(self: Arc<Self>, mut stopping: watch::Receiver<bool>, grace: Duration) {
        let concurrency = self.settings.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut claim_failing = crate::repeated::RepeatedWarning::new("cannot claim jobs");
        while !*stopping.borrow() {
            let free = permits.available_permits();
            let max_attempts = i64::from(self.settings.max_attempts.max(1));
            match self.store.fail_exhausted_jobs(max_attempts).await {
                Ok(exhausted) => {
                    for job in exhausted {
                        warn!(
                            job_id = job.job_id,
                            sop_instance_uid = %job.sop_instance_uid,
                            max_attempts,
                            "analysis never finished: job failed, not retried"
                        );
                        self.send_notice(&job).await;
                    }
                }
                Err(e) => warn!(error = %e, "cannot fail exhausted jobs"),
            }
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match self
                    .store
                    .claim_jobs(
                        &self.owner,
                        Duration::from_secs(self.settings.lease_s),
                        free as i64,
                        max_attempts,
                    )
                    .await
                {
                    Ok(c) => {
                        claim_failing.succeeded();
                        c
                    }
                    Err(e) => {
                        claim_failing.failed(&e);
                        Vec::new()
                    }
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {},
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = stopping.changed() => {},
                }
                continue;
            }
            for job in claimed {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (this, stopping_job) = (self.clone(), stopping.clone());
                let span = info_span!("job", id = job.job_id, attempt = job.attempts, sop_instance_uid = %job.sop_instance_uid);
                tokio::spawn(
                    async move {
                        this.process(job, stopping_job).await;
                        drop(permit);
                        // A slot is free: claim the next job now, not at the
                        // next arrival or the 1 s poll (an idle node drained
                        // its backlog at `concurrency` jobs a second).
                        this.wake.notify_one();
                    }
                    .instrument(span),
                );
            }
        }
        let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            warn!(
                grace_s = grace.as_secs(),
                "analyses still running at the end of the shutdown grace"
            );
        }
        match self.store.release_jobs(&self.owner).await {
            Ok(0) => {}
            Ok(n) => info!(jobs = n, "analyses cut by the stop put back in the queue"),
            Err(e) => warn!(error = %e, "cannot put back the jobs this node holds"),
        }
    }

    async fn process(&self, job: ClaimedJob, mut stopping: watch::Receiver<bool>) {
        // (the lease runs from the claim, the analysis inside it)
        let lease_end = Instant::now() + Duration::from_secs(self.settings.lease_s);
        let outcome = self.analyse(&job).await;
        // An outcome that cannot be recorded now (the disk full, a `-wal`
        // unwritable for a moment) is tried again while this process holds
        // the job's lease: the job waited the whole lease (5 min) once the
        // database took writes again, and was charged an attempt.
        let mut first = true;
        loop {
            match self.record_outcome(&job, &outcome, first).await {
                Ok(()) if first => return,
                Ok(()) => {
                    info!("the job's outcome is recorded now");
                    return;
                }
                Err(e) if first => warn!(
                    error = %e,
                    "cannot record the job's outcome; tried again every {} s while its lease lasts",
                    RECORD_RETRY.as_secs()
                ),
                Err(_) => {}
            }
            first = false;
            if Instant::now() + RECORD_RETRY + RECORD_RETRY >= lease_end || *stopping.borrow() {
                warn!("the job's outcome still cannot be recorded: the job runs again after its lease");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(RECORD_RETRY) => {}
                _ = stopping.changed() => {}
            }
        }
    }

    /// Writes what the analysis came to; `say`: log it (not again on a
    /// second try).
    async fn record_outcome(
        &self,
        job: &ClaimedJob,
        outcome: &Result<bool, Failure>,
        say: bool,
    ) -> Result<(), pneumo_store::StoreError> {
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => {
                if say {
                    warn!("lease lost: another worker finished this job");
                }
                Ok(())
            }
            Err(Failure::StoredFile(reason)) => {
                if say {
                    warn!(%reason, "analysis failed: the stored file");
                }
                self.store
                    .fail_job(job.job_id, &self.owner, reason)
                    .await
                    .map(|_| ())
            }
            Err(Failure::Analysis(reason)) => {
                if say {
                    warn!(%reason, "analysis failed");
                }
                let failed = self.store.fail_job(job.job_id, &self.owner, reason).await;
                // A node that can analyse no image (a lung-box model without
                // its segmentation model) says so in /readyz; a notice for
                // every image would be left beside each report once fixed.
                if let (Ok(true), false) = (&failed, self.analyses_nothing()) {
                    self.send_notice(&job.failed(reason.clone())).await;
                }
                failed.map(|_| ())
            }
            // Not the image's fault: tried again later, without using up
            // one of its attempts.
            Err(Failure::Store(reason)) => {
                if say {
                    warn!(%reason, retry_in_s = STORE_RETRY.as_secs(), "the analysis could not be kept; will retry");
                }
                self.retry_later(job, reason, STORE_RETRY).await
            }
            // Sooner: a stamp moved by a chmod during a batch costs no
            // more than this (the look before the next batch is a few
            // `stat`s while the files stay changed).
            Err(Failure::ModelChanged(reason)) => {
                if say {
                    warn!(%reason, retry_in_s = MODEL_CHANGED_RETRY.as_secs(), "the model cannot run; the job waits");
                }
                self.retry_later(job, reason, MODEL_CHANGED_RETRY).await
            }
        }
    }

    /// A job whose analysis could not finish for a reason of the node's
    /// (the database locked or the disk full, the model's files changed)
    /// runs again after `STORE_RETRY`.
    async fn retry_later(
        &self,
        job: &ClaimedJob,
        reason: &str,
        after: Duration,
    ) -> Result<(), pneumo_store::StoreError> {
        self.store
            .retry_job_later(job.job_id, &self.owner, reason, after)
            .await
            .map(|_| ())
    }

    /// The model as reports name it and derive their UIDs from: with the
    /// lung segmentation model's hash when the classifier crops to its box.
    pub(crate) fn reported_model(&self, model: &pneumo_inference::ModelIdentity) -> ReportModel {
        let crops_to_lungs = self.engine.contract().preprocess_spec().crop == CropMode::LungBox;
        let segmentation = self.segmenter.as_ref().filter(|_| crops_to_lungs);
        report_model(model, segmentation.map(|s| s.sha256().to_string()))
    }

    /// Whether the configuration fails every analysis: a `lung-box`
    /// contract without a lung segmentation model.
    fn analyses_nothing(&self) -> bool {
        self.segmenter.is_none()
            && self.engine.contract().preprocess_spec().crop == CropMode::LungBox
    }

    /// Ok(true): reported; Ok(false): the lease was lost; Err: why it failed.
    async fn analyse(&self, job: &ClaimedJob) -> Result<bool, Failure> {
        let path = self.store.instance_file(&job.path);
        // Gone, cut, or other bytes (a disk error, a hand): not the image sent.
        let (stored, claimed) = (path.clone(), job.clone());
        let changed = tokio::task::spawn_blocking(move || claimed.file_problem(&stored))
            .await
            .map_err(|e| format!("checking the stored file failed: {e}"))?;
        if let Some(problem) = changed {
            return Err(Failure::StoredFile(problem));
        }
        let spec = self.engine.contract().preprocess_spec();
        let companion = self.report.companion_sc;
        let mut timings = Timings::default();
        let t_imaging = Instant::now();
        let segmenter = self.segmenter.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            prepare(&path, &spec, segmenter.as_deref(), companion)
        })
        .await
        .map_err(|e| format!("imaging task failed: {e}"))?;
        // Not the image's fault: the job waits for the restart. (Blocking:
        // a moved stamp costs a hash of the files.)
        let segmenter = self.segmenter.clone();
        let changed = tokio::task::spawn_blocking(move || segmenter?.files_changed())
            .await
            .map_err(|e| format!("looking at the model's files failed: {e}"))?;
        if let Some(why) = changed {
            return Err(Failure::ModelChanged(why));
        }
        let prepared = prepared?;

        timings.imaging = ms_since(t_imaging);
        let started = Instant::now();
        let prediction = self
            .engine
            .infer(prepared.tensor)
            .await
            .map_err(|e| match e {
                // Not the image's fault: the job waits for the restart.
                InferenceError::ModelFilesChanged(_) => Failure::ModelChanged(e.to_string()),
                e => Failure::Analysis(format!("inference: {e}")),
            })?;
        self.metrics
            .inference_seconds
            .observe(started.elapsed().as_secs_f64());
        timings.inference = ms_since(started);
        let t_report = Instant::now();

        let mut source =
            SourceInstance::from_dataset(&prepared.header).map_err(|e| format!("report: {e}"))?;
        self.place_among_copies(job.instance_id, &mut source)
            .await?;
        // The contract's positive label is pneumoconiosis (checked when the
        // model is loaded), in whichever column the labels put it.
        let pneumoconiosis_column = prediction
            .labels
            .iter()
            .position(|l| *l == prediction.positive_label)
            .ok_or("report: the positive label is not among the labels")?;
        let mut result = AnalysisResult::with_pneumoconiosis_at(
            pneumoconiosis_column,
            prediction.probabilities.clone(),
            prediction.threshold,
            prepared.report.crop.mode.as_str(),
            prediction.execution_provider.as_str().to_string(),
        )
        .map_err(|e| format!("report: {e}"))?;
        // The crop box is in the source's pixels (the whole image without a
        // crop): the SR names it as the region the result comes from.
        let b = prepared.report.crop.bbox;
        result.analysed_region = Some(PixelRegion {
            x0: b.x0,
            y0: b.y0,
            x1: b.x1,
            y1: b.y1,
        });
        let model = self.reported_model(&prediction.model);
        let report_uid = |source: &SourceInstance| {
            sr_sop_instance_uid(
                &source.uid_key(),
                &self.node.ae_title,
                &model.uid_basis(),
                self.node.uid_root.as_deref(),
            )
            .map_err(|e| format!("report: {e}"))
        };
        let mut sr_uid = report_uid(&source)?;
        let identity = identity_sha256(&source);
        // A report made from this very input for a copy naming the same
        // patient and study is this copy's, whatever its own run's last
        // digits: a header-only re-send of a re-pixelled copy got a third
        // report, compared with the first copy's only.
        let same_input = self
            .store
            .report_from_input(
                &job.sop_instance_uid,
                &identity,
                &model.contract_sha256,
                &prepared.input_sha256,
            )
            .await?;
        if let Some(made) = same_input {
            if made != sr_uid {
                // Made for a copy with other pixels, under that copy's own
                // key: this copy takes that key, so that its companion
                // image is the one made with that report, not the first
                // copy's (another site's PACS got the first copy's image,
                // pixels and result, beside this report).
                self.take_maker_version(&made, &mut source, &report_uid)
                    .await?;
            }
            sr_uid = made;
        } else if self
            .states_another_result(
                &sr_uid,
                job.instance_id,
                &prepared.input_sha256,
                &prediction,
                &result,
            )
            .await?
        {
            // The sender re-used the UID for other pixels: linked to the
            // earlier copy's report, this copy's result would be reported
            // nowhere, and the PACS would show its pixels with that one.
            source.version = Some(self.store.instance_sha256(job.instance_id).await?);
            sr_uid = report_uid(&source)?;
            warn!(
                sop_instance_uid = %job.sop_instance_uid,
                sr = %sr_uid,
                "a copy stored under the same SOP Instance UID gave another result than the \
                 report made for an earlier copy: it gets its own report, naming that one as \
                 replaced (a PACS that keeps the first copy of a UID still shows its pixels)"
            );
        }

        if source.version.is_some() {
            // Of the same patient and study only: a corrected copy's report
            // named the first patient's, in another record (and another
            // site's PACS), as the one it replaced.
            let found = self
                .store
                .earlier_copy_report(job.instance_id, &model.contract_sha256, &sr_uid, &identity)
                .await?;
            source.replaces = found.map(|document| replaced(document, Replacement::OtherResult));
        }
        if source.replaces.is_none() {
            // An earlier analysis of this image (or of a copy under its UID)
            // failed and sent a notice: this report names it as replaced.
            let notices = not_analysed_series_instance_uid(
                &source.series_key(),
                &self.node.ae_title,
                &model.uid_basis(),
                self.node.uid_root.as_deref(),
            )
            .map_err(|e| format!("report: {e}"))?;
            let found = self
                .store
                .latest_notice_of(job.instance_id, &notices)
                .await?;
            source.replaces = found.map(|document| replaced(document, Replacement::Notice));
        }
        let built = std::sync::atomic::AtomicBool::new(false);
        let sr_id = self
            .generated_once(&sr_uid, || {
                built.store(true, std::sync::atomic::Ordering::Relaxed);
                let time = report_time_now();
                build_sr(&source, &result, &model, &self.node, &self.report, &time)
                    .map_err(|e| format!("report: {e}"))
            })
            .await
            .map_err(Failure::from)?;
        // What the report states: recorded when made (or made again);
        // else, when it is an earlier run's, said beside this run's result
        // (the API showed this run's numbers for a report stating others).
        let mut report_states = None;
        if built.load(std::sync::atomic::Ordering::Relaxed) {
            self.store
                .record_report_result(&pneumo_store::ReportResult {
                    sr_instance_id: sr_id,
                    source_sop_instance_uid: job.sop_instance_uid.clone(),
                    source_identity: identity.clone(),
                    contract_sha256: model.contract_sha256.clone(),
                    model_input_sha256: prepared.input_sha256.clone(),
                    p_positive: prediction.p_positive,
                    decision: result.decision.as_str().to_string(),
                })
                .await?;
        } else if let Some((_, p, decision)) = self.store.report_result(&sr_uid).await? {
            if p != prediction.p_positive || decision != result.decision.as_str() {
                report_states = Some(StatedResult {
                    p_positive: p,
                    decision,
                });
            }
        }
        let mut companion_id = None;
        if let Some(grey) = &prepared.grey {
            let sc_uid = sc_sop_instance_uid(
                &source.uid_key(),
                &self.node.ae_title,
                &model.uid_basis(),
                self.node.uid_root.as_deref(),
            )
            .map_err(|e| format!("report: {e}"))?;
            let made = self
                .generated_once(&sc_uid, || {
                    let image = ReportGreyImage {
                        pixels: &grey.data,
                        rows: grey.height,
                        columns: grey.width,
                    };
                    let time = report_time_now();
                    build_companion_sc(
                        &source,
                        image,
                        &result,
                        &model,
                        &self.node,
                        &self.report,
                        &time,
                    )
                    .map_err(|e| format!("companion image: {e}"))
                })
                .await;
            match made {
                Ok(id) => companion_id = Some(id),
                Err(Generated::NotMade(e)) => warn!(error = %e, "companion image not made"),
                Err(Generated::NotStored(e)) => return Err(Failure::Store(e)),
            }
        }
        let record = ResultRecord {
            prediction: &prediction,
            decision: result.decision.as_str(),
            preprocessing: &prepared.report,
            sr_sop_instance_uid: &sr_uid,
            report_states,
            model_input_sha256: &prepared.input_sha256,
            replaces_sr_sop_instance_uid: source
                .replaces
                .as_ref()
                .map(|r| r.sop_instance_uid.as_str()),
            timings_ms: Timings {
                report: ms_since(t_report),
                ..timings
            },
        };
        let json = serde_json::to_string(&record).map_err(|e| e.to_string())?;
        let callers = self.store.callers_of(job.instance_id).await?;
        // The notice this report replaces went where its copy's results go
        // (another site's PACS, routed by caller): the report goes there
        // too, or that PACS kept "not analysed" beside nothing.
        let mut routed_by = callers.clone();
        if let Some(earlier) = source
            .replaces
            .as_ref()
            .filter(|r| r.because == Replacement::Notice)
        {
            if let Some(maker) = self.store.notice_maker(&earlier.sop_instance_uid).await? {
                routed_by.extend(self.store.callers_of(maker).await?);
            }
        }
        let result_destinations = self.results.destinations_for(&routed_by);
        let done = self
            .store
            .complete_job(
                job.job_id,
                &self.owner,
                &json,
                MadeInstances {
                    report: sr_id,
                    companion: companion_id,
                },
                &result_destinations,
            )
            .await?;
        if done {
            // A caller that sent the image again while it was analysed found
            // no report to owe: its destinations are owed it now.
            let now = self.store.callers_of(job.instance_id).await?;
            if now.len() > callers.len() {
                let late = self.results.destinations_for(&now[callers.len()..]);
                self.store.owe_report_of(job.instance_id, &late).await?;
            }
            if !result_destinations.is_empty() || now.len() > callers.len() {
                self.wake_outbox.notify_one();
            }
            info!(
                sop_instance_uid = %job.sop_instance_uid,
                p_pneumoconiosis = prediction.p_positive,
                decision = result.decision.as_str(),
                execution_provider = prediction.execution_provider.as_str(),
                demo = prediction.warning.as_deref(),
                sr = %sr_uid,
                replaces = source.replaces.as_ref().map(|r| r.sop_instance_uid.as_str()),
                "reported"
            );
        }
        Ok(done)
    }

    /// Whether the report `sr_uid`, made for another copy stored under this
    /// instance's UID, states another result than this one: another
    /// decision, or another probability as the SR writes it (a millionth),
    /// from another model input. The same input is the same result: ONNX
    /// Runtime's sums differ with the batch an image ran in (about 1e-8),
    /// and a re-sent copy batched otherwise got a second report "with
    /// another result" for one millionth. False when no such report
    /// exists, it is this instance's own, or its maker's result cannot be
    /// read.
    async fn states_another_result(
        &self,
        sr_uid: &str,
        instance_id: i64,
        input_sha256: &str,
        prediction: &Prediction,
        result: &AnalysisResult,
    ) -> Result<bool, Failure> {
        let millionths = |p: f64| (p * 1e6).round();
        if let Some((input, p, decision)) = self.store.report_result(sr_uid).await? {
            // what the report states, which a re-analysis of its maker
            // does not change
            return Ok(input != input_sha256
                && (decision != result.decision.as_str()
                    || millionths(p) != millionths(prediction.p_positive)));
        }
        let Some((maker, Some(record))) = self.store.report_maker(sr_uid).await? else {
            return Ok(false);
        };
        if maker == instance_id {
            return Ok(false);
        }
        let Ok(stated) = serde_json::from_str::<serde_json::Value>(&record) else {
            return Ok(false);
        };
        let (Some(p), Some(decision)) = (
            stated["prediction"]["p_positive"].as_f64(),
            stated["decision"].as_str(),
        ) else {
            return Ok(false);
        };
        let other = decision != result.decision.as_str();
        match stated["model_input_sha256"].as_str() {
            Some(input) if input == input_sha256 => Ok(false),
            Some(_) => Ok(other || millionths(p) != millionths(prediction.p_positive)),
            // Made by an earlier version, which recorded no input: a
            // difference well above the batches' (ten millionths).
            None => Ok(other || (p - prediction.p_positive).abs() > 1e-5),
        }
    }

    /// Gives `source` the version key of the copy that made report `made`
    /// (a copy with other pixels: its own digest), when that key derives
    /// that report's UID (`report_uid`).
    async fn take_maker_version(
        &self,
        made: &str,
        source: &mut SourceInstance,
        report_uid: &impl Fn(&SourceInstance) -> Result<String, String>,
    ) -> Result<(), Failure> {
        let Some((maker, _)) = self.store.report_maker(made).await? else {
            return Ok(());
        };
        let mut as_maker = source.clone();
        as_maker.version = Some(self.store.instance_sha256(maker).await?);
        if report_uid(&as_maker)? == made {
            source.version = as_maker.version;
        }
        Ok(())
    }

    /// Where `source` stands among the data sets stored under its UID: its
    /// version key ([`Self::corrected_version`]), which its series follow.
    pub(crate) async fn place_among_copies(
        &self,
        instance_id: i64,
        source: &mut SourceInstance,
    ) -> Result<(), Failure> {
        source.version = self.corrected_version(instance_id, source).await?;
        source.corrected_copy = source.version.clone();
        Ok(())
    }

    /// The version key of a source stored beside earlier data sets under
    /// its UID (docs/sr.md, derived UIDs): None when it names the same
    /// patient and study as the first (it shares the first's report, as
    /// when the first's file cannot be read); the digest of the earliest
    /// later version that names the same as it does (a copy of a corrected
    /// copy shares the corrected one's report); else its own digest.
    pub(crate) async fn corrected_version(
        &self,
        instance_id: i64,
        source: &SourceInstance,
    ) -> Result<Option<String>, Failure> {
        let earlier = self.store.earlier_versions(instance_id).await?;
        if earlier.is_empty() {
            return Ok(None);
        }
        let own = source.identity();
        for (n, (path, sha)) in earlier.into_iter().enumerate() {
            let identity = match path {
                Some(path) => {
                    let path = self.store.instance_file(&path);
                    tokio::task::spawn_blocking(move || {
                        pneumo_store::open_instance(
                            &path,
                            Some(dicom_dictionary_std::tags::PIXEL_DATA),
                        )
                        .ok()
                        .and_then(|obj| SourceInstance::from_dataset(&obj).ok())
                        .map(|s| s.identity())
                    })
                    .await
                    .ok()
                    .flatten()
                }
                None => None,
            };
            match identity {
                Some(identity) if identity == own => return Ok((n > 0).then_some(sha)),
                None if n == 0 => return Ok(None),
                _ => {}
            }
        }
        Ok(Some(self.store.instance_sha256(instance_id).await?))
    }

    /// Stores an instance this node made, like a received one (no job).
    /// The generated instance (report or companion image) with this UID:
    /// the one an earlier job or attempt stored, else `build`'s, stored now.
    /// A UID names one unchanging object, so a source analysed again (a
    /// retry, a re-sent copy naming the same patient and study) never gets
    /// a second version under it; serialised per UID, so two jobs cannot
    /// both build one.
    pub(crate) async fn generated_once(
        &self,
        uid: &str,
        build: impl FnOnce() -> Result<
            dicom_object::FileDicomObject<dicom_object::InMemDicomObject>,
            String,
        >,
    ) -> Result<i64, Generated> {
        let _same_uid = self.report_locks.lock(uid).await;
        let stored = self
            .store
            .instance_id_by_uid(uid)
            .await
            .map_err(|e| Generated::NotStored(e.to_string()))?;
        let Some(id) = stored else {
            let obj = build().map_err(Generated::NotMade)?;
            return self.keep_generated(obj).await.map_err(Generated::NotStored);
        };
        // Its file lost or damaged (a report cannot be sent to the node
        // again, as an image can): made again under its UID, or it never
        // reached the PACS.
        let problem = self
            .store
            .stored_instance_problem(id)
            .await
            .map_err(|e| Generated::NotStored(e.to_string()))?;
        if let Some(problem) = problem {
            let purged = self
                .store
                .removed_by_retention(id)
                .await
                .map_err(|e| Generated::NotStored(e.to_string()))?;
            let obj = build().map_err(Generated::NotMade)?;
            let (incoming, spool) = self
                .write_generated(obj)
                .await
                .map_err(Generated::NotStored)?;
            let resumed = self
                .store
                .replace_generated_file(
                    id,
                    &spool,
                    incoming.dataset_len,
                    &hex::encode(incoming.dataset_sha256),
                )
                .await;
            let _ = std::fs::remove_file(&spool);
            let resumed = resumed.map_err(|e| Generated::NotStored(e.to_string()))?;
            if purged {
                info!(sop_instance_uid = %uid, deliveries_resumed = resumed,
                    "a report's file, removed by retention, is made again under its UID");
            } else {
                warn!(sop_instance_uid = %uid, was = %problem, deliveries_resumed = resumed,
                    "a report's file was missing or damaged: made again under its UID");
            }
        }
        Ok(id)
    }

    async fn keep_generated(
        &self,
        obj: dicom_object::FileDicomObject<dicom_object::InMemDicomObject>,
    ) -> Result<i64, String> {
        let (incoming, spool) = self.write_generated(obj).await?;
        let outcome = self.store.ingest(&incoming, |_| Vec::new()).await;
        let _ = std::fs::remove_file(&spool);
        match outcome.map_err(|e| format!("cannot store the report: {e}"))? {
            IngestOutcome::Stored { instance_id, .. }
            | IngestOutcome::Duplicate { instance_id, .. }
            | IngestOutcome::StoredConflicting { instance_id, .. } => Ok(instance_id),
        }
    }

    /// Writes an object the node made to a spool file of its own; the
    /// instance to ingest, and the spool file (the caller removes it).
    async fn write_generated(
        &self,
        obj: dicom_object::FileDicomObject<dicom_object::InMemDicomObject>,
    ) -> Result<(Incoming, std::path::PathBuf), String> {
        let sop_uid = obj
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        let sop_class = obj
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string();
        let ts = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        let spool = self.store.spool_dir().join(generated_spool_name(&sop_uid));
        let spool_for_write = spool.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<(u64, [u8; 32]), String> {
            // The spool directory may have been removed under the node.
            if let Some(dir) = spool_for_write.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            obj.write_to_file(&spool_for_write).map_err(|e| {
                format!(
                    "cannot write report {}: {}",
                    spool_for_write.display(),
                    with_causes(&e)
                )
            })?;
            pneumo_store::dataset_digest(&spool_for_write)
                .map_err(|e| format!("cannot read back report {}: {e}", spool_for_write.display()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let (len, sha) = match written {
            Ok(w) => w,
            Err(e) => {
                // A part-written file (a full disk) would hold the space
                // that recovery needs, one more per retry.
                let _ = std::fs::remove_file(&spool);
                return Err(e);
            }
        };
        let incoming = Incoming {
            spool_path: spool.clone(),
            sop_class_uid: sop_class,
            sop_instance_uid: sop_uid,
            transfer_syntax_uid: ts,
            dataset_len: len,
            dataset_sha256: sha,
            calling_ae: self.node.ae_title.clone(),
            peer_address: "local".into(),
            generated: true,
        };
        Ok((incoming, spool))
    }
}

/// An error and its sources, "a: b": dicom-rs's write errors say only
/// what they were writing ("Could not print data set"), their source why
/// ("No space left on device").
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    crate::joined_causes(std::iter::successors(Some(e), |e| e.source()))
}

/// How long a job whose result the store could not keep waits to run again.
const STORE_RETRY: Duration = Duration::from_secs(30);

/// How often an outcome that could not be recorded is tried again.
const RECORD_RETRY: Duration = Duration::from_secs(5);

/// How long a job waits to run again when the model's files changed.
const MODEL_CHANGED_RETRY: Duration = Duration::from_secs(5);

/// Why an analysis did not finish.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Because of the image, the model or the configuration: the job fails
    /// with this reason (the operator may retry it once that is fixed).
    Analysis(String),
    /// The store could not keep the result (the database locked or full, the
    /// disk full): the job runs again later by itself.
    Store(String),
    /// The model's files changed on disk since it was loaded: the job waits
    /// (runs again later by itself) for a restart to load the model anew.
    ModelChanged(String),
    /// The node's stored copy of the image is gone or damaged: the job
    /// fails until the image is sent again, and no notice goes to the
    /// PACS (whose copy is not at fault).
    StoredFile(String),
}

impl Failure {
    /// Its reason, whatever the kind.
    pub(crate) fn reason(self) -> String {
        match self {
            Failure::Analysis(r)
            | Failure::Store(r)
            | Failure::ModelChanged(r)
            | Failure::StoredFile(r) => r,
        }
    }
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure::Analysis(reason)
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Failure {
        Failure::Analysis(reason.to_string())
    }
}

impl From<pneumo_store::StoreError> for Failure {
    fn from(e: pneumo_store::StoreError) -> Failure {
        Failure::Store(e.to_string())
    }
}

impl From<Generated> for Failure {
    fn from(g: Generated) -> Failure {
        match g {
            Generated::NotMade(e) => Failure::Analysis(e),
            Generated::NotStored(e) => Failure::Store(e),
        }
    }
}

/// Why `generated_once` has no instance.
pub(crate) enum Generated {
    /// The object could not be built (from this source).
    NotMade(String),
    /// The store failed.
    NotStored(String),
}

struct Prepared {
    tensor: pneumo_imaging::Tensor,
    /// SHA-256 of the tensor's bytes (`ResultRecord::model_input_sha256`).
    input_sha256: String,
    report: PreprocessReport,
    /// The header, for the report's patient and study modules.
    header: dicom_object::InMemDicomObject,
    /// The grey image, kept only when a companion image is made.
    grey: Option<pneumo_imaging::GreyImage>,
}

/// Reads and preprocesses the stored image (blocking). A `lung-box` crop
/// takes its box from the segmentation model.
fn prepare(
    path: &Path,
    spec: &pneumo_imaging::PreprocessSpec,
    segmenter: Option<&LungSegmenter>,
    keep_grey: bool,
) -> Result<Prepared, Failure> {
    pneumo_store::check_element_lengths(path, dicom_dictionary_std::tags::PIXEL_DATA)
        .map_err(|e| format!("cannot read the stored instance: {e}"))?;
    let obj: DefaultDicomObject = pneumo_store::open_instance(path, None)
        .map_err(|e| format!("cannot read the stored instance: {e}"))?;
    let imaging = |e: pneumo_imaging::ImagingError| format!("imaging: {}: {e}", e.kind());
    let (grey, grey_report, hdr) = grey_image(&obj).map_err(imaging)?;
    pneumo_imaging::analysis_refusal(&grey, &grey_report).map_err(imaging)?;
    let lung_box = match spec.crop {
        CropMode::None => None,
        CropMode::LungBox => {
            let b = lung_box(segmenter, &grey)?;
            pneumo_imaging::lung_box_refusal(&grey, &b).map_err(imaging)?;
            Some(b)
        }
    };
    let pre = tensor_from_grey(&grey, grey_report, hdr, spec, lung_box).map_err(imaging)?;
    let mut header = obj.into_inner();
    header.remove_element(dicom_dictionary_std::tags::PIXEL_DATA);
    Ok(Prepared {
        input_sha256: tensor_sha256(&pre.tensor),
        tensor: pre.tensor,
        report: pre.report,
        header,
        grey: keep_grey.then_some(grey),
    })
}

/// SHA-256 of the patient and study a report of `source` names (its
/// identity, as copies are told apart by).
pub(crate) fn identity_sha256(source: &SourceInstance) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in source.identity() {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// SHA-256 of a model input: its shape, then its values' little-endian bytes.
fn tensor_sha256(tensor: &pneumo_imaging::Tensor) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for d in tensor.shape {
        hasher.update((d as u64).to_le_bytes());
    }
    match &tensor.data {
        pneumo_imaging::TensorData::F32(v) => v.iter().for_each(|x| hasher.update(x.to_le_bytes())),
        pneumo_imaging::TensorData::F16(v) => v.iter().for_each(|x| hasher.update(x.to_le_bytes())),
    }
    format!("{:x}", hasher.finalize())
}

/// The lung box of a `lung-box` crop, or the job's failure reason.
/// (A change of the segmentation model's files while it ran is the
/// node's, not the image's: the job waits.)
pub(crate) fn lung_box(
    segmenter: Option<&LungSegmenter>,
    grey: &pneumo_imaging::GreyImage,
) -> Result<pneumo_imaging::LungBox, Failure> {
    let seg = segmenter.ok_or(
        "imaging: lung-box-missing: the model's contract asks for crop lung-box and no lung \
         segmentation model is configured (set inference.lung_segmentation_model)",
    )?;
    seg.lung_box(grey)
        .map_err(|e| match e {
            InferenceError::ModelFilesChanged(_) => Failure::ModelChanged(e.to_string()),
            e => Failure::Analysis(format!("lung segmentation: {e}")),
        })?
        .ok_or_else(|| {
            Failure::Analysis(format!(
                "imaging: lung-box-missing: the lung segmentation model {} found no lung in this image",
                seg.path().display()
            ))
        })
}

/// An earlier document as the store names it (study, series, SOP class,
/// SOP instance UID), replaced by this report `because`.
fn replaced(document: (String, String, String, String), because: Replacement) -> EarlierReport {
    let (study_instance_uid, series_instance_uid, sop_class_uid, sop_instance_uid) = document;
    EarlierReport {
        study_instance_uid,
        series_instance_uid,
        sop_class_uid,
        sop_instance_uid,
        because,
    }
}

fn report_model(
    model: &pneumo_inference::ModelIdentity,
    lung_segmentation_sha256: Option<String>,
) -> ReportModel {
    ReportModel {
        name: model.name.clone(),
        version: model.version.clone(),
        weights_kind: match model.weights_kind {
            WeightsKind::Trained => ReportWeights::Trained,
            WeightsKind::RandomDemo => ReportWeights::RandomDemo,
        },
        sha256: model.weights_sha256.clone(),
        contract_sha256: model.contract_sha256.clone(),
        lung_segmentation_sha256,
    }
}

/// A file-name-safe short form of a UID.
/// The spool file of one write of a generated instance: unique per write,
/// as two jobs can make a report with the same UID at once (one SOP Instance
/// UID received twice with different bytes).
fn generated_spool_name(sop_uid: &str) -> String {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "generated-{}-{}-{write}.part",
        uuid_like(sop_uid),
        std::process::id()
    )
}

fn uuid_like(uid: &str) -> String {
    hex::encode(&Sha256::digest(uid.as_bytes())[..8])
}

/// Now, with the node's local UTC offset (the TZ environment variable, else
/// /etc/localtime): a source without Timezone Offset From UTC has its times
/// in local time, and the report's times must read in that clock too (in
/// UTC they looked made before the study east of Greenwich).
pub(crate) fn report_time_now() -> ReportTime {
    let now = ReportTime::now_utc();
    ReportTime {
        local_offset_minutes: local_offset_minutes(now.unix_seconds),
        ..now
    }
}

/// The local time's offset from UTC at `unix_seconds`, in minutes (0 when
/// the C library cannot say).
fn local_offset_minutes(unix_seconds: i64) -> i32 {
    // time_t is i64 on the 64-bit targets this node runs on.
    let t: libc::time_t = unix_seconds;
    // SAFETY: localtime_r only writes the `tm` it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return 0;
    }
    i32::try_from(tm.tm_gmtoff / 60).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::generated_spool_name;

    #[test]
    fn every_write_of_a_generated_instance_gets_its_own_spool_file() {
        let uid = "1.2.826.0.1.3680043.10.1.2.3";
        let (a, b) = (generated_spool_name(uid), generated_spool_name(uid));
        assert_ne!(a, b);
        assert!(a.starts_with("generated-") && a.ends_with(".part"), "{a}");
    }
}

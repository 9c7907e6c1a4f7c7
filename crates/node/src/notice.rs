//! The notice that an image was not analysed: where a job fails, an SR
//! saying so, and why, goes where its report would have gone
//! (`report.not_analysed_notice`, docs/sr.md). Without it a reader saw no
//! result and could not tell "not analysed" from "not yet".

use pneumo_report::{build_not_analysed_sr, not_analysed_sop_instance_uid, SourceInstance};
use pneumo_store::FailedJob;
use tracing::{info, warn};

use crate::pipeline::{report_model, report_time_now, Failure, Generated, Pipeline};

impl Pipeline {
    /// After `job` failed: its notice made, stored and owed to the results
    /// destinations. A notice that cannot be made (the file unreadable,
    /// the header lacking what a report needs) or kept is logged; the job
    /// is failed either way, and an operator's retry tries again.
    pub(crate) async fn send_notice(&self, job: &FailedJob) {
        if !self.report.not_analysed_notice {
            return;
        }
        match self.notice(job).await {
            Ok(Some(uid)) => info!(
                sop_instance_uid = %job.sop_instance_uid,
                notice = %uid,
                "not-analysed notice made"
            ),
            Ok(None) => {}
            Err(e) => warn!(
                sop_instance_uid = %job.sop_instance_uid,
                error = %e,
                "no not-analysed notice for this failed job"
            ),
        }
    }

    /// Ok(None): the job is no longer failed (an operator sent it back).
    async fn notice(&self, job: &FailedJob) -> Result<Option<String>, String> {
        let path = self.store.instance_file(&job.path);
        let header = tokio::task::spawn_blocking(move || {
            pneumo_store::open_instance(&path, Some(dicom_dictionary_std::tags::PIXEL_DATA))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read the stored instance: {e}"))?;
        let mut source = SourceInstance::from_dataset(&header).map_err(|e| e.to_string())?;
        source.version = self
            .corrected_version(job.instance_id, &source)
            .await
            .map_err(|e| match e {
                Failure::Analysis(e) | Failure::Store(e) | Failure::ModelChanged(e) => e,
            })?;
        let model = report_model(self.engine.identity());
        let uid = not_analysed_sop_instance_uid(
            &source.uid_key(),
            &self.node.ae_title,
            &model.contract_sha256,
            &job.reason,
            self.node.uid_root.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let notice_id = self
            .generated_once(&uid, || {
                build_not_analysed_sr(
                    &source,
                    &job.reason,
                    &model,
                    &self.node,
                    &self.report,
                    &report_time_now(),
                )
                .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| match e {
                Generated::NotMade(e) | Generated::NotStored(e) => e,
            })?;
        let callers = self
            .store
            .callers_of(job.instance_id)
            .await
            .map_err(|e| e.to_string())?;
        let destinations = self.results.destinations_for(&callers);
        let owed = self
            .store
            .owe_notice(job.job_id, notice_id, &destinations)
            .await
            .map_err(|e| e.to_string())?;
        if owed && !destinations.is_empty() {
            self.wake_outbox.notify_one();
        }
        Ok(owed.then_some(uid))
    }
}

//! The notice that an image was not analysed: where a job fails, an SR
//! saying so, and why, goes where its report would have gone
//! (`report.not_analysed_notice`, docs/sr.md). Without it a reader saw no
//! result and could not tell "not analysed" from "not yet".

use dicom_object::{FileDicomObject, InMemDicomObject};
use pneumo_report::{
    build_not_analysed_sc, build_not_analysed_sr, not_analysed_sc_sop_instance_uid,
    not_analysed_sop_instance_uid, ModelIdentity as ReportModel, NodeIdentity, ReportError,
    ReportOptions, ReportTime, SourceInstance,
};
use pneumo_store::{FailedJob, MadeInstances};
use tracing::{info, warn};

use crate::pipeline::{report_time_now, Failure, Generated, Pipeline};

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

    /// Where the results of `instance_id` go: its callers' destinations.
    async fn results_destinations_of(&self, instance_id: i64) -> Result<Vec<String>, String> {
        let callers = self
            .store
            .callers_of(instance_id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.results.destinations_for(&callers))
    }

    /// Ok(None): no notice is due (the job is no longer failed, or the
    /// image has a report, of an earlier analysis or of another copy under
    /// its UID naming the same patient and study, which a notice would
    /// contradict; a report in another patient's record says nothing in
    /// this one's).
    async fn notice(&self, job: &FailedJob) -> Result<Option<String>, String> {
        let reason = for_the_reader(&job.reason);
        let path = self.store.instance_file(&job.path);
        let header = tokio::task::spawn_blocking(move || {
            pneumo_store::open_instance(&path, Some(dicom_dictionary_std::tags::PIXEL_DATA))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read the stored instance: {e}"))?;
        let mut source = SourceInstance::from_dataset(&header).map_err(|e| e.to_string())?;
        let identity = crate::pipeline::identity_sha256(&source);
        let standing = self
            .store
            .standing_report_source(job.job_id, &identity)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(maker) = standing {
            // That report goes where this copy's would have: a second
            // site's damaged copy got neither it nor a notice.
            let destinations = self.results_destinations_of(job.instance_id).await?;
            let owed = self
                .store
                .owe_report_of(maker, &destinations)
                .await
                .map_err(|e| e.to_string())?;
            if owed > 0 {
                self.wake_outbox.notify_one();
            }
            info!(
                sop_instance_uid = %job.sop_instance_uid,
                newly_owed = owed,
                "no not-analysed notice: a report of this image (an earlier analysis, or another \
                 copy under its UID naming the same patient and study) stands, and goes where \
                 this copy's results go"
            );
            return Ok(None);
        }
        self.place_among_copies(job.instance_id, &mut source)
            .await
            .map_err(Failure::reason)?;
        let model = self.reported_model(self.engine.identity());
        let uid_of = |derive: NoticeUid| {
            derive(
                &source.uid_key(),
                &self.node.ae_title,
                &model.uid_basis(),
                &reason,
                self.node.uid_root.as_deref(),
            )
            .map_err(|e| e.to_string())
        };
        let uid = uid_of(not_analysed_sop_instance_uid)?;
        let unmade = |e| match e {
            Generated::NotMade(e) | Generated::NotStored(e) => e,
        };
        let report = self
            .notice_made(&uid, build_not_analysed_sr, &source, &model, &reason)
            .await
            .map_err(unmade)?;
        let mut companion = None;
        if self.report.companion_sc {
            let sc_uid = uid_of(not_analysed_sc_sop_instance_uid)?;
            let made = self
                .notice_made(&sc_uid, build_not_analysed_sc, &source, &model, &reason)
                .await;
            match made {
                Ok(id) => companion = Some(id),
                Err(e) => warn!(error = %unmade(e), "the not-analysed notice as an image not made"),
            }
        }
        let destinations = self.results_destinations_of(job.instance_id).await?;
        let owed = self
            .store
            .owe_notice(
                job.job_id,
                MadeInstances { report, companion },
                &destinations,
            )
            .await
            .map_err(|e| e.to_string())?;
        if owed && !destinations.is_empty() {
            self.wake_outbox.notify_one();
        }
        Ok(owed.then_some(uid))
    }

    /// The notice (SR or image) under `uid`: stored already, else built
    /// by `build` and stored now.
    async fn notice_made(
        &self,
        uid: &str,
        build: NoticeBuilder,
        source: &SourceInstance,
        model: &ReportModel,
        reason: &str,
    ) -> Result<i64, Generated> {
        self.generated_once(uid, || {
            let time = report_time_now();
            build(source, reason, model, &self.node, &self.report, &time).map_err(|e| e.to_string())
        })
        .await
    }
}

/// `build_not_analysed_sr` or `build_not_analysed_sc`.
type NoticeBuilder = fn(
    &SourceInstance,
    &str,
    &ReportModel,
    &NodeIdentity,
    &ReportOptions,
    &ReportTime,
) -> Result<FileDicomObject<InMemDicomObject>, ReportError>;

/// `not_analysed_sop_instance_uid` or `not_analysed_sc_sop_instance_uid`.
type NoticeUid = fn(&str, &str, &str, &str, Option<&str>) -> Result<String, ReportError>;

/// The job's reason as the reader of a notice needs it: what happened in
/// plain words, then the node's own words for its administrator, without
/// file paths (a notice is a document in the patient's record).
pub(crate) fn for_the_reader(reason: &str) -> String {
    let kind = reason
        .strip_prefix("imaging: ")
        .and_then(|r| r.split(':').next())
        .unwrap_or("");
    let plain = match kind {
        "decode" | "pixel-data-length" | "no-pixel-data" | "unsupported-transfer-syntax" => {
            "The image data could not be read: damaged, incomplete, or in a form the node \
             does not decode. Sending the image again from the modality may help."
        }
        "missing-attribute" | "invalid-attribute" => {
            "The image's header lacks, or misstates, what reading its pixels needs."
        }
        "float-pixel-data" => {
            "The image holds floating-point samples (a parametric map), not a radiograph's."
        }
        "colour" => "Colour images are not analysed: the model reads greyscale radiographs.",
        "multi-frame" => "Images of several frames are not analysed: the model reads one exposure.",
        "bits-allocated" => "The image's pixel format is not one the node reads.",
        "too-small" => "The image is too small to be a chest radiograph.",
        "too-large" => "The image is larger than any chest radiograph (over 100 megapixels).",
        "no-image-content" => "The image is blank: every pixel has the same value.",
        "shutter-hides-image" => "The image's display shutter hides almost all of it.",
        "lung-box-missing" | "lung-box-too-small" | "invalid-lung-box" => {
            "The lungs could not be found in the image."
        }
        _ if reason.starts_with("lung segmentation:") && reason.contains("not finite") => {
            "The lung segmentation model gave no usable result for this image."
        }
        _ if reason.starts_with("lung segmentation:") => {
            "The lungs could not be found in the image."
        }
        _ if reason.starts_with("inference:") => "The model gave no usable result for this image.",
        _ if reason.starts_with("analysis started") => {
            "Analysing this image stopped the node each time it was tried."
        }
        _ if reason.starts_with("cannot read the stored instance") => {
            "The image could not be read."
        }
        _ => "The node could not analyse it.",
    };
    let detail: Vec<&str> = reason
        .split(' ')
        .map(|word| {
            if word.starts_with('/') {
                "(a file of the node)"
            } else {
                word
            }
        })
        .collect();
    format!("{plain} (Detail: {})", detail.join(" "))
}

#[cfg(test)]
mod tests {
    use super::for_the_reader;

    #[test]
    fn a_reason_reads_in_plain_words_first_and_names_no_file() {
        let r = for_the_reader(
            "imaging: decode: decoding pixel data (1.2.840.10008.1.2.4.50) failed: libjpeg-turbo: \
             Premature end of JPEG file",
        );
        assert!(r.starts_with("The image data could not be read"), "{r}");
        assert!(r.contains("(Detail: imaging: decode:"), "{r}");
        let r = for_the_reader(
            "cannot read the stored instance: /var/lib/pneumo/instances/1/2/3.dcm: eof",
        );
        assert!(!r.contains("/var"), "{r}");
        assert!(r.contains("(a file of the node)"), "{r}");
        assert!(
            for_the_reader("imaging: colour: colour image refused").starts_with("Colour images")
        );
        assert!(
            for_the_reader("analysis started 3 times and never finished").starts_with("Analysing")
        );
        assert!(for_the_reader("something new").starts_with("The node could not analyse it."));
    }
}

//! The notice that an image was not analysed: a TID 1500 SR about the
//! image, in the shape of a result's report, whose evaluations say
//! pneumoconiosis was not evaluated, and why. It reaches the reader where
//! the result would have (a failed analysis otherwise left nothing in the
//! PACS, and a reader could not tell "not analysed" from "not yet").

use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::codes;
use crate::content::{ContentItem, ItemValue, Relationship};
use crate::sr::{demo_comment, report_tree, series_description, which_image, Document};
use crate::uid;
use crate::{ModelIdentity, NodeIdentity, ReportError, ReportOptions, ReportTime, SourceInstance};

/// The longest reason written (a UT value holds far more; a reader needs
/// far less).
const REASON_MAX_CHARS: usize = 1000;

/// Series Description of the notices' series, the demo mark first.
pub fn not_analysed_series_description(model: &ModelIdentity) -> String {
    series_description(model, "NOT ANALYSED - ", "NOT ANALYSED by AI")
}

/// The notice's sentence: what was not done, to which image, and why.
pub fn not_analysed_sentence(
    source: &SourceInstance,
    model: &ModelIdentity,
    reason: &str,
) -> String {
    let named = which_image(source, "series", "image", "acquired");
    let image = if named.is_empty() {
        "This image".to_string()
    } else {
        format!("This image ({})", named.join(", "))
    };
    let reason = crate::content::truncate_chars(reason.trim(), REASON_MAX_CHARS);
    format!(
        "NOT ANALYSED. {image} was not analysed for pneumoconiosis by {} {}: there is \
         no result for it. Reason: {reason}",
        model.name.trim(),
        model.version.trim(),
    )
}

/// The content tree of the notice: no measurement group (OHIF fails on
/// a group without a measurement: it places each on the image by its
/// region), and in the report's own
/// Qualitative Evaluations (TID 1500 row 12) pneumoconiosis "Not
/// Evaluated", the demo mark with demo weights, and the sentence with the
/// reason.
pub fn build_not_analysed_tree(
    source: &SourceInstance,
    reason: &str,
    model: &ModelIdentity,
    node: &NodeIdentity,
) -> Result<ContentItem, ReportError> {
    model.validate()?;
    let mut evaluations = vec![ContentItem::new(
        Relationship::Contains,
        codes::PNEUMOCONIOSIS,
        ItemValue::Code(codes::NOT_EVALUATED),
    )];
    evaluations.extend(demo_comment(model, "notice"));
    evaluations.push(ContentItem::new(
        Relationship::Contains,
        codes::COMMENT,
        ItemValue::Text(not_analysed_sentence(source, model, reason)),
    ));
    Ok(report_tree(source, node, None, evaluations))
}

/// Build the notice that `source` was not analysed by `model`, for
/// `reason` (the job's): a Part-10 SR like the result's report, in a
/// series of its own.
pub fn build_not_analysed_sr(
    source: &SourceInstance,
    reason: &str,
    model: &ModelIdentity,
    node: &NodeIdentity,
    options: &ReportOptions,
    time: &ReportTime,
) -> Result<FileDicomObject<InMemDicomObject>, ReportError> {
    node.validate()?;
    let sha = model.validate()?;
    if reason.trim().is_empty() {
        return Err(ReportError::InvalidResult(
            "a notice of no analysis needs its reason".into(),
        ));
    }
    let root_uid = node.uid_root.as_deref();
    let document = Document {
        sop_instance_uid: uid::not_analysed_sop_instance_uid(
            &source.uid_key(),
            &node.ae_title,
            &sha,
            reason,
            root_uid,
        )?,
        series_instance_uid: uid::not_analysed_series_instance_uid(
            &source.sop_instance_uid,
            &node.ae_title,
            &sha,
            root_uid,
        )?,
        series_number: options.notice_series_number,
        series_description: not_analysed_series_description(model),
        equipment_description: format!(
            "{} {} ({} weights) could not analyse the referenced image.",
            model.name.trim(),
            model.version.trim(),
            model.weights_kind.as_str()
        ),
        tree: build_not_analysed_tree(source, reason, model, node)?,
    };
    document.build(source, model, node, options, time)
}

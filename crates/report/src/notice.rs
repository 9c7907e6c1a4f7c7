//! The notice that an image was not analysed: a TID 1500 SR about the
//! image, in the shape of a result's report, whose evaluations say
//! pneumoconiosis was not evaluated, and why. It reaches the reader where
//! the result would have (a failed analysis otherwise left nothing in the
//! PACS, and a reader could not tell "not analysed" from "not yet").

use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::codes;
use crate::content::{ContentItem, ItemValue, Relationship};
use crate::sc::{add_banner, Raster, ScImage};
use crate::sr::{demo_comment, report_tree, series_description, which_image, Document};
use crate::uid;
use crate::DEMO_MARK;
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

/// The contract hash of a valid model, for a valid node and a reason.
fn checked(
    node: &NodeIdentity,
    model: &ModelIdentity,
    reason: &str,
) -> Result<String, ReportError> {
    node.validate()?;
    if reason.trim().is_empty() {
        return Err(ReportError::InvalidResult(
            "a notice of no analysis needs its reason".into(),
        ));
    }
    model.validate()
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
    let sha = checked(node, model, reason)?;
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
            &source.series_key(),
            &node.ae_title,
            &sha,
            root_uid,
        )?,
        series_number: options.notice_series_number,
        series_description: not_analysed_series_description(model),
        equipment_description: model.contribution("could not analyse the referenced image."),
        tree: build_not_analysed_tree(source, reason, model, node)?,
    };
    document.build(source, model, node, options, time)
}

/// The lines of the notice as an image.
fn notice_lines(source: &SourceInstance, model: &ModelIdentity, reason: &str) -> Vec<String> {
    let mut lines = Vec::new();
    if model.is_demo() {
        lines.push(DEMO_MARK.to_string());
    }
    lines.push("NOT ANALYSED BY AI".to_string());
    lines.push("THERE IS NO PNEUMOCONIOSIS RESULT FOR THIS IMAGE".to_string());
    let named = which_image(source, "SERIES", "IMAGE", "ACQUIRED");
    if !named.is_empty() {
        lines.push(format!("SOURCE: {}", named.join(" - ")));
    }
    lines.push(format!(
        "MODEL {} {}",
        model.name.trim(),
        model.version.trim()
    ));
    let reason = crate::content::truncate_chars(reason.trim(), REASON_MAX_CHARS);
    lines.push(format!("REASON: {reason}"));
    if model.is_demo() {
        lines.push(DEMO_MARK.to_string());
    }
    lines
}

/// The notice as a Secondary Capture image, for viewers that show no SR
/// (made with `companion_sc`, as the result's companion image is): the
/// notice's words in white on black, no pixel of the source, in a series
/// of its own.
pub fn build_not_analysed_sc(
    source: &SourceInstance,
    reason: &str,
    model: &ModelIdentity,
    node: &NodeIdentity,
    options: &ReportOptions,
    time: &ReportTime,
) -> Result<FileDicomObject<InMemDicomObject>, ReportError> {
    let sha = checked(node, model, reason)?;
    let root_uid = node.uid_root.as_deref();
    // As wide as a companion image, so its words are as large.
    let canvas = Raster {
        rows: 0,
        columns: usize::from(options.sc_max_size).max(320),
        data: Vec::new(),
    };
    let sentence = not_analysed_sentence(source, model, reason);
    let image = ScImage {
        sop_instance_uid: uid::not_analysed_sc_sop_instance_uid(
            &source.uid_key(),
            &node.ae_title,
            &sha,
            reason,
            root_uid,
        )?,
        series_instance_uid: uid::not_analysed_sc_series_instance_uid(
            &source.series_key(),
            &node.ae_title,
            &sha,
            root_uid,
        )?,
        series_number: options.notice_sc_series_number,
        series_description: series_description(
            model,
            "NOT ANALYSED - image - ",
            "NOT ANALYSED by AI image",
        ),
        raster: add_banner(&canvas, &notice_lines(source, model, reason)),
        derivation: "The notice that the referenced image was not analysed, in words; \
                     none of its pixels.",
        comments: if model.is_demo() {
            format!("{DEMO_MARK}. {sentence}")
        } else {
            sentence
        },
        contribution: model.contribution("could not analyse the referenced image."),
    };
    image.build(source, model, node, time)
}

//! The SR document: TID 1500 in a Comprehensive (3D) SR.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::codes;
use crate::common::{self, put_str};
use crate::content::{sequence, ContentItem, ItemValue, Relationship};
use crate::uid;
use crate::{
    AnalysisResult, Decision, ModelIdentity, NodeIdentity, Replacement, ReportError, ReportOptions,
    ReportTime, SourceInstance,
};

/// What viewers list as the series of a demonstration result.
pub const DEMO_MARK: &str = "DEMO MODEL - NOT FOR DIAGNOSIS";

/// Series Description of the SR series: which model and version made it
/// (several models' series can sit in one study), the demo mark first.
pub fn sr_series_description(model: &ModelIdentity) -> String {
    series_description(model, "", "AI pneumoconiosis")
}

/// A Series Description naming the model within the longest one allowed:
/// `<DEMO_MARK> - <demo_kind><name> <version>` with demo weights, else
/// `<kind> (<name> <version>)`.
pub(crate) fn series_description(model: &ModelIdentity, demo_kind: &str, kind: &str) -> String {
    if model.is_demo() {
        model.described_within(
            &format!("{DEMO_MARK} - {demo_kind}"),
            "",
            SERIES_DESCRIPTION_MAX,
        )
    } else {
        model.described_within(&format!("{kind} ("), ")", SERIES_DESCRIPTION_MAX)
    }
}

/// The longest Series Description (LO, PS3.5 6.2).
pub(crate) const SERIES_DESCRIPTION_MAX: usize = 64;

/// The most decimals a percentage is written with (a DS value's form).
const MAX_PERCENT_DECIMALS: u32 = 6;

fn rounded(x: f64, decimals: u32) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    (x * scale).round() / scale
}

/// The probability and the threshold in percent, each rounded to the same
/// number of decimals: `decimals` or, where that is not enough, as many
/// more as it takes for the two written numbers to compare as the decision
/// does (p = 0.49996 under a 0.5 threshold is "absent": written 49.996 %,
/// never 50.0 %), and for a value strictly between 0 and 100 % not to read
/// 0 or 100 (p = 0.99999 is 99.999 %, not a certainty of 100 %).
fn shown_percentages(result: &AnalysisResult, decimals: u32) -> (f64, f64) {
    let p = result.p_pneumoconiosis * 100.0;
    let t = result.threshold * 100.0;
    let present = result.decision == Decision::Present;
    // A p of exactly 1 beside another label's probability above 0 (logits
    // 40 apart: 1 - p is below f64's step at 1, the other column 1e-18)
    // is no certainty either: written 99.999999 % as its mirror is 0.000001 %
    // (it was written 100 %).
    let whole = |exact: f64| {
        exact == 100.0
            && result
                .probabilities
                .iter()
                .all(|&q| q == 0.0 || q == result.p_pneumoconiosis)
    };
    let not_an_extreme =
        |exact: f64, shown: f64| (shown != 0.0 || exact == 0.0) && (shown != 100.0 || whole(exact));
    // The threshold is also written whole (the algorithm's parameters):
    // the certainty must not cross it either (a "Present" written 91.7735
    // under threshold=0.91773549). Within 1e-9 % is equal.
    let against_whole = |shown_p: f64| (shown_p + 1e-9 >= t) == present;
    for d in decimals..=MAX_PERCENT_DECIMALS {
        let (shown_p, shown_t) = (rounded(p, d), rounded(t, d));
        if (shown_p >= shown_t) == present
            && against_whole(shown_p)
            && not_an_extreme(p, shown_p)
            && not_an_extreme(t, shown_t)
        {
            return (shown_p, shown_t);
        }
    }
    let shown_t = rounded(t, MAX_PERCENT_DECIMALS);
    let unit = 10f64.powi(-(MAX_PERCENT_DECIMALS as i32));
    let mut shown_p = rounded(p, MAX_PERCENT_DECIMALS);
    // Closer to 0 or 100 % than the last decimal (a confident model's
    // 1e-9): one unit inside. (It was written one unit under the threshold,
    // 49.999999 % for the plainest normal chest.)
    if shown_p == 0.0 && p > 0.0 {
        shown_p = unit;
    } else if shown_p == 100.0 && !whole(p) {
        shown_p = 100.0 - unit;
    }
    // Closer to the threshold than the last decimal (an "absent" just
    // under it): one unit under the threshold as written.
    if !present && shown_p >= shown_t {
        shown_p = (shown_t - unit).max(0.0);
    }
    (shown_p, shown_t)
}

/// Which image of the study the result is for, as a reader names it
/// (its view, series and instance numbers, those present): several may be
/// analysed in one study, and viewers list their reports alike.
pub(crate) fn which_image(
    source: &SourceInstance,
    series: &str,
    image: &str,
    acquired: &str,
) -> Vec<String> {
    [
        source.view_position.clone(),
        source.series_number.map(|n| format!("{series} {n}")),
        source.instance_number.map(|n| format!("{image} {n}")),
        // without an Instance Number, what tells a retake from the first
        source
            .acquired_at
            .as_ref()
            .filter(|_| source.instance_number.is_none())
            .map(|t| format!("{acquired} {t}")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Certainty of Finding in percent: `p_pneumoconiosis × 100`, rounded to
/// 4 decimals, or more where the threshold or an extreme needs them
/// (`shown_percentages`).
pub fn certainty_percent(result: &AnalysisResult) -> f64 {
    shown_percentages(result, 4).0
}

/// The probability and the threshold as the result's sentence and the
/// companion image write them: one decimal, or more where the threshold or
/// an extreme needs them (`shown_percentages`).
pub(crate) fn percentages_in_words(result: &AnalysisResult) -> (String, String) {
    let (p, t) = shown_percentages(result, 1);
    (crate::content::format_ds(p), crate::content::format_ds(t))
}

/// The result in one sentence (used in the SR's comment and the companion
/// image).
pub fn result_sentence(result: &AnalysisResult) -> String {
    let (probability, threshold) = percentages_in_words(result);
    format!(
        "Pneumoconiosis {}: probability {probability}% (threshold {threshold}%).",
        result.decision.as_str(),
    )
}

fn text(rel: Relationship, name: crate::content::Code, value: impl Into<String>) -> ContentItem {
    ContentItem::new(rel, name, ItemValue::Text(value.into()))
}

/// The region the certainty was inferred from (TID 300 row 9): a closed
/// POLYLINE around what the model saw (the whole image, or its lung box),
/// selected from the source image. Viewers that draw TID 1500 measurements
/// (OHIF) need a region to place one on the image; without one they
/// dropped the result or failed on it.
fn analysed_region(
    source: &SourceInstance,
    result: &AnalysisResult,
    image: ItemValue,
) -> Result<ContentItem, ReportError> {
    let (columns, rows) = (u32::from(source.columns), u32::from(source.rows));
    let r = result.analysed_region.unwrap_or(crate::PixelRegion {
        x0: 0,
        y0: 0,
        x1: columns,
        y1: rows,
    });
    if r.x0 >= r.x1 || r.y0 >= r.y1 || r.x1 > columns || r.y1 > rows {
        return Err(ReportError::InvalidResult(format!(
            "analysed region {r:?} is not inside the {columns}x{rows} image"
        )));
    }
    let (x0, y0, x1, y1) = (r.x0 as f32, r.y0 as f32, r.x1 as f32, r.y1 as f32);
    Ok(ContentItem::new(
        Relationship::InferredFrom,
        codes::IMAGE_REGION,
        ItemValue::Scoord {
            graphic_type: "POLYLINE",
            points: vec![x0, y0, x1, y0, x1, y1, x0, y1, x0, y0],
        },
    )
    .with_children(vec![ContentItem::new(
        Relationship::SelectedFrom,
        codes::SOURCE_IMAGE,
        image,
    )]))
}

/// The observer context every report of the node starts with: the node,
/// as a device (TID 1002 / 1004).
fn observer_context(node: &NodeIdentity) -> Vec<ContentItem> {
    vec![
        ContentItem::new(
            Relationship::HasObsContext,
            codes::OBSERVER_TYPE,
            ItemValue::Code(codes::DEVICE),
        ),
        ContentItem::new(
            Relationship::HasObsContext,
            codes::DEVICE_OBSERVER_UID,
            ItemValue::UidRef(node.device_uid.trim().to_string()),
        ),
        text(
            Relationship::HasObsContext,
            codes::DEVICE_OBSERVER_NAME,
            node.ae_title.trim(),
        ),
        text(
            Relationship::HasObsContext,
            codes::DEVICE_OBSERVER_MANUFACTURER,
            node.manufacturer.trim(),
        ),
        text(
            Relationship::HasObsContext,
            codes::DEVICE_OBSERVER_MODEL_NAME,
            node.model_name.trim(),
        ),
    ]
}

/// The reference to the source image, as an IMAGE item's value.
fn source_image(source: &SourceInstance) -> ItemValue {
    ItemValue::Image {
        class_uid: source.sop_class_uid.clone(),
        instance_uid: source.sop_instance_uid.clone(),
    }
}

/// The Image Library (TID 1600): one group, one entry, the source image
/// with its acquisition descriptors.
fn image_library(source: &SourceInstance) -> ContentItem {
    let mut descriptors = Vec::new();
    if let Some(m) = codes::modality_code(&source.modality) {
        descriptors.push(ContentItem::new(
            Relationship::HasAcqContext,
            codes::MODALITY,
            ItemValue::Code(m),
        ));
    }
    if let Some(f) = &source.frame_of_reference_uid {
        descriptors.push(ContentItem::new(
            Relationship::HasAcqContext,
            codes::FRAME_OF_REFERENCE_UID,
            ItemValue::UidRef(f.clone()),
        ));
    }
    descriptors.push(ContentItem::new(
        Relationship::HasAcqContext,
        codes::PIXEL_DATA_ROWS,
        ItemValue::Num {
            value: f64::from(source.rows),
            unit: codes::PIXELS,
        },
    ));
    descriptors.push(ContentItem::new(
        Relationship::HasAcqContext,
        codes::PIXEL_DATA_COLUMNS,
        ItemValue::Num {
            value: f64::from(source.columns),
            unit: codes::PIXELS,
        },
    ));
    if let Some((r, c)) = &source.patient_orientation {
        descriptors.push(text(
            Relationship::HasAcqContext,
            codes::PATIENT_ORIENTATION_ROW,
            r.clone(),
        ));
        descriptors.push(text(
            Relationship::HasAcqContext,
            codes::PATIENT_ORIENTATION_COLUMN,
            c.clone(),
        ));
    }
    if let Some((row_spacing, col_spacing)) = source.imager_pixel_spacing {
        descriptors.push(ContentItem::new(
            Relationship::HasAcqContext,
            codes::HORIZONTAL_PIXEL_SPACING,
            ItemValue::Num {
                value: col_spacing,
                unit: codes::MILLIMETER,
            },
        ));
        descriptors.push(ContentItem::new(
            Relationship::HasAcqContext,
            codes::VERTICAL_PIXEL_SPACING,
            ItemValue::Num {
                value: row_spacing,
                unit: codes::MILLIMETER,
            },
        ));
    }
    ContentItem::new(
        Relationship::Contains,
        codes::IMAGE_LIBRARY,
        ItemValue::Container { template: None },
    )
    .with_children(vec![ContentItem::new(
        Relationship::Contains,
        codes::IMAGE_LIBRARY_GROUP,
        ItemValue::Container { template: None },
    )
    .with_children(vec![ContentItem::new(
        Relationship::Contains,
        codes::SOURCE,
        source_image(source),
    )
    .with_children(descriptors)])])
}

/// The head of a measurement group (TID 1501) about pneumoconiosis:
/// tracking identifiers, the finding and its site, and the algorithm
/// (TID 4019) with the parameters that name the model exactly.
fn finding_and_algorithm(
    source: &SourceInstance,
    model: &ModelIdentity,
    node: &NodeIdentity,
) -> Result<Vec<ContentItem>, ReportError> {
    let uid_basis = model.validate()?;
    let sha = model.contract_sha256.trim().to_ascii_lowercase();
    Ok(vec![
        text(
            Relationship::HasObsContext,
            codes::TRACKING_IDENTIFIER,
            "Pneumoconiosis classification",
        ),
        ContentItem::new(
            Relationship::HasObsContext,
            codes::TRACKING_UNIQUE_IDENTIFIER,
            ItemValue::UidRef(uid::tracking_uid(
                &source.uid_key(),
                &node.ae_title,
                &uid_basis,
                node.uid_root.as_deref(),
            )?),
        ),
        ContentItem::new(
            Relationship::Contains,
            codes::FINDING,
            ItemValue::Code(codes::PNEUMOCONIOSIS),
        ),
        ContentItem::new(
            Relationship::HasConceptMod,
            codes::FINDING_SITE,
            ItemValue::Code(codes::LUNG),
        ),
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_NAME,
            model.name.trim(),
        ),
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_VERSION,
            model.version.trim(),
        ),
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_MANUFACTURER,
            node.manufacturer.trim(),
        ),
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_PARAMETERS,
            format!("weights={}", model.weights_kind.as_str()),
        ),
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_PARAMETERS,
            format!("sha256={}", model.sha256.trim().to_ascii_lowercase()),
        ),
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_PARAMETERS,
            format!("contract_sha256={sha}"),
        ),
    ]
    .into_iter()
    .chain(model.lung_segmentation_sha256.as_ref().map(|seg| {
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_PARAMETERS,
            format!(
                "lung_segmentation_sha256={}",
                seg.trim().to_ascii_lowercase()
            ),
        )
    }))
    .collect())
}

/// The demonstration model's warning, as a comment of the group.
pub(crate) fn demo_comment(model: &ModelIdentity, what: &str) -> Option<ContentItem> {
    model.is_demo().then(|| {
        text(
            Relationship::Contains,
            codes::COMMENT,
            format!(
                "{DEMO_MARK}. This {what} comes from a model with random demonstration \
                 weights; it carries no diagnostic information."
            ),
        )
    })
}

/// A TID 1500 report: language, observer, procedure reported, the image
/// library, then Imaging Measurements around `group` (a measurement
/// group's items) or, without one, the report's own Qualitative
/// Evaluations (row 12), one of the two being required.
pub(crate) fn report_tree(
    source: &SourceInstance,
    node: &NodeIdentity,
    group: Option<Vec<ContentItem>>,
    evaluations: Vec<ContentItem>,
) -> ContentItem {
    // An empty Imaging Measurements container is not written: highdicom
    // failed on one (no Content Sequence); OHIF reads none as no
    // measurement.
    let measurements = group.map(|items| {
        ContentItem::new(
            Relationship::Contains,
            codes::IMAGING_MEASUREMENTS,
            ItemValue::Container { template: None },
        )
        .with_children(vec![ContentItem::new(
            Relationship::Contains,
            codes::MEASUREMENT_GROUP,
            ItemValue::Container {
                template: Some("1501"),
            },
        )
        .with_children(items)])
    });
    let procedure = source
        .procedure_code
        .clone()
        .unwrap_or(codes::XR_UNSPECIFIED_BODY_REGION);
    let mut children = vec![ContentItem::new(
        Relationship::HasConceptMod,
        codes::LANGUAGE_OF_CONTENT,
        ItemValue::Code(codes::ENGLISH_US),
    )];
    children.extend(observer_context(node));
    children.push(ContentItem::new(
        Relationship::HasConceptMod,
        codes::PROCEDURE_REPORTED,
        ItemValue::Code(procedure),
    ));
    children.push(image_library(source));
    children.extend(measurements);
    if !evaluations.is_empty() {
        children.push(
            ContentItem::new(
                Relationship::Contains,
                codes::QUALITATIVE_EVALUATIONS,
                ItemValue::Container { template: None },
            )
            .with_children(evaluations),
        );
    }
    ContentItem {
        relationship: None,
        name: codes::IMAGING_MEASUREMENT_REPORT,
        value: ItemValue::Container {
            template: Some("1500"),
        },
        children,
    }
}

/// The content tree of the SR (root CONTAINER and all its descendants).
pub fn build_content_tree(
    source: &SourceInstance,
    result: &AnalysisResult,
    model: &ModelIdentity,
    node: &NodeIdentity,
) -> Result<ContentItem, ReportError> {
    result.validate()?;
    let image = || source_image(source);

    // Measurement group (TID 1501)
    let verdict = match result.decision {
        Decision::Present => codes::PRESENT,
        Decision::Absent => codes::ABSENT,
    };
    let mut group = finding_and_algorithm(source, model, node)?;
    group.extend([
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_PARAMETERS,
            // As the decision used it (shortest exact form): rounded, a
            // threshold of 0.3000000099 read 0.3 beside a certainty of 30
            // and "Absent".
            format!("threshold={}", result.threshold),
        ),
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_PARAMETERS,
            format!("crop_mode={}", result.crop_mode.trim()),
        ),
        text(
            Relationship::HasConceptMod,
            codes::ALGORITHM_PARAMETERS,
            format!("execution_provider={}", result.execution_provider.trim()),
        ),
        ContentItem::new(
            Relationship::Contains,
            codes::CERTAINTY_OF_FINDING,
            ItemValue::Num {
                value: certainty_percent(result),
                unit: codes::PERCENT,
            },
        )
        .with_children(vec![analysed_region(source, result, image())?]),
        ContentItem::new(
            Relationship::Contains,
            codes::PNEUMOCONIOSIS,
            ItemValue::Code(verdict),
        ),
        ContentItem::new(
            Relationship::Contains,
            codes::SOURCE_OF_MEASUREMENT,
            image(),
        ),
    ]);
    group.extend(demo_comment(model, "result"));
    let named = which_image(source, "series", "image", "acquired");
    let image = if named.is_empty() {
        String::new()
    } else {
        format!(" Image analysed: {}.", named.join(", "))
    };
    group.push(text(
        Relationship::Contains,
        codes::COMMENT,
        format!(
            "{}{image} Computed by {} {} without human review.",
            result_sentence(result),
            model.name.trim(),
            model.version.trim()
        ),
    ));
    if let Some(earlier) = &source.replaces {
        let replaced = match earlier.because {
            // No UID: a reader has no use for one (OHIF showed it as the
            // label), and a PACS sent Comprehensive SR copies holds the
            // notice under another; the Predecessor Documents name it.
            Replacement::Notice => format!(
                "This report replaces the earlier notice, made by the same model, that this \
                 image had not been analysed; {}.",
                earlier.because.explained()
            ),
            // No UID either: 44 digits in the text a radiologist reads;
            // the Predecessor Documents, the API and the log name it.
            because => format!(
                "This report replaces the report made by the same model for an earlier copy \
                 of this image under the same SOP Instance UID; {}.",
                because.explained()
            ),
        };
        group.push(text(Relationship::Contains, codes::COMMENT, replaced));
    }
    Ok(report_tree(source, node, Some(group), Vec::new()))
}

/// Build the SR of one analysed instance: a Part-10 object (File Meta
/// Information Version 00 01, Explicit VR Little Endian) ready to be stored
/// and sent.
pub fn build_sr(
    source: &SourceInstance,
    result: &AnalysisResult,
    model: &ModelIdentity,
    node: &NodeIdentity,
    options: &ReportOptions,
    time: &ReportTime,
) -> Result<FileDicomObject<InMemDicomObject>, ReportError> {
    node.validate()?;
    let sha = model.validate()?;
    let tree = build_content_tree(source, result, model, node)?;
    let root_uid = node.uid_root.as_deref();
    let document = Document {
        sop_instance_uid: uid::sr_sop_instance_uid(
            &source.uid_key(),
            &node.ae_title,
            &sha,
            root_uid,
        )?,
        series_instance_uid: uid::sr_series_instance_uid(
            &source.series_key(),
            &node.ae_title,
            &sha,
            root_uid,
        )?,
        series_number: options.sr_series_number,
        series_description: sr_series_description(model),
        equipment_description: model
            .contribution("classified the referenced image for pneumoconiosis."),
        tree,
    };
    document.build(source, model, node, options, time)
}

/// What tells one SR document of the node from another; the rest of the
/// header comes from the source, the node and the model alike.
pub(crate) struct Document {
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub series_number: i32,
    pub series_description: String,
    /// What the algorithm did, for the Contributing Equipment.
    pub equipment_description: String,
    pub tree: ContentItem,
}

impl Document {
    /// The Part-10 object: the source's patient and study, an SR Document
    /// Series, SR Document General and the content tree.
    pub(crate) fn build(
        self,
        source: &SourceInstance,
        model: &ModelIdentity,
        node: &NodeIdentity,
        options: &ReportOptions,
        time: &ReportTime,
    ) -> Result<FileDicomObject<InMemDicomObject>, ReportError> {
        let sop_class_uid = options.sop_class.uid();
        let stamp = common::stamp(source, time);
        let mut obj = common::base_dataset(
            source,
            node,
            &stamp,
            sop_class_uid,
            &self.sop_instance_uid,
            "SR",
            &self.series_instance_uid,
            self.series_number,
            &self.series_description,
        );
        // SR Document Series
        common::put_series_date_time(&mut obj, source);
        obj.put(sequence(
            tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
            vec![],
        ));

        // SR Document General
        put_str(
            &mut obj,
            tags::INSTANCE_NUMBER,
            VR::IS,
            instance_number(source).to_string(),
        );
        put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
        put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
        put_str(&mut obj, tags::CONTENT_DATE, VR::DA, stamp.date.clone());
        put_str(&mut obj, tags::CONTENT_TIME, VR::TM, stamp.time.clone());
        obj.put(sequence(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]));
        obj.put(sequence(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![common::evidence_item(source)],
        ));
        if let Some(earlier) = &source.replaces {
            // The report it replaces, as a revised report names its earlier
            // version, so a viewer can tell the current one.
            obj.put(sequence(
                tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
                vec![common::hierarchical_reference(
                    &earlier.study_instance_uid,
                    &earlier.series_instance_uid,
                    &earlier.sop_class_uid,
                    &earlier.sop_instance_uid,
                )],
            ));
        }
        common::contributing_equipment(&mut obj, node, model, &stamp, &self.equipment_description);

        // SR Document Content
        self.tree.write_into(&mut obj);

        common::to_file(obj, source, sop_class_uid, &self.sop_instance_uid, node)
    }
}

/// Instance Number of the SR: the source's Instance Number when it is
/// positive (so SR n sits beside image n), else 1. Deterministic, like the
/// UIDs, so a re-run writes the same object.
pub fn instance_number(source: &SourceInstance) -> i32 {
    source.instance_number.filter(|n| *n > 0).unwrap_or(1)
}

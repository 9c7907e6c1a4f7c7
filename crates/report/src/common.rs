//! Attributes shared by the SR and the companion image: patient and study
//! copied from the source, equipment, SOP common, file meta.

use dicom_core::value::Value;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::codes;
use crate::content::{clean_string, sequence, sop_reference};
use crate::source::TYPE2_TAGS;
use crate::types::parse_tz_offset;
use crate::{ModelIdentity, NodeIdentity, ReportError, ReportTime, SourceInstance};

/// Implementation Version Name written in the File Meta Information.
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("PNEUMO_", env!("CARGO_PKG_VERSION"));

pub(crate) fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<String>) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::from(value.into()),
    ));
}

/// A configured text, cleaned and cut to `max` characters; nothing when it
/// is absent or blank (Type 3 attributes are left out rather than empty).
fn put_configured(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: Option<&str>, max: usize) {
    if let Some(v) = value.filter(|s| !s.trim().is_empty()) {
        put_str(obj, tag, vr, clean_string(v, max));
    }
}

pub(crate) fn put_empty(obj: &mut InMemDicomObject, tag: Tag, vr: VR) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
}

/// Date and time strings of the report and the offset attribute to write.
pub(crate) struct Stamp {
    pub date: String,
    pub time: String,
    /// Timezone Offset From UTC to write (copied from the source).
    pub tz: Option<String>,
}

pub(crate) fn stamp(source: &SourceInstance, t: &ReportTime) -> Stamp {
    let (offset, tz) = match source
        .timezone_offset_from_utc
        .as_deref()
        .and_then(|s| parse_tz_offset(s).map(|m| (m, s)))
    {
        Some((m, s)) => (m, Some(s.to_string())),
        None => (t.local_offset_minutes, None),
    };
    let (date, time) = t.format(offset);
    Stamp { date, time, tz }
}

/// Series Date and Time (Type 3) of a series the node makes: the study's
/// (none when the source has no Study Date). A series the node adds to over
/// time (a study's companion images, an image's reports) had each instance
/// dated when it was made, and dcentvfy found one series with several dates.
pub(crate) fn put_series_date_time(obj: &mut InMemDicomObject, source: &SourceInstance) {
    let date = source.copied_text(tags::STUDY_DATE);
    if date.is_empty() {
        return;
    }
    put_str(obj, tags::SERIES_DATE, VR::DA, date);
    let time = source.copied_text(tags::STUDY_TIME);
    if !time.is_empty() {
        put_str(obj, tags::SERIES_TIME, VR::TM, time);
    }
}

/// The data set with: SOP Common, Patient, General Study, Patient Study
/// (copied), General Series basics (Modality, Series Instance UID, Series
/// Number, Series Description, Series Date/Time), General Equipment.
#[allow(clippy::too_many_arguments)]
pub(crate) fn base_dataset(
    source: &SourceInstance,
    node: &NodeIdentity,
    stamp: &Stamp,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    modality: &str,
    series_instance_uid: &str,
    series_number: i32,
    series_description: &str,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();

    // SOP Common (Specific Character Set: `to_file`, once all text is in)
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, sop_class_uid);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid);
    put_str(
        &mut obj,
        tags::INSTANCE_CREATION_DATE,
        VR::DA,
        stamp.date.clone(),
    );
    put_str(
        &mut obj,
        tags::INSTANCE_CREATION_TIME,
        VR::TM,
        stamp.time.clone(),
    );
    put_str(
        &mut obj,
        tags::INSTANCE_CREATOR_UID,
        VR::UI,
        node.device_uid.trim(),
    );
    if let Some(tz) = &stamp.tz {
        put_str(&mut obj, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, tz.clone());
    }

    // Patient, General Study, Patient Study: copied
    for e in &source.copied_elements {
        obj.put(e.clone());
    }
    for (tag, vr) in TYPE2_TAGS {
        if obj.get(*tag).is_none() {
            put_empty(&mut obj, *tag, *vr);
        }
    }
    put_str(
        &mut obj,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        source.study_instance_uid.clone(),
    );

    // Series
    put_str(&mut obj, tags::MODALITY, VR::CS, modality);
    put_str(
        &mut obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        series_instance_uid,
    );
    put_str(
        &mut obj,
        tags::SERIES_NUMBER,
        VR::IS,
        series_number.to_string(),
    );
    put_str(
        &mut obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        clean_string(series_description, 64),
    );

    // General Equipment
    put_str(
        &mut obj,
        tags::MANUFACTURER,
        VR::LO,
        clean_string(&node.manufacturer, 64),
    );
    put_configured(
        &mut obj,
        tags::INSTITUTION_NAME,
        VR::LO,
        node.institution_name.as_deref(),
        64,
    );
    put_configured(
        &mut obj,
        tags::STATION_NAME,
        VR::SH,
        node.station_name.as_deref(),
        16,
    );
    put_configured(
        &mut obj,
        tags::INSTITUTIONAL_DEPARTMENT_NAME,
        VR::LO,
        node.institution_department.as_deref(),
        64,
    );
    put_str(
        &mut obj,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        clean_string(&node.model_name, 64),
    );
    put_str(
        &mut obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        clean_string(&node.software_version, 64),
    );
    obj
}

/// Contributing Equipment Sequence naming the algorithm.
pub(crate) fn contributing_equipment(
    obj: &mut InMemDicomObject,
    node: &NodeIdentity,
    model: &ModelIdentity,
    stamp: &Stamp,
    description: &str,
) {
    let mut item = InMemDicomObject::new_empty();
    item.put(sequence(
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![codes::PROCESSING_EQUIPMENT.to_item()],
    ));
    put_str(
        &mut item,
        tags::MANUFACTURER,
        VR::LO,
        clean_string(&node.manufacturer, 64),
    );
    put_configured(
        &mut item,
        tags::INSTITUTION_NAME,
        VR::LO,
        node.institution_name.as_deref(),
        64,
    );
    put_str(
        &mut item,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        clean_string(&model.name, 64),
    );
    let versions = vec![
        clean_string(&model.version, 64),
        clean_string(
            &format!("{} {}", node.model_name, node.software_version),
            64,
        ),
    ];
    item.put(DataElement::new(
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        PrimitiveValue::Strs(versions.into()),
    ));
    let dt = format!(
        "{}{}{}",
        stamp.date,
        stamp.time,
        stamp.tz.clone().unwrap_or_default()
    );
    put_str(&mut item, tags::CONTRIBUTION_DATE_TIME, VR::DT, dt);
    put_str(
        &mut item,
        tags::CONTRIBUTION_DESCRIPTION,
        VR::ST,
        format!(
            "{description} Model weights SHA-256: {}; contract SHA-256: {}.",
            model.sha256.trim().to_ascii_lowercase(),
            model.contract_sha256.trim().to_ascii_lowercase()
        ),
    );
    obj.put(sequence(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE, vec![item]));
}

/// One study/series/instance reference (Hierarchical SOP Instance Reference
/// Macro) to the source.
pub(crate) fn evidence_item(source: &SourceInstance) -> InMemDicomObject {
    hierarchical_reference(
        &source.study_instance_uid,
        &source.series_instance_uid,
        &source.sop_class_uid,
        &source.sop_instance_uid,
    )
}

/// One study's item of a Hierarchical SOP Instance Reference (PS3.3
/// C.17.2.1): the study, its one series and its one instance.
pub(crate) fn hierarchical_reference(
    study_instance_uid: &str,
    series_instance_uid: &str,
    sop_class_uid: &str,
    sop_instance_uid: &str,
) -> InMemDicomObject {
    let mut series = InMemDicomObject::new_empty();
    put_str(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        series_instance_uid,
    );
    series.put(sequence(
        tags::REFERENCED_SOP_SEQUENCE,
        vec![sop_reference(sop_class_uid, sop_instance_uid)],
    ));
    let mut study = InMemDicomObject::new_empty();
    study.put(sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![series]));
    put_str(
        &mut study,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        study_instance_uid,
    );
    study
}

/// The text values of `obj` that the Specific Character Set applies to, in
/// sequences too.
fn texts(obj: &InMemDicomObject) -> Vec<&str> {
    let mut out = Vec::new();
    for e in obj.iter() {
        match e.value() {
            Value::Sequence(seq) => seq.items().iter().for_each(|item| out.extend(texts(item))),
            Value::Primitive(PrimitiveValue::Strs(v))
                if matches!(
                    e.vr(),
                    VR::SH | VR::LO | VR::ST | VR::LT | VR::UT | VR::PN | VR::UC
                ) =>
            {
                out.extend(v.iter().map(String::as_str))
            }
            Value::Primitive(PrimitiveValue::Str(v))
                if matches!(
                    e.vr(),
                    VR::SH | VR::LO | VR::ST | VR::LT | VR::UT | VR::PN | VR::UC
                ) =>
            {
                out.push(v.as_str())
            }
            _ => {}
        }
    }
    out
}

/// Wrap a data set as a Part-10 object: File Meta Information Version 00 01,
/// Explicit VR Little Endian; the Specific Character Set is chosen for all
/// the text it holds (`SourceInstance::output_character_set`).
pub(crate) fn to_file(
    mut obj: InMemDicomObject,
    source: &SourceInstance,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    node: &NodeIdentity,
) -> Result<FileDicomObject<InMemDicomObject>, ReportError> {
    let character_set = source.output_character_set(texts(&obj).into_iter());
    if let Some(cs) = character_set {
        put_str(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, cs);
    }
    let meta = FileMetaTableBuilder::new()
        .information_version([0, 1])
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(crate::uid::implementation_class_uid())
        .implementation_version_name(clean_string(IMPLEMENTATION_VERSION_NAME, 16))
        .source_application_entity_title(node.ae_title.trim())
        .build()
        .map_err(|e| ReportError::Meta(e.to_string()))?;
    Ok(obj.with_exact_meta(meta))
}

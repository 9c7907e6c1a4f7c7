//! Tests of the whole builders: tree structure, attributes, UIDs, charset.

use dicom_core::value::Value;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use crate::content::format_ds;
use crate::*;

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CONTRACT_SHA: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn source_dataset(charset: Option<&str>, name: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    let mut s = |t: Tag, vr: VR, v: &str| {
        o.put(DataElement::new(t, vr, PrimitiveValue::from(v)));
    };
    if let Some(cs) = charset {
        s(tags::SPECIFIC_CHARACTER_SET, VR::CS, cs);
    }
    s(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.1.1");
    s(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5.6.7");
    s(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4.5");
    s(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4.5.6");
    s(tags::MODALITY, VR::CS, "DX");
    s(tags::PATIENT_NAME, VR::PN, name);
    s(tags::PATIENT_ID, VR::LO, "ID42");
    s(tags::STUDY_DATE, VR::DA, "20240102");
    s(tags::ACCESSION_NUMBER, VR::SH, "ACC1");
    s(tags::INSTANCE_NUMBER, VR::IS, "7");
    s(tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0100");
    o.put(DataElement::new(
        tags::PATIENT_ORIENTATION,
        VR::CS,
        PrimitiveValue::Strs(["P".to_string(), "F".to_string()].as_slice().into()),
    ));
    o.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(2048u16),
    ));
    o.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(1536u16),
    ));
    o
}

fn source() -> SourceInstance {
    SourceInstance::from_dataset(&source_dataset(Some("ISO_IR 192"), "Müller^Jürgen")).unwrap()
}

fn result(p: f64) -> AnalysisResult {
    AnalysisResult::from_probabilities(vec![p, 1.0 - p], 0.5, "lung", "CPU").unwrap()
}

/// The SR of `src` with probability `p`, trained weights and the default
/// node, options and time.
fn trained_sr(src: &SourceInstance, p: f64) -> dicom_object::FileDicomObject<InMemDicomObject> {
    build_sr(
        src,
        &result(p),
        &model(WeightsKind::Trained),
        &node(),
        &ReportOptions::default(),
        &time(),
    )
    .unwrap()
}

fn model(kind: WeightsKind) -> ModelIdentity {
    ModelIdentity {
        name: "PneumoLLM".into(),
        version: "1.0.0".into(),
        weights_kind: kind,
        sha256: SHA.into(),
        contract_sha256: CONTRACT_SHA.into(),
        lung_segmentation_sha256: None,
    }
}

fn node() -> NodeIdentity {
    NodeIdentity::new("PNEUMO", "2.25.1234")
}

fn time() -> ReportTime {
    ReportTime {
        unix_seconds: 1_700_000_000,
        micros: 0,
        local_offset_minutes: 0,
    }
}

/// The one measurement group of a content tree.
fn measurement_group(tree: &ContentItem) -> &ContentItem {
    &tree
        .find(&codes::IMAGING_MEASUREMENTS)
        .next()
        .unwrap()
        .children[0]
}

fn str_of(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

fn items(obj: &InMemDicomObject, tag: Tag) -> Vec<InMemDicomObject> {
    match obj.get(tag).map(|e| e.value()) {
        Some(Value::Sequence(s)) => s.items().to_vec(),
        _ => vec![],
    }
}

fn concept(item: &InMemDicomObject) -> (String, String) {
    let c = &items(item, tags::CONCEPT_NAME_CODE_SEQUENCE)[0];
    (
        str_of(c, tags::CODE_VALUE),
        str_of(c, tags::CODING_SCHEME_DESIGNATOR),
    )
}

#[test]
fn tree_structure_follows_tid_1500() {
    let tree = build_content_tree(
        &source(),
        &result(0.873),
        &model(WeightsKind::Trained),
        &node(),
    )
    .unwrap();
    assert!(tree.relationship.is_none());
    assert!(tree.name.same_concept(&codes::IMAGING_MEASUREMENT_REPORT));
    assert_eq!(
        tree.value,
        ItemValue::Container {
            template: Some("1500")
        }
    );
    let names: Vec<&str> = tree
        .children
        .iter()
        .map(|c| c.name.value.as_ref())
        .collect();
    assert_eq!(
        names,
        [
            "121049", "121005", "121012", "121013", "121014", "121015", "121058", "111028",
            "126010"
        ]
    );
    // procedure reported: the default (no Procedure Code Sequence in the source)
    let proc_item = tree.find(&codes::PROCEDURE_REPORTED).next().unwrap();
    assert_eq!(
        proc_item.value,
        ItemValue::Code(codes::XR_UNSPECIFIED_BODY_REGION)
    );

    // image library → group → source image with descriptors
    let lib = tree.find(&codes::IMAGE_LIBRARY).next().unwrap();
    let group = lib.find(&codes::IMAGE_LIBRARY_GROUP).next().unwrap();
    let img = group.find(&codes::SOURCE).next().unwrap();
    assert_eq!(
        img.value,
        ItemValue::Image {
            class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
            instance_uid: "1.2.3.4.5.6.7".into()
        }
    );
    assert!(img
        .children
        .iter()
        .all(|c| c.relationship == Some(Relationship::HasAcqContext)));
    let rows = img.find(&codes::PIXEL_DATA_ROWS).next().unwrap();
    assert!(matches!(rows.value, ItemValue::Num { value, .. } if value == 2048.0));

    // measurement group
    let meas = tree.find(&codes::IMAGING_MEASUREMENTS).next().unwrap();
    assert_eq!(meas.children.len(), 1);
    let mg = &meas.children[0];
    assert_eq!(
        mg.value,
        ItemValue::Container {
            template: Some("1501")
        }
    );
    let finding = mg.find(&codes::FINDING).next().unwrap();
    assert_eq!(finding.value, ItemValue::Code(codes::PNEUMOCONIOSIS));
    let verdict = mg.find(&codes::PNEUMOCONIOSIS).next().unwrap();
    assert_eq!(verdict.value, ItemValue::Code(codes::PRESENT));
    assert_eq!(verdict.relationship, Some(Relationship::Contains));
    let cert = mg.find(&codes::CERTAINTY_OF_FINDING).next().unwrap();
    assert_eq!(
        cert.value,
        ItemValue::Num {
            value: 87.3,
            unit: codes::PERCENT
        }
    );
    assert_eq!(mg.find(&codes::TRACKING_IDENTIFIER).count(), 1);
    assert_eq!(mg.find(&codes::TRACKING_UNIQUE_IDENTIFIER).count(), 1);
    assert_eq!(mg.find(&codes::SOURCE_OF_MEASUREMENT).count(), 1);
    let site = mg.find(&codes::FINDING_SITE).next().unwrap();
    assert_eq!(site.value, ItemValue::Code(codes::LUNG));
    assert_eq!(mg.find(&codes::ALGORITHM_NAME).count(), 1);
    assert_eq!(mg.find(&codes::ALGORITHM_VERSION).count(), 1);
    // trained: one comment, no demo mark
    let comments: Vec<_> = mg.find(&codes::COMMENT).collect();
    assert_eq!(comments.len(), 1);
    assert!(!format!("{:?}", comments[0].value).contains(DEMO_MARK));
    // It names the image, as several of a study are reported alike.
    let ItemValue::Text(sentence) = &comments[0].value else {
        panic!("the comment is not text")
    };
    assert!(
        sentence.contains("(threshold 50%). Image analysed: image 7. Computed by"),
        "{sentence}"
    );
}

#[test]
fn absent_result_and_demo_marking() {
    let tree = build_content_tree(
        &source(),
        &result(0.2),
        &model(WeightsKind::RandomDemo),
        &node(),
    )
    .unwrap();
    let mg = measurement_group(&tree);
    let verdict = mg.find(&codes::PNEUMOCONIOSIS).next().unwrap();
    assert_eq!(verdict.value, ItemValue::Code(codes::ABSENT));
    let demo = mg
        .find(&codes::COMMENT)
        .filter(|c| matches!(&c.value, ItemValue::Text(t) if t.starts_with(DEMO_MARK)))
        .count();
    assert_eq!(demo, 1);

    let sr = build_sr(
        &source(),
        &result(0.2),
        &model(WeightsKind::RandomDemo),
        &node(),
        &ReportOptions::default(),
        &time(),
    )
    .unwrap();
    assert_eq!(
        str_of(&sr, tags::SERIES_DESCRIPTION),
        format!("{DEMO_MARK} - PneumoLLM 1.0.0")
    );
    let sr = trained_sr(&source(), 0.2);
    // Which model and version: several can report on one study.
    assert_eq!(
        str_of(&sr, tags::SERIES_DESCRIPTION),
        "AI pneumoconiosis (PneumoLLM 1.0.0)"
    );
}

#[test]
fn sr_attributes() {
    let src = source();
    let sr = trained_sr(&src, 0.873);
    let meta = sr.meta();
    assert_eq!(meta.information_version, [0, 1]);
    assert_eq!(meta.transfer_syntax(), "1.2.840.10008.1.2.1");
    assert_eq!(
        meta.media_storage_sop_class_uid(),
        "1.2.840.10008.5.1.4.1.1.88.34"
    );
    assert_eq!(
        str_of(&sr, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.88.34"
    );
    let sop = str_of(&sr, tags::SOP_INSTANCE_UID);
    assert_eq!(meta.media_storage_sop_instance_uid(), sop);
    assert_eq!(
        sop,
        sr_sop_instance_uid("1.2.3.4.5.6.7", "PNEUMO", CONTRACT_SHA, None).unwrap()
    );
    assert_eq!(str_of(&sr, tags::STUDY_INSTANCE_UID), "1.2.3.4.5");
    assert_eq!(
        str_of(&sr, tags::SERIES_INSTANCE_UID),
        sr_series_instance_uid("1.2.3.4.5.6.7", "PNEUMO", CONTRACT_SHA, None).unwrap()
    );
    assert_ne!(str_of(&sr, tags::SERIES_INSTANCE_UID), "1.2.3.4.5.6");
    assert_eq!(str_of(&sr, tags::MODALITY), "SR");
    assert_eq!(str_of(&sr, tags::SERIES_NUMBER), "9901");
    assert_eq!(str_of(&sr, tags::INSTANCE_NUMBER), "7");
    assert_eq!(str_of(&sr, tags::COMPLETION_FLAG), "COMPLETE");
    assert_eq!(str_of(&sr, tags::VERIFICATION_FLAG), "UNVERIFIED");
    assert_eq!(str_of(&sr, tags::PATIENT_NAME), "Müller^Jürgen");
    assert_eq!(str_of(&sr, tags::SPECIFIC_CHARACTER_SET), "ISO_IR 192");
    assert_eq!(str_of(&sr, tags::ACCESSION_NUMBER), "ACC1");
    // Type 2 present even though absent from the source
    assert!(sr.get(tags::REFERRING_PHYSICIAN_NAME).is_some());
    assert!(sr.get(tags::PATIENT_SEX).is_some());
    assert!(sr.get(tags::STUDY_ID).is_some());
    assert!(sr
        .get(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE)
        .is_some());
    assert!(sr.get(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE).is_some());
    // times in the source's offset (+0100): 2023-11-14T22:13:20Z → 23:13:20
    assert_eq!(str_of(&sr, tags::CONTENT_DATE), "20231114");
    assert_eq!(str_of(&sr, tags::CONTENT_TIME), "231320.000000");
    assert_eq!(str_of(&sr, tags::TIMEZONE_OFFSET_FROM_UTC), "+0100");

    // evidence: study → series → instance
    let ev = items(&sr, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE);
    assert_eq!(ev.len(), 1);
    assert_eq!(str_of(&ev[0], tags::STUDY_INSTANCE_UID), "1.2.3.4.5");
    let series = items(&ev[0], tags::REFERENCED_SERIES_SEQUENCE);
    assert_eq!(str_of(&series[0], tags::SERIES_INSTANCE_UID), "1.2.3.4.5.6");
    let sops = items(&series[0], tags::REFERENCED_SOP_SEQUENCE);
    assert_eq!(
        str_of(&sops[0], tags::REFERENCED_SOP_INSTANCE_UID),
        "1.2.3.4.5.6.7"
    );
    assert_eq!(
        str_of(&sops[0], tags::REFERENCED_SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.1.1"
    );

    // contributing equipment names the algorithm
    let ce = items(&sr, tags::CONTRIBUTING_EQUIPMENT_SEQUENCE);
    assert_eq!(ce.len(), 1);
    assert_eq!(str_of(&ce[0], tags::MANUFACTURER_MODEL_NAME), "PneumoLLM");
    assert!(str_of(&ce[0], tags::SOFTWARE_VERSIONS).starts_with("1.0.0"));
    let description = str_of(&ce[0], tags::CONTRIBUTION_DESCRIPTION);
    assert!(description.contains(SHA) && description.contains(CONTRACT_SHA));

    // root content
    assert_eq!(str_of(&sr, tags::VALUE_TYPE), "CONTAINER");
    assert_eq!(concept(&sr), ("126000".into(), "DCM".into()));
    let tpl = items(&sr, tags::CONTENT_TEMPLATE_SEQUENCE);
    assert_eq!(str_of(&tpl[0], tags::TEMPLATE_IDENTIFIER), "1500");
    assert_eq!(str_of(&tpl[0], tags::MAPPING_RESOURCE), "DCMR");
    let content = items(&sr, tags::CONTENT_SEQUENCE);
    let meas = content.iter().find(|i| concept(i).0 == "126010").unwrap();
    let mg = &items(meas, tags::CONTENT_SEQUENCE)[0];
    let num = items(mg, tags::CONTENT_SEQUENCE)
        .into_iter()
        .find(|i| concept(i).0 == "111012")
        .unwrap();
    let mv = &items(&num, tags::MEASURED_VALUE_SEQUENCE)[0];
    assert_eq!(str_of(mv, tags::NUMERIC_VALUE), "87.3");
}

#[test]
fn comprehensive_class_by_configuration() {
    let opts = ReportOptions {
        sop_class: SrSopClass::Comprehensive,
        ..ReportOptions::default()
    };
    let sr = build_sr(
        &source(),
        &result(0.6),
        &model(WeightsKind::Trained),
        &node(),
        &opts,
        &time(),
    )
    .unwrap();
    assert_eq!(
        str_of(&sr, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.88.33"
    );
    assert_eq!(
        sr.meta().media_storage_sop_class_uid(),
        "1.2.840.10008.5.1.4.1.1.88.33"
    );
}

#[test]
fn same_inputs_same_bytes() {
    let a = trained_sr(&source(), 0.6);
    let b = trained_sr(&source(), 0.6);
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    a.write_all(&mut ba).unwrap();
    b.write_all(&mut bb).unwrap();
    assert_eq!(ba, bb);
    // a re-run later still names the same instance
    let later = ReportTime {
        unix_seconds: 1_800_000_000,
        ..time()
    };
    let c = build_sr(
        &source(),
        &result(0.6),
        &model(WeightsKind::Trained),
        &node(),
        &ReportOptions::default(),
        &later,
    )
    .unwrap();
    assert_eq!(
        str_of(&a, tags::SOP_INSTANCE_UID),
        str_of(&c, tags::SOP_INSTANCE_UID)
    );
    assert_eq!(
        str_of(&a, tags::SERIES_INSTANCE_UID),
        str_of(&c, tags::SERIES_INSTANCE_UID)
    );
}

#[test]
fn another_contract_with_the_same_weights_is_another_sr_in_another_series() {
    // The same weights recalibrated (another threshold, another version):
    // its result may differ, so neither its SR nor its series may share
    // the first model's UIDs.
    let recalibrated = ModelIdentity {
        version: "1.0.1-recalibrated".into(),
        contract_sha256: CONTRACT_SHA.replace('f', "e"),
        ..model(WeightsKind::Trained)
    };
    let a = trained_sr(&source(), 0.6);
    let b = build_sr(
        &source(),
        &result(0.6),
        &recalibrated,
        &node(),
        &ReportOptions::default(),
        &time(),
    )
    .unwrap();
    for tag in [tags::SOP_INSTANCE_UID, tags::SERIES_INSTANCE_UID] {
        assert_ne!(str_of(&a, tag), str_of(&b, tag));
    }
}

#[test]
fn another_lung_segmentation_model_is_another_sr_which_names_it() {
    // The classifier's input cropped to another model's lung box: another
    // result, which kept the first report's UID (the report the hospital
    // held said Absent, the API Present after a re-analysis).
    let with_seg = |seg: &str| ModelIdentity {
        lung_segmentation_sha256: Some(seg.repeat(64)),
        ..model(WeightsKind::Trained)
    };
    let build = |m: &ModelIdentity| {
        build_sr(
            &source(),
            &result(0.6),
            m,
            &node(),
            &ReportOptions::default(),
            &time(),
        )
        .unwrap()
    };
    let (none, a, b) = (
        trained_sr(&source(), 0.6),
        build(&with_seg("a")),
        build(&with_seg("b")),
    );
    for tag in [tags::SOP_INSTANCE_UID, tags::SERIES_INSTANCE_UID] {
        assert_ne!(str_of(&a, tag), str_of(&b, tag));
        assert_ne!(str_of(&none, tag), str_of(&a, tag));
    }
    let tree = |m: &ModelIdentity| {
        format!(
            "{:?}",
            build_content_tree(&source(), &result(0.6), m, &node()).unwrap()
        )
    };
    assert!(tree(&with_seg("a")).contains(&format!("lung_segmentation_sha256={}", "a".repeat(64))));
    assert!(!tree(&model(WeightsKind::Trained)).contains("lung_segmentation_sha256"));
    // not a hash: refused as the others are
    let bad = ModelIdentity {
        lung_segmentation_sha256: Some("zz".into()),
        ..model(WeightsKind::Trained)
    };
    assert!(bad.validate().is_err());
}

#[test]
fn custom_uid_root() {
    let mut n = node();
    n.uid_root = Some("1.2.826.0.1.3680043.10.543".into());
    let sr = build_sr(
        &source(),
        &result(0.6),
        &model(WeightsKind::Trained),
        &n,
        &ReportOptions::default(),
        &time(),
    )
    .unwrap();
    assert!(str_of(&sr, tags::SOP_INSTANCE_UID).starts_with("1.2.826.0.1.3680043.10.543."));
    assert!(str_of(&sr, tags::SERIES_INSTANCE_UID).starts_with("1.2.826.0.1.3680043.10.543."));
    n.uid_root = Some("1.2.x".into());
    assert!(matches!(
        build_sr(
            &source(),
            &result(0.6),
            &model(WeightsKind::Trained),
            &n,
            &ReportOptions::default(),
            &time()
        ),
        Err(ReportError::InvalidUidRoot { .. })
    ));
}

#[test]
fn utf8_names_survive_the_file_round_trip() {
    for (cs, name) in [
        (Some("ISO_IR 192"), "Müller^Jürgen=山田^太郎"),
        (Some("ISO_IR 100"), "Müller^Jürgen"),
    ] {
        let src = SourceInstance::from_dataset(&source_dataset(cs, name)).unwrap();
        let (charset, back, _, _) = written(&src, &node());
        assert_eq!(back, name, "{cs:?}");
        assert_eq!(charset, cs.unwrap_or(""));
    }
}

/// The SR written to bytes and read back: (Specific Character Set, Patient's
/// Name, Institution Name, the raw bytes).
fn written(src: &SourceInstance, n: &NodeIdentity) -> (String, String, String, Vec<u8>) {
    let sr = build_sr(
        src,
        &result(0.6),
        &model(WeightsKind::Trained),
        n,
        &ReportOptions::default(),
        &time(),
    )
    .unwrap();
    let mut bytes = Vec::new();
    sr.write_all(&mut bytes).unwrap();
    let back = OpenFileOptions::new().from_reader(&bytes[128..]).unwrap();
    let charset = str_of(&back, tags::SPECIFIC_CHARACTER_SET);
    let name = str_of(&back, tags::PATIENT_NAME);
    let institution = str_of(&back, tags::INSTITUTION_NAME);
    (charset, name, institution, bytes)
}

#[test]
fn eight_bit_names_without_a_declared_set_are_declared_iso_8859_1() {
    // What an older modality sends: "Müller" in ISO 8859-1 bytes, no
    // Specific Character Set. dicom-rs reads it as ISO 8859-1.
    let mut ds = source_dataset(None, "A^B");
    ds.put(DataElement::new(
        tags::PATIENT_NAME,
        VR::PN,
        PrimitiveValue::from("M\u{fc}ller^J\u{fc}rgen"),
    ));
    let src = SourceInstance::from_dataset(&ds).unwrap();
    let (charset, name, _, bytes) = written(&src, &node());
    assert_eq!(charset, "ISO_IR 100");
    assert_eq!(name, "M\u{fc}ller^J\u{fc}rgen");
    assert!(
        bytes.windows(7).any(|w| w == b"M\xfcller^"),
        "the source's bytes, unchanged"
    );
}

#[test]
fn a_configured_name_the_source_set_cannot_write_makes_the_report_utf8() {
    let mut n = node();
    n.institution_name = Some("Szpital \u{141}\u{f3}d\u{17a}".into()); // not in ISO 8859-1
    for (cs, name) in [
        (Some("ISO_IR 100"), "M\u{fc}ller^J\u{fc}rgen"),
        (None, "A^B"),
    ] {
        let src = SourceInstance::from_dataset(&source_dataset(cs, name)).unwrap();
        let (charset, back, institution, _) = written(&src, &n);
        assert_eq!(charset, "ISO_IR 192", "{cs:?}");
        assert_eq!(back, name);
        assert_eq!(institution, "Szpital \u{141}\u{f3}d\u{17a}");
    }
    // One the source's set can write keeps it.
    n.institution_name = Some("H\u{f4}pital".into());
    let src = SourceInstance::from_dataset(&source_dataset(Some("ISO_IR 100"), "A^B")).unwrap();
    assert_eq!(written(&src, &n).0, "ISO_IR 100");
}

#[test]
fn acr_nema_dates_and_empty_sequences_are_written_in_a_form_validators_accept() {
    let mut ds = source_dataset(None, "A^B");
    let mut put =
        |t: Tag, vr: VR, v: &str| ds.put(DataElement::new(t, vr, PrimitiveValue::from(v)));
    put(tags::STUDY_DATE, VR::DA, "2024.02.29");
    put(tags::STUDY_TIME, VR::TM, "10:15:30.25");
    put(tags::PATIENT_BIRTH_DATE, VR::DA, "1960-01-01"); // no standard form: as it is
    ds.put(DataElement::new(
        tags::PROCEDURE_CODE_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::<InMemDicomObject>::from(Vec::new()),
    ));
    let src = SourceInstance::from_dataset(&ds).unwrap();
    let sr = trained_sr(&src, 0.6);
    assert_eq!(str_of(&sr, tags::STUDY_DATE), "20240229");
    assert_eq!(str_of(&sr, tags::STUDY_TIME), "101530.25");
    assert_eq!(str_of(&sr, tags::PATIENT_BIRTH_DATE), "1960-01-01");
    assert!(sr.get(tags::PROCEDURE_CODE_SEQUENCE).is_none());
}

#[test]
fn unsupported_charsets_become_utf8() {
    let mut ds = source_dataset(None, "Yamada^Taro");
    ds.put(DataElement::new(
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        PrimitiveValue::Strs(
            ["".to_string(), "ISO 2022 IR 87".to_string()]
                .as_slice()
                .into(),
        ),
    ));
    let src = SourceInstance::from_dataset(&ds).unwrap();
    let ascii = ["A^B"];
    assert_eq!(
        src.output_character_set(ascii.into_iter()).as_deref(),
        Some("ISO_IR 192")
    );
    let plain = SourceInstance::from_dataset(&source_dataset(None, "A^B")).unwrap();
    assert_eq!(plain.output_character_set(ascii.into_iter()), None);
}

#[test]
fn source_errors_are_typed() {
    let mut ds = source_dataset(None, "A^B");
    ds.remove_element(tags::SOP_INSTANCE_UID);
    assert!(matches!(
        SourceInstance::from_dataset(&ds),
        Err(ReportError::MissingAttribute("SOPInstanceUID"))
    ));
    let mut ds = source_dataset(None, "A^B");
    ds.put(DataElement::new(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("1.2.abc"),
    ));
    assert!(matches!(
        SourceInstance::from_dataset(&ds),
        Err(ReportError::InvalidAttribute {
            name: "StudyInstanceUID",
            ..
        })
    ));
    let mut bad_model = model(WeightsKind::Trained);
    bad_model.sha256 = "xyz".into();
    assert!(matches!(
        build_sr(
            &source(),
            &result(0.6),
            &bad_model,
            &node(),
            &ReportOptions::default(),
            &time()
        ),
        Err(ReportError::InvalidModel(_))
    ));
}

#[test]
fn procedure_code_is_copied() {
    let mut ds = source_dataset(None, "A^B");
    let code = Code::new("36643-5", "LN", "XR Chest 2 Views").to_item();
    ds.put(DataElement::new(
        tags::PROCEDURE_CODE_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![code]),
    ));
    let src = SourceInstance::from_dataset(&ds).unwrap();
    let tree =
        build_content_tree(&src, &result(0.6), &model(WeightsKind::Trained), &node()).unwrap();
    let p = tree.find(&codes::PROCEDURE_REPORTED).next().unwrap();
    assert!(matches!(&p.value, ItemValue::Code(c) if c.value == "36643-5" && c.scheme == "LN"));
}

#[test]
fn companion_sc() {
    let px: Vec<f32> = (0..300 * 200).map(|i| (i % 200) as f32 / 200.0).collect();
    let img = GreyImage {
        pixels: &px,
        rows: 300,
        columns: 200,
    };
    let sc = build_companion_sc(
        &source(),
        img,
        &result(0.873),
        &model(WeightsKind::RandomDemo),
        &node(),
        &ReportOptions::default(),
        &time(),
    )
    .unwrap();
    assert_eq!(
        str_of(&sc, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.7"
    );
    assert_eq!(str_of(&sc, tags::STUDY_INSTANCE_UID), "1.2.3.4.5");
    assert_eq!(str_of(&sc, tags::BURNED_IN_ANNOTATION), "YES");
    assert_eq!(
        str_of(&sc, tags::SERIES_DESCRIPTION),
        format!("{DEMO_MARK} - image - PneumoLLM 1.0.0")
    );
    let rows = sc.get(tags::ROWS).unwrap().to_int::<u16>().unwrap();
    let cols = sc.get(tags::COLUMNS).unwrap().to_int::<u16>().unwrap();
    assert_eq!(cols, 200);
    assert!(rows > 300);
    let data = sc.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(data.len(), usize::from(rows) * usize::from(cols));
    assert_ne!(
        str_of(&sc, tags::SERIES_INSTANCE_UID),
        str_of(
            &build_sr(
                &source(),
                &result(0.873),
                &model(WeightsKind::RandomDemo),
                &node(),
                &ReportOptions::default(),
                &time()
            )
            .unwrap(),
            tags::SERIES_INSTANCE_UID
        )
    );
}

#[test]
fn certainty_rounding() {
    assert_eq!(format_ds(sr::certainty_percent(&result(0.873))), "87.3");
    assert_eq!(format_ds(sr::certainty_percent(&result(1.0))), "100");
    assert_eq!(
        format_ds(sr::certainty_percent(&result(0.123_456_7))),
        "12.3457"
    );
}

fn with_threshold(p: f64, threshold: f64) -> AnalysisResult {
    AnalysisResult::from_probabilities(vec![p, 1.0 - p], threshold, "lung", "CPU").unwrap()
}

#[test]
fn written_numbers_never_contradict_the_decision() {
    // Just under the threshold: "absent", and the numbers say so.
    let r = with_threshold(0.499_999_9, 0.5);
    assert_eq!(r.decision, Decision::Absent);
    assert_eq!(format_ds(sr::certainty_percent(&r)), "49.99999");
    assert_eq!(
        sr::result_sentence(&r),
        "Pneumoconiosis absent: probability 49.99999% (threshold 50%)."
    );
    let r = with_threshold(0.499_96, 0.5);
    assert_eq!(
        sr::result_sentence(&r),
        "Pneumoconiosis absent: probability 49.996% (threshold 50%)."
    );
    // At the threshold: "present" with equal numbers.
    let r = with_threshold(0.5, 0.5);
    assert_eq!(
        sr::result_sentence(&r),
        "Pneumoconiosis present: probability 50% (threshold 50%)."
    );
    // A threshold one decimal cannot write.
    let r = with_threshold(0.333_2, 0.333_3);
    assert_eq!(
        sr::result_sentence(&r),
        "Pneumoconiosis absent: probability 33.32% (threshold 33.33%)."
    );
    // A threshold of more decimals than a percentage shows: the parameter
    // says it as the decision used it.
    let r = with_threshold(0.300_000_002_75, 0.300_000_009_9);
    assert_eq!(r.decision, Decision::Absent);
    let tree = format!(
        "{:?}",
        build_content_tree(&source(), &r, &model(WeightsKind::Trained), &node()).unwrap()
    );
    assert!(tree.contains("threshold=0.3000000099"), "{tree}");
    // "Present" just over a threshold of six decimals: the certainty does
    // not go under the threshold the parameter writes whole (it was
    // 91.7735 under threshold=0.91773549).
    let r = with_threshold(0.917_735_498_9, 0.917_735_49);
    assert_eq!(r.decision, Decision::Present);
    assert_eq!(format_ds(sr::certainty_percent(&r)), "91.77355");
    // The nearest number under a threshold, everywhere in [0, 1].
    for t in [0.01f64, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999_99] {
        let below = f64::from_bits(t.to_bits() - 1);
        for p in [below, t] {
            let r = with_threshold(p, t);
            let present = r.decision == Decision::Present;
            let certainty = sr::certainty_percent(&r);
            let threshold: f64 = format_ds(t * 100.0).parse().unwrap();
            assert_eq!(certainty >= threshold, present, "p={p} t={t}: {certainty}");
            let sentence = sr::result_sentence(&r);
            let shown: f64 = sentence
                .split("probability ")
                .nth(1)
                .and_then(|s| s.split('%').next())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(shown >= threshold, present, "{sentence}");
        }
    }
}

#[test]
fn written_probabilities_read_0_or_100_only_when_they_are() {
    for (p, certainty, words) in [
        (0.999_99, "99.999", "99.999"),
        (0.999_999_9, "99.99999", "99.99999"),
        (0.999, "99.9", "99.9"),
        (1.0, "100", "100"),
        (0.000_01, "0.001", "0.001"),
        (0.000_000_1, "0.00001", "0.00001"),
        // closer to 0 or 1 than the last decimal: one unit inside, never
        // one unit under the threshold (a plain normal chest read 49.999999)
        (1e-9, "0.000001", "0.000001"),
        (1e-76, "0.000001", "0.000001"),
        (1.0 - 1e-11, "99.999999", "99.999999"),
        (0.0, "0", "0"),
    ] {
        let r = result(p);
        assert_eq!(format_ds(sr::certainty_percent(&r)), certainty, "p={p}");
        assert!(
            sr::result_sentence(&r).contains(&format!("probability {words}%")),
            "p={p}: {}",
            sr::result_sentence(&r)
        );
    }
    // Logits 100 apart: p is 1.0 in f64, the other column 3.7e-44 (it was
    // written 100 %, while the mirror case read 0.000001 %).
    for (probabilities, certainty) in [
        (vec![1.0, 3.720075976020836e-44], "99.999999"),
        (vec![3.720075976020836e-44, 1.0], "0.000001"),
        (vec![1.0, 0.0], "100"),
    ] {
        let r = AnalysisResult::from_probabilities(probabilities, 0.5, "lung", "CPU").unwrap();
        assert_eq!(format_ds(sr::certainty_percent(&r)), certainty);
        assert!(
            sr::result_sentence(&r).contains(&format!("probability {certainty}%")),
            "{}",
            sr::result_sentence(&r)
        );
    }
}

#[test]
fn configured_equipment_names_are_written_and_blank_ones_left_out() {
    let mut named = node();
    named.institution_name = Some("Mining Hospital".into());
    named.station_name = Some("PNEUMO-1".into());
    named.institution_department = Some("   ".into()); // blank: left out
    let sr = build_sr(
        &source(),
        &result(0.4),
        &model(WeightsKind::Trained),
        &named,
        &ReportOptions::default(),
        &time(),
    )
    .unwrap();
    assert_eq!(str_of(&sr, tags::INSTITUTION_NAME), "Mining Hospital");
    assert_eq!(str_of(&sr, tags::STATION_NAME), "PNEUMO-1");
    assert!(sr.element(tags::INSTITUTIONAL_DEPARTMENT_NAME).is_err());
    let equipment = items(&sr, tags::CONTRIBUTING_EQUIPMENT_SEQUENCE);
    assert_eq!(
        str_of(&equipment[0], tags::INSTITUTION_NAME),
        "Mining Hospital"
    );
    let plain = trained_sr(&source(), 0.4);
    assert!(plain.element(tags::INSTITUTION_NAME).is_err());
    assert!(plain.element(tags::STATION_NAME).is_err());
}

#[test]
fn an_analysed_region_outside_the_image_is_refused() {
    let src = source();
    let mut r = result(0.7);
    r.analysed_region = Some(crate::PixelRegion {
        x0: 0,
        y0: 0,
        x1: u32::from(src.columns) + 1,
        y1: u32::from(src.rows),
    });
    let e = build_sr(
        &src,
        &r,
        &model(WeightsKind::Trained),
        &node(),
        &ReportOptions::default(),
        &time(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("analysed region"), "{e}");
}

#[test]
fn a_copied_value_loses_its_padding_when_its_character_set_changes() {
    // "Schäfer^Anna^^Dr." is 17 bytes in ISO 8859-1, so the source pads it
    // with a space; in UTF-8 the pad became part of the value, padded again.
    let mut n = node();
    n.institution_name = Some("Szpital \u{141}\u{f3}d\u{17a}".into()); // forces UTF-8
    let src = SourceInstance::from_dataset(&source_dataset(
        Some("ISO_IR 100"),
        "Sch\u{e4}fer^Anna^^Dr. ",
    ))
    .unwrap();
    let (charset, name, _, bytes) = written(&src, &n);
    assert_eq!(charset, "ISO_IR 192");
    assert_eq!(name, "Sch\u{e4}fer^Anna^^Dr.");
    assert!(bytes
        .windows(18)
        .any(|w| w == "Sch\u{e4}fer^Anna^^Dr.".as_bytes()));
    assert!(!bytes.windows(4).any(|w| w == b"Dr. "), "no pad kept");
}

#[test]
fn a_later_version_of_a_source_gets_its_own_report_uids() {
    let first = trained_sr(&source(), 0.2);
    let mut corrected = source();
    corrected.version = Some("ab12".into());
    let second = trained_sr(&corrected, 0.2);
    assert_ne!(
        str_of(&first, tags::SOP_INSTANCE_UID),
        str_of(&second, tags::SOP_INSTANCE_UID)
    );
    assert_eq!(
        str_of(&second, tags::SOP_INSTANCE_UID),
        sr_sop_instance_uid("1.2.3.4.5.6.7#ab12", "PNEUMO", CONTRACT_SHA, None).unwrap()
    );
    // one series per node, image and model, whatever the version
    assert_eq!(
        str_of(&first, tags::SERIES_INSTANCE_UID),
        str_of(&second, tags::SERIES_INSTANCE_UID)
    );
    assert!(second.get(tags::PREDECESSOR_DOCUMENTS_SEQUENCE).is_none());
}

#[test]
fn a_replacing_report_names_the_one_it_replaces() {
    let first = trained_sr(&source(), 0.2);
    let mut corrected = source();
    corrected.version = Some("ab12".into());
    corrected.replaces = Some(crate::EarlierReport {
        study_instance_uid: str_of(&first, tags::STUDY_INSTANCE_UID),
        series_instance_uid: str_of(&first, tags::SERIES_INSTANCE_UID),
        sop_class_uid: str_of(&first, tags::SOP_CLASS_UID),
        sop_instance_uid: str_of(&first, tags::SOP_INSTANCE_UID),
        because: crate::Replacement::OtherResult,
    });
    let second = trained_sr(&corrected, 0.2);
    let items = second
        .get(tags::PREDECESSOR_DOCUMENTS_SEQUENCE)
        .and_then(|e| e.items())
        .expect("a Predecessor Documents Sequence");
    let study = &items[0];
    assert_eq!(
        str_of(study, tags::STUDY_INSTANCE_UID),
        str_of(&first, tags::STUDY_INSTANCE_UID)
    );
    let series = &study
        .get(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    let sop = &series
        .get(tags::REFERENCED_SOP_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(
        str_of(sop, tags::REFERENCED_SOP_INSTANCE_UID),
        str_of(&first, tags::SOP_INSTANCE_UID)
    );
    let tree = build_content_tree(
        &corrected,
        &result(0.2),
        &model(WeightsKind::Trained),
        &node(),
    )
    .unwrap();
    let mg = measurement_group(&tree);
    let replaces = "This report replaces the report made by the same model for an earlier copy";
    assert!(
        !format!("{mg:?}").contains(&str_of(&first, tags::SOP_INSTANCE_UID)),
        "the comment names no UID (the Predecessor Documents do)"
    );
    let said = mg.find(&codes::COMMENT).any(|c| {
        matches!(&c.value, ItemValue::Text(t) if t.starts_with(replaces)
            && t.ends_with("the earlier report is the one that applies to them)."))
    });
    assert!(said, "{mg:?}");
}

#[test]
fn a_corrected_copy_s_companion_image_has_a_series_of_its_own() {
    let px = vec![0.5f32; 64 * 64];
    let sc_series = |src: &SourceInstance| {
        let img = GreyImage {
            pixels: &px,
            rows: 64,
            columns: 64,
        };
        let sc = build_companion_sc(
            src,
            img,
            &result(0.2),
            &model(WeightsKind::Trained),
            &node(),
            &ReportOptions::default(),
            &time(),
        )
        .unwrap();
        str_of(&sc, tags::SERIES_INSTANCE_UID)
    };
    let first = source();
    let mut other_image = source();
    other_image.sop_instance_uid = "1.2.3.4.5.6.99".into();
    // the study's images share one series...
    assert_eq!(sc_series(&first), sc_series(&other_image));
    // ...which a copy naming another patient does not join
    let mut corrected = source();
    corrected.version = Some("ab12".into());
    corrected.corrected_copy = Some("ab12".into());
    assert_ne!(sc_series(&first), sc_series(&corrected));
    // a copy with other pixels only (a version, no correction) does
    let mut repixelled = source();
    repixelled.version = Some("cd34".into());
    assert_eq!(sc_series(&first), sc_series(&repixelled));
}

#[test]
fn companion_images_of_one_study_are_numbered_apart() {
    use crate::sc::companion_instance_number;
    let mut src = source();
    src.series_number = Some(2);
    src.instance_number = Some(7);
    assert_eq!(companion_instance_number(&src), 20_007);
    src.series_number = Some(1);
    assert_eq!(companion_instance_number(&src), 10_007);
    // out of range or missing: the source's Instance Number, else 1
    src.instance_number = Some(12_345);
    assert_eq!(companion_instance_number(&src), 12_345);
    src.series_number = None;
    src.instance_number = Some(7);
    assert_eq!(companion_instance_number(&src), 7);
    src.instance_number = None;
    assert_eq!(companion_instance_number(&src), 1);
}

#[test]
fn the_banner_names_the_image_it_is_about() {
    let mut src = source();
    src.view_position = Some("PA".into());
    src.series_number = Some(2);
    src.instance_number = Some(7);
    let lines = crate::sc::banner_lines(&result(0.2), &model(WeightsKind::Trained), &src);
    assert!(
        lines.contains(&"SOURCE: PA - SERIES 2 - IMAGE 7".to_string()),
        "{lines:?}"
    );
    src.view_position = None;
    src.series_number = None;
    src.instance_number = None;
    src.acquired_at = None;
    let lines = crate::sc::banner_lines(&result(0.2), &model(WeightsKind::Trained), &src);
    assert!(!lines.iter().any(|l| l.starts_with("SOURCE")), "{lines:?}");
    // no Instance Number: the time tells a retake from the first exposure
    src.acquired_at = Some("08:14:03".into());
    let lines = crate::sc::banner_lines(&result(0.2), &model(WeightsKind::Trained), &src);
    assert!(
        lines.contains(&"SOURCE: ACQUIRED 08:14:03".to_string()),
        "{lines:?}"
    );
}

#[test]
fn the_view_comes_from_its_code_and_the_time_from_the_acquisition() {
    let mut obj = source_dataset(None, "Doe^Jane");
    obj.remove_element(tags::VIEW_POSITION);
    obj.remove_element(tags::INSTANCE_NUMBER);
    let mut code = InMemDicomObject::new_empty();
    code.put(DataElement::new(
        tags::CODE_VALUE,
        VR::SH,
        PrimitiveValue::from("399348003"),
    ));
    code.put(DataElement::new(
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        PrimitiveValue::from("SCT"),
    ));
    code.put(DataElement::new(
        tags::CODE_MEANING,
        VR::LO,
        PrimitiveValue::from("antero-posterior"),
    ));
    obj.put(DataElement::new(
        tags::VIEW_CODE_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![code]),
    ));
    obj.put(DataElement::new(
        tags::ACQUISITION_TIME,
        VR::TM,
        PrimitiveValue::from("081403.25"),
    ));
    let src = SourceInstance::from_dataset(&obj).unwrap();
    assert_eq!(src.view_position.as_deref(), Some("antero-posterior"));
    assert_eq!(src.acquired_at.as_deref(), Some("08:14:03"));
    let named = crate::sr::which_image(&src, "series", "image", "acquired");
    assert_eq!(named.first().map(String::as_str), Some("antero-posterior"));
    assert_eq!(named.last().map(String::as_str), Some("acquired 08:14:03"));
}

#[test]
fn identity_ignores_trailing_name_delimiters_only() {
    let named = |name: &str| {
        SourceInstance::from_dataset(&source_dataset(Some("ISO_IR 192"), name))
            .unwrap()
            .identity()
    };
    assert_eq!(named("Doe^John"), named("Doe^John^^^"));
    assert_eq!(named("Doe^John=Y^J"), named("Doe^John^=Y^J^^"));
    assert_ne!(named("Doe^John"), named("Doe^Jane"));
}

#[test]
fn a_long_model_name_is_cut_so_that_the_version_stays_in_the_series_description() {
    use crate::sc::sc_series_description;
    use crate::sr::sr_series_description;
    let long = ModelIdentity {
        name: "pneumollm-hospital-site-a-retrained-external-validation-cohort-v2".into(),
        version: "2026.11.28-rc1+build.4711".into(),
        ..model(WeightsKind::Trained)
    };
    for (described, ends) in [
        (sr_series_description(&long), " 2026.11.28-rc1+build.4711)"),
        (sc_series_description(&long), " 2026.11.28-rc1+build.4711)"),
    ] {
        assert_eq!(described.chars().count(), 64, "{described}");
        assert!(
            described.ends_with(ends) && described.contains("..."),
            "{described}"
        );
    }
    assert_eq!(
        sr_series_description(&long),
        "AI pneumoconiosis (pneumollm-hospi... 2026.11.28-rc1+build.4711)"
    );
    let demo = ModelIdentity {
        weights_kind: WeightsKind::RandomDemo,
        ..long.clone()
    };
    let described = sr_series_description(&demo);
    assert!(described.starts_with(DEMO_MARK) && described.ends_with(" 2026.11.28-rc1+build.4711"));
    assert!(described.chars().count() <= 64, "{described}");
    // Names that fit are not touched.
    assert_eq!(
        sr_series_description(&model(WeightsKind::Trained)),
        "AI pneumoconiosis (PneumoLLM 1.0.0)"
    );
    // A version too long to keep whole keeps its start and its end, where
    // two versions differ; the name keeps its first letters.
    let versioned = |version: &str, kind| ModelIdentity {
        version: version.into(),
        weights_kind: kind,
        ..long.clone()
    };
    let base = "2026.11.28-site-a-retrained-external-validation-cohort-build";
    for kind in [WeightsKind::Trained, WeightsKind::RandomDemo] {
        for describe in [
            sr_series_description,
            crate::sc::sc_series_description,
            crate::notice::not_analysed_series_description,
        ] {
            let (a, b) = (
                describe(&versioned(&format!("{base}-4711"), kind)),
                describe(&versioned(&format!("{base}-4712"), kind)),
            );
            assert_ne!(a, b);
            assert!(a.chars().count() <= 64 && a.contains("2026"), "{a}");
            assert!(a.trim_end_matches(')').ends_with("711"), "{a}");
        }
    }
    assert_eq!(
        sr_series_description(&versioned(&format!("{base}-4711"), WeightsKind::Trained)),
        "AI pneumoconiosis (pneumollm... 2026.11.28-sit...ort-build-4711)"
    );
}

/// The notice of `src` for `reason` with the default node, options and time.
fn notice_of(
    src: &SourceInstance,
    reason: &str,
    m: &ModelIdentity,
) -> Result<dicom_object::FileDicomObject<InMemDicomObject>, ReportError> {
    build_not_analysed_sr(src, reason, m, &node(), &ReportOptions::default(), &time())
}

/// The (concept, value) pairs of a group's CODE items, and its TEXT items.
fn codes_and_texts(group: &ContentItem) -> (Vec<(Code, Code)>, Vec<String>) {
    let mut coded = Vec::new();
    let mut texts = Vec::new();
    for c in &group.children {
        match &c.value {
            ItemValue::Code(v) => coded.push((c.name.clone(), v.clone())),
            ItemValue::Text(t) => texts.push(t.clone()),
            _ => {}
        }
    }
    (coded, texts)
}

#[test]
fn a_notice_says_the_image_was_not_analysed_and_why() {
    let src = source();
    let reason = "imaging: colour images are not analysed (RGB)";
    let m = model(WeightsKind::Trained);
    let obj = notice_of(&src, reason, &m).unwrap();
    let tree = notice::build_not_analysed_tree(&src, reason, &m, &node()).unwrap();
    assert_eq!(tree.name, codes::IMAGING_MEASUREMENT_REPORT);
    assert!(tree.find(&codes::IMAGE_LIBRARY).next().is_some());
    // No measurement group (OHIF fails on a group without a measurement).
    assert!(tree.find(&codes::IMAGING_MEASUREMENTS).next().is_none());
    let evaluations = tree.find(&codes::QUALITATIVE_EVALUATIONS).next().unwrap();
    let (coded, texts) = codes_and_texts(evaluations);
    assert_eq!(coded, vec![(codes::PNEUMOCONIOSIS, codes::NOT_EVALUATED)]);
    let sentence = texts
        .iter()
        .find(|t| t.starts_with("NOT ANALYSED."))
        .unwrap();
    assert!(sentence.contains(reason), "{sentence}");
    assert!(sentence.contains("image 7"), "{sentence}");
    assert!(!texts.iter().any(|t| t.contains(DEMO_MARK)));

    assert_eq!(str_of(&obj, tags::MODALITY), "SR");
    assert_eq!(str_of(&obj, tags::SERIES_NUMBER), "9903");
    assert_eq!(str_of(&obj, tags::STUDY_INSTANCE_UID), "1.2.3.4.5");
    assert!(str_of(&obj, tags::SERIES_DESCRIPTION).starts_with("NOT ANALYSED by AI (PneumoLLM"));
    assert_eq!(str_of(&obj, tags::COMPLETION_FLAG), "COMPLETE");
    // Its own UIDs: neither the report's nor its series'.
    let sr = trained_sr(&src, 0.7);
    assert_ne!(
        str_of(&obj, tags::SOP_INSTANCE_UID),
        str_of(&sr, tags::SOP_INSTANCE_UID)
    );
    assert_ne!(
        str_of(&obj, tags::SERIES_INSTANCE_UID),
        str_of(&sr, tags::SERIES_INSTANCE_UID)
    );
    // The same failure gives the same notice; another reason, another.
    let again = notice_of(&src, reason, &m).unwrap();
    assert_eq!(
        str_of(&obj, tags::SOP_INSTANCE_UID),
        str_of(&again, tags::SOP_INSTANCE_UID)
    );
    let other = notice_of(&src, "imaging: multi-frame images are not analysed", &m).unwrap();
    assert_ne!(
        str_of(&obj, tags::SOP_INSTANCE_UID),
        str_of(&other, tags::SOP_INSTANCE_UID)
    );
    assert_eq!(
        str_of(&obj, tags::SERIES_INSTANCE_UID),
        str_of(&other, tags::SERIES_INSTANCE_UID)
    );
    // A notice without its reason is refused.
    assert!(notice_of(&src, "  ", &m).is_err());
}

#[test]
fn a_demo_models_notice_says_so() {
    let src = source();
    let m = model(WeightsKind::RandomDemo);
    let obj = notice_of(&src, "inference: the output is not finite", &m).unwrap();
    assert!(str_of(&obj, tags::SERIES_DESCRIPTION).starts_with(DEMO_MARK));
    let tree = notice::build_not_analysed_tree(&src, "x", &m, &node()).unwrap();
    let evaluations = tree.find(&codes::QUALITATIVE_EVALUATIONS).next().unwrap();
    let (_, texts) = codes_and_texts(evaluations);
    assert!(texts.iter().any(|t| t.starts_with(DEMO_MARK)), "{texts:?}");
}

#[test]
fn a_notice_as_an_image_for_viewers_without_sr() {
    let src = source();
    let m = model(WeightsKind::Trained);
    let reason = "imaging: bits-allocated: 32 bits a sample are not analysed";
    let options = ReportOptions::default();
    let sc = build_not_analysed_sc(&src, reason, &m, &node(), &options, &time()).unwrap();
    assert_eq!(
        str_of(&sc, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.7"
    );
    assert_eq!(str_of(&sc, tags::SERIES_NUMBER), "9904");
    assert!(str_of(&sc, tags::SERIES_DESCRIPTION).starts_with("NOT ANALYSED by AI image ("));
    assert!(str_of(&sc, tags::IMAGE_COMMENTS).starts_with("NOT ANALYSED."));
    assert!(str_of(&sc, tags::IMAGE_COMMENTS).contains(reason));
    assert_eq!(str_of(&sc, tags::BURNED_IN_ANNOTATION), "YES");
    // Words on black, as wide as a companion image: no pixel of the source.
    let columns = sc.get(tags::COLUMNS).unwrap().to_int::<u16>().unwrap();
    let rows = sc.get(tags::ROWS).unwrap().to_int::<u16>().unwrap();
    assert_eq!(columns, options.sc_max_size);
    assert!(rows > 50 && rows < 1024, "{rows}");
    let px = sc.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert!(px.iter().all(|&v| v == 0 || v == 255));
    assert!(px.contains(&255));
    // Its own UIDs, stable for one failure.
    let sr = notice_of(&src, reason, &m).unwrap();
    assert_ne!(
        str_of(&sc, tags::SERIES_INSTANCE_UID),
        str_of(&sr, tags::SERIES_INSTANCE_UID)
    );
    let again = build_not_analysed_sc(&src, reason, &m, &node(), &options, &time()).unwrap();
    assert_eq!(
        str_of(&sc, tags::SOP_INSTANCE_UID),
        str_of(&again, tags::SOP_INSTANCE_UID)
    );
    let demo = build_not_analysed_sc(
        &src,
        reason,
        &model(WeightsKind::RandomDemo),
        &node(),
        &options,
        &time(),
    )
    .unwrap();
    assert!(str_of(&demo, tags::SERIES_DESCRIPTION).starts_with(DEMO_MARK));
    assert!(str_of(&demo, tags::IMAGE_COMMENTS).starts_with(DEMO_MARK));
}

#[test]
fn a_companion_image_says_it_replaces_the_notice_and_sizes_read_with_an_x() {
    let mut src = source();
    src.replaces = Some(EarlierReport {
        study_instance_uid: "1.2.3.4.5".into(),
        series_instance_uid: "1.2.3.4.5.9".into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.34".into(),
        sop_instance_uid: "1.2.3.4.5.9.1".into(),
        because: Replacement::Notice,
    });
    let lines = sc::banner_lines(&result(0.7), &model(WeightsKind::Trained), &src);
    assert!(
        lines
            .iter()
            .any(|l| l == "REPLACES THE EARLIER NOTICE THAT THIS IMAGE WAS NOT ANALYSED"),
        "{lines:?}"
    );
    assert!(
        !sc::banner_lines(&result(0.7), &model(WeightsKind::Trained), &source())
            .iter()
            .any(|l| l.starts_with("REPLACES"))
    );
    assert_eq!(crate::font::glyph('×'), crate::font::glyph('X'));
}

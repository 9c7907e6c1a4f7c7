//! Deterministic UIDs.
//!
//! Every UID this crate writes is a name-based UUID (version 5, SHA-1) in the
//! project namespace [`NAMESPACE`], turned into a DICOM UID:
//!
//! * with no UID root configured: `2.25.` followed by the decimal value of the
//!   128-bit UUID (PS3.5 B.2), at most 44 characters;
//! * with a UID root `R` configured: `R.` followed by the decimal value of the
//!   UUID, reduced modulo `10^n` where `n` is what is left of the 64 characters
//!   (no reduction when `R` has 24 characters or fewer).
//!
//! The names hashed (fields joined by a NUL byte, so no field can run into
//! the next) are:
//!
//! | UID | name |
//! | --- | --- |
//! | SR SOP Instance UID | `sr`, source SOP Instance UID, node AE title, contract SHA-256 (lower-case hex) |
//! | SR Series Instance UID | `sr-series-of-image`, source SOP Instance UID, node AE title, contract SHA-256 |
//! | Tracking Unique Identifier | `tracking`, source SOP Instance UID, node AE title, contract SHA-256 |
//! | companion SC SOP Instance UID | `sc`, source SOP Instance UID, node AE title, contract SHA-256 |
//! | not-analysed notice SOP Instance UID | `not-analysed`, source SOP Instance UID, node AE title, contract SHA-256, the reason |
//! | not-analysed notice image SOP Instance UID | `not-analysed-sc`, source SOP Instance UID, node AE title, contract SHA-256, the reason |
//! | not-analysed notice image Series Instance UID | `not-analysed-sc-series`, source SOP Instance UID, node AE title, contract SHA-256 |
//! | not-analysed notice Series Instance UID | `not-analysed-series`, source SOP Instance UID, node AE title, contract SHA-256 |
//! | companion SC Series Instance UID | `sc-series`, node AE title, Study Instance UID, contract SHA-256 |
//! | SR sent as Comprehensive SR (to a destination without Comprehensive 3D SR) | `sr-as-comprehensive`, SR SOP Instance UID |
//!
//! The contract SHA-256 covers everything that makes the model's result
//! (weights hash, labels, threshold, preprocessing, name and version); for
//! a model that crops its input to the lung box of a segmentation model,
//! it is followed by `+lung-segmentation:` and that model's SHA-256 (its
//! files as loaded), which crops otherwise and so gives another result.
//! Re-running a job (after a crash, or a retry) therefore yields the same
//! SR; another model, or the same weights with another threshold, or
//! another node, yields another SR; and the SRs one node writes about one
//! image with one model land in one series.

use uuid::Uuid;

use crate::ReportError;

/// The project's UUID namespace: UUID v5 of the name `pneumo-node` in the
/// standard OID namespace (RFC 4122 appendix C). Fixed forever: changing it
/// changes every derived UID.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x12d2_e44b_ce26_5d3d_b251_6b94_e72f_c020);

/// Largest length of a DICOM UID (PS3.5 9.1).
pub const MAX_UID_LEN: usize = 64;

/// Fewest decimal digits a root must leave for the derived part.
const MIN_DIGITS: usize = 20;

/// Is `s` a syntactically valid DICOM UID (digits and dots, components
/// without leading zeros, at most 64 characters)?
pub fn is_valid_uid(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_UID_LEN {
        return false;
    }
    s.split('.').all(|c| {
        !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0'))
    })
}

/// Can a UID the source carries be referenced as it is? Digits and dots,
/// non-empty components, at most 64 characters: leading zeros in a
/// component (PS3.5 forbids them; older modalities write them) are kept,
/// since the report must name the very study, series and image it is about.
pub fn is_referable_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_UID_LEN
        && s.split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

/// Check a configured UID root; `None` means the `2.25.` UUID form.
pub fn validate_uid_root(root: Option<&str>) -> Result<(), ReportError> {
    let Some(root) = root else { return Ok(()) };
    if !is_valid_uid(root) {
        return Err(ReportError::InvalidUidRoot {
            root: root.to_string(),
            reason: "not a valid UID (digits and dots, no leading zeros)".into(),
        });
    }
    if root.len() + 1 + MIN_DIGITS > MAX_UID_LEN {
        return Err(ReportError::InvalidUidRoot {
            root: root.to_string(),
            reason: format!(
                "too long: at most {} characters leave room for a unique suffix",
                MAX_UID_LEN - 1 - MIN_DIGITS
            ),
        });
    }
    Ok(())
}

fn name_uuid(parts: &[&str]) -> Uuid {
    let name = parts.join("\0");
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

/// Format a UUID as a DICOM UID under `root` (see the module documentation).
pub fn uuid_to_uid(uuid: Uuid, root: Option<&str>) -> Result<String, ReportError> {
    let value = uuid.as_u128();
    match root {
        None => Ok(format!("2.25.{value}")),
        Some(root) => {
            validate_uid_root(Some(root))?;
            let room = MAX_UID_LEN - root.len() - 1;
            // 10^39 > 2^128, so with room >= 39 no reduction is needed.
            let v = if room >= 39 {
                value
            } else {
                value % 10u128.pow(room as u32)
            };
            Ok(format!("{root}.{v}"))
        }
    }
}

/// The name of a derived UID: `kind` then each field, trimmed (and a
/// contract SHA-256 in lower case, so its case does not matter).
fn derived(kind: &str, fields: [&str; 3], uid_root: Option<&str>) -> Result<String, ReportError> {
    let [a, b, sha] = fields;
    let sha = sha.trim().to_ascii_lowercase();
    uuid_to_uid(name_uuid(&[kind, a.trim(), b.trim(), &sha]), uid_root)
}

/// The SOP Instance UID of report `sr_uid` (a Comprehensive 3D SR) sent
/// as Comprehensive SR to a destination without 3D SR: another class is
/// another instance, so another UID, always the same for that report.
pub fn comprehensive_sr_copy_uid(
    sr_uid: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    uuid_to_uid(name_uuid(&["sr-as-comprehensive", sr_uid.trim()]), uid_root)
}

/// The SOP Instance UID of the SR that node `ae_title` makes for
/// `source_sop_uid` with the model whose contract has SHA-256
/// `contract_sha256` (hex).
pub fn sr_sop_instance_uid(
    source_sop_uid: &str,
    ae_title: &str,
    contract_sha256: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    derived("sr", [source_sop_uid, ae_title, contract_sha256], uid_root)
}

/// The Series Instance UID of the SRs of node `ae_title` about one source
/// image (its SOP Instance UID) for one model: a series per analysed
/// image, which a later copy's report (naming the one it replaces) shares.
/// OHIF shows one SR per series: with one series per study, a study with
/// two analysed images (a retake, PA and AP) showed one report there.
pub fn sr_series_instance_uid(
    source_sop_uid: &str,
    ae_title: &str,
    contract_sha256: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    derived(
        "sr-series-of-image",
        [source_sop_uid, ae_title, contract_sha256],
        uid_root,
    )
}

/// The SOP Instance UID of the notice (an SR) that node `ae_title` could
/// not analyse `source_sop_uid` with the model `contract_sha256`, for
/// `reason`: the same failure gives the same notice again (a retry that
/// fails alike sends nothing new); another reason, another notice.
pub fn not_analysed_sop_instance_uid(
    source_sop_uid: &str,
    ae_title: &str,
    contract_sha256: &str,
    reason: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    let fields = [source_sop_uid, ae_title, contract_sha256, reason];
    notice_uid("not-analysed", fields, uid_root)
}

/// The SOP Instance UID of the same notice as an image (with
/// `companion_sc`).
pub fn not_analysed_sc_sop_instance_uid(
    source_sop_uid: &str,
    ae_title: &str,
    contract_sha256: &str,
    reason: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    let fields = [source_sop_uid, ae_title, contract_sha256, reason];
    notice_uid("not-analysed-sc", fields, uid_root)
}

fn notice_uid(
    kind: &str,
    fields: [&str; 4],
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    let [source, ae_title, sha, reason] = fields;
    let sha = sha.trim().to_ascii_lowercase();
    let name = [kind, source.trim(), ae_title.trim(), &sha, reason.trim()];
    uuid_to_uid(name_uuid(&name), uid_root)
}

/// The Series Instance UID of the notices about one source image for one
/// model: a series apart from its reports', so a viewer that shows one SR
/// a series (OHIF) shows a report made after a retry beside the notice.
pub fn not_analysed_series_instance_uid(
    source_sop_uid: &str,
    ae_title: &str,
    contract_sha256: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    derived(
        "not-analysed-series",
        [source_sop_uid, ae_title, contract_sha256],
        uid_root,
    )
}

/// The Series Instance UID of the notices as images about one source
/// image for one model (Modality OT, so not the SR notices' series).
pub fn not_analysed_sc_series_instance_uid(
    source_sop_uid: &str,
    ae_title: &str,
    contract_sha256: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    derived(
        "not-analysed-sc-series",
        [source_sop_uid, ae_title, contract_sha256],
        uid_root,
    )
}

/// The Tracking Unique Identifier of the measurement group.
pub fn tracking_uid(
    source_sop_uid: &str,
    ae_title: &str,
    contract_sha256: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    derived(
        "tracking",
        [source_sop_uid, ae_title, contract_sha256],
        uid_root,
    )
}

/// The SOP Instance UID of the companion Secondary Capture image.
pub fn sc_sop_instance_uid(
    source_sop_uid: &str,
    ae_title: &str,
    contract_sha256: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    derived("sc", [source_sop_uid, ae_title, contract_sha256], uid_root)
}

/// The Series Instance UID of the companion Secondary Capture series (a
/// series apart from the SR series: Modality is a series attribute).
pub fn sc_series_instance_uid(
    ae_title: &str,
    study_uid: &str,
    contract_sha256: &str,
    uid_root: Option<&str>,
) -> Result<String, ReportError> {
    derived(
        "sc-series",
        [ae_title, study_uid, contract_sha256],
        uid_root,
    )
}

/// The Implementation Class UID written in the File Meta Information.
pub fn implementation_class_uid() -> String {
    format!("2.25.{}", name_uuid(&["implementation-class"]).as_u128())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn namespace_is_v5_of_project_name() {
        assert_eq!(
            NAMESPACE,
            Uuid::new_v5(&Uuid::NAMESPACE_OID, b"pneumo-node")
        );
    }

    #[test]
    fn sr_uid_is_deterministic_and_valid() {
        let a = sr_sop_instance_uid("1.2.3.4", "PNEUMO", SHA, None).unwrap();
        let b = sr_sop_instance_uid("1.2.3.4", "PNEUMO", &SHA.to_uppercase(), None).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("2.25."));
        assert!(is_valid_uid(&a), "{a}");
        assert!(a.len() <= 44);
    }

    #[test]
    fn sr_uid_depends_on_source_node_and_model() {
        let a = sr_sop_instance_uid("1.2.3.4", "PNEUMO", SHA, None).unwrap();
        let b = sr_sop_instance_uid("1.2.3.5", "PNEUMO", SHA, None).unwrap();
        let other_sha = SHA.replace('9', "8");
        let c = sr_sop_instance_uid("1.2.3.4", "PNEUMO", &other_sha, None).unwrap();
        let d = sr_sop_instance_uid("1.2.3.4", "OTHER", SHA, None).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_ne!(a, d, "another node makes another SR");
        // and the other derived UIDs differ from it
        assert_ne!(a, tracking_uid("1.2.3.4", "PNEUMO", SHA, None).unwrap());
        assert_ne!(
            a,
            sc_sop_instance_uid("1.2.3.4", "PNEUMO", SHA, None).unwrap()
        );
    }

    #[test]
    fn series_uid_per_report() {
        let a = sr_series_instance_uid("1.2.3.4", "PNEUMO", SHA, None).unwrap();
        let other_sha = SHA.replace('9', "8");
        assert_ne!(
            a,
            sr_series_instance_uid("1.2.3.4", "PNEUMO", &other_sha, None).unwrap()
        );
        assert_eq!(
            a,
            sr_series_instance_uid("1.2.3.4", "PNEUMO", SHA, None).unwrap()
        );
        assert_ne!(
            a,
            sr_series_instance_uid("1.2.3.4", "OTHER", SHA, None).unwrap()
        );
        // another image of the same study
        assert_ne!(
            a,
            sr_series_instance_uid("1.2.3.5", "PNEUMO", SHA, None).unwrap()
        );
        assert_ne!(
            a,
            sr_sop_instance_uid("1.2.3.4", "PNEUMO", SHA, None).unwrap()
        );
    }

    #[test]
    fn fields_cannot_run_together() {
        // "1.2" + "3" vs "1.23" + "" would collide without a separator
        let a = sr_series_instance_uid("2.3", "AE1", SHA, None).unwrap();
        let b = sr_series_instance_uid("2.3AE1", "", SHA, None).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn custom_root() {
        let short = sr_sop_instance_uid("1.2.3.4", "PNEUMO", SHA, Some("1.2.826.0.1.3680043.10.1"))
            .unwrap();
        assert!(short.starts_with("1.2.826.0.1.3680043.10.1."));
        assert!(is_valid_uid(&short), "{short}");
        let long_root = "1.2.826.0.1.3680043.10.1.2.3.4.5.6.7.8.9";
        let long = sr_sop_instance_uid("1.2.3.4", "PNEUMO", SHA, Some(long_root)).unwrap();
        assert!(long.len() <= 64);
        assert!(is_valid_uid(&long), "{long}");
        assert_eq!(
            long,
            sr_sop_instance_uid("1.2.3.4", "PNEUMO", SHA, Some(long_root)).unwrap()
        );
    }

    #[test]
    fn bad_roots_are_refused() {
        for root in ["", "1..2", "1.02", "1.2.a", "1.2.", &"1.2".repeat(20)] {
            assert!(
                sr_sop_instance_uid("1.2.3.4", "PNEUMO", SHA, Some(root)).is_err(),
                "{root:?} accepted"
            );
        }
    }

    #[test]
    fn uid_syntax() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.88.34"));
        assert!(is_valid_uid("2.25.0"));
        assert!(!is_valid_uid("1.2.03"));
        assert!(is_referable_uid("1.2.03") && is_referable_uid("1.2.840.0113654.2"));
        assert!(!is_referable_uid("1.2.abc") && !is_referable_uid("1..2") && !is_referable_uid(""));
        assert!(!is_referable_uid(&format!("1.{}", "2".repeat(63))));
        assert!(!is_valid_uid("1.2.3 "));
        assert!(!is_valid_uid(&format!("1.{}", "2".repeat(64))));
    }
}

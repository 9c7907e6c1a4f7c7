//! Anatomy and view from their coded attributes, for routing when the text
//! ones are absent. In the DX IOD the Anatomic Region Sequence is Type 1
//! and Body Part Examined Type 3, View Code Sequence and View Position both
//! Type 3: a conformant DX may name its anatomy and view only in codes. A
//! hand, or a lateral chest, said so only there was analysed as a chest PA.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Codes (scheme, value) for the Body Part Examined terms the node's rules
/// name (PS3.16 Annex L; SRT codes as older modalities write them).
const BODY_PARTS: &[(&str, &[(&str, &str)])] = &[(
    "CHEST",
    &[
        ("SCT", "51185008"),
        ("SCT", "816094009"),
        ("SRT", "T-D3000"),
    ],
)];

/// Codes for View Position terms (CID 4010 "DX View").
const VIEWS: &[(&str, &[(&str, &str)])] = &[
    ("PA", &[("SCT", "272479007"), ("SRT", "R-10214")]),
    ("AP", &[("SCT", "399348003"), ("SRT", "R-10206")]),
    ("LL", &[("SCT", "399173006"), ("SRT", "R-10236")]),
    ("RL", &[("SCT", "399198007"), ("SRT", "R-10232")]),
    ("LATERAL", &[("SCT", "399067008")]),
];

/// The Body Part Examined term for the first Anatomic Region Sequence item.
pub(crate) fn body_part(obj: &InMemDicomObject) -> Option<String> {
    term(obj, tags::ANATOMIC_REGION_SEQUENCE, BODY_PARTS)
}

/// The View Position term for the first View Code Sequence item.
pub(crate) fn view(obj: &InMemDicomObject) -> Option<String> {
    term(obj, tags::VIEW_CODE_SEQUENCE, VIEWS)
}

/// The term a code stands for; a code not in the table is named by its
/// meaning and value ("Hand (SCT 85562004)"), which no rule matches by
/// accident; no code (or an empty one) is `None`, as an absent attribute.
fn term(
    obj: &InMemDicomObject,
    sequence: Tag,
    table: &[(&str, &[(&str, &str)])],
) -> Option<String> {
    let item = obj.element_opt(sequence).ok()??.items()?.first()?;
    let text = |tag| {
        item.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_matches([' ', '\0']).to_string())
            .filter(|s| !s.is_empty())
    };
    let value = text(tags::CODE_VALUE)?;
    let scheme = text(tags::CODING_SCHEME_DESIGNATOR).unwrap_or_default();
    // SNM3 is SRT's older designator for the same codes.
    let scheme = if scheme == "SNM3" {
        "SRT".to_string()
    } else {
        scheme
    };
    let known = table.iter().find(|(_, codes)| {
        codes
            .iter()
            .any(|(s, v)| *s == scheme && v.eq_ignore_ascii_case(&value))
    });
    Some(match known {
        Some((term, _)) => (*term).to_string(),
        None => format!(
            "{} ({scheme} {value})",
            text(tags::CODE_MEANING).unwrap_or_else(|| "a code".into())
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, VR};
    use dicom_object::mem::InMemElement;

    fn with_code(sequence: Tag, scheme: &str, value: &str, meaning: &str) -> InMemDicomObject {
        let item = InMemDicomObject::from_element_iter([
            DataElement::new(tags::CODE_VALUE, VR::SH, value),
            DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
            DataElement::new(tags::CODE_MEANING, VR::LO, meaning),
        ]);
        let seq: InMemElement = DataElement::new(
            sequence,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        );
        InMemDicomObject::from_element_iter([seq])
    }

    #[test]
    fn known_codes_give_the_terms_the_rules_name() {
        let chest = with_code(tags::ANATOMIC_REGION_SEQUENCE, "SCT", "51185008", "Chest");
        assert_eq!(body_part(&chest).as_deref(), Some("CHEST"));
        let old = with_code(tags::ANATOMIC_REGION_SEQUENCE, "SNM3", "T-D3000", "Chest");
        assert_eq!(body_part(&old).as_deref(), Some("CHEST"));
        let pa = with_code(
            tags::VIEW_CODE_SEQUENCE,
            "SCT",
            "272479007",
            "postero-anterior",
        );
        assert_eq!(view(&pa).as_deref(), Some("PA"));
        let ll = with_code(tags::VIEW_CODE_SEQUENCE, "SRT", "R-10236", "left lateral");
        assert_eq!(view(&ll).as_deref(), Some("LL"));
    }

    #[test]
    fn other_codes_are_named_and_no_code_is_absent() {
        let hand = with_code(tags::ANATOMIC_REGION_SEQUENCE, "SCT", "85562004", "Hand");
        assert_eq!(body_part(&hand).as_deref(), Some("Hand (SCT 85562004)"));
        let empty = with_code(tags::VIEW_CODE_SEQUENCE, "SCT", "", "");
        assert_eq!(view(&empty), None);
        assert_eq!(view(&InMemDicomObject::new_empty()), None);
    }
}

//! SR content items as a small tree, and their encoding as DICOM items.

use std::borrow::Cow;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;

/// A coded concept (Code Sequence Macro, PS3.3 Table 8.8-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// Code Value (or Long Code Value when longer than 16 characters, or
    /// URN Code Value when it is a URN).
    pub value: Cow<'static, str>,
    /// Coding Scheme Designator.
    pub scheme: Cow<'static, str>,
    /// Code Meaning.
    pub meaning: Cow<'static, str>,
    /// Coding Scheme Version, when given.
    pub scheme_version: Option<Cow<'static, str>>,
}

impl Code {
    /// A code known at compile time.
    pub const fn new(value: &'static str, scheme: &'static str, meaning: &'static str) -> Code {
        Code {
            value: Cow::Borrowed(value),
            scheme: Cow::Borrowed(scheme),
            meaning: Cow::Borrowed(meaning),
            scheme_version: None,
        }
    }

    /// Same concept (value and scheme; the meaning may differ).
    pub fn same_concept(&self, other: &Code) -> bool {
        self.value == other.value && self.scheme == other.scheme
    }

    /// The code as one item of a code sequence.
    pub fn to_item(&self) -> InMemDicomObject {
        let mut item = InMemDicomObject::new_empty();
        let value = self.value.as_ref();
        if value.starts_with("urn:") || value.contains("://") {
            item.put(DataElement::new(
                tags::URN_CODE_VALUE,
                VR::UR,
                PrimitiveValue::from(value),
            ));
        } else if value.chars().count() > 16 {
            item.put(DataElement::new(
                tags::LONG_CODE_VALUE,
                VR::UC,
                PrimitiveValue::from(value),
            ));
        } else {
            item.put(DataElement::new(
                tags::CODE_VALUE,
                VR::SH,
                PrimitiveValue::from(value),
            ));
        }
        item.put(DataElement::new(
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            PrimitiveValue::from(self.scheme.as_ref()),
        ));
        if let Some(v) = &self.scheme_version {
            item.put(DataElement::new(
                tags::CODING_SCHEME_VERSION,
                VR::SH,
                PrimitiveValue::from(v.as_ref()),
            ));
        }
        item.put(DataElement::new(
            tags::CODE_MEANING,
            VR::LO,
            PrimitiveValue::from(truncate_chars(&self.meaning, 64)),
        ));
        item
    }

    /// Read a code from a code sequence item; `None` when it has no value,
    /// scheme or meaning.
    pub fn from_item(item: &InMemDicomObject) -> Option<Code> {
        let s = |t: Tag| {
            item.get(t)
                .and_then(|e| e.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let value = s(tags::CODE_VALUE)
            .or_else(|| s(tags::LONG_CODE_VALUE))
            .or_else(|| s(tags::URN_CODE_VALUE))?;
        Some(Code {
            value: Cow::Owned(value),
            scheme: Cow::Owned(s(tags::CODING_SCHEME_DESIGNATOR)?),
            meaning: Cow::Owned(s(tags::CODE_MEANING)?),
            scheme_version: s(tags::CODING_SCHEME_VERSION).map(Cow::Owned),
        })
    }
}

/// Relationship Type (0040,A010).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relationship {
    Contains,
    HasObsContext,
    HasConceptMod,
    HasAcqContext,
    InferredFrom,
    SelectedFrom,
}

impl Relationship {
    pub fn as_str(self) -> &'static str {
        match self {
            Relationship::Contains => "CONTAINS",
            Relationship::HasObsContext => "HAS OBS CONTEXT",
            Relationship::HasConceptMod => "HAS CONCEPT MOD",
            Relationship::HasAcqContext => "HAS ACQ CONTEXT",
            Relationship::InferredFrom => "INFERRED FROM",
            Relationship::SelectedFrom => "SELECTED FROM",
        }
    }
}

/// The value of a content item.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemValue {
    /// CONTAINER, Continuity of Content SEPARATE, with an optional DCMR
    /// template identifier.
    Container { template: Option<&'static str> },
    /// CODE.
    Code(Code),
    /// TEXT (UT).
    Text(String),
    /// NUM: the value as written (DS), and its unit.
    Num { value: f64, unit: Code },
    /// UIDREF.
    UidRef(String),
    /// IMAGE: (SOP Class UID, SOP Instance UID).
    Image {
        class_uid: String,
        instance_uid: String,
    },
    /// SCOORD: Graphic Type and Graphic Data, (column, row) pairs in image
    /// pixel coordinates (0,0 the top left corner of the top left pixel).
    Scoord {
        graphic_type: &'static str,
        points: Vec<f32>,
    },
}

impl ItemValue {
    /// Value Type (0040,A040).
    pub fn value_type(&self) -> &'static str {
        match self {
            ItemValue::Container { .. } => "CONTAINER",
            ItemValue::Code(_) => "CODE",
            ItemValue::Text(_) => "TEXT",
            ItemValue::Num { .. } => "NUM",
            ItemValue::UidRef(_) => "UIDREF",
            ItemValue::Image { .. } => "IMAGE",
            ItemValue::Scoord { .. } => "SCOORD",
        }
    }
}

/// One content item and its children.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentItem {
    /// `None` only for the root.
    pub relationship: Option<Relationship>,
    pub name: Code,
    pub value: ItemValue,
    pub children: Vec<ContentItem>,
}

impl ContentItem {
    pub fn new(relationship: Relationship, name: Code, value: ItemValue) -> ContentItem {
        ContentItem {
            relationship: Some(relationship),
            name,
            value,
            children: Vec::new(),
        }
    }

    pub fn with_children(mut self, children: Vec<ContentItem>) -> ContentItem {
        self.children = children;
        self
    }

    /// Children with the given concept name.
    pub fn find<'a>(&'a self, name: &Code) -> impl Iterator<Item = &'a ContentItem> + 'a {
        let name = name.clone();
        self.children
            .iter()
            .filter(move |c| c.name.same_concept(&name))
    }

    /// Write the item's attributes (the Document Content Macro and the
    /// Content Sequence) into `obj`: the root dataset, or a new item.
    pub fn write_into(&self, obj: &mut InMemDicomObject) {
        if let Some(rel) = self.relationship {
            obj.put(DataElement::new(
                tags::RELATIONSHIP_TYPE,
                VR::CS,
                PrimitiveValue::from(rel.as_str()),
            ));
        }
        obj.put(DataElement::new(
            tags::VALUE_TYPE,
            VR::CS,
            PrimitiveValue::from(self.value.value_type()),
        ));
        obj.put(sequence(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![self.name.to_item()],
        ));
        match &self.value {
            ItemValue::Container { template } => {
                obj.put(DataElement::new(
                    tags::CONTINUITY_OF_CONTENT,
                    VR::CS,
                    PrimitiveValue::from("SEPARATE"),
                ));
                if let Some(tid) = template {
                    let mut t = InMemDicomObject::new_empty();
                    t.put(DataElement::new(
                        tags::MAPPING_RESOURCE,
                        VR::CS,
                        PrimitiveValue::from("DCMR"),
                    ));
                    t.put(DataElement::new(
                        tags::MAPPING_RESOURCE_UID,
                        VR::UI,
                        PrimitiveValue::from("1.2.840.10008.8.1.1"),
                    ));
                    t.put(DataElement::new(
                        tags::TEMPLATE_IDENTIFIER,
                        VR::CS,
                        PrimitiveValue::from(*tid),
                    ));
                    obj.put(sequence(tags::CONTENT_TEMPLATE_SEQUENCE, vec![t]));
                }
            }
            ItemValue::Code(c) => {
                obj.put(sequence(tags::CONCEPT_CODE_SEQUENCE, vec![c.to_item()]));
            }
            ItemValue::Text(t) => {
                obj.put(DataElement::new(
                    tags::TEXT_VALUE,
                    VR::UT,
                    PrimitiveValue::from(t.as_str()),
                ));
            }
            ItemValue::Num { value, unit } => {
                let mut mv = InMemDicomObject::new_empty();
                mv.put(sequence(
                    tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                    vec![unit.to_item()],
                ));
                mv.put(DataElement::new(
                    tags::NUMERIC_VALUE,
                    VR::DS,
                    PrimitiveValue::from(format_ds(*value)),
                ));
                mv.put(DataElement::new(
                    tags::FLOATING_POINT_VALUE,
                    VR::FD,
                    PrimitiveValue::F64([*value].as_slice().into()),
                ));
                obj.put(sequence(tags::MEASURED_VALUE_SEQUENCE, vec![mv]));
            }
            ItemValue::UidRef(u) => {
                obj.put(DataElement::new(
                    tags::UID,
                    VR::UI,
                    PrimitiveValue::from(u.as_str()),
                ));
            }
            ItemValue::Image {
                class_uid,
                instance_uid,
            } => {
                obj.put(sequence(
                    tags::REFERENCED_SOP_SEQUENCE,
                    vec![sop_reference(class_uid, instance_uid)],
                ));
            }
            ItemValue::Scoord {
                graphic_type,
                points,
            } => {
                obj.put(DataElement::new(
                    tags::GRAPHIC_TYPE,
                    VR::CS,
                    PrimitiveValue::from(*graphic_type),
                ));
                obj.put(DataElement::new(
                    tags::GRAPHIC_DATA,
                    VR::FL,
                    PrimitiveValue::F32(points.as_slice().into()),
                ));
            }
        }
        if !self.children.is_empty() {
            let items = self
                .children
                .iter()
                .map(|c| {
                    let mut item = InMemDicomObject::new_empty();
                    c.write_into(&mut item);
                    item
                })
                .collect();
            obj.put(sequence(tags::CONTENT_SEQUENCE, items));
        }
    }
}

/// An SQ element of undefined length with the given items.
pub(crate) fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// An item with Referenced SOP Class UID and Referenced SOP Instance UID.
pub(crate) fn sop_reference(class_uid: &str, instance_uid: &str) -> InMemDicomObject {
    let mut r = InMemDicomObject::new_empty();
    r.put(DataElement::new(
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(class_uid),
    ));
    r.put(DataElement::new(
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(instance_uid),
    ));
    r
}

/// A decimal string of at most 16 characters (DS) for `v`.
pub fn format_ds(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    for decimals in (0..=6).rev() {
        let mut s = format!("{v:.decimals$}");
        if s.contains('.') {
            while s.ends_with('0') {
                s.pop();
            }
            if s.ends_with('.') {
                s.pop();
            }
        }
        if s == "-0" {
            s = "0".into();
        }
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.6e}")
}

/// At most `n` characters of `s`.
pub(crate) fn truncate_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A value for a VR that forbids backslashes and control characters
/// (SH, LO, ...): those become spaces; trimmed and cut to `n` characters.
pub(crate) fn clean_string(s: &str, n: usize) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c == '\\' || c.is_control() { ' ' } else { c })
        .collect();
    truncate_chars(cleaned.trim(), n).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ds_formatting() {
        assert_eq!(format_ds(87.3), "87.3");
        assert_eq!(format_ds(87.300_003_051_757_81), "87.300003");
        assert_eq!(format_ds(100.0), "100");
        assert_eq!(format_ds(0.0), "0");
        assert_eq!(format_ds(-0.000_000_1), "0");
        assert_eq!(format_ds(1e-7), "0");
        assert!(format_ds(123_456_789_012.345_67).len() <= 16);
    }

    #[test]
    fn clean() {
        assert_eq!(clean_string(" a\\b\nc ", 64), "a b c");
        assert_eq!(clean_string("ÄÖÜ", 2), "ÄÖ");
    }

    #[test]
    fn long_code_values() {
        let c = Code {
            value: Cow::Borrowed("12345678901234567"),
            scheme: Cow::Borrowed("99X"),
            meaning: Cow::Borrowed("x"),
            scheme_version: None,
        };
        let item = c.to_item();
        assert!(item.get(tags::LONG_CODE_VALUE).is_some());
        assert!(item.get(tags::CODE_VALUE).is_none());
        assert_eq!(Code::from_item(&item), Some(c));
    }
}

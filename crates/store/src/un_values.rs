//! Standard attributes that arrive with VR UN.
//!
//! A peer that converts implicit VR to explicit VR without knowing an
//! attribute writes it as UN, its value the bytes of the implicit encoding
//! (PS3.5 §6.2.2). dicom-rs keeps such a value as bytes, so Modality "CR"
//! would read as "67\82" and Rows as two bytes. As PS3.5 asks of a receiver
//! that knows the attribute, the value is read as the dictionary's VR, in
//! memory only (the stored file is left as received). A sequence sent as
//! UN with a defined length holds implicit VR little endian items, and is
//! parsed as such (undefined lengths are `cp246`'s).

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::header::Header;
use dicom_core::smallvec::SmallVec;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_object::InMemDicomObject;

/// Rewrites, in `obj` and the items of its sequences, every element of VR UN
/// whose tag the standard dictionary knows with one definite VR into that
/// VR. Values that do not fit it (a length that is no multiple of the value
/// size) stay UN.
pub fn reinterpret_un_values(obj: &mut InMemDicomObject) {
    let candidates: Vec<Tag> = obj
        .iter()
        .filter(|e| matches!(e.vr(), VR::UN | VR::SQ))
        .map(|e| e.tag())
        .collect();
    for tag in candidates {
        let Ok(mut element) = obj.take_element(tag) else {
            continue;
        };
        if let Some(items) = element.items_mut() {
            items.iter_mut().for_each(reinterpret_un_values);
        } else if let Some(known) = reinterpreted(&element) {
            element = known;
        }
        obj.put(element);
    }
}

fn reinterpreted(element: &DataElement<InMemDicomObject>) -> Option<DataElement<InMemDicomObject>> {
    let VirtualVr::Exact(vr) = StandardDataDictionary.by_tag(element.tag())?.vr() else {
        return None;
    };
    let Value::Primitive(PrimitiveValue::U8(bytes)) = element.value() else {
        return None;
    };
    if vr == VR::SQ {
        return sequence_from_implicit(element.tag(), bytes);
    }
    let value = decode(vr, bytes)?;
    Some(DataElement::new(element.tag(), vr, value))
}

/// The items in `bytes` (implicit VR little endian), parsed as the value of
/// sequence `tag`.
fn sequence_from_implicit(tag: Tag, bytes: &[u8]) -> Option<DataElement<InMemDicomObject>> {
    use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
    let len = u32::try_from(bytes.len()).ok()?;
    let mut data = Vec::with_capacity(bytes.len() + 8);
    data.extend_from_slice(&tag.group().to_le_bytes());
    data.extend_from_slice(&tag.element().to_le_bytes());
    data.extend_from_slice(&len.to_le_bytes());
    data.extend_from_slice(bytes);
    let parsed =
        InMemDicomObject::read_dataset_with_ts(&data[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .ok()?;
    let mut element = parsed.element(tag).ok()?.clone();
    if let Some(items) = element.items_mut() {
        items.iter_mut().for_each(reinterpret_un_values);
    }
    (element.vr() == VR::SQ).then_some(element)
}

/// `bytes` (little endian, as implicit VR has them) read as `vr`.
fn decode(vr: VR, bytes: &[u8]) -> Option<PrimitiveValue> {
    fn numbers<const N: usize, T>(
        bytes: &[u8],
        from: fn([u8; N]) -> T,
    ) -> Option<SmallVec<[T; 2]>> {
        bytes.len().is_multiple_of(N).then(|| {
            bytes
                .chunks_exact(N)
                .map(|c| from(c.try_into().expect("chunks of N")))
                .collect()
        })
    }
    let text = || {
        String::from_utf8_lossy(bytes)
            .trim_end_matches(['\0', ' '])
            .to_string()
    };
    Some(match vr {
        // one value, backslashes included
        VR::LT | VR::ST | VR::UT | VR::UR => PrimitiveValue::from(text()),
        VR::AE
        | VR::AS
        | VR::CS
        | VR::DA
        | VR::DS
        | VR::DT
        | VR::IS
        | VR::LO
        | VR::PN
        | VR::SH
        | VR::TM
        | VR::UC
        | VR::UI => PrimitiveValue::Strs(
            text()
                .split('\\')
                .map(|v| v.trim_matches(['\0', ' ']).to_string())
                .collect(),
        ),
        VR::US => PrimitiveValue::U16(numbers(bytes, u16::from_le_bytes)?),
        VR::SS => PrimitiveValue::I16(numbers(bytes, i16::from_le_bytes)?),
        VR::UL => PrimitiveValue::U32(numbers(bytes, u32::from_le_bytes)?),
        VR::SL => PrimitiveValue::I32(numbers(bytes, i32::from_le_bytes)?),
        VR::UV => PrimitiveValue::U64(numbers(bytes, u64::from_le_bytes)?),
        VR::SV => PrimitiveValue::I64(numbers(bytes, i64::from_le_bytes)?),
        VR::FL => PrimitiveValue::F32(numbers(bytes, f32::from_le_bytes)?),
        VR::FD => PrimitiveValue::F64(numbers(bytes, f64::from_le_bytes)?),
        VR::AT => PrimitiveValue::Tags(numbers(bytes, |b: [u8; 4]| {
            Tag(
                u16::from_le_bytes([b[0], b[1]]),
                u16::from_le_bytes([b[2], b[3]]),
            )
        })?),
        // OB, OW, OF, ...: bytes already
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

    fn un(tag: Tag, bytes: &[u8]) -> DataElement<InMemDicomObject> {
        DataElement::new(
            tag,
            VR::UN,
            PrimitiveValue::U8(bytes.iter().copied().collect()),
        )
    }

    #[test]
    fn known_attributes_sent_as_un_read_as_their_vr() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(un(tags::MODALITY, b"CR"));
        obj.put(un(tags::PHOTOMETRIC_INTERPRETATION, b"MONOCHROME1 "));
        obj.put(un(tags::ROWS, &2015u16.to_le_bytes()));
        obj.put(un(tags::WINDOW_CENTER, b"1500\\2000 "));
        obj.put(un(tags::PIXEL_SPACING, b"0.1\\0.1 "));
        obj.put(un(Tag(0x0019, 0x1001), b"private"));
        obj.put(un(tags::COLUMNS, &[1, 2, 3])); // no multiple of 2: left alone
        reinterpret_un_values(&mut obj);
        let get = |tag| obj.element(tag).unwrap();
        assert_eq!(get(tags::MODALITY).vr(), VR::CS);
        assert_eq!(get(tags::MODALITY).to_str().unwrap(), "CR");
        assert_eq!(
            get(tags::PHOTOMETRIC_INTERPRETATION).to_str().unwrap(),
            "MONOCHROME1"
        );
        assert_eq!(get(tags::ROWS).to_int::<u16>().unwrap(), 2015);
        assert_eq!(
            get(tags::WINDOW_CENTER).to_multi_float64().unwrap(),
            vec![1500.0, 2000.0]
        );
        assert_eq!(get(tags::PIXEL_SPACING).vr(), VR::DS);
        assert_eq!(get(Tag(0x0019, 0x1001)).vr(), VR::UN);
        assert_eq!(get(tags::COLUMNS).vr(), VR::UN);
    }

    #[test]
    fn a_sequence_sent_as_un_of_defined_length_is_parsed() {
        // one item (defined length) holding Code Value "RPID5145" in implicit VR
        let code = [
            &[0x08u8, 0x00, 0x00, 0x01][..],
            &8u32.to_le_bytes(),
            b"RPID5145",
        ]
        .concat();
        let item = [
            &[0xFEu8, 0xFF, 0x00, 0xE0][..],
            &(code.len() as u32).to_le_bytes(),
            &code,
        ]
        .concat();
        let mut obj = InMemDicomObject::new_empty();
        obj.put(un(tags::PROCEDURE_CODE_SEQUENCE, &item));
        reinterpret_un_values(&mut obj);
        let seq = obj.element(tags::PROCEDURE_CODE_SEQUENCE).unwrap();
        assert_eq!(seq.vr(), VR::SQ);
        let value = seq.items().unwrap()[0].element(tags::CODE_VALUE).unwrap();
        assert_eq!(value.to_str().unwrap(), "RPID5145");
        // not items at all: left as it came
        let mut junk = InMemDicomObject::new_empty();
        junk.put(un(tags::PROCEDURE_CODE_SEQUENCE, b"garbage!"));
        reinterpret_un_values(&mut junk);
        assert_eq!(
            junk.element(tags::PROCEDURE_CODE_SEQUENCE).unwrap().vr(),
            VR::UN
        );
    }

    #[test]
    fn inside_sequence_items_too() {
        let mut item = InMemDicomObject::new_empty();
        item.put(un(tags::CODE_VALUE, b"RPID5145"));
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::PROCEDURE_CODE_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        ));
        reinterpret_un_values(&mut obj);
        let items = obj
            .element(tags::PROCEDURE_CODE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        let code = items[0].element(tags::CODE_VALUE).unwrap();
        assert_eq!(
            (code.vr(), code.to_str().unwrap().as_ref()),
            (VR::SH, "RPID5145")
        );
    }
}

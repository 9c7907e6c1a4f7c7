//! Whether two Part-10 files hold the same data set in different encodings:
//! the same instance re-sent in another transfer syntax (a sender that
//! negotiated Implicit VR this time, a router that decompressed it) is the
//! same instance, not a second version of it.

use std::path::{Path, PathBuf};

use dicom_core::header::Header;
use dicom_core::value::Value;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::header::open_instance;

/// Makes compressed pixel data native (the node gives pneumo-imaging's
/// decoders), so that a compressed and a decompressed copy compare.
pub type Decompress = fn(DefaultDicomObject) -> Result<DefaultDicomObject, String>;

/// The first of the `stored` files (id, path) that holds the data set of
/// `incoming`, read once: both parse and every element of one has the same
/// tag and the same value bytes (little endian, whatever the VR they were
/// read with: OB against OW, UN against the dictionary's VR) as the
/// other's, sequences item by item, group lengths ignored. Compressed pixel
/// data is compared decoded, when `decompress` is given and decodes it.
/// Anything else (a file that does not parse, a decoder missing) is "not
/// the same": the copy is then kept beside the first, as any other version.
pub(crate) fn same_data_set_as(
    incoming: &Path,
    stored: &[(i64, PathBuf)],
    decompress: Option<Decompress>,
) -> Option<i64> {
    // Both data sets are held whole (pixels decoded): one comparison at a
    // time in the process, so that re-sends of large instances on several
    // associations at once hold two instances' worth, not two each (two
    // 700 MB re-sends peaked at 2.7 GB).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let read = |path: &Path| -> Option<DefaultDicomObject> {
        let obj = open_instance(path, None).ok()?;
        let encapsulated = TransferSyntaxRegistry
            .get(obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']))
            .is_none_or(|ts| ts.is_encapsulated_pixel_data());
        if encapsulated {
            decompress?(obj).ok()
        } else {
            Some(obj)
        }
    };
    let incoming = read(incoming)?;
    stored
        .iter()
        .find(|(_, path)| read(path).is_some_and(|copy| same_elements(&incoming, &copy)))
        .map(|(id, _)| *id)
}

/// The elements that make a data set's content: not group lengths nor
/// trailing padding.
fn significant(o: &InMemDicomObject) -> Vec<&InMemElement> {
    o.iter()
        .filter(|e| {
            e.tag().element() != 0
                && e.tag() != dicom_dictionary_std::tags::DATA_SET_TRAILING_PADDING
        })
        .collect()
}

fn same_elements(a: &InMemDicomObject, b: &InMemDicomObject) -> bool {
    let (x, y) = (significant(a), significant(b));
    x.len() == y.len()
        && x.iter()
            .zip(&y)
            .all(|(e, f)| e.tag() == f.tag() && same_value(e.value(), f.value()))
}

fn same_value(a: &Value<InMemDicomObject>, b: &Value<InMemDicomObject>) -> bool {
    match (a, b) {
        (Value::Primitive(p), Value::Primitive(q)) => p.to_bytes() == q.to_bytes(),
        (Value::Sequence(s), Value::Sequence(t)) => same_items(s.items(), t.items()),
        // A private sequence in Implicit VR is read as a sequence when its
        // length is undefined, as bytes when defined (no dictionary entry
        // says SQ): DCMTK re-sends undefined lengths as defined ones, and
        // the same data set was kept as a second version.
        (Value::Sequence(s), Value::Primitive(p)) | (Value::Primitive(p), Value::Sequence(s)) => {
            items_in_implicit_bytes(&p.to_bytes())
                .is_some_and(|items| same_items(s.items(), &items))
        }
        _ => false,
    }
}

fn same_items(a: &[InMemDicomObject], b: &[InMemDicomObject]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(i, j)| same_elements(i, j))
}

/// The items of a sequence value held as bytes: Implicit VR Little Endian
/// items of defined length. None when the bytes are no such items, or hold
/// what the receipt's length walk refuses (nesting past its depth limit,
/// lengths past the end): they were checked as one opaque value then, and
/// the parser's recursion must not meet them unchecked.
fn items_in_implicit_bytes(bytes: &[u8]) -> Option<Vec<InMemDicomObject>> {
    use crate::lengths::{check, Encoding, PixelDataForm};
    let implicit = TransferSyntaxRegistry.get("1.2.840.10008.1.2")?;
    let mut items = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let header = rest.get(..8)?;
        let tag = (
            u16::from_le_bytes([header[0], header[1]]),
            u16::from_le_bytes([header[2], header[3]]),
        );
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let body = rest.get(8..8usize.checked_add(len)?)?;
        if tag != (0xFFFE, 0xE000) {
            return None;
        }
        let encoding = Encoding {
            explicit_vr: false,
            big_endian: false,
            pixel_data: PixelDataForm::Either,
        };
        let end = dicom_core::Tag(0xFFFF, 0xFFFF);
        check(std::io::Cursor::new(body), encoding, body.len() as u64, end).ok()?;
        items.push(InMemDicomObject::read_dataset_with_ts(body, implicit).ok()?);
        rest = &rest[8 + len..];
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_read_as_bytes_is_its_items() {
        // one item of defined length holding (0019,0010) LO "AB"
        let mut bytes = vec![0xFE, 0xFF, 0x00, 0xE0, 10, 0, 0, 0];
        bytes.extend_from_slice(&[0x19, 0x00, 0x10, 0x00, 2, 0, 0, 0, b'A', b'B']);
        let items = items_in_implicit_bytes(&bytes).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0]
                .get(dicom_core::Tag(0x0019, 0x0010))
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            b"AB"
        );
        // not items, an item past the end
        assert!(items_in_implicit_bytes(b"ABCDEFGHIJ").is_none());
        let mut cut = bytes.clone();
        cut.truncate(12);
        assert!(items_in_implicit_bytes(&cut).is_none());
        // nesting past the depth limit inside is refused, not parsed
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend_from_slice(&[0x19, 0x00, 0x20, 0x10, 0xFF, 0xFF, 0xFF, 0xFF]);
            deep.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        for _ in 0..100 {
            deep.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            deep.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend_from_slice(&(deep.len() as u32).to_le_bytes());
        item.extend(deep);
        assert!(items_in_implicit_bytes(&item).is_none());
    }
}

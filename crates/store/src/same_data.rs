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
        (Value::Sequence(s), Value::Sequence(t)) => {
            s.items().len() == t.items().len()
                && s.items()
                    .iter()
                    .zip(t.items())
                    .all(|(i, j)| same_elements(i, j))
        }
        _ => false,
    }
}

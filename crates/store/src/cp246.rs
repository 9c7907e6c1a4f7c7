//! CP-246: sequences that arrive as UN of undefined length.
//!
//! A node that did not know a sequence's tag (often a private one) and
//! received it in implicit VR passes it on in explicit VR as `UN` with an
//! undefined length; its items stay encoded in implicit VR little endian
//! (PS3.5 §6.2.2, CP-246). DCMTK and pydicom read that; dicom-rs 0.10 does
//! not ("could not read value bytes"). Such files are common behind PACS
//! routers, so the node rewrites them before parsing: each such element
//! becomes an `SQ` of undefined length whose items are re-encoded in
//! explicit VR (VRs from the dictionary; unknown and private tags `UN`,
//! private creators `LO`). Only the in-memory copy the node reads is
//! rewritten; the stored file keeps the bytes as received.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use crate::lengths::long_length;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const MAX_DEPTH: usize = 32;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);

/// The explicit VR little endian data set `data` with every UN of
/// undefined length rewritten as an explicit VR sequence; `None` when it
/// has none (nothing to do). Err when the bytes do not hold a data set.
pub fn rewrite_un_sequences(data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut w = Rewriter {
        src: data,
        out: Vec::with_capacity(data.len() + 1024),
        changed: false,
    };
    let mut p = 0;
    w.explicit_elements(&mut p, data.len(), 0)?;
    Ok(w.changed.then_some(w.out))
}

struct Rewriter<'a> {
    src: &'a [u8],
    out: Vec<u8>,
    changed: bool,
}

/// The VR to write for a tag read in implicit VR.
fn implicit_vr(tag: Tag) -> VR {
    if tag.element() == 0 {
        return VR::UL; // group length
    }
    if tag.group() % 2 == 1 {
        // private: creators are LO, the rest unknown
        return if (0x0010..=0x00FF).contains(&tag.element()) {
            VR::LO
        } else {
            VR::UN
        };
    }
    StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr().relaxed())
        .unwrap_or(VR::UN)
}

impl Rewriter<'_> {
    fn u16_at(&self, p: usize) -> Result<u16, String> {
        self.src
            .get(p..p + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("data set truncated at byte {p}"))
    }

    fn u32_at(&self, p: usize) -> Result<u32, String> {
        self.src
            .get(p..p + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("data set truncated at byte {p}"))
    }

    fn tag_at(&self, p: usize) -> Result<Tag, String> {
        Ok(Tag(self.u16_at(p)?, self.u16_at(p + 2)?))
    }

    fn copy(&mut self, from: usize, len: usize) -> Result<(), String> {
        let bytes = self
            .src
            .get(from..from + len)
            .ok_or_else(|| format!("a value at byte {from} runs past the data set"))?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn write_tag(&mut self, tag: Tag) {
        self.out.extend_from_slice(&tag.group().to_le_bytes());
        self.out.extend_from_slice(&tag.element().to_le_bytes());
    }

    fn write_explicit_header(&mut self, tag: Tag, vr: VR, len: u32) {
        self.write_tag(tag);
        self.out.extend_from_slice(vr.to_string().as_bytes());
        if long_length(vr) {
            self.out.extend_from_slice(&[0, 0]);
            self.out.extend_from_slice(&len.to_le_bytes());
        } else {
            self.out.extend_from_slice(&(len as u16).to_le_bytes());
        }
    }

    fn write_delimiter(&mut self, tag: Tag) {
        self.write_tag(tag);
        self.out.extend_from_slice(&0u32.to_le_bytes());
    }

    /// Explicit VR elements from `p` to `end`, or to the item delimiter
    /// (consumed) when inside an item of undefined length.
    fn explicit_elements(&mut self, p: &mut usize, end: usize, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH}"));
        }
        while *p < end {
            let tag = self.tag_at(*p)?;
            if tag == ITEM_END && depth > 0 {
                *p += 8;
                return Ok(());
            }
            if tag.group() == 0xFFFE {
                return Err(format!("unexpected {tag} at byte {p}"));
            }
            let vr_bytes = self
                .src
                .get(*p + 4..*p + 6)
                .ok_or_else(|| format!("data set truncated at byte {p}"))?;
            let vr = VR::from_binary([vr_bytes[0], vr_bytes[1]]).unwrap_or(VR::UN);
            let (header, len) = if long_length(vr) {
                (12, self.u32_at(*p + 8)?)
            } else {
                (8, u32::from(self.u16_at(*p + 6)?))
            };
            let start = *p;
            *p += header;
            match (vr, len) {
                (VR::UN, UNDEFINED) => {
                    self.changed = true;
                    self.write_explicit_header(tag, VR::SQ, UNDEFINED);
                    self.items(p, usize::MAX, depth + 1, true)?;
                }
                (VR::SQ, _) => {
                    self.write_explicit_header(tag, VR::SQ, UNDEFINED);
                    let seq_end = if len == UNDEFINED {
                        usize::MAX
                    } else {
                        *p + len as usize
                    };
                    self.items(p, seq_end, depth + 1, false)?;
                }
                (_, UNDEFINED) => {
                    // Encapsulated pixel data: items of defined length, copied.
                    self.copy(start, header)?;
                    loop {
                        let item = self.tag_at(*p)?;
                        let item_len = self.u32_at(*p + 4)? as usize;
                        self.copy(*p, 8 + item_len)?;
                        *p += 8 + item_len;
                        if item == SEQUENCE_END {
                            break;
                        }
                    }
                }
                _ => {
                    self.copy(start, header + len as usize)?;
                    *p += len as usize;
                }
            }
        }
        Ok(())
    }

    /// Items of a sequence (their elements in implicit VR for a CP-246
    /// UN or a sequence nested in one), written in explicit VR with
    /// undefined lengths (their content may change size), then the
    /// sequence delimiter.
    fn items(
        &mut self,
        p: &mut usize,
        end: usize,
        depth: usize,
        implicit: bool,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH}"));
        }
        while *p < end {
            let tag = self.tag_at(*p)?;
            let len = self.u32_at(*p + 4)?;
            *p += 8;
            if tag == SEQUENCE_END {
                break;
            }
            if tag != ITEM {
                return Err(format!("{tag} where a sequence item was expected"));
            }
            self.write_tag(ITEM);
            self.out.extend_from_slice(&UNDEFINED.to_le_bytes());
            let item_end = if len == UNDEFINED {
                usize::MAX
            } else {
                *p + len as usize
            };
            if implicit {
                self.implicit_elements(p, item_end, depth + 1)?;
            } else {
                self.explicit_elements(p, item_end, depth + 1)?;
            }
            self.write_delimiter(ITEM_END);
        }
        self.write_delimiter(SEQUENCE_END);
        Ok(())
    }

    /// Implicit VR elements up to `end` or the item delimiter (consumed).
    fn implicit_elements(&mut self, p: &mut usize, end: usize, depth: usize) -> Result<(), String> {
        while *p < end {
            let tag = self.tag_at(*p)?;
            let len = self.u32_at(*p + 4)?;
            *p += 8;
            if tag == ITEM_END {
                return Ok(());
            }
            let vr = implicit_vr(tag);
            if len == UNDEFINED || vr == VR::SQ {
                self.write_explicit_header(tag, VR::SQ, UNDEFINED);
                let seq_end = if len == UNDEFINED {
                    usize::MAX
                } else {
                    *p + len as usize
                };
                self.items(p, seq_end, depth + 1, true)?;
                continue;
            }
            // A value too long for its VR's 16-bit length travels as UN.
            let vr = if !long_length(vr) && len > 0xFFFF {
                VR::UN
            } else {
                vr
            };
            self.write_explicit_header(tag, vr, len);
            self.copy(*p, len as usize)?;
            *p += len as usize;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lengths::tests::el as explicit;

    fn implicit(tag: (u16, u16), len: u32, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.0.to_le_bytes());
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn nothing_to_do_without_a_cp246_element() {
        let data = explicit((0x0008, 0x0060), b"CS", b"CR");
        assert_eq!(rewrite_un_sequences(&data).unwrap(), None);
    }

    #[test]
    fn un_of_undefined_length_becomes_an_explicit_sequence() {
        let mut data = explicit((0x0008, 0x0060), b"CS", b"CR");
        // (0008,1032) Procedure Code Sequence as UN, undefined length, one
        // item of defined length with (0008,0100) and a nested sequence.
        let nested = [
            implicit((0xFFFE, 0xE000), UNDEFINED, &[]),
            implicit((0x0008, 0x0104), 4, b"Test"),
            implicit((0xFFFE, 0xE00D), 0, &[]),
            implicit((0xFFFE, 0xE0DD), 0, &[]),
        ]
        .concat();
        let mut item = implicit((0x0008, 0x0100), 6, b"ABC123");
        item.extend(implicit((0x0008, 0x1032), UNDEFINED, &nested));
        let mut un = Vec::new();
        un.extend_from_slice(&[0x08, 0x00, 0x32, 0x10]);
        un.extend_from_slice(b"UN\0\0");
        un.extend_from_slice(&UNDEFINED.to_le_bytes());
        un.extend(implicit((0xFFFE, 0xE000), item.len() as u32, &item));
        un.extend(implicit((0xFFFE, 0xE0DD), 0, &[]));
        data.extend(un);
        data.extend(explicit((0x0010, 0x0010), b"PN", b"Doe^J"));
        let out = rewrite_un_sequences(&data).unwrap().expect("rewritten");
        let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(
            &out[..],
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        let seq = obj.element(Tag(0x0008, 0x1032)).unwrap();
        assert_eq!(seq.vr(), VR::SQ);
        let items = seq.items().unwrap();
        assert_eq!(items.len(), 1);
        let code = items[0].element(Tag(0x0008, 0x0100)).unwrap();
        assert_eq!(code.vr(), VR::SH);
        assert_eq!(code.to_str().unwrap().trim(), "ABC123");
        let inner = items[0]
            .element(Tag(0x0008, 0x1032))
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(
            inner[0]
                .element(Tag(0x0008, 0x0104))
                .unwrap()
                .to_str()
                .unwrap(),
            "Test"
        );
        assert_eq!(
            obj.element(Tag(0x0010, 0x0010)).unwrap().to_str().unwrap(),
            "Doe^J"
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut data = Vec::new();
        data.extend_from_slice(&[0x19, 0x00, 0x01, 0x10]);
        data.extend_from_slice(b"UN\0\0");
        data.extend_from_slice(&UNDEFINED.to_le_bytes());
        data.extend(implicit((0xFFFE, 0xE000), 100, b"short"));
        assert!(rewrite_un_sequences(&data).is_err());
        for cut in 0..data.len() {
            let _ = rewrite_un_sequences(&data[..cut]);
        }
    }
}

//! A pre-flight check of element lengths in a native data set.
//!
//! The DICOM parser allocates (and zero-fills) as many bytes as an element
//! claims before reading them, so a garbled or hostile data set claiming a
//! 4 GB element costs 4 GB of memory and seconds of CPU before it fails.
//! This scan walks the element headers up to a given tag (or the whole data
//! set, encapsulated pixel data's fragments included), following sequences
//! and items, and refuses any length that does not fit in what actually
//! arrived, without allocating.

use std::io::{Read, Seek, SeekFrom};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const MAX_DEPTH: usize = 32;

/// Most elements a data set may hold outside its pixel data, a sequence
/// item counting as [`ITEM_WEIGHT`] elements. Read into memory (its
/// header on receipt, the whole of it for an analysis) an element costs
/// some 300 bytes and an item some 1,200: a sequence of a million
/// one-element items, 18 MB sent, took 1.3 GB, and half a million (under
/// a count of items and elements alike) 1.2 GB each, three deflated ones
/// of 125 KB at once 4.6 GB. So one data set costs some 300 MB at most. A
/// chest radiograph holds a few hundred; the largest objects routed (a
/// dose report of a long procedure, per-frame groups of a multi-frame
/// image) some hundred thousand.
pub const MAX_ELEMENTS: u64 = 1_000_000;

/// What a sequence item counts for against [`MAX_ELEMENTS`].
pub const ITEM_WEIGHT: u64 = 4;

/// VRs whose explicit VR header has a 32-bit length (PS3.5 §7.1.2).
pub(crate) fn long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::SV
            | VR::UV
    )
}

pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
    /// What the transfer syntax says of the top-level Pixel Data's form.
    pub pixel_data: PixelDataForm,
}

/// The form of Pixel Data a transfer syntax allows (PS3.5 A.4): a native
/// syntax's has a defined length, an encapsulated one's is fragments of
/// undefined length. Data sets contradicting their syntax were
/// acknowledged, then failed analysis and every forward (the PACS's parser
/// aborted the association), and the sender had been told they were stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PixelDataForm {
    Native,
    Encapsulated,
    /// A syntax this node does not know the form of: either is taken.
    Either,
}

impl PixelDataForm {
    /// The form transfer syntax `uid` allows.
    pub fn of_syntax(uid: &str) -> PixelDataForm {
        const JPIP_REFERENCED: &[&str] = &[
            "1.2.840.10008.1.2.4.94",
            "1.2.840.10008.1.2.4.95",
            "1.2.840.10008.1.2.4.204",
            "1.2.840.10008.1.2.4.205",
        ];
        match uid.trim_end_matches(['\0', ' ']) {
            "1.2.840.10008.1.2"
            | "1.2.840.10008.1.2.1"
            | "1.2.840.10008.1.2.2"
            | "1.2.840.10008.1.2.1.99" => PixelDataForm::Native,
            // (JPIP: the pixels are elsewhere, Pixel Data is absent)
            u if JPIP_REFERENCED.contains(&u) => PixelDataForm::Either,
            "1.2.840.10008.1.2.5" | "1.2.840.10008.1.2.1.98" => PixelDataForm::Encapsulated,
            u if u.starts_with("1.2.840.10008.1.2.4.") => PixelDataForm::Encapsulated,
            _ => PixelDataForm::Either,
        }
    }
}

struct Scanner<R> {
    r: R,
    enc: Encoding,
    pos: u64,
    stop: Tag,
    /// Elements of these VRs are read, not skipped (`values_of_vrs`).
    collect: &'static [VR],
    collected: Vec<RawValue>,
    /// The sequences (and item numbers) the walk is inside.
    path: Vec<(Tag, usize)>,
    /// Where the top-level element at or after `stop` begins, once met.
    stopped_at: Option<u64>,
    /// The last top-level element's tag: they must ascend.
    last_top: Option<Tag>,
    /// Elements and items met so far (bounded by [`MAX_ELEMENTS`]).
    counted: u64,
}

/// A value read by `values_of_vrs`: where it is, and its bytes.
pub struct RawValue {
    /// The enclosing sequences and item indices, outermost first; empty at top level.
    pub path: Vec<(Tag, usize)>,
    pub tag: Tag,
    pub vr: VR,
    pub bytes: Vec<u8>,
}

enum Stop {
    /// End of the region, or the top-level pixel data.
    Done,
    /// A sequence or item delimiter closed an undefined length.
    Delimiter,
}

/// Checks every element length from the reader's current position to
/// `end` (the end of the data set), up to the first top-level element at or
/// after `stop`; Err names the first length that cannot be.
pub fn check<R: Read + Seek>(r: R, enc: Encoding, end: u64, stop: Tag) -> Result<(), String> {
    values_of_vrs(r, enc, end, stop, &[]).map(|_| ())
}

/// The same walk, returning the raw value bytes of the elements (nested in
/// sequences too) whose VR is in `vrs` (as the header has it; implicit VR:
/// the dictionary's).
pub fn values_of_vrs<R: Read + Seek>(
    r: R,
    enc: Encoding,
    end: u64,
    stop: Tag,
    vrs: &'static [VR],
) -> Result<Vec<RawValue>, String> {
    let mut s = Scanner::new(r, enc, stop, vrs)?;
    s.elements(end, 0, true, false)?;
    Ok(s.collected)
}

/// The same walk, returning where the first top-level element at or after
/// `stop` begins (where the walk ended when there is none).
pub fn start_of<R: Read + Seek>(r: R, enc: Encoding, end: u64, stop: Tag) -> Result<u64, String> {
    let mut s = Scanner::new(r, enc, stop, &[])?;
    s.elements(end, 0, true, false)?;
    Ok(s.stopped_at.unwrap_or(s.pos))
}

impl<R: Read + Seek> Scanner<R> {
    fn new(mut r: R, enc: Encoding, stop: Tag, collect: &'static [VR]) -> Result<Self, String> {
        let pos = r.stream_position().map_err(|e| e.to_string())?;
        Ok(Scanner {
            r,
            enc,
            pos,
            stop,
            collect,
            collected: Vec::new(),
            path: Vec::new(),
            stopped_at: None,
            last_top: None,
            counted: 0,
        })
    }

    fn u16(&mut self) -> Result<u16, String> {
        let mut b = [0u8; 2];
        self.read(&mut b)?;
        Ok(if self.enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(if self.enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn read(&mut self, b: &mut [u8]) -> Result<(), String> {
        self.r
            .read_exact(b)
            .map_err(|_| format!("data set truncated at byte {}", self.pos))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        self.r
            .seek(SeekFrom::Current(n as i64))
            .map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(())
    }

    /// The elements up to `end`, or up to the item delimiter of an item of
    /// undefined length (`in_undefined_item`): a delimiter anywhere else
    /// (at the top level, in an item of defined length, a sequence
    /// delimiter in an item) is an error. The walk stopped at one, and
    /// what followed went unchecked: a data set cut short behind a stray
    /// delimiter was acknowledged, and sequences nested past the depth
    /// limit behind one overflowed the parser's stack (the process died).
    fn elements(
        &mut self,
        end: u64,
        depth: usize,
        top: bool,
        in_undefined_item: bool,
    ) -> Result<Stop, String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH}"));
        }
        while self.pos < end {
            let at = self.pos;
            // Every element header is 8 bytes at least: fewer left are a
            // data set cut inside one, or bytes after its last element.
            // (Said first: a sender's Error Comment keeps 64 characters.)
            let stray = |n: u64| format!("{n} stray bytes end the data set, at byte {at}");
            if top && end - at < 8 {
                return Err(format!(
                    "{}: too few for an element (cut short, or bytes after its last)",
                    stray(end - at)
                ));
            }
            let tag = Tag(self.u16()?, self.u16()?);
            // Group 0000 is the command's, never a data set's: zeros (NUL
            // padding) after the last element.
            if top && tag.group() == 0x0000 {
                return Err(format!(
                    "{}: no element (tag {tag}; padding after the last element?)",
                    stray(end - at)
                ));
            }
            if tag.group() == 0xFFFE {
                let _len = self.u32()?;
                return match tag.element() {
                    0xE00D if in_undefined_item => Ok(Stop::Delimiter),
                    0xE00D | 0xE0DD => Err(format!(
                        "{} delimiter {tag} at byte {at} outside any {}",
                        if tag.element() == 0xE00D {
                            "item"
                        } else {
                            "sequence"
                        },
                        if tag.element() == 0xE00D {
                            "item of undefined length"
                        } else {
                            "sequence of undefined length"
                        }
                    )),
                    _ => Err(format!("unexpected item tag {tag} at byte {at}")),
                };
            }
            self.count_one(at, 1)?;
            // (FFFF,FFFF) is the whole data set's walk: an element so
            // tagged is no stop but an error below.
            if top && tag >= self.stop && self.stop != Tag(0xFFFF, 0xFFFF) {
                self.stopped_at = Some(at);
                return Ok(Stop::Done);
            }
            // PS3.5 7.1: elements ascend. One out of order or given twice
            // (an empty SOP Instance UID after the pixel data, a second
            // Pixel Data) was acknowledged, then read as missing or empty.
            if top {
                if let Some(last) = self.last_top.filter(|last| tag <= *last) {
                    return Err(format!(
                        "element {tag} at byte {at} comes after {last}: a data set's elements \
                         ascend, each once"
                    ));
                }
                self.last_top = Some(tag);
            }
            let (vr, len) = if self.enc.explicit_vr {
                let mut v = [0u8; 2];
                self.read(&mut v)?;
                let vr = VR::from_binary(v).unwrap_or(VR::UN);
                let long = long_length(vr);
                let len = if long {
                    self.skip(2)?;
                    self.u32()?
                } else {
                    u32::from(self.u16()?)
                };
                (vr, len)
            } else {
                let vr = StandardDataDictionary
                    .by_tag(tag)
                    .map(|e| e.vr().relaxed())
                    .unwrap_or(VR::UN);
                (vr, self.u32()?)
            };
            let is_sequence = vr == VR::SQ || (len == UNDEFINED && vr == VR::UN);
            if top && tag == PIXEL_DATA {
                match (self.enc.pixel_data, len == UNDEFINED) {
                    (PixelDataForm::Native, true) => {
                        return Err(format!(
                            "encapsulated pixel data in a native transfer syntax (Pixel Data \
                             at byte {at} has an undefined length)"
                        ))
                    }
                    // (empty: no pixels, in any syntax)
                    (PixelDataForm::Encapsulated, false) if len > 0 => {
                        return Err(format!(
                            "native pixel data in an encapsulated transfer syntax (Pixel Data \
                             at byte {at} has a defined length, not fragments)"
                        ))
                    }
                    _ => {}
                }
            }
            if len == UNDEFINED && tag == PIXEL_DATA && !is_sequence {
                // Encapsulated pixel data: fragments up to its delimiter.
                self.fragments(end)?;
                continue;
            }
            if len == UNDEFINED {
                if !is_sequence {
                    return Err(format!(
                        "element {tag} at byte {at} has an undefined length"
                    ));
                }
                // CP-246: a UN of undefined length holds implicit VR items.
                let explicit = self.enc.explicit_vr;
                if vr == VR::UN {
                    self.enc.explicit_vr = false;
                }
                self.path.push((tag, 0));
                let r = self.items(end, depth + 1, true);
                self.path.pop();
                self.enc.explicit_vr = explicit;
                r?;
                continue;
            }
            let value_end = self.pos + u64::from(len);
            if value_end > end {
                return Err(format!(
                    "element {tag} at byte {at} claims {len} bytes; only {} remain",
                    end - self.pos
                ));
            }
            // A standard sequence sent as UN with a defined length holds
            // implicit VR items (PS3.5 6.2.2), which the node reads as the
            // sequence (un_values): walked as one, or nesting thousands
            // deep inside it overflowed the parser's stack after the
            // acknowledgement, and a million items in it went uncounted.
            let un_sequence = vr == VR::UN
                && self.enc.explicit_vr
                && !self.enc.big_endian
                && StandardDataDictionary
                    .by_tag(tag)
                    .is_some_and(|e| e.vr().relaxed() == VR::SQ);
            if is_sequence || un_sequence {
                let explicit = self.enc.explicit_vr;
                if un_sequence {
                    self.enc.explicit_vr = false;
                }
                self.path.push((tag, 0));
                let r = self.items(value_end, depth + 1, false);
                self.path.pop();
                self.enc.explicit_vr = explicit;
                r?;
                self.skip(value_end.saturating_sub(self.pos))?;
            } else if self.collect.contains(&vr) {
                let mut bytes = vec![0u8; len as usize]; // fits: checked against `end` above
                self.read(&mut bytes)?;
                self.collected.push(RawValue {
                    path: self.path.clone(),
                    tag,
                    vr,
                    bytes,
                });
            } else {
                self.skip(u64::from(len))?;
            }
        }
        Ok(Stop::Done)
    }

    /// Counts one more element (`weight` 1) or item against
    /// [`MAX_ELEMENTS`].
    fn count_one(&mut self, at: u64, weight: u64) -> Result<(), String> {
        self.counted += weight;
        if self.counted > MAX_ELEMENTS {
            return Err(format!(
                "more than {MAX_ELEMENTS} elements (an item counts {ITEM_WEIGHT}) at byte {at}, \
                 the most this node reads: each is held in memory"
            ));
        }
        Ok(())
    }

    fn next_item(&mut self) {
        if let Some((_, item)) = self.path.last_mut() {
            *item += 1;
        }
    }

    /// The fragments of encapsulated pixel data (PS3.5 A.4): items of
    /// defined length holding bytes, up to the sequence delimiter.
    fn fragments(&mut self, end: u64) -> Result<(), String> {
        while self.pos < end {
            let at = self.pos;
            let tag = Tag(self.u16()?, self.u16()?);
            let len = self.u32()?;
            match (tag.group(), tag.element()) {
                (0xFFFE, 0xE0DD) => return Ok(()),
                (0xFFFE, 0xE000) if len != UNDEFINED => {
                    if self.pos + u64::from(len) > end {
                        return Err(format!(
                            "pixel data fragment at byte {at} claims {len} bytes; only {} remain",
                            end - self.pos
                        ));
                    }
                    self.skip(u64::from(len))?;
                }
                _ => {
                    return Err(format!(
                        "expected a pixel data fragment, found {tag} at byte {at}"
                    ))
                }
            }
        }
        Err("encapsulated pixel data never ends (no sequence delimiter)".into())
    }

    /// The items of a sequence, up to `end` or its delimiter.
    fn items(&mut self, end: u64, depth: usize, undefined: bool) -> Result<(), String> {
        while self.pos < end {
            let at = self.pos;
            let tag = Tag(self.u16()?, self.u16()?);
            let len = self.u32()?;
            self.count_one(at, ITEM_WEIGHT)?;
            match (tag.group(), tag.element()) {
                (0xFFFE, 0xE0DD) if undefined => return Ok(()),
                (0xFFFE, 0xE0DD) => {
                    return Err(format!(
                        "sequence delimiter at byte {at} in a sequence of defined length"
                    ))
                }
                (0xFFFE, 0xE000) if len == UNDEFINED => {
                    match self.elements(end, depth, false, true)? {
                        Stop::Delimiter => self.next_item(),
                        Stop::Done => return Err(format!("item at byte {at} never ends")),
                    }
                }
                (0xFFFE, 0xE000) => {
                    let item_end = self.pos + u64::from(len);
                    if item_end > end {
                        return Err(format!(
                            "item at byte {at} claims {len} bytes; only {} remain",
                            end - self.pos
                        ));
                    }
                    self.elements(item_end, depth, false, false)?;
                    self.skip(item_end.saturating_sub(self.pos))?;
                    self.next_item();
                }
                _ => return Err(format!("expected an item, found {tag} at byte {at}")),
            }
        }
        if undefined {
            return Err("sequence of undefined length never ends".into());
        }
        Ok(())
    }
}

/// A reader that seeks forward only, by reading and discarding: the walk
/// over a stream that cannot seek (an inflating one).
pub struct ForwardOnly<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> ForwardOnly<R> {
    pub fn new(inner: R) -> Self {
        ForwardOnly { inner, pos: 0 }
    }
}

impl<R: Read> Read for ForwardOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Seek for ForwardOnly<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Current(n) if n >= 0 => self.pos + n as u64,
            SeekFrom::Start(n) if n >= self.pos => n,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "a forward-only reader cannot seek back",
                ))
            }
        };
        let want = target - self.pos;
        let skipped = std::io::copy(&mut (&mut self.inner).take(want), &mut std::io::sink())?;
        self.pos += skipped;
        if skipped < want {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(self.pos)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// One explicit VR little endian element with a 16-bit length.
    pub(crate) fn el(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.0.to_le_bytes());
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    fn explicit(bytes: &[u8]) -> Result<(), String> {
        let enc = Encoding {
            explicit_vr: true,
            big_endian: false,
            pixel_data: PixelDataForm::Either,
        };
        check(
            Cursor::new(bytes),
            enc,
            bytes.len() as u64,
            Tag(0x7FE0, 0x0010),
        )
    }

    #[test]
    fn good_data_sets_pass_and_huge_lengths_are_refused() {
        let mut good = el((0x0008, 0x0060), b"CS", b"CR");
        // a sequence of undefined length with one undefined-length item
        good.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        good.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        good.extend(el((0x0008, 0x1150), b"UI", b"1.2"));
        good.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        good.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        good.extend(el((0x0010, 0x0010), b"PN", b"DOE^J"));
        assert_eq!(explicit(&good), Ok(()));
        // bytes after the last element are named so, not "truncated"
        for extra in 1..8 {
            let mut trailing = good.clone();
            trailing.extend(std::iter::repeat_n(0u8, extra));
            let err = explicit(&trailing).unwrap_err();
            assert!(
                err.starts_with(&format!("{extra} stray bytes end")),
                "{err}"
            );
        }
        let mut padded = good.clone();
        padded.extend([0u8; 8]);
        let err = explicit(&padded).unwrap_err();
        assert!(err.starts_with("8 stray bytes end"), "{err}");
        // elements out of order, or twice
        let mut twice = good.clone();
        twice.extend(el((0x0008, 0x0060), b"CS", b"DX"));
        let err = explicit(&twice).unwrap_err();
        assert!(err.contains("comes after (0010,0010)"), "{err}");
        let mut again = good.clone();
        again.extend(el((0x0010, 0x0010), b"PN", b""));
        assert!(explicit(&again).unwrap_err().contains("ascend, each once"));

        let mut huge = el((0x0008, 0x0060), b"CS", b"CR");
        huge.extend_from_slice(&[
            0x08, 0x00, 0x70, 0x00, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
        ]);
        let err = explicit(&huge).unwrap_err();
        assert!(err.contains("claims 4294967280 bytes"), "{err}");

        let mut open = el((0x0008, 0x0060), b"CS", b"CR");
        open.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        assert!(explicit(&open).is_err());
    }

    #[test]
    fn a_million_elements_and_items_is_the_most() {
        let with_items = |n: u32| {
            let mut items = Vec::new();
            for _ in 0..n {
                items.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 10, 0, 0, 0]);
                items.extend(el((0x0008, 0x0100), b"SH", b"AB"));
            }
            let mut v = el((0x0008, 0x0060), b"CS", b"CR");
            v.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0]);
            v.extend_from_slice(&(items.len() as u32).to_le_bytes());
            v.extend(items);
            v
        };
        // two top-level elements, then an item and an element each
        let most = ((MAX_ELEMENTS - 2) / (ITEM_WEIGHT + 1)) as u32;
        assert_eq!(explicit(&with_items(most)), Ok(()));
        let err = explicit(&with_items(most + 1)).unwrap_err();
        assert!(
            err.starts_with("more than 1000000 elements (an item counts 4)"),
            "{err}"
        );
    }

    #[test]
    fn a_standard_sequence_sent_as_un_of_defined_length_is_walked() {
        // (0008,1140) Referenced Image Sequence as UN, defined length,
        // holding implicit VR items nested past the depth limit
        let nest = |depth: usize| {
            let mut inner = Vec::new();
            for _ in 0..depth {
                inner.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, 0xFF, 0xFF, 0xFF, 0xFF]);
                inner.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
            }
            for _ in 0..depth {
                inner.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
                inner.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            }
            let mut value = vec![0xFE, 0xFF, 0x00, 0xE0];
            value.extend_from_slice(&(inner.len() as u32).to_le_bytes());
            value.extend(inner);
            let mut v = el((0x0008, 0x0060), b"CS", b"CR");
            v.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'U', b'N', 0, 0]);
            v.extend_from_slice(&(value.len() as u32).to_le_bytes());
            v.extend(value);
            v
        };
        assert_eq!(explicit(&nest(3)), Ok(()));
        let err = explicit(&nest(3000)).unwrap_err();
        assert!(err.contains("nested deeper than"), "{err}");
    }

    #[test]
    fn delimiters_close_only_what_has_an_undefined_length() {
        let item_delimiter = [0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0];
        let sequence_delimiter = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];
        // at the top level, before an element claiming more than there is:
        // the walk stopped there, and the cut-off data set was acknowledged
        for stray in [item_delimiter, sequence_delimiter] {
            let mut v = el((0x0008, 0x0060), b"CS", b"CR");
            v.extend_from_slice(&stray);
            v.extend_from_slice(&[
                0x08, 0x00, 0x70, 0x00, b'O', b'B', 0, 0, 0xF0, 0xFF, 0x00, 0x00,
            ]);
            let err = explicit(&v).unwrap_err();
            assert!(
                err.contains("delimiter (FFFE,E0") && err.contains("outside any"),
                "{err}"
            );
        }
        // a sequence delimiter in a sequence of defined length
        let mut v = el((0x0008, 0x0060), b"CS", b"CR");
        v.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 8, 0, 0, 0]);
        v.extend_from_slice(&sequence_delimiter);
        let err = explicit(&v).unwrap_err();
        assert!(err.contains("in a sequence of defined length"), "{err}");
        // an item delimiter in an item of defined length
        let mut v = el((0x0008, 0x0060), b"CS", b"CR");
        v.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 16, 0, 0, 0]);
        v.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 8, 0, 0, 0]);
        v.extend_from_slice(&item_delimiter);
        assert!(explicit(&v)
            .unwrap_err()
            .contains("outside any item of undefined length"));
        // a sequence delimiter inside an undefined-length item
        let mut v = el((0x0008, 0x0060), b"CS", b"CR");
        v.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        v.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        v.extend_from_slice(&sequence_delimiter);
        v.extend_from_slice(&sequence_delimiter);
        assert!(explicit(&v).is_err());
    }

    #[test]
    fn pixel_data_must_have_the_form_of_its_syntax() {
        let with = |form, len: u32| {
            let mut v = el((0x0008, 0x0060), b"CS", b"CR");
            v.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
            v.extend_from_slice(&len.to_le_bytes());
            v.extend(std::iter::repeat_n(0u8, len as usize));
            let enc = Encoding {
                explicit_vr: true,
                big_endian: false,
                pixel_data: form,
            };
            check(Cursor::new(&v), enc, v.len() as u64, Tag(0xFFFF, 0xFFFF))
        };
        assert!(with(PixelDataForm::Native, 4).is_ok());
        let err = with(PixelDataForm::Encapsulated, 4).unwrap_err();
        assert!(
            err.starts_with("native pixel data in an encapsulated"),
            "{err}"
        );
        // empty: no pixels, in any syntax
        assert!(with(PixelDataForm::Encapsulated, 0).is_ok());
        assert!(with(PixelDataForm::Either, 4).is_ok());
        assert_eq!(
            PixelDataForm::of_syntax("1.2.840.10008.1.2.4.80\0"),
            PixelDataForm::Encapsulated
        );
        assert_eq!(
            PixelDataForm::of_syntax("1.2.840.10008.1.2.1.98"),
            PixelDataForm::Encapsulated
        );
        assert_eq!(
            PixelDataForm::of_syntax("1.2.840.10008.1.2"),
            PixelDataForm::Native
        );
        assert_eq!(
            PixelDataForm::of_syntax("1.2.840.10008.1.2.4.94"),
            PixelDataForm::Either
        );
    }
}

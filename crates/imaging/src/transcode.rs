//! Compressed pixel data made native, for a destination that takes no
//! compressed transfer syntax (an older PACS, a teaching archive).
//!
//! Every frame is decoded by the decoders analysis uses and the data set
//! gets native Pixel Data (OB for 8 bits, OW for 16). The SOP Instance UID
//! is kept, as DCMTK's and Orthanc's decompression keep it: the pixels are
//! the ones the modality encoded. An image that was lossy compressed says so
//! afterwards (Lossy Image Compression "01", PS3.3 C.7.6.1.1.5).

use dicom_core::smallvec::SmallVec;
use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::adapters::PixelDataObject;
use dicom_object::DefaultDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use crate::decode::{can_decode, decode_encapsulated_frame};
use crate::error::ImagingError;
use crate::header::{elem, get_i64, get_str, ImageHeader};

/// The longest value a defined-length element can have (PS3.5 7.1.1).
const MAX_NATIVE_LENGTH: u64 = 0xFFFF_FFFE;

const EXTENDED_OFFSET_TABLE: Tag = Tag(0x7FE0, 0x0001);
const EXTENDED_OFFSET_TABLE_LENGTHS: Tag = Tag(0x7FE0, 0x0002);

/// Lossy transfer syntaxes and the method each names in Lossy Image
/// Compression Method (0028,2114).
const LOSSY: &[(&str, &str)] = &[
    ("1.2.840.10008.1.2.4.50", "ISO_10918_1"),
    ("1.2.840.10008.1.2.4.51", "ISO_10918_1"),
    ("1.2.840.10008.1.2.4.81", "ISO_14495_1"),
    ("1.2.840.10008.1.2.4.91", "ISO_15444_1"),
    ("1.2.840.10008.1.2.4.203", "ISO_15444_15"),
];

/// Whether the transfer syntax may be lossy.
pub(crate) fn is_lossy(ts_uid: &str) -> bool {
    LOSSY.iter().any(|(ts, _)| *ts == ts_uid)
}

/// JPEG Baseline and Extended: DCT-based, never lossless.
const DCT_JPEG: &[&str] = &["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];

/// Whether files in this transfer syntax have compressed pixel data that
/// [`decompress`] can make native.
pub fn can_decompress(ts_uid: &str) -> bool {
    let uid = ts_uid.trim_end_matches(['\0', ' ']);
    TransferSyntaxRegistry
        .get(uid)
        .is_some_and(|ts| ts.is_encapsulated_pixel_data())
        && can_decode(uid)
}

/// The data set with every frame's pixel data decoded and stored native;
/// the file meta's transfer syntax becomes Explicit VR Little Endian. A data
/// set whose pixel data is already native is returned as it is.
///
/// Grey-scale images (one sample per pixel, 8 or 16 bits allocated) of any
/// number of frames; colour ones are refused, as is a multi-frame image
/// whose fragments cannot be told apart per frame.
pub fn decompress(mut obj: DefaultDicomObject) -> Result<DefaultDicomObject, ImagingError> {
    let uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    if !TransferSyntaxRegistry
        .get(&uid)
        .is_some_and(|ts| ts.is_encapsulated_pixel_data())
    {
        return Ok(obj);
    }
    if !can_decode(&uid) {
        return Err(ImagingError::UnsupportedTransferSyntax {
            name: TransferSyntaxRegistry
                .get(&uid)
                .map(|ts| ts.name().to_string())
                .unwrap_or_else(|| "unknown".into()),
            uid,
            reason: "no pixel data decoder for it in this build".into(),
        });
    }
    // Grey only (MONOCHROME1/2): a colour image is refused here.
    let header = ImageHeader::read(&obj)?;
    let frames = match get_i64(&obj, tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => n as u32,
        Some(n) => {
            return Err(ImagingError::InvalidAttribute {
                name: "NumberOfFrames",
                value: n.to_string(),
            })
        }
    };
    // Each frame has at least one fragment: a Number of Frames beyond them is
    // wrong, and must not size the buffer below.
    let fragments = obj.number_of_fragments().unwrap_or(0);
    if frames > fragments {
        return Err(ImagingError::InvalidAttribute {
            name: "NumberOfFrames",
            value: format!("{frames}, with {fragments} fragment(s) of pixel data"),
        });
    }
    let frame_bytes = header.frame_bytes();
    let total = frame_bytes as u64 * u64::from(frames);
    if total > MAX_NATIVE_LENGTH {
        return Err(ImagingError::InvalidAttribute {
            name: "NumberOfFrames",
            value: format!(
                "{frames} frames of {frame_bytes} bytes: more than native Pixel Data can hold"
            ),
        });
    }
    one_fragment_per_frame(&mut obj, frames, &uid)?;
    let mut samples_le = Vec::with_capacity(total as usize);
    for frame in 0..frames {
        // Within Bits Stored (checked there): samples wider than the
        // header says went out native under it, noise to every viewer.
        samples_le.extend(decode_encapsulated_frame(&obj, &header, frame)?);
    }
    let pixel_data = if header.bits_allocated == 8 {
        // Values have even length (PS3.5 7.1.1): one NUL pads an odd count.
        if samples_le.len() % 2 == 1 {
            samples_le.push(0);
        }
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::U8(samples_le.into()),
        )
    } else {
        let words: SmallVec<[u16; 2]> = samples_le
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(words))
    };
    obj.put(pixel_data);
    // DCMTK compresses an Icon Image Sequence's pixel data with the
    // image's: left encapsulated in a native syntax (PS3.5 A.4 allows it
    // only in encapsulated ones) the data set was unreadable to the
    // destination, which refused it at every retry. The icon is Type 3, a
    // convenience of browsers: dropped.
    // (nested ones too: an icon in a Referenced Image Sequence item)
    drop_encapsulated_icons(&mut obj);
    obj.remove_element(EXTENDED_OFFSET_TABLE);
    obj.remove_element(EXTENDED_OFFSET_TABLE_LENGTHS);
    if let Some((_, method)) = LOSSY.iter().find(|(ts, _)| *ts == uid) {
        // JPEG's DCT processes are lossy whatever the header says; the
        // others may have been used reversibly, so a "00" there stands.
        let said = get_str(&obj, tags::LOSSY_IMAGE_COMPRESSION);
        if said.is_none() || DCT_JPEG.contains(&uid.as_str()) {
            obj.put(DataElement::new(
                tags::LOSSY_IMAGE_COMPRESSION,
                VR::CS,
                PrimitiveValue::from("01"),
            ));
        }
        let lossy = get_str(&obj, tags::LOSSY_IMAGE_COMPRESSION).as_deref() == Some("01");
        if lossy && elem(&obj, tags::LOSSY_IMAGE_COMPRESSION_METHOD).is_none() {
            obj.put(DataElement::new(
                tags::LOSSY_IMAGE_COMPRESSION_METHOD,
                VR::CS,
                PrimitiveValue::from(*method),
            ));
        }
    }
    obj.meta_mut()
        .set_transfer_syntax(&dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN);
    Ok(obj)
}

/// Removes every Icon Image Sequence, at any depth, an item of which
/// holds encapsulated pixel data; whether any was.
fn drop_encapsulated_icons(obj: &mut dicom_object::InMemDicomObject) -> bool {
    use dicom_core::header::Header;
    use dicom_core::value::{DataSetSequence, Value};
    let encapsulated = |item: &dicom_object::InMemDicomObject| {
        item.get(tags::PIXEL_DATA)
            .is_some_and(|p| matches!(p.value(), Value::PixelSequence(_)))
    };
    let mut dropped = false;
    if obj
        .get(tags::ICON_IMAGE_SEQUENCE)
        .and_then(|e| e.items())
        .is_some_and(|items| items.iter().any(encapsulated))
    {
        obj.remove_element(tags::ICON_IMAGE_SEQUENCE);
        dropped = true;
    }
    let sequences: Vec<(dicom_core::Tag, VR)> = obj
        .iter()
        .filter(|e| matches!(e.value(), Value::Sequence(_)))
        .map(|e| (e.tag(), e.vr()))
        .collect();
    for (tag, vr) in sequences {
        let Some(mut items) = obj.get(tag).and_then(|e| e.items()).map(|i| i.to_vec()) else {
            continue;
        };
        let mut changed = false;
        for item in &mut items {
            changed |= drop_encapsulated_icons(item);
        }
        if changed {
            obj.put(DataElement::new(
                tag,
                vr,
                Value::Sequence(DataSetSequence::new(items, dicom_core::Length::UNDEFINED)),
            ));
            dropped = true;
        }
    }
    dropped
}

/// Regroups the fragments of a multi-frame image that has no Basic Offset
/// Table and more fragments than frames, one codestream per frame, by the
/// marker each codestream starts with (JPEG and JPEG-LS SOI, JPEG 2000 SOC);
/// the decoders then find each frame's data.
fn one_fragment_per_frame(
    obj: &mut DefaultDicomObject,
    frames: u32,
    uid: &str,
) -> Result<(), ImagingError> {
    let fragments = obj.number_of_fragments().unwrap_or(0);
    let has_offsets = obj.offset_table().is_some_and(|t| !t.is_empty());
    if frames <= 1 || fragments == frames || has_offsets {
        return Ok(());
    }
    let starts_codestream =
        |f: &[u8]| f.starts_with(&[0xFF, 0xD8]) || f.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]);
    let mut grouped: Vec<Vec<u8>> = Vec::new();
    for index in 0..fragments as usize {
        let fragment = obj.fragment(index).unwrap_or_default();
        match grouped.last_mut() {
            Some(current) if !starts_codestream(&fragment) => current.extend_from_slice(&fragment),
            _ => grouped.push(fragment.into_owned()),
        }
    }
    if grouped.len() != frames as usize {
        return Err(ImagingError::Decode {
            transfer_syntax: uid.to_string(),
            message: format!(
                "{fragments} fragments for {frames} frames, no offset table, and {} codestreams found in them",
                grouped.len()
            ),
        });
    }
    let sequence = PixelFragmentSequence::new_fragments(grouped);
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, sequence));
    Ok(())
}

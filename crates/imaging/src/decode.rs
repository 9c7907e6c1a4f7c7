//! Pixel data to raw little-endian stored samples, for every transfer syntax
//! this node analyses.

use std::borrow::Cow;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::tags;
use dicom_encoding::adapters::PixelDataObject;
use dicom_encoding::transfer_syntax::Codec;
use dicom_object::DefaultDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use crate::codestream;
use crate::error::ImagingError;
use crate::header::{check_high_bit, elem, fit_decoded_samples, ImageHeader};
use crate::jpeg;

/// Transfer syntaxes whose pixel data this crate decodes for analysis.
///
/// Each has a decoder in this build and a fixture in the parity test (HTJ2K
/// is decoded by OpenJPEG; see docs/imaging.md for which fixtures cover it).
/// JPEG (Baseline, Extended 8 and 12 bits, and lossless process 14) goes
/// to libjpeg-turbo (`crate::jpeg`), everything else to the dicom-rs
/// registry's decoders.
pub const ANALYSABLE_TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2",       // Implicit VR Little Endian
    "1.2.840.10008.1.2.1",     // Explicit VR Little Endian
    "1.2.840.10008.1.2.2",     // Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.1.99",  // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",     // RLE Lossless
    "1.2.840.10008.1.2.4.50",  // JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  // JPEG Extended (Process 2 & 4), 8 and 12 bits
    "1.2.840.10008.1.2.4.57",  // JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  // JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.80",  // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  // JPEG-LS Lossy (Near-Lossless)
    "1.2.840.10008.1.2.4.90",  // JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91",  // JPEG 2000
    "1.2.840.10008.1.2.4.201", // HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.202", // HTJ2K with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.4.203", // HTJ2K
];

const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";
const JPEG_LOSSLESS: &str = "1.2.840.10008.1.2.4.57";
const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// The list of transfer syntaxes the SCP may accept for analysis.
pub fn analysable_transfer_syntaxes() -> &'static [&'static str] {
    ANALYSABLE_TRANSFER_SYNTAXES
}

/// Whether pixel data in this transfer syntax is decoded for analysis.
/// Trailing NUL padding of the UID is ignored.
pub fn can_decode(ts_uid: &str) -> bool {
    let uid = ts_uid.trim_end_matches(['\0', ' ']);
    ANALYSABLE_TRANSFER_SYNTAXES.contains(&uid)
        && (is_libjpeg_turbo_jpeg(uid)
            || TransferSyntaxRegistry
                .get(uid)
                .is_some_and(|ts| ts.can_decode_all()))
}

/// The JPEG syntaxes libjpeg-turbo decodes: the DCT-based ones, and the
/// lossless ones (process 14), which the registry's `jpeg-decoder` got wrong
/// under a point transform (it predicted from shifted samples).
fn is_libjpeg_turbo_jpeg(uid: &str) -> bool {
    [
        JPEG_BASELINE,
        JPEG_EXTENDED,
        JPEG_LOSSLESS,
        JPEG_LOSSLESS_SV1,
    ]
    .contains(&uid)
}

fn ts_name(uid: &str) -> String {
    TransferSyntaxRegistry
        .get(uid)
        .map(|ts| ts.name().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// The stored samples of the single frame, little endian, exactly
/// `header.frame_bytes()` long, checked against Bits Stored: native ones
/// and RLE's by [`check_high_bit`], other decoded ones by
/// [`fit_decoded_samples`].
pub(crate) fn decode_samples<'a>(
    obj: &'a DefaultDicomObject,
    header: &ImageHeader,
) -> Result<Cow<'a, [u8]>, ImagingError> {
    let uid = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    let unsupported = |reason: &str| ImagingError::UnsupportedTransferSyntax {
        uid: uid.to_string(),
        name: ts_name(uid),
        reason: reason.to_string(),
    };
    let ts = TransferSyntaxRegistry
        .get(uid)
        .ok_or_else(|| unsupported("unknown transfer syntax"))?;
    if !can_decode(uid) {
        let reason = if ts.can_decode_all() {
            "not on the list of transfer syntaxes analysed (no verified fixture)"
        } else {
            "no pixel data decoder for it in this build"
        };
        return Err(unsupported(reason));
    }
    let pixel = elem(obj, tags::PIXEL_DATA).ok_or(ImagingError::NoPixelData)?;
    let expected = header.frame_bytes();
    let decode_err = |message: String| ImagingError::Decode {
        transfer_syntax: uid.to_string(),
        message,
    };
    if ts.is_encapsulated_pixel_data() {
        if !matches!(pixel.value(), Value::PixelSequence(_)) {
            return Err(decode_err(
                "native pixel data in an encapsulated transfer syntax".into(),
            ));
        }
        return decode_encapsulated_frame(obj, header, 0).map(Cow::Owned);
    }
    match ts.codec() {
        Codec::None | Codec::Dataset(Some(_)) => {
            let prim = match pixel.value() {
                Value::Primitive(p) => p,
                _ => {
                    return Err(decode_err(
                        "pixel data is encapsulated in a native transfer syntax".into(),
                    ))
                }
            };
            let bytes: Cow<'a, [u8]> = match prim {
                // 8-bit samples read as OW from a big-endian file: the word holds
                // the first sample in its low-order byte (PS3.5 8.1.1), as in
                // little endian; the file had its bytes swapped, the value not.
                PrimitiveValue::U16(words)
                    if uid == EXPLICIT_VR_BIG_ENDIAN && header.bits_allocated == 8 =>
                {
                    Cow::Owned(words.iter().flat_map(|w| w.to_le_bytes()).collect())
                }
                _ => prim.to_bytes(),
            };
            let actual = bytes.len();
            // Odd lengths are padded to even with one byte.
            let padded = expected + (expected % 2);
            if actual != expected && actual != padded {
                return Err(ImagingError::PixelDataLength { expected, actual });
            }
            let samples = match bytes {
                Cow::Borrowed(b) => Cow::Borrowed(&b[..expected]),
                Cow::Owned(mut v) => {
                    v.truncate(expected);
                    Cow::Owned(v)
                }
            };
            check_high_bit(&samples, header)?;
            Ok(samples)
        }
        _ => Err(unsupported("no pixel data decoder for it in this build")),
    }
}

/// A copy of a single-frame `obj` whose pixel data is `codestream` in one
/// fragment, when it came in several; None otherwise (nothing to copy).
fn one_fragment_per_frame(
    obj: &DefaultDicomObject,
    codestream: &[u8],
) -> Option<DefaultDicomObject> {
    // Counted on the element: `raw_pixel_data` would copy every fragment.
    let fragments = match obj.element(tags::PIXEL_DATA).ok()?.value() {
        Value::PixelSequence(sequence) => sequence.fragments().len(),
        _ => return None,
    };
    if obj.number_of_frames().unwrap_or(1) != 1 || fragments <= 1 {
        return None;
    }
    let mut copy = obj.clone();
    copy.put(dicom_core::DataElement::new(
        tags::PIXEL_DATA,
        dicom_core::VR::OB,
        Value::PixelSequence(dicom_core::value::PixelFragmentSequence::new(
            Vec::<u32>::new(),
            vec![codestream.to_vec()],
        )),
    ));
    Some(copy)
}

/// One frame of encapsulated pixel data as little-endian stored samples,
/// exactly `header.frame_bytes()` long and within Bits Stored
/// ([`fit_decoded_samples`]: for the analysis and for decompressing alike).
/// The caller has checked that the transfer syntax is one [`can_decode`]
/// takes and the value a sequence.
pub(crate) fn decode_encapsulated_frame(
    obj: &DefaultDicomObject,
    header: &ImageHeader,
    frame: u32,
) -> Result<Vec<u8>, ImagingError> {
    let uid = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    let expected = header.frame_bytes();
    let decode_err = |message: String| ImagingError::Decode {
        transfer_syntax: uid.to_string(),
        message,
    };
    // The frame's fragments in order (by the offset table when several
    // frames share fragments), as the registry's decoders read them.
    let codestream = obj
        .frame_pixel_data(frame)
        .ok_or_else(|| decode_err(format!("no fragments for frame {}", frame + 1)))?;
    let mut out = if is_libjpeg_turbo_jpeg(uid) {
        decode_jpeg(&codestream, header).map_err(decode_err)?
    } else {
        let Some(Codec::EncapsulatedPixelData(Some(decoder), _)) =
            TransferSyntaxRegistry.get(uid).map(|ts| ts.codec())
        else {
            return Err(decode_err(
                "no pixel data decoder for it in this build".into(),
            ));
        };
        // The registry's decoders trust Rows and Columns: the codestream's
        // own size is compared first (see `codestream`).
        codestream::check_frame_size(
            uid,
            &codestream,
            header.rows,
            header.cols,
            header.bits_allocated,
        )
        .map_err(decode_err)?;
        // The registry's decoders take fragment N as frame N: a single
        // frame sent in several fragments (against PS3.5 A.4.2 for RLE, as
        // some senders cut them) is handed over as the one fragment it is.
        let rejoined = one_fragment_per_frame(obj, &codestream);
        let obj = rejoined.as_ref().unwrap_or(obj);
        // dicom-rs's RLE decoder indexes past the end of a truncated
        // segment (a panic); taken as the decode error it is.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut out = Vec::with_capacity(expected);
            decoder.decode_frame(obj, frame, &mut out).map(|()| out)
        }));
        match decoded {
            Ok(result) => result.map_err(|e| decode_err(e.to_string()))?,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                return Err(decode_err(format!(
                    "the decoder failed on this pixel data (truncated or malformed: {why})"
                )));
            }
        }
    };
    // A codestream of other dimensions than the header's is refused, larger
    // too: cut to the header's size it was a cropped image, analysed and
    // forwarded as if whole.
    if out.len() != expected {
        return Err(ImagingError::PixelDataLength {
            expected,
            actual: out.len(),
        });
    }
    if uid == RLE_LOSSLESS {
        // RLE codes the sample words byte by byte as a native data set
        // holds them, bits above Bits Stored (an overlay, in old CR units'
        // images) included: read as native samples are (the same pixels
        // uncompressed were analysed, compressed refused).
        check_high_bit(&out, header)?;
    } else {
        fit_decoded_samples(&mut out, header, crate::transcode::is_lossy(uid))?;
    }
    Ok(out)
}

/// One frame's JPEG (DCT or lossless) codestream as little-endian stored
/// samples in the header's Bits Allocated.
fn decode_jpeg(codestream: &[u8], header: &ImageHeader) -> Result<Vec<u8>, String> {
    let image = jpeg::decode_grey(codestream, header.pixel_count())?;
    if image.width != header.cols as usize || image.height != header.rows as usize {
        return Err(format!(
            "the JPEG codestream is {}x{}, the data set says {}x{}",
            image.width, image.height, header.cols, header.rows
        ));
    }
    if image.precision > u32::from(header.bits_allocated) {
        return Err(format!(
            "the JPEG codestream has {}-bit samples, more than Bits Allocated {}",
            image.precision, header.bits_allocated
        ));
    }
    Ok(match (image.samples, header.bits_allocated) {
        (jpeg::Samples::U8(s), 8) => s,
        (jpeg::Samples::U8(s), _) => s
            .into_iter()
            .flat_map(|v| u16::from(v).to_le_bytes())
            .collect(),
        (jpeg::Samples::U16(s), _) => s.into_iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_syntax_has_a_decoder() {
        for uid in ANALYSABLE_TRANSFER_SYNTAXES {
            assert!(can_decode(uid), "{uid} listed but not decodable");
        }
    }

    #[test]
    fn refused_syntaxes() {
        assert!(can_decode(JPEG_EXTENDED));
        assert!(!can_decode("1.2.840.10008.1.2.4.92")); // JPEG 2000 Part 2
        assert!(!can_decode("1.2.840.10008.1.2.4.100")); // MPEG2
        assert!(!can_decode("1.2.3.4"));
        assert!(can_decode("1.2.840.10008.1.2.1\0"));
    }
}

//! Reading the image attributes the pipeline needs, and the refusals that
//! follow from them alone.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;

use crate::error::ImagingError;

pub(crate) fn elem(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemElement> {
    obj.element_opt(tag).ok().flatten()
}

pub(crate) fn get_u16(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    elem(obj, tag).and_then(|e| e.to_int::<u16>().ok())
}

pub(crate) fn get_i64(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    elem(obj, tag).and_then(|e| e.to_int::<i64>().ok())
}

/// All values of a numeric (or decimal string) attribute, empty when absent.
/// The numeric values of an attribute, each in its place: a value that does
/// not parse is NaN rather than losing the others (Window Width `1500\abc`
/// still has its first window).
pub(crate) fn get_multi_f64(obj: &InMemDicomObject, tag: Tag) -> Vec<f64> {
    let Some(e) = elem(obj, tag) else {
        return Vec::new();
    };
    if let Ok(all) = e.to_multi_float64() {
        return all;
    }
    e.to_str()
        .map(|s| {
            s.split('\\')
                .map(|v| {
                    v.trim_matches([' ', '\0'])
                        .parse::<f64>()
                        .unwrap_or(f64::NAN)
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn get_f64(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    get_multi_f64(obj, tag)
        .into_iter()
        .next()
        .filter(|v| v.is_finite())
}

/// Upper-case, trimmed string values of an attribute, empty when absent.
pub(crate) fn get_multi_str(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
    elem(obj, tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.split('\\')
                .map(|p| {
                    p.trim_matches(|c: char| c == ' ' || c == '\0')
                        .to_ascii_uppercase()
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    get_multi_str(obj, tag)
        .into_iter()
        .next()
        .filter(|s| !s.is_empty())
}

/// Interpret an integer read from a US-or-SS attribute as the signed value
/// it stands for when the pixel data is signed.
pub(crate) fn as_signed_if(v: i64, signed: bool, bits: u16) -> i64 {
    let half = 1i64 << (bits.clamp(1, 32) - 1);
    if signed && v >= half && v < 2 * half {
        v - 2 * half
    } else {
        v
    }
}

/// Grey-scale photometric interpretations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Photometric {
    #[serde(rename = "MONOCHROME1")]
    Monochrome1,
    #[serde(rename = "MONOCHROME2")]
    Monochrome2,
}

/// The image pixel attributes, checked.
#[derive(Debug, Clone)]
pub(crate) struct ImageHeader {
    pub rows: u32,
    pub cols: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    /// High Bit as the data set gives it (Bits Stored − 1 when absent).
    pub high_bit: u16,
    pub signed: bool,
    pub photometric: Photometric,
}

impl ImageHeader {
    /// Reads and checks the Image Pixel attributes: every refusal that the
    /// header alone decides is made here, before any decoding.
    pub fn from_obj(obj: &InMemDicomObject) -> Result<Self, ImagingError> {
        Self::checked(obj, false)
    }

    /// The same checks but for the number of frames: each frame has this
    /// header (decompressing a multi-frame image for forwarding).
    pub fn read(obj: &InMemDicomObject) -> Result<Self, ImagingError> {
        Self::checked(obj, true)
    }

    fn checked(obj: &InMemDicomObject, multi_frame_ok: bool) -> Result<Self, ImagingError> {
        if elem(obj, tags::PIXEL_DATA).is_none() {
            // "no pixel data" misled a reader looking at a file that has them
            return Err(if elem(obj, tags::FLOAT_PIXEL_DATA).is_some() {
                ImagingError::FloatPixelData("Float Pixel Data (7FE0,0008)")
            } else if elem(obj, tags::DOUBLE_FLOAT_PIXEL_DATA).is_some() {
                ImagingError::FloatPixelData("Double Float Pixel Data (7FE0,0009)")
            } else {
                ImagingError::NoPixelData
            });
        }
        let samples = get_u16(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let pi = get_str(obj, tags::PHOTOMETRIC_INTERPRETATION)
            .ok_or(ImagingError::MissingAttribute("PhotometricInterpretation"))?;
        let photometric = match (pi.as_str(), samples) {
            ("MONOCHROME1", 1) => Photometric::Monochrome1,
            ("MONOCHROME2", 1) => Photometric::Monochrome2,
            _ => {
                return Err(ImagingError::Colour {
                    photometric: pi,
                    samples_per_pixel: samples,
                })
            }
        };
        if let Some(frames) = get_i64(obj, tags::NUMBER_OF_FRAMES) {
            if frames > 1 && !multi_frame_ok {
                return Err(ImagingError::MultiFrame {
                    frames: u32::try_from(frames).unwrap_or(u32::MAX),
                });
            }
        }
        let bits_allocated = get_u16(obj, tags::BITS_ALLOCATED)
            .ok_or(ImagingError::MissingAttribute("BitsAllocated"))?;
        if bits_allocated != 8 && bits_allocated != 16 {
            return Err(ImagingError::UnsupportedBitsAllocated {
                bits: bits_allocated,
            });
        }
        // Bits Stored and Pixel Representation are Type 1: guessed, a signed
        // image was read as unsigned (its negative samples the brightest)
        // and a 12-bit one with bits above it set was read as 16-bit.
        let bits_stored =
            get_u16(obj, tags::BITS_STORED).ok_or(ImagingError::MissingAttribute("BitsStored"))?;
        if bits_stored == 0 || bits_stored > bits_allocated {
            return Err(ImagingError::InvalidAttribute {
                name: "BitsStored",
                value: format!("{bits_stored} with Bits Allocated {bits_allocated}"),
            });
        }
        let rows = get_u16(obj, tags::ROWS).ok_or(ImagingError::MissingAttribute("Rows"))?;
        let cols = get_u16(obj, tags::COLUMNS).ok_or(ImagingError::MissingAttribute("Columns"))?;
        if rows == 0 || cols == 0 {
            return Err(ImagingError::InvalidAttribute {
                name: "Rows/Columns",
                value: format!("{rows}x{cols}"),
            });
        }
        let pixel_representation = get_u16(obj, tags::PIXEL_REPRESENTATION)
            .ok_or(ImagingError::MissingAttribute("PixelRepresentation"))?;
        let signed = match pixel_representation {
            0 => false,
            1 => true,
            other => {
                return Err(ImagingError::InvalidAttribute {
                    name: "PixelRepresentation",
                    value: other.to_string(),
                })
            }
        };
        let high_bit = get_u16(obj, tags::HIGH_BIT).unwrap_or(bits_stored - 1);
        Ok(ImageHeader {
            rows: rows.into(),
            cols: cols.into(),
            bits_allocated,
            bits_stored,
            high_bit,
            signed,
            photometric,
        })
    }

    pub fn pixel_count(&self) -> usize {
        self.rows as usize * self.cols as usize
    }

    /// Bytes one frame takes: Rows × Columns × 1 sample × Bits Allocated / 8.
    pub fn frame_bytes(&self) -> usize {
        self.pixel_count() * usize::from(self.bits_allocated / 8)
    }
}

/// High Bit is not read: samples are taken from the low Bits Stored bits
/// (docs/imaging.md, step 3). Where High Bit is not Bits Stored − 1 that
/// reading is only sure when no sample has a bit above them (beyond a
/// sign extension): samples stored at High Bit (bits 4 to 15 for Bits
/// Stored 12, High Bit 15, as DCMTK reads them) were taken as noise and
/// analysed. Then the image is refused.
pub(crate) fn check_high_bit(samples: &[u8], h: &ImageHeader) -> Result<(), ImagingError> {
    let bs = u32::from(h.bits_stored);
    if u32::from(h.high_bit) + 1 == bs || bs >= u32::from(h.bits_allocated) {
        return Ok(());
    }
    // Bits from Bits Stored up are all zero; when signed, the bits from
    // the sign bit up may also all be one (a negative sample sign-extended).
    let shift = if h.signed { bs - 1 } else { bs };
    let ones = (1u32 << (u32::from(h.bits_allocated) - shift)) - 1;
    let fine = |sample: u32| {
        let above = sample >> shift;
        above == 0 || (h.signed && above == ones)
    };
    let low = if h.bits_allocated == 8 {
        samples.iter().all(|&b| fine(u32::from(b)))
    } else {
        samples
            .chunks_exact(2)
            .all(|c| fine(u32::from(u16::from_le_bytes([c[0], c[1]]))))
    };
    if low {
        return Ok(());
    }
    Err(ImagingError::InvalidAttribute {
        name: "HighBit",
        value: format!(
            "{} with Bits Stored {}: samples have bits set above the low {}, as if stored \
             up to High Bit; refused rather than guessed",
            h.high_bit, h.bits_stored, h.bits_stored
        ),
    })
}

/// Samples a codestream decoded against Bits Stored (PS3.5 8.2: the data
/// set must describe the codestream). Masked to Bits Stored as native
/// samples are, a 15-bit image under Bits Stored 12 was cut to noise and
/// analysed. Unsigned samples must not exceed the largest value Bits Stored
/// holds, except in a lossy codestream of higher precision, which may
/// overshoot it at a bright edge by up to a sixteenth of the range (clamped
/// to it). Signed samples, which JPEG codes as their bit patterns, must
/// have no bit set above Bits Stored beyond a sign extension. Otherwise the
/// image is refused.
pub(crate) fn fit_decoded_samples(
    samples: &mut [u8],
    h: &ImageHeader,
    lossy: bool,
) -> Result<(), ImagingError> {
    let (bs, ba) = (u32::from(h.bits_stored), u32::from(h.bits_allocated));
    if bs >= ba {
        return Ok(());
    }
    let max = (1u32 << bs) - 1;
    let tolerance = if lossy && !h.signed {
        (max + 1) / 16
    } else {
        0
    };
    // Signed: the Bits Stored pattern alone, or sign-extended to Bits Allocated.
    let sign_extended = (1u32 << (ba - bs + 1)) - 1;
    let (mut outside, mut refused) = (0usize, None);
    let mut fit = |raw: u32| -> u32 {
        if raw >> bs == 0 || (h.signed && raw >> (bs - 1) == sign_extended) {
            return raw;
        }
        outside += 1;
        if raw > max + tolerance || h.signed {
            refused.get_or_insert(raw);
        }
        raw.min(max)
    };
    if ba == 8 {
        for b in samples.iter_mut() {
            *b = fit(u32::from(*b)) as u8;
        }
    } else {
        for c in samples.chunks_exact_mut(2) {
            let v = fit(u32::from(u16::from_le_bytes([c[0], c[1]])));
            c.copy_from_slice(&(v as u16).to_le_bytes());
        }
    }
    match refused {
        None => Ok(()),
        Some(v) => Err(ImagingError::InvalidAttribute {
            name: "BitsStored",
            value: format!(
                "{bs}: {outside} decoded samples have bits set above the low {bs} (e.g. {v:#x}): \
                 the codestream holds more bits than the data set says (PS3.5 8.2); refused \
                 rather than cut to noise"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bits_stored: u16, signed: bool) -> ImageHeader {
        ImageHeader {
            rows: 1,
            cols: 4,
            bits_allocated: 16,
            bits_stored,
            high_bit: bits_stored - 1,
            signed,
            photometric: Photometric::Monochrome2,
        }
    }

    fn le(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn decoded_samples_wider_than_bits_stored_are_refused_or_clamped_when_lossy_overshoot() {
        // 15-bit samples under Bits Stored 12: refused, lossless or lossy.
        for lossy in [false, true] {
            let mut s = le(&[100, 26169, 4095, 0]);
            let e = fit_decoded_samples(&mut s, &header(12, false), lossy).unwrap_err();
            assert!(
                e.to_string()
                    .contains("1 decoded samples have bits set above the low 12"),
                "{e}"
            );
        }
        // A lossy codestream's overshoot of 4095 at a bright edge is clamped...
        let mut s = le(&[100, 4095 + 200, 4095, 0]);
        fit_decoded_samples(&mut s, &header(12, false), true).unwrap();
        assert_eq!(s, le(&[100, 4095, 4095, 0]));
        // ...a lossless one has none to have.
        let mut s = le(&[100, 4095 + 200, 4095, 0]);
        assert!(fit_decoded_samples(&mut s, &header(12, false), false).is_err());
        // Signed samples coded as their 12-bit patterns or sign-extended pass.
        let mut s = le(&[0x0800, 0xF800, 0x07FF, 0xFFFF]);
        fit_decoded_samples(&mut s, &header(12, true), false).unwrap();
        assert_eq!(s, le(&[0x0800, 0xF800, 0x07FF, 0xFFFF]));
        let mut s = le(&[0x4000]);
        assert!(fit_decoded_samples(&mut s, &header(12, true), true).is_err());
    }
}

//! Stored values to display grey levels in [0, 1], in the standard's order:
//! Modality LUT, VOI, Presentation LUT / MONOCHROME1 inversion, with the
//! Pixel Padding Value set to black.
//!
//! Every transformation is a function of the stored value alone, so it is
//! evaluated once per possible stored value into a table (at most 2^16
//! entries) and applied to the pixels by lookup.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::Serialize;

use crate::error::ImagingError;
use crate::header::{
    as_signed_if, elem, get_f64, get_i64, get_multi_f64, get_multi_str, get_str, ImageHeader,
    Photometric,
};

/// A lookup table from a LUT Descriptor and LUT Data.
#[derive(Debug, Clone, PartialEq)]
pub struct Lut {
    /// First stored (or modality) value mapped.
    pub first_mapped: i64,
    /// Bits per entry, from the descriptor.
    pub bits: u16,
    pub data: Vec<u16>,
}

impl Lut {
    /// Entry for input `x`: inputs below the first mapped value take the
    /// first entry, inputs past the end the last (PS3.3 C.11.1 and C.11.2).
    pub fn lookup(&self, x: f64) -> f64 {
        let idx = (x.floor() - self.first_mapped as f64).clamp(0.0, (self.data.len() - 1) as f64);
        f64::from(self.data[idx as usize])
    }

    fn from_item(
        item: &InMemDicomObject,
        first_signed: bool,
        what: &'static str,
    ) -> Result<Self, ImagingError> {
        let invalid = |value: String| ImagingError::InvalidAttribute { name: what, value };
        let desc: Vec<i64> = elem(item, tags::LUT_DESCRIPTOR)
            .and_then(|e| e.to_multi_int::<i64>().ok())
            .ok_or(ImagingError::MissingAttribute("LUTDescriptor"))?;
        if desc.len() != 3 {
            return Err(invalid(format!("LUT Descriptor {desc:?}")));
        }
        let entries = match desc[0] {
            0 => 65536usize,
            n if (1..=65535).contains(&n) => n as usize,
            n => return Err(invalid(format!("LUT Descriptor entries {n}"))),
        };
        let first_mapped = as_signed_if(desc[1], first_signed, 16);
        let bits = match desc[2] {
            b @ 8..=16 => b as u16,
            b => return Err(invalid(format!("LUT Descriptor bits {b}"))),
        };
        let raw = elem(item, tags::LUT_DATA)
            .and_then(|e| e.to_bytes().ok())
            .ok_or(ImagingError::MissingAttribute("LUTData"))?;
        // 8-bit entries packed one per byte; an odd count is padded to even
        // length with one byte (PS3.5 7.1.1), which is not an entry.
        let packed =
            raw.len() == entries || (entries % 2 == 1 && entries > 1 && raw.len() == entries + 1);
        let data: Vec<u16> = if bits <= 8 && packed {
            raw.iter().take(entries).map(|&b| u16::from(b)).collect()
        } else if raw.len() >= 2 * entries {
            raw.chunks_exact(2)
                .take(entries)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        } else {
            return Err(invalid(format!(
                "LUT Data has {} bytes for {entries} entries",
                raw.len()
            )));
        };
        Ok(Lut {
            first_mapped,
            bits,
            data,
        })
    }
}

/// The Modality LUT step.
#[derive(Debug, Clone, PartialEq)]
pub enum ModalityLut {
    /// No Modality LUT: output = stored value.
    Identity,
    /// Rescale Slope / Intercept.
    Rescale { slope: f64, intercept: f64 },
    /// Modality LUT Sequence (first item).
    Sequence(Lut),
}

impl ModalityLut {
    pub fn apply(&self, x: f64) -> f64 {
        match self {
            ModalityLut::Identity => x,
            ModalityLut::Rescale { slope, intercept } => x * slope + intercept,
            ModalityLut::Sequence(lut) => lut.lookup(x),
        }
    }
}

/// VOI LUT Function of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// The VOI step, mapping modality values to [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub enum Voi {
    /// Window Center / Width (first pair) with its VOI LUT Function.
    Window {
        center: f64,
        width: f64,
        function: VoiFunction,
    },
    /// VOI LUT Sequence (first item), output scaled by 2^bits − 1.
    Sequence(Lut),
    /// No VOI in the file: linear from the minimum to the maximum modality
    /// value over the non-padding pixels.
    MinMax { min: f64, max: f64 },
}

impl Voi {
    pub fn apply(&self, x: f64) -> f64 {
        match *self {
            Voi::Window {
                center: c,
                width: w,
                function,
            } => match function {
                VoiFunction::Linear => {
                    // PS3.3 C.11.2.1.2.1
                    let lo = c - 0.5 - (w - 1.0) / 2.0;
                    let hi = c - 0.5 + (w - 1.0) / 2.0;
                    if x <= lo {
                        0.0
                    } else if x > hi {
                        1.0
                    } else {
                        (x - (c - 0.5)) / (w - 1.0) + 0.5
                    }
                }
                VoiFunction::LinearExact => {
                    // PS3.3 C.11.2.1.3.2
                    if x <= c - w / 2.0 {
                        0.0
                    } else if x > c + w / 2.0 {
                        1.0
                    } else {
                        (x - c) / w + 0.5
                    }
                }
                // PS3.3 C.11.2.1.3.1
                VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
            },
            Voi::Sequence(ref lut) => {
                let max = ((1u32 << lut.bits) - 1) as f64;
                (lut.lookup(x) / max).clamp(0.0, 1.0)
            }
            Voi::MinMax { min, max } => {
                if max > min {
                    ((x - min) / (max - min)).clamp(0.0, 1.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Which grey-level steps were applied, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct GreyReport {
    /// "identity", "rescale" or "lut-sequence".
    pub modality_lut: &'static str,
    pub rescale_slope: Option<f64>,
    pub rescale_intercept: Option<f64>,
    /// "window", "voi-lut-sequence" or "min-max" (no VOI in the file).
    pub voi: &'static str,
    pub window_center: Option<f64>,
    pub window_width: Option<f64>,
    pub voi_function: Option<VoiFunction>,
    /// How many windows / VOI LUTs the file offered (the first is used).
    pub voi_presets: usize,
    /// Presentation LUT Shape, when present.
    pub presentation_lut_shape: Option<String>,
    /// Whether the grey levels were inverted (MONOCHROME1 or INVERSE).
    pub inverted: bool,
    pub pixel_padding_value: Option<i64>,
    pub pixel_padding_range_limit: Option<i64>,
    pub padding_pixels: usize,
    /// The display shutter applied after the grey levels (none: default).
    #[serde(flatten)]
    pub shutter: crate::shutter::ShutterReport,
}

/// All grey-level parameters read from the data set.
#[derive(Debug, Clone)]
pub struct GreyParams {
    pub modality: ModalityLut,
    /// None: min–max fallback, computed from the pixels.
    pub voi: Option<Voi>,
    pub voi_presets: usize,
    pub invert: bool,
    pub presentation_lut_shape: Option<String>,
    /// Inclusive range of stored values that are padding.
    pub padding: Option<(i64, i64)>,
    pub padding_value: Option<i64>,
    pub padding_limit: Option<i64>,
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<(&InMemDicomObject, usize)> {
    elem(obj, tag)
        .and_then(|e| e.items())
        .and_then(|items| items.first().map(|i| (i, items.len())))
}

impl GreyParams {
    pub fn from_obj(obj: &InMemDicomObject, h: &ImageHeader) -> Result<Self, ImagingError> {
        // Modality LUT: the sequence if present, else rescale, else identity.
        let modality = if let Some((item, _)) = first_item(obj, tags::MODALITY_LUT_SEQUENCE) {
            ModalityLut::Sequence(Lut::from_item(item, h.signed, "ModalityLUTSequence")?)
        } else {
            let slope = get_f64(obj, tags::RESCALE_SLOPE);
            let intercept = get_f64(obj, tags::RESCALE_INTERCEPT);
            match (slope, intercept) {
                (None, None) => ModalityLut::Identity,
                (s, i) => {
                    let slope = s.unwrap_or(1.0);
                    let intercept = i.unwrap_or(0.0);
                    if !slope.is_finite() || slope == 0.0 || !intercept.is_finite() {
                        return Err(ImagingError::InvalidAttribute {
                            name: "RescaleSlope/RescaleIntercept",
                            value: format!("{slope} / {intercept}"),
                        });
                    }
                    ModalityLut::Rescale { slope, intercept }
                }
            }
        };

        // VOI: the first usable window; else the first VOI LUT; else min-max.
        let centers = get_multi_f64(obj, tags::WINDOW_CENTER);
        let widths = get_multi_f64(obj, tags::WINDOW_WIDTH);
        let function = match get_multi_str(obj, tags::VOILUT_FUNCTION)
            .first()
            .map(String::as_str)
        {
            Some("LINEAR_EXACT") => VoiFunction::LinearExact,
            Some("SIGMOID") => VoiFunction::Sigmoid,
            // LINEAR, absent, or a value the standard does not define.
            _ => VoiFunction::Linear,
        };
        let n_windows = centers.len().min(widths.len());
        let window = match (centers.first(), widths.first()) {
            (Some(&c), Some(&w)) if c.is_finite() && w.is_finite() => {
                let usable = match function {
                    VoiFunction::Linear => w >= 1.0,
                    _ => w > 0.0,
                };
                usable.then_some(Voi::Window {
                    center: c,
                    width: w,
                    function,
                })
            }
            _ => None,
        };
        let mut voi_presets = n_windows;
        let voi = match window {
            Some(w) => Some(w),
            None => match first_item(obj, tags::VOILUT_SEQUENCE) {
                Some((item, n)) => {
                    voi_presets = n;
                    // The VOI LUT's input is the modality output; it is signed
                    // when the stored values are or a rescale makes it so.
                    let signed = h.signed
                        || matches!(modality, ModalityLut::Rescale { intercept, .. } if intercept < 0.0);
                    Some(Voi::Sequence(Lut::from_item(
                        item,
                        signed,
                        "VOILUTSequence",
                    )?))
                }
                None => None,
            },
        };

        let presentation_lut_shape = get_str(obj, tags::PRESENTATION_LUT_SHAPE);
        let invert = h.photometric == Photometric::Monochrome1
            || presentation_lut_shape.as_deref() == Some("INVERSE");

        let padding_value =
            get_i64(obj, tags::PIXEL_PADDING_VALUE).map(|v| as_signed_if(v, h.signed, 16));
        let padding_limit =
            get_i64(obj, tags::PIXEL_PADDING_RANGE_LIMIT).map(|v| as_signed_if(v, h.signed, 16));
        let padding = padding_value.map(|v| match padding_limit {
            Some(l) => (v.min(l), v.max(l)),
            None => (v, v),
        });

        Ok(GreyParams {
            modality,
            voi,
            voi_presets,
            invert,
            presentation_lut_shape,
            padding,
            padding_value,
            padding_limit,
        })
    }
}

/// The grey image in [0, 1], row-major, bone bright.
pub struct GreyImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// Calls `f` with the masked stored code of each of the first `n` samples.
#[inline]
fn for_each_code(
    samples: &[u8],
    bits_allocated: u16,
    n: usize,
    mask: u32,
    mut f: impl FnMut(usize),
) {
    if bits_allocated == 8 {
        for &b in samples.iter().take(n) {
            f((u32::from(b) & mask) as usize);
        }
    } else {
        for c in samples.chunks_exact(2).take(n) {
            f((u32::from(u16::from_le_bytes([c[0], c[1]])) & mask) as usize);
        }
    }
}

/// Applies the grey-level pipeline to the raw little-endian stored samples.
pub fn to_grey(
    samples: &[u8],
    h: &ImageHeader,
    params: &GreyParams,
) -> Result<(GreyImage, GreyReport), ImagingError> {
    let n = h.pixel_count();
    let bs = u32::from(h.bits_stored);
    let ncodes = 1usize << bs;
    let mask = (ncodes - 1) as u32;
    let value_of = |code: usize| -> i64 {
        let c = code as i64;
        if h.signed && (c >> (bs - 1)) & 1 == 1 {
            c - (1i64 << bs)
        } else {
            c
        }
    };
    let is_padding = |v: i64| params.padding.is_some_and(|(lo, hi)| v >= lo && v <= hi);

    // Histogram of codes, only when something needs it: the padding count
    // and the min-max fallback.
    let need_hist = params.padding.is_some() || params.voi.is_none();
    let mut hist = vec![0u32; if need_hist { ncodes } else { 0 }];
    if need_hist {
        for_each_code(samples, h.bits_allocated, n, mask, |c| hist[c] += 1);
    }
    let padding_pixels: usize = hist
        .iter()
        .enumerate()
        .filter(|&(c, &count)| count > 0 && is_padding(value_of(c)))
        .map(|(_, &count)| count as usize)
        .sum();

    let voi = match &params.voi {
        Some(v) => v.clone(),
        None => {
            let mut min = f64::INFINITY;
            let mut max = f64::NEG_INFINITY;
            for (c, &count) in hist.iter().enumerate() {
                let v = value_of(c);
                if count > 0 && !is_padding(v) {
                    let m = params.modality.apply(v as f64);
                    min = min.min(m);
                    max = max.max(m);
                }
            }
            if !min.is_finite() {
                min = 0.0;
                max = 0.0;
            }
            Voi::MinMax { min, max }
        }
    };

    let lut: Vec<f32> = (0..ncodes)
        .map(|c| {
            let v = value_of(c);
            if is_padding(v) {
                return 0.0;
            }
            let y = voi.apply(params.modality.apply(v as f64));
            let y = if params.invert { 1.0 - y } else { y };
            y as f32
        })
        .collect();

    let data: Vec<f32> = if h.bits_allocated == 8 {
        samples
            .iter()
            .take(n)
            .map(|&b| lut[(u32::from(b) & mask) as usize])
            .collect()
    } else {
        samples
            .chunks_exact(2)
            .take(n)
            .map(|c| lut[(u32::from(u16::from_le_bytes([c[0], c[1]])) & mask) as usize])
            .collect()
    };

    let (modality_lut, rescale_slope, rescale_intercept) = match params.modality {
        ModalityLut::Identity => ("identity", None, None),
        ModalityLut::Rescale { slope, intercept } => ("rescale", Some(slope), Some(intercept)),
        ModalityLut::Sequence(_) => ("lut-sequence", None, None),
    };
    let (voi_name, wc, ww, func) = match voi {
        Voi::Window {
            center,
            width,
            function,
        } => ("window", Some(center), Some(width), Some(function)),
        Voi::Sequence(_) => ("voi-lut-sequence", None, None, None),
        Voi::MinMax { min, max } => ("min-max", Some((min + max) / 2.0), Some(max - min), None),
    };
    let report = GreyReport {
        modality_lut,
        rescale_slope,
        rescale_intercept,
        voi: voi_name,
        window_center: wc,
        window_width: ww,
        voi_function: func,
        voi_presets: params.voi_presets,
        presentation_lut_shape: params.presentation_lut_shape.clone(),
        inverted: params.invert,
        pixel_padding_value: params.padding_value,
        pixel_padding_range_limit: params.padding_limit,
        padding_pixels,
        shutter: Default::default(),
    };
    Ok((
        GreyImage {
            width: h.cols as usize,
            height: h.rows as usize,
            data,
        },
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(c: f64, w: f64, f: VoiFunction) -> Voi {
        Voi::Window {
            center: c,
            width: w,
            function: f,
        }
    }

    fn lut_item(descriptor: [u16; 3], data: Vec<u8>) -> InMemDicomObject {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let mut item = InMemDicomObject::new_empty();
        item.put(DataElement::new(
            tags::LUT_DESCRIPTOR,
            VR::US,
            PrimitiveValue::U16(descriptor.iter().copied().collect()),
        ));
        item.put(DataElement::new(
            tags::LUT_DATA,
            VR::OB,
            PrimitiveValue::from(data),
        ));
        item
    }

    #[test]
    fn packed_8_bit_lut_data_may_carry_its_padding_byte() {
        // 255 entries of 8 bits, one per byte, padded to 256 bytes.
        let data: Vec<u8> = (0..255u8).map(|i| 254 - i).chain([0xAA]).collect();
        let lut =
            Lut::from_item(&lut_item([255, 0, 8], data), false, "ModalityLUTSequence").unwrap();
        assert_eq!(lut.data.len(), 255);
        assert_eq!((lut.data[0], lut.data[254]), (254, 0));
        // One byte short is still refused.
        let short: Vec<u8> = (0..254u8).collect();
        assert!(
            Lut::from_item(&lut_item([255, 0, 8], short), false, "ModalityLUTSequence").is_err()
        );
    }

    #[test]
    fn linear_window_matches_the_standard() {
        // c=2048, w=4096: 0 at x <= 0, 1 above 4095.
        let v = win(2048.0, 4096.0, VoiFunction::Linear);
        assert_eq!(v.apply(0.0), 0.0);
        assert_eq!(v.apply(-5.0), 0.0);
        assert_eq!(v.apply(4096.0), 1.0);
        assert!((v.apply(2047.5) - 0.5).abs() < 1e-12);
        assert!((v.apply(4095.0) - 1.0).abs() < 1e-12);
        // width 1 is a threshold
        let t = win(10.0, 1.0, VoiFunction::Linear);
        assert_eq!(t.apply(9.5), 0.0);
        assert_eq!(t.apply(9.6), 1.0);
    }

    #[test]
    fn linear_exact_and_sigmoid() {
        let e = win(100.0, 50.0, VoiFunction::LinearExact);
        assert_eq!(e.apply(75.0), 0.0);
        assert_eq!(e.apply(100.0), 0.5);
        assert_eq!(e.apply(125.0), 1.0);
        assert_eq!(e.apply(126.0), 1.0);
        let s = win(100.0, 50.0, VoiFunction::Sigmoid);
        assert!((s.apply(100.0) - 0.5).abs() < 1e-12);
        assert!((s.apply(125.0) - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn lut_clamps_both_ends() {
        let lut = Lut {
            first_mapped: -2,
            bits: 8,
            data: vec![10, 20, 30],
        };
        assert_eq!(lut.lookup(-10.0), 10.0);
        assert_eq!(lut.lookup(-1.0), 20.0);
        assert_eq!(lut.lookup(0.0), 30.0);
        assert_eq!(lut.lookup(99.0), 30.0);
        let voi = Voi::Sequence(lut);
        assert!((voi.apply(-1.0) - 20.0 / 255.0).abs() < 1e-12);
    }

    fn header(bits_allocated: u16, bits_stored: u16, signed: bool, p: Photometric) -> ImageHeader {
        ImageHeader {
            rows: 1,
            cols: 4,
            bits_allocated,
            bits_stored,
            high_bit: bits_stored - 1,
            signed,
            photometric: p,
        }
    }

    fn params(
        modality: ModalityLut,
        voi: Option<Voi>,
        invert: bool,
        padding: Option<(i64, i64)>,
    ) -> GreyParams {
        GreyParams {
            modality,
            voi,
            voi_presets: 1,
            invert,
            presentation_lut_shape: None,
            padding,
            padding_value: padding.map(|p| p.0),
            padding_limit: None,
        }
    }

    #[test]
    fn signed_12_bit_in_16_with_rescale_and_minmax() {
        // stored 12-bit signed values -2048, -1, 0, 2047 with garbage in the top bits
        let vals: [u16; 4] = [0xF800, 0xFFFF, 0x0000, 0x07FF];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let h = header(16, 12, true, Photometric::Monochrome2);
        let p = params(
            ModalityLut::Rescale {
                slope: 2.0,
                intercept: 100.0,
            },
            None,
            false,
            None,
        );
        let (img, rep) = to_grey(&bytes, &h, &p).unwrap();
        assert_eq!(rep.voi, "min-max");
        assert_eq!(img.data[0], 0.0);
        assert_eq!(img.data[3], 1.0);
        let expect = |v: f64| (((v * 2.0 + 100.0) - (-4096.0 + 100.0)) / (4094.0 + 4096.0)) as f32;
        assert_eq!(img.data[1], expect(-1.0));
        assert_eq!(img.data[2], expect(0.0));
    }

    #[test]
    fn monochrome1_inverts_and_padding_is_black() {
        let bytes = [0u8, 10, 20, 255];
        let h = header(8, 8, false, Photometric::Monochrome1);
        let p = params(ModalityLut::Identity, None, true, Some((255, 255)));
        let (img, rep) = to_grey(&bytes, &h, &p).unwrap();
        // min-max over 0..20 excluding the padding 255, then inverted
        assert_eq!(img.data, vec![1.0, 0.5, 0.0, 0.0]);
        assert!(rep.inverted);
        assert_eq!(rep.padding_pixels, 1);
        assert_eq!(rep.window_center, Some(10.0));
    }

    #[test]
    fn modality_lut_then_window() {
        let lut = Lut {
            first_mapped: 0,
            bits: 16,
            data: vec![0, 1000, 2000, 3000],
        };
        let bytes = [0u8, 1, 2, 3];
        let h = header(8, 8, false, Photometric::Monochrome2);
        let p = params(
            ModalityLut::Sequence(lut),
            Some(win(1500.0, 2001.0, VoiFunction::Linear)),
            false,
            None,
        );
        let (img, _) = to_grey(&bytes, &h, &p).unwrap();
        assert_eq!(img.data[0], 0.0);
        assert_eq!(img.data[3], 1.0);
        assert!((img.data[1] - (((1000.0 - 1499.5) / 2000.0 + 0.5) as f32)).abs() < 1e-7);
    }
}

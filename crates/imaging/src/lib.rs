//! pneumo-imaging: a DICOM radiograph to the model's input tensor.
//!
//! Pure functions, no I/O. The steps, in order (docs/imaging.md):
//! decode the pixel data → Modality LUT → VOI → MONOCHROME1 / INVERSE
//! inversion (bone bright) with padding black, in [0, 1] → the display
//! shutter (outside it black, or its presentation value) → crop (`none` or
//! `lung-box`) → resize as Pillow's bilinear on a float image → 3 identical
//! channels → normalise with the contract's mean and std → NCHW f32 or f16.

mod codestream;
mod crop;
mod decode;
mod error;
mod grey;
mod header;
mod jpeg;
mod npy;
mod resize;
mod shutter;
mod transcode;

use dicom_object::DefaultDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use serde::{Deserialize, Serialize};

pub use crop::{CropMode, LungBox};
pub use decode::{analysable_transfer_syntaxes, can_decode, ANALYSABLE_TRANSFER_SYNTAXES};
pub use error::ImagingError;
pub use grey::{GreyImage, GreyReport, Lut, ModalityLut, Voi, VoiFunction};
pub use header::Photometric;
pub use npy::encode_npy;
pub use resize::resize_bilinear;
pub use shutter::ShutterReport;
pub use transcode::{can_decompress, decompress};

/// Element type of the output tensor, as the model asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputDType {
    #[default]
    F32,
    F16,
}

/// What the model expects, from its contract (never from constants here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessSpec {
    pub width: u32,
    pub height: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub crop: CropMode,
    pub dtype: OutputDType,
}

impl PreprocessSpec {
    fn validate(&self) -> Result<(), ImagingError> {
        if self.width == 0 || self.height == 0 || self.width > 8192 || self.height > 8192 {
            return Err(ImagingError::InvalidSpec(format!(
                "size {}x{}",
                self.width, self.height
            )));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(ImagingError::InvalidSpec(format!(
                "mean {:?} / std {:?}",
                self.mean, self.std
            )));
        }
        Ok(())
    }
}

/// The tensor's data.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

/// An NCHW tensor, N = 1, C = 3.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: [usize; 4],
    pub data: TensorData,
}

impl Tensor {
    /// The tensor as a NumPy `.npy` file's bytes.
    pub fn to_npy(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(v) => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                encode_npy("<f4", &self.shape, &bytes)
            }
            TensorData::F16(v) => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                encode_npy("<f2", &self.shape, &bytes)
            }
        }
    }
}

/// The crop actually applied.
#[derive(Debug, Clone, Serialize)]
pub struct CropReport {
    pub mode: CropMode,
    /// The box used (the whole image for `none`).
    #[serde(rename = "box")]
    pub bbox: LungBox,
}

/// What was done to the image, reported with the result.
#[derive(Debug, Clone, Serialize)]
pub struct PreprocessReport {
    pub transfer_syntax: String,
    pub transfer_syntax_name: String,
    pub photometric: Photometric,
    pub rows: u32,
    pub columns: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    #[serde(flatten)]
    pub grey: GreyReport,
    pub crop: CropReport,
    pub output_width: u32,
    pub output_height: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub dtype: OutputDType,
}

/// The model input and its report.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    pub tensor: Tensor,
    pub report: PreprocessReport,
}

/// Decodes the pixel data and applies the grey-level steps: the image in
/// [0, 1], bone bright, before crop and resize.
pub fn grey_image(
    obj: &DefaultDicomObject,
) -> Result<(GreyImage, GreyReport, PreprocessReportHeader), ImagingError> {
    let h = header::ImageHeader::from_obj(obj)?;
    if h.pixel_count() > MAX_PIXELS {
        return Err(ImagingError::TooLarge {
            rows: h.rows,
            cols: h.cols,
            max: MAX_PIXELS,
        });
    }
    let params = grey::GreyParams::from_obj(obj, &h)?;
    let samples = decode::decode_samples(obj, &h)?;
    let (mut img, mut rep) = grey::to_grey(&samples, &h, &params)?;
    if let Some(shutter) = shutter::DisplayShutter::from_obj(obj) {
        rep.shutter = shutter.apply(&mut img);
    }
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    let ts_name = TransferSyntaxRegistry
        .get(&ts)
        .map(|t| t.name().to_string())
        .unwrap_or_default();
    Ok((
        img,
        rep,
        PreprocessReportHeader {
            transfer_syntax: ts,
            transfer_syntax_name: ts_name,
            photometric: h.photometric,
            rows: h.rows,
            columns: h.cols,
            bits_allocated: h.bits_allocated,
            bits_stored: h.bits_stored,
            signed: h.signed,
        },
    ))
}

/// The image attributes part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct PreprocessReportHeader {
    pub transfer_syntax: String,
    pub transfer_syntax_name: String,
    pub photometric: Photometric,
    pub rows: u32,
    pub columns: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
}

/// Refuses a grey image no model should be asked about: smaller than
/// [`MIN_SIDE`] either way (a 1×1 or 3×5000 object got a chest finding
/// from a flat or smeared tensor), or one value everywhere (all black, all
/// padding, a window above or below every value: the finding was the
/// model's answer to a flat tensor). The node and `infer` call it;
/// `preprocess` shows what any image becomes.
pub fn analysis_refusal(grey: &GreyImage, report: &GreyReport) -> Result<(), ImagingError> {
    let (rows, cols) = (grey.height as u32, grey.width as u32);
    if rows < MIN_SIDE || cols < MIN_SIDE {
        return Err(ImagingError::TooSmall {
            rows,
            cols,
            min: MIN_SIDE,
        });
    }
    // A display shutter that leaves too little shown (its values written
    // in another grid): a speck was analysed as a whole chest.
    if let Some(shape) = &report.shutter.shutter_shape {
        let (min_width, min_height) = (least_readable(cols), least_readable(rows));
        let shown = report.shutter.shutter_shown_box;
        let enough =
            shown.is_some_and(|[x0, y0, x1, y1]| x1 - x0 >= min_width && y1 - y0 >= min_height);
        if !enough {
            return Err(ImagingError::ShutterHidesImage {
                shape: shape.clone(),
                shown: match shown {
                    Some([x0, y0, x1, y1]) => format!("only {}x{} pixels", x1 - x0, y1 - y0),
                    None => "nothing".to_string(),
                },
                width: cols,
                height: rows,
                min_width,
                min_height,
                min_side: MIN_SIDE,
            });
        }
    }
    if let Some(&first) = grey.data.first() {
        if grey.data.iter().all(|&v| v == first) {
            return Err(ImagingError::NoImageContent(format!("{first}")));
        }
    }
    Ok(())
}

/// The most pixels of an image analysed, checked before its pixel data is
/// decoded: a digitised 14x17 inch film at 50 micrometres is 61 million; a
/// compressed file of a few megabytes can claim 4 billion.
pub const MAX_PIXELS: usize = 100_000_000;

/// The smallest side of an image analysed: below it no radiograph is left
/// to read.
pub const MIN_SIDE: u32 = 64;

/// The least part of an image side (`side` pixels) a crop or a shutter
/// may leave to read: a tenth of it, at least [`MIN_SIDE`], at most all.
fn least_readable(side: u32) -> u32 {
    (side / 10).max(MIN_SIDE).min(side)
}

/// Refuses a lung box (from the segmentation model, or given) that holds
/// nothing to read: smaller than a tenth of the image or [`MIN_SIDE`]
/// pixels either way (a segmentation that found a speck: the crop,
/// stretched to the model's size, was a flat tensor, and got a finding),
/// or one value everywhere inside it.
pub fn lung_box_refusal(grey: &GreyImage, b: &LungBox) -> Result<(), ImagingError> {
    let (iw, ih) = (grey.width as u32, grey.height as u32);
    b.validate(iw, ih)?;
    let (width, height) = (b.x1 - b.x0, b.y1 - b.y0);
    let (min_width, min_height) = (least_readable(iw), least_readable(ih));
    if width < min_width || height < min_height {
        return Err(ImagingError::LungBoxTooSmall {
            bbox: b.to_string(),
            width,
            height,
            image_width: iw,
            image_height: ih,
            min_width,
            min_height,
            min_side: MIN_SIDE,
        });
    }
    let first = grey.data[b.y0 as usize * grey.width + b.x0 as usize];
    let flat = (b.y0..b.y1).all(|y| {
        let row = y as usize * grey.width;
        grey.data[row + b.x0 as usize..row + b.x1 as usize]
            .iter()
            .all(|&v| v == first)
    });
    if flat {
        return Err(ImagingError::NoImageContent(format!(
            "{first} in lung box {b}"
        )));
    }
    Ok(())
}

/// A DICOM object to the model's input tensor.
///
/// `lung_box` is the box from the segmentation model, in image pixel
/// coordinates; it is required when `spec.crop` is `lung-box` and ignored
/// otherwise.
pub fn preprocess(
    obj: &DefaultDicomObject,
    spec: &PreprocessSpec,
    lung_box: Option<LungBox>,
) -> Result<Preprocessed, ImagingError> {
    spec.validate()?;
    let (img, grey_report, hdr) = grey_image(obj)?;
    tensor_from_grey(&img, grey_report, hdr, spec, lung_box)
}

/// Crop, resize, replicate to 3 channels, normalise.
pub fn tensor_from_grey(
    img: &GreyImage,
    grey_report: GreyReport,
    hdr: PreprocessReportHeader,
    spec: &PreprocessSpec,
    lung_box: Option<LungBox>,
) -> Result<Preprocessed, ImagingError> {
    spec.validate()?;
    let (iw, ih) = (img.width as u32, img.height as u32);
    let bbox = match spec.crop {
        CropMode::None => LungBox {
            x0: 0,
            y0: 0,
            x1: iw,
            y1: ih,
        },
        CropMode::LungBox => {
            let b = lung_box.ok_or(ImagingError::LungBoxMissing)?;
            b.validate(iw, ih)?;
            b
        }
    };
    let (ow, oh) = (spec.width as usize, spec.height as usize);
    let resized = resize::resize_bilinear(
        &img.data,
        img.width,
        bbox.x0 as usize,
        bbox.y0 as usize,
        (bbox.x1 - bbox.x0) as usize,
        (bbox.y1 - bbox.y0) as usize,
        ow,
        oh,
    );
    let plane = ow * oh;
    let mut out = Vec::with_capacity(3 * plane);
    for c in 0..3 {
        let (m, s) = (spec.mean[c], spec.std[c]);
        out.extend(resized.iter().map(|v| (v - m) / s));
    }
    let data = match spec.dtype {
        OutputDType::F32 => TensorData::F32(out),
        OutputDType::F16 => TensorData::F16(out.into_iter().map(half::f16::from_f32).collect()),
    };
    Ok(Preprocessed {
        tensor: Tensor {
            shape: [1, 3, oh, ow],
            data,
        },
        report: PreprocessReport {
            transfer_syntax: hdr.transfer_syntax,
            transfer_syntax_name: hdr.transfer_syntax_name,
            photometric: hdr.photometric,
            rows: hdr.rows,
            columns: hdr.columns,
            bits_allocated: hdr.bits_allocated,
            bits_stored: hdr.bits_stored,
            signed: hdr.signed,
            grey: grey_report,
            crop: CropReport {
                mode: spec.crop,
                bbox,
            },
            output_width: spec.width,
            output_height: spec.height,
            mean: spec.mean,
            std: spec.std,
            dtype: spec.dtype,
        },
    })
}

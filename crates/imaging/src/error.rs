//! The typed refusals and failures of the imaging pipeline.

use thiserror::Error;

/// Why an image could not be turned into a model input.
///
/// Every variant names its cause; [`ImagingError::kind`] gives a short stable
/// code for the job's failure reason.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ImagingError {
    /// The data set has no Pixel Data (7FE0,0010).
    #[error("no pixel data in the data set")]
    NoPixelData,

    /// No Pixel Data, but floating-point samples (Float or Double Float
    /// Pixel Data: a parametric map, never a radiograph's detector values).
    #[error(
        "no Pixel Data: the data set holds {0}, floating-point samples, which are not analysed"
    )]
    FloatPixelData(&'static str),

    /// Colour images (RGB, YBR_*, PALETTE COLOR, or more than one sample per
    /// pixel) are not radiographs the model was trained on.
    #[error("colour image refused: photometric interpretation {photometric:?}, {samples_per_pixel} sample(s) per pixel")]
    Colour {
        photometric: String,
        samples_per_pixel: u16,
    },

    /// More than one frame.
    #[error("multi-frame image refused: {frames} frames")]
    MultiFrame { frames: u32 },

    /// Bits Allocated other than 8 or 16 (32-bit data is not decoded).
    #[error("Bits Allocated {bits} refused: only 8 and 16 are supported")]
    UnsupportedBitsAllocated { bits: u16 },

    /// The pixel data does not hold Rows × Columns × samples × bits.
    #[error("pixel data length {actual} bytes does not match Rows × Columns × Samples × Bits Allocated = {expected} bytes")]
    PixelDataLength { expected: usize, actual: usize },

    /// A required (Type 1) attribute is missing, empty or no number.
    #[error("required attribute {0} is missing or empty")]
    MissingAttribute(&'static str),

    /// An attribute has a value the pipeline cannot use.
    #[error("attribute {name} has an unusable value: {value}")]
    InvalidAttribute { name: &'static str, value: String },

    /// The transfer syntax is known but its pixel data cannot be decoded here.
    #[error("transfer syntax {uid} ({name}) cannot be decoded for analysis: {reason}")]
    UnsupportedTransferSyntax {
        uid: String,
        name: String,
        reason: String,
    },

    /// The codec failed on this object's pixel data.
    #[error("decoding pixel data ({transfer_syntax}) failed: {message}")]
    Decode {
        transfer_syntax: String,
        message: String,
    },

    /// Smaller than any radiograph: nothing to read.
    #[error("image too small to analyse: {cols}x{rows}, at least {min} pixels each way")]
    TooSmall { rows: u32, cols: u32, min: u32 },

    /// Larger than any radiograph: decoding it would take more memory than
    /// a node beside a PACS should give one image (a small compressed file
    /// can claim 65535x65535).
    #[error("image too large to analyse: {cols}x{rows}, at most {max} pixels")]
    TooLarge { rows: u32, cols: u32, max: usize },

    /// Every pixel has one value after the grey-level steps.
    #[error("no image content: every pixel is {0} after the grey-level steps (a blank exposure, a placeholder, or a window outside the data)")]
    NoImageContent(String),

    /// The display shutter shows too little of the image to read (or
    /// nothing): shutter values written in other coordinates.
    #[error("the display shutter ({shape}) shows {shown} of a {width}x{height} image: at least {min_width}x{min_height} (a tenth of the image each way, and {min_side} pixels)")]
    ShutterHidesImage {
        shape: String,
        shown: String,
        width: u32,
        height: u32,
        min_width: u32,
        min_height: u32,
        min_side: u32,
    },

    /// The specification asks for a lung-box crop but no box was given.
    #[error("crop mode lung-box needs a lung box, none was given")]
    LungBoxMissing,

    /// The lung box does not lie inside the image or is empty.
    #[error("lung box {0} is empty or outside the image")]
    InvalidLungBox(String),

    /// The lung box is too small to hold the lungs: a segmentation that
    /// found a speck, not the lungs.
    #[error("lung box {bbox} ({width}x{height} pixels) is too small to hold the lungs of a {image_width}x{image_height} image: at least {min_width}x{min_height} (a tenth of the image each way, and {min_side} pixels); the lung segmentation found too little")]
    LungBoxTooSmall {
        bbox: String,
        width: u32,
        height: u32,
        image_width: u32,
        image_height: u32,
        min_width: u32,
        min_height: u32,
        min_side: u32,
    },

    /// The preprocessing specification itself is unusable.
    #[error("invalid preprocessing specification: {0}")]
    InvalidSpec(String),
}

impl ImagingError {
    /// A short, stable code for the cause (for job failure reasons and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            ImagingError::NoPixelData => "no-pixel-data",
            ImagingError::FloatPixelData(_) => "float-pixel-data",
            ImagingError::Colour { .. } => "colour",
            ImagingError::MultiFrame { .. } => "multi-frame",
            ImagingError::UnsupportedBitsAllocated { .. } => "bits-allocated",
            ImagingError::PixelDataLength { .. } => "pixel-data-length",
            ImagingError::MissingAttribute(_) => "missing-attribute",
            ImagingError::InvalidAttribute { .. } => "invalid-attribute",
            ImagingError::UnsupportedTransferSyntax { .. } => "unsupported-transfer-syntax",
            ImagingError::Decode { .. } => "decode",
            ImagingError::TooSmall { .. } => "too-small",
            ImagingError::TooLarge { .. } => "too-large",
            ImagingError::NoImageContent(_) => "no-image-content",
            ImagingError::ShutterHidesImage { .. } => "shutter-hides-image",
            ImagingError::LungBoxMissing => "lung-box-missing",
            ImagingError::InvalidLungBox(_) => "invalid-lung-box",
            ImagingError::LungBoxTooSmall { .. } => "lung-box-too-small",
            ImagingError::InvalidSpec(_) => "invalid-spec",
        }
    }
}

//! pneumo-report: from the analysed instance's attributes, the classifier's
//! result, the model's identity and the node's identity, build
//!
//! * the DICOM Structured Report of the result ([`build_sr`]): TID 1500
//!   "Imaging Measurement Report" in a Comprehensive 3D SR (or Comprehensive
//!   SR), in the source's study, in a series of its own per node and study;
//! * optionally, a Secondary Capture companion image
//!   ([`build_companion_sc`]) showing the result in words, for viewers that
//!   do not display SR;
//! * the notice that an image was not analysed, and why
//!   ([`build_not_analysed_sr`]), in the shape of the report.
//!
//! Pure: no I/O, no clock (the caller passes a [`ReportTime`]). The layout,
//! the codes and the UID derivations are described in `docs/sr.md`.

pub mod codes;
mod common;
pub mod content;
mod font;
pub mod notice;
pub mod sc;
pub mod source;
pub mod sr;
mod types;
pub mod uid;

pub use common::IMPLEMENTATION_VERSION_NAME;
pub use content::{Code, ContentItem, ItemValue, Relationship};
pub use notice::{build_not_analysed_sc, build_not_analysed_sr};
pub use sc::{build_companion_sc, GreyImage};
pub use source::{EarlierReport, Replacement, SourceInstance};
pub use sr::{build_content_tree, build_sr, DEMO_MARK};
pub use types::{
    AnalysisResult, Decision, ModelIdentity, NodeIdentity, PixelRegion, ReportOptions, ReportTime,
    SrSopClass, WeightsKind, PRODUCT,
};
pub use uid::{
    comprehensive_sr_copy_uid, is_referable_uid, is_valid_uid, not_analysed_sc_sop_instance_uid,
    not_analysed_series_instance_uid, not_analysed_sop_instance_uid, sc_sop_instance_uid,
    sr_series_instance_uid, sr_sop_instance_uid,
};

/// Why a report could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The source lacks an attribute the report needs.
    #[error("the source instance lacks {0}")]
    MissingAttribute(&'static str),
    /// A source attribute has a value the report cannot use.
    #[error("the source attribute {name} is invalid: {reason}")]
    InvalidAttribute { name: &'static str, reason: String },
    /// The analysis result is out of range or inconsistent.
    #[error("invalid analysis result: {0}")]
    InvalidResult(String),
    /// The model identity is incomplete or malformed.
    #[error("invalid model identity: {0}")]
    InvalidModel(String),
    /// The node identity is malformed.
    #[error("invalid node identity: {0}")]
    InvalidNode(String),
    /// The configured UID root cannot be used.
    #[error("invalid UID root {root:?}: {reason}")]
    InvalidUidRoot { root: String, reason: String },
    /// The pixels given for the companion image do not make an image.
    #[error("invalid companion image input: {0}")]
    InvalidImage(String),
    /// The File Meta Information could not be built.
    #[error("could not build the file meta information: {0}")]
    Meta(String),
}

#[cfg(test)]
mod tests;

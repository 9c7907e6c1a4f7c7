//! The coded concepts of the report.
//!
//! Each was checked against pydicom 3.0.2's DICOM concept dictionary
//! (`pydicom.sr._concepts_dict`, generated from PS3.16) unless its comment
//! says otherwise.

use crate::content::Code;

// Document, TID 1500
pub const IMAGING_MEASUREMENT_REPORT: Code =
    Code::new("126000", "DCM", "Imaging Measurement Report");
pub const LANGUAGE_OF_CONTENT: Code =
    Code::new("121049", "DCM", "Language of Content Item and Descendants");
pub const ENGLISH_US: Code = Code::new("en-US", "RFC5646", "English (United States)");
pub const OBSERVER_TYPE: Code = Code::new("121005", "DCM", "Observer Type");
pub const DEVICE: Code = Code::new("121007", "DCM", "Device");
pub const DEVICE_OBSERVER_UID: Code = Code::new("121012", "DCM", "Device Observer UID");
pub const DEVICE_OBSERVER_NAME: Code = Code::new("121013", "DCM", "Device Observer Name");
pub const DEVICE_OBSERVER_MANUFACTURER: Code =
    Code::new("121014", "DCM", "Device Observer Manufacturer");
pub const DEVICE_OBSERVER_MODEL_NAME: Code =
    Code::new("121015", "DCM", "Device Observer Model Name");
pub const PROCEDURE_REPORTED: Code = Code::new("121058", "DCM", "Procedure reported");
/// Default Procedure reported when the source has no Procedure Code
/// Sequence: a member of CID 100 "Quantitative Diagnostic Imaging
/// Procedures" (the context group TID 1500 names for that row).
pub const XR_UNSPECIFIED_BODY_REGION: Code =
    Code::new("43468-8", "LN", "XR unspecified body region");

// Image library, TID 1600-1603
pub const IMAGE_LIBRARY: Code = Code::new("111028", "DCM", "Image Library");
pub const IMAGE_LIBRARY_GROUP: Code = Code::new("126200", "DCM", "Image Library Group");
pub const SOURCE: Code = Code::new("260753009", "SCT", "Source");
pub const MODALITY: Code = Code::new("121139", "DCM", "Modality");
pub const FRAME_OF_REFERENCE_UID: Code = Code::new("112227", "DCM", "Frame of Reference UID");
pub const PIXEL_DATA_ROWS: Code = Code::new("110910", "DCM", "Pixel Data Rows");
pub const PIXEL_DATA_COLUMNS: Code = Code::new("110911", "DCM", "Pixel Data Columns");
pub const PATIENT_ORIENTATION_ROW: Code = Code::new("111044", "DCM", "Patient Orientation Row");
pub const PATIENT_ORIENTATION_COLUMN: Code =
    Code::new("111043", "DCM", "Patient Orientation Column");
pub const HORIZONTAL_PIXEL_SPACING: Code = Code::new("111026", "DCM", "Horizontal Pixel Spacing");
pub const VERTICAL_PIXEL_SPACING: Code = Code::new("111066", "DCM", "Vertical Pixel Spacing");
/// UCUM `{pixels}` as highdicom writes it (an annotation in braces is a
/// valid UCUM unit of value 1; not in pydicom's dictionary).
pub const PIXELS: Code = Code::new("{pixels}", "UCUM", "Pixels");
pub const MILLIMETER: Code = Code::new("mm", "UCUM", "mm");

// Measurements, TID 1501 / 4019 / 4108
pub const IMAGING_MEASUREMENTS: Code = Code::new("126010", "DCM", "Imaging Measurements");
pub const MEASUREMENT_GROUP: Code = Code::new("125007", "DCM", "Measurement Group");
pub const TRACKING_IDENTIFIER: Code = Code::new("112039", "DCM", "Tracking Identifier");
pub const TRACKING_UNIQUE_IDENTIFIER: Code =
    Code::new("112040", "DCM", "Tracking Unique Identifier");
pub const FINDING: Code = Code::new("121071", "DCM", "Finding");
/// SNOMED CT 40122008 "Pneumoconiosis (disorder)". NOT in pydicom's
/// dictionary (no DICOM context group uses it); the code and meaning are
/// from SNOMED CT and were not verified against a SNOMED CT release here.
pub const PNEUMOCONIOSIS: Code = Code::new("40122008", "SCT", "Pneumoconiosis");
pub const FINDING_SITE: Code = Code::new("363698007", "SCT", "Finding Site");
pub const LUNG: Code = Code::new("39607008", "SCT", "Lung");
pub const ALGORITHM_NAME: Code = Code::new("111001", "DCM", "Algorithm Name");
pub const ALGORITHM_VERSION: Code = Code::new("111003", "DCM", "Algorithm Version");
pub const ALGORITHM_MANUFACTURER: Code = Code::new("122405", "DCM", "Algorithm Manufacturer");
pub const ALGORITHM_PARAMETERS: Code = Code::new("111002", "DCM", "Algorithm Parameters");
pub const CERTAINTY_OF_FINDING: Code = Code::new("111012", "DCM", "Certainty of Finding");
pub const PERCENT: Code = Code::new("%", "UCUM", "Percent");
pub const PRESENT: Code = Code::new("52101004", "SCT", "Present");
pub const ABSENT: Code = Code::new("272519000", "SCT", "Absent");
/// The value of the finding in a notice that the image was not analysed.
pub const NOT_EVALUATED: Code = Code::new("373121007", "SCT", "Not Evaluated");
/// TID 1500 row 12: the report's evaluations outside any measurement group.
pub const QUALITATIVE_EVALUATIONS: Code = Code::new("C0034375", "UMLS", "Qualitative Evaluations");
pub const SOURCE_OF_MEASUREMENT: Code = Code::new("121112", "DCM", "Source of Measurement");
/// The region a measurement was inferred from (TID 300 INFERRED FROM, as
/// highdicom names a region), and the image it was selected from.
pub const IMAGE_REGION: Code = Code::new("111030", "DCM", "Image Region");
pub const SOURCE_IMAGE: Code = Code::new("121324", "DCM", "Source image");
pub const COMMENT: Code = Code::new("121106", "DCM", "Comment");

// Contributing Equipment, CID 7005
pub const PROCESSING_EQUIPMENT: Code = Code::new("109102", "DCM", "Processing Equipment");

/// The coded Modality (CID 29) for the modalities a chest radiograph comes
/// in, and a few more; `None` for others (the descriptor is then left out).
pub fn modality_code(modality: &str) -> Option<Code> {
    Some(match modality.trim() {
        "CR" => Code::new("CR", "DCM", "Computed Radiography"),
        "DX" => Code::new("DX", "DCM", "Digital Radiography"),
        "RG" => Code::new("RG", "DCM", "Radiographic imaging"),
        "MG" => Code::new("MG", "DCM", "Mammography"),
        "CT" => Code::new("CT", "DCM", "Computed Tomography"),
        "MR" => Code::new("MR", "DCM", "Magnetic Resonance"),
        "OT" => Code::new("OT", "DCM", "Other"),
        _ => return None,
    })
}

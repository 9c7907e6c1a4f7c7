//! Which abstract and transfer syntaxes the node negotiates.

use dicom_core::dictionary::UidDictionary;
use dicom_dictionary_std::StandardSopClassDictionary;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";

/// The storage SOP classes a chest radiography node meets: radiographs
/// (CR; DX for presentation and for processing), secondary captures, the
/// structured reports its own results and other systems' come as (another
/// chest CAD's), and what a CR or DX room sends with its images (the dose
/// report, presentation states, key images, a scanned requisition):
/// refused, they failed the
/// modality's or a PACS's whole send of the study, the radiographs
/// included.
pub const CHEST_STORAGE: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.1",     // Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",   // Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1", // Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.7",     // Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.2",   // Multi-frame Grayscale Byte SC Image Storage
    "1.2.840.10008.5.1.4.1.1.7.3",   // Multi-frame Grayscale Word SC Image Storage
    "1.2.840.10008.5.1.4.1.1.88.11", // Basic Text SR Storage
    "1.2.840.10008.5.1.4.1.1.88.22", // Enhanced SR Storage
    "1.2.840.10008.5.1.4.1.1.88.33", // Comprehensive SR Storage
    "1.2.840.10008.5.1.4.1.1.88.34", // Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.88.35", // Extensible SR Storage
    "1.2.840.10008.5.1.4.1.1.88.67", // X-Ray Radiation Dose SR Storage
    "1.2.840.10008.5.1.4.1.1.88.76", // Enhanced X-Ray Radiation Dose SR Storage
    "1.2.840.10008.5.1.4.1.1.88.73", // Patient Radiation Dose SR Storage
    "1.2.840.10008.5.1.4.1.1.88.65", // Chest CAD SR Storage
    "1.2.840.10008.5.1.4.1.1.88.59", // Key Object Selection Document Storage
    "1.2.840.10008.5.1.4.1.1.11.1",  // Grayscale Softcopy Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.104.1", // Encapsulated PDF Storage
];

/// Whether `uid` names a storage SOP class of the standard: a known SOP
/// class whose name says it stores instances, or any UID in the storage
/// branch (1.2.840.10008.5.1.4.1.1) this dictionary does not know yet.
pub fn is_storage_sop_class(uid: &str) -> bool {
    const NOT_STORAGE: &[&str] = &[
        "Commitment",
        "Media Storage Directory",
        "Stored Print",
        "Hardcopy",
    ];
    match StandardSopClassDictionary.by_uid(uid) {
        Some(entry) => {
            entry.name.contains("Storage") && !NOT_STORAGE.iter().any(|n| entry.name.contains(n))
        }
        None => uid.starts_with("1.2.840.10008.5.1.4.1.1."),
    }
}

/// Whether the node can receive and store data in transfer syntax `uid`:
/// every syntax the registry knows, as its data sets can be parsed (pixel
/// data is stored as received, never decoded on ingest). Deflated data sets
/// are inflated to read their attributes.
pub fn is_storable_transfer_syntax(uid: &str) -> bool {
    TransferSyntaxRegistry.get(uid).is_some() && !JPIP_REFERENCED_DEFLATE.contains(&uid)
}

/// JPIP Referenced Deflate and JPIP HTJ2K Referenced Deflate: deflated data
/// sets the node does not inflate (only Deflated Explicit VR Little
/// Endian's). Accepted, every data set in them was refused at C-STORE;
/// refused in negotiation, the sender offers another syntax.
const JPIP_REFERENCED_DEFLATE: &[&str] = &["1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"];

/// Trims the trailing NUL or space padding a UID may carry on the wire.
pub fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_are_recognised() {
        for uid in CHEST_STORAGE {
            assert!(is_storage_sop_class(uid), "{uid}");
        }
        assert!(is_storage_sop_class("1.2.840.10008.5.1.4.1.1.4")); // MR
        assert!(is_storage_sop_class("1.2.840.10008.5.1.4.1.1.2")); // CT
        assert!(!is_storage_sop_class(VERIFICATION));
        assert!(!is_storage_sop_class("1.2.840.10008.1.20.1")); // storage commitment
        assert!(!is_storage_sop_class("1.2.840.10008.5.1.4.1.2.2.1")); // study root FIND
        assert!(!is_storage_sop_class("1.2.840.10008.1.3.10")); // DICOMDIR
    }

    #[test]
    fn transfer_syntaxes() {
        for ts in [
            IMPLICIT_VR_LE,
            EXPLICIT_VR_LE,
            EXPLICIT_VR_BE,
            DEFLATED_EXPLICIT_VR_LE,
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.5",
        ] {
            assert!(is_storable_transfer_syntax(ts), "{ts}");
        }
        assert!(!is_storable_transfer_syntax("1.2.3.4"));
        assert!(is_storable_transfer_syntax("1.2.840.10008.1.2.4.94")); // JPIP Referenced
        assert!(!is_storable_transfer_syntax("1.2.840.10008.1.2.4.95"));
        assert!(!is_storable_transfer_syntax("1.2.840.10008.1.2.4.205"));
        assert_eq!(trim_uid("1.2.840.10008.1.2\0"), IMPLICIT_VR_LE);
    }
}

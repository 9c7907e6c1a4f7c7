//! The attributes the node needs from a received data set's header.

use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

use crate::{Incoming, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHeader {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: Option<String>,
    pub body_part_examined: Option<String>,
    pub view_position: Option<String>,
}

/// Attributes the store reads all come before (0020,0010): parsing stops
/// there, so private groups and pixel data further on are never parsed.
const HEADER_END: Tag = Tag(0x0020, 0x0010);

/// Refuses a Part-10 file whose element lengths (up to `stop`) cannot be
/// right, before a parser allocates what they claim.
pub fn check_element_lengths(path: &Path, stop: Tag) -> Result<(), StoreError> {
    use std::io::{Seek, SeekFrom};
    let bad = |e: String| StoreError::Unparseable(e);
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let size = file.get_ref().metadata()?.len();
    file.seek(SeekFrom::Start(128))?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(&mut file)
        .map_err(|e| bad(e.to_string()))?;
    let encoding = match meta.transfer_syntax().trim_end_matches('\0') {
        "1.2.840.10008.1.2" => crate::lengths::Encoding {
            explicit_vr: false,
            big_endian: false,
        },
        "1.2.840.10008.1.2.2" => crate::lengths::Encoding {
            explicit_vr: true,
            big_endian: true,
        },
        // Deflated data sets are checked by inflation itself; the rest are
        // explicit little endian up to their (encapsulated) pixel data.
        "1.2.840.10008.1.2.1.99" => return Ok(()),
        _ => crate::lengths::Encoding {
            explicit_vr: true,
            big_endian: false,
        },
    };
    crate::lengths::check(&mut file, encoding, size, stop).map_err(bad)
}

impl InstanceHeader {
    /// Parses the header of a Part-10 file, after checking that no element
    /// claims more bytes than the file has (see `lengths`).
    pub fn read(path: &Path) -> Result<InstanceHeader, StoreError> {
        check_element_lengths(path, HEADER_END)?;
        let obj = OpenFileOptions::new()
            .read_until(HEADER_END)
            .open_file(path)
            .map_err(|e| StoreError::Unparseable(e.to_string()))?;
        Self::from_object(&obj)
    }

    pub fn from_object(obj: &DefaultDicomObject) -> Result<InstanceHeader, StoreError> {
        let text = |tag| -> Option<String> {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let required = |tag, name: &str| {
            text(tag).ok_or_else(|| StoreError::Unparseable(format!("{name} is missing or empty")))
        };
        Ok(InstanceHeader {
            sop_class_uid: required(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            study_instance_uid: required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_instance_uid: required(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            modality: text(tags::MODALITY),
            body_part_examined: text(tags::BODY_PART_EXAMINED),
            view_position: text(tags::VIEW_POSITION),
        })
    }

    /// The data set must be the instance the C-STORE request announced.
    pub fn check_against(&self, incoming: &Incoming) -> Result<(), StoreError> {
        if self.sop_instance_uid != incoming.sop_instance_uid {
            return Err(StoreError::Mismatch(format!(
                "SOP Instance UID {} in the data set, {} in the request",
                self.sop_instance_uid, incoming.sop_instance_uid
            )));
        }
        if self.sop_class_uid != incoming.sop_class_uid {
            return Err(StoreError::Mismatch(format!(
                "SOP Class UID {} in the data set, {} in the request",
                self.sop_class_uid, incoming.sop_class_uid
            )));
        }
        Ok(())
    }
}

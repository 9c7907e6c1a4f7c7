//! The attributes the node needs from a received data set's header.

use std::path::Path;

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

impl InstanceHeader {
    /// Parses a Part-10 file up to its pixel data.
    pub fn read(path: &Path) -> Result<InstanceHeader, StoreError> {
        let obj = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
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

//! The `[report]` section: how results are written as DICOM.

use pneumo_report::{NodeIdentity, ReportOptions, SrSopClass};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SrClass {
    #[default]
    #[serde(rename = "comprehensive-3d", alias = "comprehensive3d")]
    Comprehensive3d,
    Comprehensive,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    pub sop_class: SrClass,
    pub companion_sc: bool,
    /// An SR saying an image was not analysed, and why, where its analysis
    /// failed, sent where its report would have gone.
    pub not_analysed_notice: bool,
    pub uid_root: String,
    pub manufacturer: String,
    pub institution_name: String,
    /// Institutional Department Name (the unit that runs the node).
    pub department: String,
    pub station_name: String,
    pub device_uid: String,
}

impl Default for ReportSection {
    fn default() -> Self {
        ReportSection {
            sop_class: SrClass::Comprehensive3d,
            companion_sc: false,
            not_analysed_notice: true,
            uid_root: String::new(),
            manufacturer: "pneumo-node".into(),
            institution_name: String::new(),
            department: String::new(),
            station_name: String::new(),
            device_uid: String::new(),
        }
    }
}

impl ReportSection {
    pub fn options(&self) -> ReportOptions {
        ReportOptions {
            sop_class: match self.sop_class {
                SrClass::Comprehensive3d => SrSopClass::Comprehensive3D,
                SrClass::Comprehensive => SrSopClass::Comprehensive,
            },
            companion_sc: self.companion_sc,
            not_analysed_notice: self.not_analysed_notice,
            ..ReportOptions::default()
        }
    }

    /// The node as the report names it. Without a configured device UID,
    /// one is derived from the AE title (UUID v5), so it stays the same
    /// across restarts; it is written under the UID root like every other
    /// UID the node makes (`2.25.` form without one). An invalid root is
    /// left for `NodeIdentity::validate` to name.
    pub fn node_identity(&self, ae_title: &str) -> NodeIdentity {
        let device_uid = if self.device_uid.is_empty() {
            let u = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("pneumo-node device {ae_title}").as_bytes(),
            );
            let root = Some(self.uid_root.as_str()).filter(|r| !r.is_empty());
            pneumo_report::uid::uuid_to_uid(u, root)
                .unwrap_or_else(|_| format!("2.25.{}", u.as_u128()))
        } else {
            self.device_uid.clone()
        };
        let opt = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        let mut node = NodeIdentity::new(ae_title, device_uid);
        node.manufacturer = self.manufacturer.clone();
        node.institution_name = opt(&self.institution_name);
        node.institution_department = opt(&self.department);
        node.station_name = opt(&self.station_name);
        node.uid_root = opt(&self.uid_root);
        node
    }
}

#[cfg(test)]
mod tests {
    use super::ReportSection;

    #[test]
    fn one_implementation_class_uid_on_the_wire_and_in_the_files() {
        assert_eq!(
            pneumo_report::uid::implementation_class_uid(),
            pneumo_dimse::IMPLEMENTATION_CLASS_UID
        );
    }

    #[test]
    fn derived_device_uid_is_under_the_uid_root() {
        let plain = ReportSection::default().node_identity("PNEUMO");
        assert!(
            plain.device_uid.starts_with("2.25."),
            "{}",
            plain.device_uid
        );
        let rooted = ReportSection {
            uid_root: "1.2.826.0.1.3680043.10.999".into(),
            ..ReportSection::default()
        }
        .node_identity("PNEUMO");
        assert!(
            rooted.device_uid.starts_with("1.2.826.0.1.3680043.10.999."),
            "{}",
            rooted.device_uid
        );
        assert!(rooted.validate().is_ok());
        // Same AE title, same root: the same UID at every start.
        let again = ReportSection {
            uid_root: "1.2.826.0.1.3680043.10.999".into(),
            ..ReportSection::default()
        }
        .node_identity("PNEUMO");
        assert_eq!(rooted.device_uid, again.device_uid);
    }
}

//! DIMSE status codes (PS3.7 Annex C) as the node uses them.

/// A DIMSE status as carried in (0000,0900).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

/// How a status is to be taken, after PS3.7 C.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    Warning,
    Failure,
    Cancel,
    Pending,
}

impl Status {
    pub const SUCCESS: Status = Status(0x0000);
    /// Warning: coercion of data elements.
    pub const COERCION_OF_DATA_ELEMENTS: Status = Status(0xB000);
    /// Failure: refused, out of resources.
    pub const OUT_OF_RESOURCES: Status = Status(0xA700);
    /// Failure: data set does not match SOP class.
    pub const DATASET_DOES_NOT_MATCH_SOP_CLASS: Status = Status(0xA900);
    /// Failure: cannot understand.
    pub const CANNOT_UNDERSTAND: Status = Status(0xC000);
    /// Failure: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: Status = Status(0x0122);
    /// Failure: unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: Status = Status(0x0211);
    /// Failure: processing failure.
    pub const PROCESSING_FAILURE: Status = Status(0x0110);

    pub fn class(self) -> StatusClass {
        match self.0 {
            0x0000 => StatusClass::Success,
            0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => StatusClass::Warning,
            0xFE00 => StatusClass::Cancel,
            0xFF00 | 0xFF01 => StatusClass::Pending,
            _ => StatusClass::Failure,
        }
    }

    pub fn is_success(self) -> bool {
        self.class() == StatusClass::Success
    }

    pub fn is_warning(self) -> bool {
        self.class() == StatusClass::Warning
    }

    pub fn is_failure(self) -> bool {
        self.class() == StatusClass::Failure
    }

    /// A refusal that retrying will not change (PS3.7: A9xx data set
    /// mismatch, Cxxx cannot understand, 0122 SOP class not supported).
    pub fn is_permanent_failure(self) -> bool {
        matches!(self.0, 0xA900..=0xA9FF | 0xC000..=0xCFFF | 0x0122 | 0x0124)
    }

    /// Refused: out of resources (A7xx). The peer, not the instance, is the
    /// matter (a full disk, a busy archive): what else it is owed would get
    /// the same answer now.
    pub fn is_out_of_resources(self) -> bool {
        matches!(self.0, 0xA700..=0xA7FF)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04X}H", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_ps3_7() {
        assert_eq!(Status(0x0000).class(), StatusClass::Success);
        assert_eq!(Status(0xB007).class(), StatusClass::Warning);
        assert_eq!(Status(0xA700).class(), StatusClass::Failure);
        assert!(Status(0xA702).is_out_of_resources() && !Status(0xA900).is_out_of_resources());
        assert!(!Status(0xA700).is_permanent_failure());
        assert_eq!(Status(0xC123).class(), StatusClass::Failure);
        assert_eq!(Status(0xFF00).class(), StatusClass::Pending);
        assert!(Status(0xA900).is_permanent_failure());
        assert!(Status(0xC000).is_permanent_failure());
        assert!(!Status(0xA700).is_permanent_failure());
        assert_eq!(Status(0xA700).to_string(), "A700H");
    }
}

//! DIMSE command sets (PS3.7 §9.3 and §10.3), encoded in Implicit VR Little
//! Endian as PS3.7 §6.3.1 requires.
//!
//! A command set is a flat group 0000 data set with no sequences, so it is
//! encoded and decoded here directly: every field the node uses is typed, and
//! elements it does not know are skipped.

use thiserror::Error;

use crate::status::Status;

/// Command Field values (0000,0100).
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    pub const N_EVENT_REPORT_RQ: u16 = 0x0100;
    pub const N_EVENT_REPORT_RSP: u16 = 0x8100;
    pub const N_ACTION_RQ: u16 = 0x0130;
    pub const N_ACTION_RSP: u16 = 0x8130;

    /// The DIMSE request command fields (PS3.7 E.1-1, E.2-1), C-CANCEL
    /// included; their responses are these with bit 15 set.
    const REQUESTS: [u16; 12] = [
        0x0001,
        0x0010,
        0x0020,
        0x0021,
        C_ECHO_RQ,
        0x0100,
        0x0110,
        0x0120,
        0x0130,
        0x0140,
        0x0150,
        C_CANCEL_RQ,
    ];

    pub fn is_request(command_field: u16) -> bool {
        REQUESTS.contains(&command_field)
    }
}

/// (0000,0800) value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;
/// A value for (0000,0800) meaning "a data set follows" (any other than 0101H).
pub const DATA_SET_PRESENT: u16 = 0x0000;

const TAG_GROUP_LENGTH: u16 = 0x0000;
const TAG_AFFECTED_SOP_CLASS: u16 = 0x0002;
const TAG_REQUESTED_SOP_CLASS: u16 = 0x0003;
const TAG_COMMAND_FIELD: u16 = 0x0100;
const TAG_MESSAGE_ID: u16 = 0x0110;
const TAG_MESSAGE_ID_RESPONDED: u16 = 0x0120;
const TAG_PRIORITY: u16 = 0x0700;
const TAG_DATA_SET_TYPE: u16 = 0x0800;
const TAG_STATUS: u16 = 0x0900;
const TAG_ERROR_COMMENT: u16 = 0x0902;
const TAG_AFFECTED_SOP_INSTANCE: u16 = 0x1000;
const TAG_REQUESTED_SOP_INSTANCE: u16 = 0x1001;
const TAG_EVENT_TYPE_ID: u16 = 0x1002;
const TAG_ACTION_TYPE_ID: u16 = 0x1008;
const TAG_MOVE_ORIGINATOR_AE: u16 = 0x1030;
const TAG_MOVE_ORIGINATOR_ID: u16 = 0x1031;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command set truncated at byte {0}")]
    Truncated(usize),
    #[error("command element (0000,{0:04X}) has undefined or oversized length")]
    BadLength(u16),
    #[error("command element (0000,{element:04X}) should be {expected} bytes, found {found}")]
    BadValueLength {
        element: u16,
        expected: usize,
        found: usize,
    },
    #[error("command set element ({group:04X},{element:04X}) outside group 0000")]
    WrongGroup { group: u16, element: u16 },
    #[error("command set lacks the Command Field (0000,0100)")]
    NoCommandField,
}

/// The fields of a command set the node reads or writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub command_field: u16,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub message_id: Option<u16>,
    pub message_id_being_responded_to: Option<u16>,
    pub priority: Option<u16>,
    pub data_set_type: u16,
    pub status: Option<Status>,
    pub error_comment: Option<String>,
    pub move_originator_ae: Option<String>,
    pub move_originator_message_id: Option<u16>,
    /// DIMSE-N: the SOP class and instance an N-ACTION (and N-GET, N-SET,
    /// N-DELETE) request is for.
    pub requested_sop_class_uid: Option<String>,
    pub requested_sop_instance_uid: Option<String>,
    pub event_type_id: Option<u16>,
    pub action_type_id: Option<u16>,
}

impl Command {
    pub fn has_data_set(&self) -> bool {
        self.data_set_type != NO_DATA_SET
    }

    pub fn c_echo_rq(message_id: u16) -> Self {
        Command {
            command_field: field::C_ECHO_RQ,
            affected_sop_class_uid: Some(crate::sop::VERIFICATION.to_string()),
            message_id: Some(message_id),
            data_set_type: NO_DATA_SET,
            ..Default::default()
        }
    }

    pub fn c_store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Self {
        Command {
            command_field: field::C_STORE_RQ,
            affected_sop_class_uid: Some(sop_class.to_string()),
            affected_sop_instance_uid: Some(sop_instance.to_string()),
            message_id: Some(message_id),
            priority: Some(0), // MEDIUM
            data_set_type: DATA_SET_PRESENT,
            ..Default::default()
        }
    }

    /// The response to `request`, carrying its UIDs and its message ID.
    pub fn response_to(request: &Command, status: Status, error_comment: Option<&str>) -> Self {
        Command {
            command_field: request.command_field | 0x8000,
            affected_sop_class_uid: request.affected_sop_class_uid.clone(),
            // A C-ECHO-RSP has none (PS3.7 9.3.5.2), whatever the request held.
            affected_sop_instance_uid: request
                .affected_sop_instance_uid
                .clone()
                .filter(|_| request.command_field != field::C_ECHO_RQ),
            message_id_being_responded_to: request.message_id,
            data_set_type: NO_DATA_SET,
            status: Some(status),
            // Error Comment is only allowed with failure and warning
            // statuses; an LO of the default repertoire (a command set has
            // no character set): 64 characters, others as '?' (a request's
            // non-ASCII UID, echoed, put raw UTF-8 in it).
            error_comment: error_comment.filter(|_| !status.is_success()).map(|c| {
                c.chars()
                    .map(|ch| match ch {
                        ' '..='~' if ch != '\\' => ch,
                        _ => '?',
                    })
                    .take(64)
                    .collect()
            }),
            ..Default::default()
        }
    }

    /// The N-ACTION-RSP to `request`: its Affected SOP Class and Instance
    /// are the request's Requested ones (PS3.7 10.3.4).
    pub fn n_action_rsp(request: &Command, status: Status, error_comment: Option<&str>) -> Self {
        Command {
            affected_sop_class_uid: request.requested_sop_class_uid.clone(),
            affected_sop_instance_uid: request.requested_sop_instance_uid.clone(),
            action_type_id: request.action_type_id,
            ..Command::response_to(request, status, error_comment)
        }
    }

    /// An N-EVENT-REPORT-RQ with a data set (its Event Information).
    pub fn n_event_report_rq(
        message_id: u16,
        sop_class: &str,
        sop_instance: &str,
        event_type_id: u16,
    ) -> Self {
        Command {
            command_field: field::N_EVENT_REPORT_RQ,
            affected_sop_class_uid: Some(sop_class.to_string()),
            affected_sop_instance_uid: Some(sop_instance.to_string()),
            message_id: Some(message_id),
            event_type_id: Some(event_type_id),
            data_set_type: DATA_SET_PRESENT,
            ..Default::default()
        }
    }

    /// Encodes the command set in Implicit VR Little Endian, group length first.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        // Elements in ascending tag order.
        if let Some(uid) = &self.affected_sop_class_uid {
            put_text(&mut body, TAG_AFFECTED_SOP_CLASS, uid, 0);
        }
        if let Some(uid) = &self.requested_sop_class_uid {
            put_text(&mut body, TAG_REQUESTED_SOP_CLASS, uid, 0);
        }
        put_u16(&mut body, TAG_COMMAND_FIELD, self.command_field);
        if let Some(id) = self.message_id {
            put_u16(&mut body, TAG_MESSAGE_ID, id);
        }
        if let Some(id) = self.message_id_being_responded_to {
            put_u16(&mut body, TAG_MESSAGE_ID_RESPONDED, id);
        }
        if let Some(p) = self.priority {
            put_u16(&mut body, TAG_PRIORITY, p);
        }
        put_u16(&mut body, TAG_DATA_SET_TYPE, self.data_set_type);
        if let Some(s) = self.status {
            put_u16(&mut body, TAG_STATUS, s.0);
        }
        if let Some(c) = &self.error_comment {
            put_text(&mut body, TAG_ERROR_COMMENT, c, b' ');
        }
        if let Some(uid) = &self.affected_sop_instance_uid {
            put_text(&mut body, TAG_AFFECTED_SOP_INSTANCE, uid, 0);
        }
        if let Some(uid) = &self.requested_sop_instance_uid {
            put_text(&mut body, TAG_REQUESTED_SOP_INSTANCE, uid, 0);
        }
        if let Some(id) = self.event_type_id {
            put_u16(&mut body, TAG_EVENT_TYPE_ID, id);
        }
        if let Some(id) = self.action_type_id {
            put_u16(&mut body, TAG_ACTION_TYPE_ID, id);
        }
        if let Some(ae) = &self.move_originator_ae {
            put_text(&mut body, TAG_MOVE_ORIGINATOR_AE, ae, b' ');
        }
        if let Some(id) = self.move_originator_message_id {
            put_u16(&mut body, TAG_MOVE_ORIGINATOR_ID, id);
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        put_header(&mut out, TAG_GROUP_LENGTH, 4);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes an Implicit VR Little Endian command set.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        // Command Data Set Type is mandatory (PS3.7 9.3, 10.3); one left out
        // reads as "no data set": a C-ECHO without it waited for a data set
        // that never came, until the read time-out aborted it.
        let mut cmd = Command {
            data_set_type: NO_DATA_SET,
            ..Command::default()
        };
        let mut command_field = None;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let header = bytes
                .get(pos..pos + 8)
                .ok_or(CommandError::Truncated(pos))?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let element = u16::from_le_bytes([header[2], header[3]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if group != 0 {
                return Err(CommandError::WrongGroup { group, element });
            }
            if len == u32::MAX {
                return Err(CommandError::BadLength(element));
            }
            let start = pos + 8;
            let end = start
                .checked_add(len as usize)
                .filter(|&e| e <= bytes.len())
                .ok_or(CommandError::Truncated(pos))?;
            let value = &bytes[start..end];
            match element {
                TAG_AFFECTED_SOP_CLASS => cmd.affected_sop_class_uid = Some(text(value)),
                TAG_COMMAND_FIELD => command_field = Some(u16_value(element, value)?),
                TAG_MESSAGE_ID => cmd.message_id = Some(u16_value(element, value)?),
                TAG_MESSAGE_ID_RESPONDED => {
                    cmd.message_id_being_responded_to = Some(u16_value(element, value)?)
                }
                TAG_PRIORITY => cmd.priority = Some(u16_value(element, value)?),
                TAG_DATA_SET_TYPE => cmd.data_set_type = u16_value(element, value)?,
                TAG_STATUS => cmd.status = Some(Status(u16_value(element, value)?)),
                TAG_ERROR_COMMENT => cmd.error_comment = Some(text(value)),
                TAG_AFFECTED_SOP_INSTANCE => cmd.affected_sop_instance_uid = Some(text(value)),
                TAG_REQUESTED_SOP_CLASS => cmd.requested_sop_class_uid = Some(text(value)),
                TAG_REQUESTED_SOP_INSTANCE => cmd.requested_sop_instance_uid = Some(text(value)),
                TAG_EVENT_TYPE_ID => cmd.event_type_id = Some(u16_value(element, value)?),
                TAG_ACTION_TYPE_ID => cmd.action_type_id = Some(u16_value(element, value)?),
                TAG_MOVE_ORIGINATOR_AE => cmd.move_originator_ae = Some(text(value)),
                TAG_MOVE_ORIGINATOR_ID => {
                    cmd.move_originator_message_id = Some(u16_value(element, value)?)
                }
                _ => {}
            }
            pos = end;
        }
        cmd.command_field = command_field.ok_or(CommandError::NoCommandField)?;
        Ok(cmd)
    }
}

fn put_header(out: &mut Vec<u8>, element: u16, len: u32) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

fn put_u16(out: &mut Vec<u8>, element: u16, value: u16) {
    put_header(out, element, 2);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Text values are padded to even length: UIDs with NUL, others with space.
fn put_text(out: &mut Vec<u8>, element: u16, value: &str, pad: u8) {
    let mut bytes = value.as_bytes().to_vec();
    if bytes.len() % 2 == 1 {
        bytes.push(pad);
    }
    put_header(out, element, bytes.len() as u32);
    out.extend_from_slice(&bytes);
}

fn u16_value(element: u16, value: &[u8]) -> Result<u16, CommandError> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(CommandError::BadValueLength {
            element,
            expected: 2,
            found: value.len(),
        }),
    }
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_action_and_event_report_round_trip() {
        let rq = Command {
            command_field: field::N_ACTION_RQ,
            requested_sop_class_uid: Some("1.2.840.10008.1.20.1".into()),
            requested_sop_instance_uid: Some("1.2.840.10008.1.20.1.1".into()),
            message_id: Some(3),
            action_type_id: Some(1),
            data_set_type: DATA_SET_PRESENT,
            ..Default::default()
        };
        assert_eq!(Command::decode(&rq.encode()).unwrap(), rq);
        let rsp =
            Command::decode(&Command::n_action_rsp(&rq, Status::SUCCESS, None).encode()).unwrap();
        assert_eq!(rsp.command_field, field::N_ACTION_RSP);
        assert_eq!(
            rsp.affected_sop_class_uid.as_deref(),
            Some("1.2.840.10008.1.20.1")
        );
        assert_eq!(
            rsp.affected_sop_instance_uid.as_deref(),
            Some("1.2.840.10008.1.20.1.1")
        );
        assert_eq!(
            (rsp.message_id_being_responded_to, rsp.action_type_id),
            (Some(3), Some(1))
        );
        let report =
            Command::n_event_report_rq(9, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 2);
        assert_eq!(Command::decode(&report.encode()).unwrap(), report);
    }

    #[test]
    fn store_request_round_trips() {
        let rq = Command::c_store_rq(7, "1.2.840.10008.5.1.4.1.1.1", "1.2.3.4.5");
        let bytes = rq.encode();
        // Group length covers everything after its own element.
        let gl = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(gl, bytes.len() - 12);
        assert_eq!(Command::decode(&bytes).unwrap(), rq);
    }

    #[test]
    fn response_carries_request_ids_and_odd_uids_are_padded() {
        let rq = Command::c_store_rq(42, "1.2.840.10008.5.1.4.1.1.1", "1.2.3");
        let rsp = Command::response_to(&rq, Status(0xA700), Some("disk full"));
        let back = Command::decode(&rsp.encode()).unwrap();
        assert_eq!(back.command_field, field::C_STORE_RSP);
        assert_eq!(back.message_id_being_responded_to, Some(42));
        assert_eq!(back.affected_sop_instance_uid.as_deref(), Some("1.2.3"));
        assert_eq!(back.status, Some(Status(0xA700)));
        assert_eq!(back.error_comment.as_deref(), Some("disk full"));
        assert!(!back.has_data_set());
    }

    #[test]
    fn an_error_comment_is_64_characters_of_the_default_repertoire() {
        let rq = Command::c_store_rq(1, "1.2", "1.2.3");
        let long = format!("uid 1.2.é\\x\n{}", "y".repeat(100));
        let rsp = Command::response_to(&rq, Status(0xC000), Some(&long));
        let comment = rsp.error_comment.unwrap();
        assert!(comment.starts_with("uid 1.2.??x?yyy"), "{comment}");
        assert_eq!(comment.chars().count(), 64);
    }

    #[test]
    fn success_response_has_no_error_comment() {
        let rq = Command::c_echo_rq(1);
        let rsp = Command::response_to(&rq, Status::SUCCESS, Some("ignored"));
        assert_eq!(rsp.error_comment, None);
    }

    #[test]
    fn malformed_command_sets_are_errors() {
        let good = Command::c_echo_rq(3).encode();
        assert!(matches!(
            Command::decode(&good[..good.len() - 1]),
            Err(CommandError::Truncated(_))
        ));
        let mut wrong_group = good.clone();
        wrong_group[12] = 0x08;
        assert!(matches!(
            Command::decode(&wrong_group),
            Err(CommandError::WrongGroup { .. })
        ));
        // Only a group length: no command field.
        assert_eq!(
            Command::decode(&good[..12]),
            Err(CommandError::NoCommandField)
        );
    }
}

//! Storage Commitment Push Model (PS3.4 Annex J), as SCP: the request's
//! data set (N-ACTION-RQ, action 1) read, and the result's (N-EVENT-REPORT-RQ,
//! event 1 or 2) written. The node acknowledges a C-STORE only once the
//! instance is durable, so the answer is known as soon as it is asked: it
//! goes on the same association, right after the N-ACTION-RSP.

use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::status::Status;

/// The Storage Commitment Push Model SOP Class.
pub const STORAGE_COMMITMENT_PUSH: &str = "1.2.840.10008.1.20.1";
/// Its well-known SOP Instance (PS3.4 J.3.5).
pub const STORAGE_COMMITMENT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";
/// Action Type ID "Request Storage Commitment".
pub const REQUEST_STORAGE_COMMITMENT: u16 = 1;
/// Event Type IDs of the result (PS3.4 J.3.3.1).
pub const ALL_COMMITTED: u16 = 1;
pub const FAILURES_EXIST: u16 = 2;

/// Failure Reasons (0008,1197) of a Failed SOP Sequence item (PS3.4 J.3.3.1.1).
pub mod failure {
    /// Processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// No such object instance: never received, or no longer kept.
    pub const NO_SUCH_OBJECT_INSTANCE: u16 = 0x0112;
    /// Class / instance conflict: received under another SOP class.
    pub const CLASS_INSTANCE_CONFLICT: u16 = 0x0119;
}

/// N-ACTION statuses a request that cannot be taken gets (PS3.7 10.1.4.1.10).
pub mod refusal {
    use crate::status::Status;
    pub const NO_SUCH_SOP_CLASS: Status = Status(0x0118);
    pub const INVALID_OBJECT_INSTANCE: Status = Status(0x0117);
    pub const NO_SUCH_ACTION: Status = Status(0x0123);
    pub const INVALID_ARGUMENT_VALUE: Status = Status(0x0115);
}

/// One instance a commitment request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentItem {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

impl CommitmentItem {
    /// Whether both UIDs can be UIDs: an item naming no instance the node
    /// could hold fails alone (0112), the others are answered.
    pub fn names_uids(&self) -> bool {
        is_uid(&self.sop_class_uid) && is_uid(&self.sop_instance_uid)
    }
}

/// A request's content: its transaction and the instances it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentRequest {
    pub transaction_uid: String,
    pub items: Vec<CommitmentItem>,
}

/// A request's data set larger than this is refused unread: at about 120
/// bytes an item, it names some 130,000 instances.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// The transfer syntaxes a commitment context is accepted in: its data sets
/// are read and written here, in memory.
pub const TRANSFER_SYNTAXES: [&str; 3] = [
    crate::sop::EXPLICIT_VR_LE,
    crate::sop::IMPLICIT_VR_LE,
    crate::sop::EXPLICIT_VR_BE,
];

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim_start().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether `uid` can be a UID as the node takes one at C-STORE: digits
/// and dots, 64 at most, no empty component (leading zeros in a component
/// pass, as older modalities write them).
fn is_uid(uid: &str) -> bool {
    uid.len() <= 64
        && uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads an N-ACTION-RQ's data set (in transfer syntax `ts_uid`); the
/// status and reason to answer when it is no commitment request.
pub fn read_request(bytes: &[u8], ts_uid: &str) -> Result<CommitmentRequest, (Status, String)> {
    let invalid = |why: String| (refusal::INVALID_ARGUMENT_VALUE, why);
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| invalid(format!("transfer syntax {ts_uid} unknown")))?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| invalid(format!("undecodable data set: {e}")))?;
    let transaction_uid = text(&obj, tags::TRANSACTION_UID)
        .ok_or_else(|| invalid("no Transaction UID (0008,1195)".into()))?;
    if !is_uid(&transaction_uid) {
        return Err(invalid(format!(
            "Transaction UID {transaction_uid:?} is no UID"
        )));
    }
    let items = obj
        .get(tags::REFERENCED_SOP_SEQUENCE)
        .and_then(|e| e.items())
        .filter(|items| !items.is_empty())
        .ok_or_else(|| invalid("no item in the Referenced SOP Sequence (0008,1199)".into()))?;
    let items = items
        .iter()
        .enumerate()
        .map(|(n, item)| {
            // Present, even empty or no UID: that item fails alone
            // (names_uids); absent: the request is malformed.
            let field = |tag, name| match item.get(tag) {
                Some(_) => Ok(text(item, tag).unwrap_or_default()),
                None => Err(invalid(format!(
                    "Referenced SOP Sequence item {}: no {name}",
                    n + 1
                ))),
            };
            Ok(CommitmentItem {
                sop_class_uid: field(tags::REFERENCED_SOP_CLASS_UID, "Referenced SOP Class UID")?,
                sop_instance_uid: field(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    "Referenced SOP Instance UID",
                )?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CommitmentRequest {
        transaction_uid,
        items,
    })
}

/// The N-EVENT-REPORT-RQ's Event Type ID and data set (in `ts_uid`) for a
/// request whose items got `outcomes` (None: committed; Some: the Failure
/// Reason), with `retrieve_ae` as where the committed ones can be had.
pub fn event_report(
    request: &CommitmentRequest,
    outcomes: &[Option<u16>],
    retrieve_ae: &str,
    ts_uid: &str,
) -> Result<(u16, Vec<u8>), String> {
    let reference = |item: &CommitmentItem| {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(item.sop_class_uid.as_str()),
        ));
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(item.sop_instance_uid.as_str()),
        ));
        obj
    };
    let mut committed = Vec::new();
    let mut failed = Vec::new();
    for (item, outcome) in request.items.iter().zip(outcomes) {
        match outcome {
            None => committed.push(reference(item)),
            Some(reason) => {
                let mut obj = reference(item);
                obj.put(DataElement::new(
                    tags::FAILURE_REASON,
                    VR::US,
                    PrimitiveValue::from(*reason),
                ));
                failed.push(obj);
            }
        }
    }
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::TRANSACTION_UID,
        VR::UI,
        PrimitiveValue::from(request.transaction_uid.as_str()),
    ));
    if !committed.is_empty() {
        obj.put(DataElement::new(
            tags::RETRIEVE_AE_TITLE,
            VR::AE,
            PrimitiveValue::from(retrieve_ae),
        ));
    }
    let sequence = |items: Vec<InMemDicomObject>| {
        Value::Sequence(DataSetSequence::new(items, dicom_core::Length::UNDEFINED))
    };
    let event_type = if failed.is_empty() {
        ALL_COMMITTED
    } else {
        FAILURES_EXIST
    };
    if !committed.is_empty() {
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            sequence(committed),
        ));
    }
    if !failed.is_empty() {
        obj.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            sequence(failed),
        ));
    }
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| format!("transfer syntax {ts_uid} unknown"))?;
    let mut bytes = Vec::new();
    obj.write_dataset_with_ts(&mut bytes, ts)
        .map_err(|e| e.to_string())?;
    Ok((event_type, bytes))
}

/// A result's data set, written in Explicit VR Little Endian (as it is
/// kept until sent on an association of the node's own), in `ts_uid`.
pub fn reencode(explicit_le: &[u8], ts_uid: &str) -> Result<Vec<u8>, String> {
    let registry = |uid: &str| {
        TransferSyntaxRegistry
            .get(uid)
            .ok_or_else(|| format!("transfer syntax {uid} unknown"))
    };
    let obj =
        InMemDicomObject::read_dataset_with_ts(explicit_le, registry(crate::sop::EXPLICIT_VR_LE)?)
            .map_err(|e| format!("cannot read the commitment result: {e}"))?;
    let mut bytes = Vec::new();
    obj.write_dataset_with_ts(&mut bytes, registry(ts_uid)?)
        .map_err(|e| format!("cannot write the commitment result in {ts_uid}: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_bytes(ts: &str, transaction: &str, items: &[(&str, &str)]) -> Vec<u8> {
        let request = CommitmentRequest {
            transaction_uid: transaction.into(),
            items: items
                .iter()
                .map(|(c, i)| CommitmentItem {
                    sop_class_uid: c.to_string(),
                    sop_instance_uid: i.to_string(),
                })
                .collect(),
        };
        // A request's data set is a result's without outcomes: written by
        // the same code, all committed, then the Retrieve AE dropped.
        let (_, bytes) = event_report(&request, &vec![None; items.len()], "X", ts).unwrap();
        bytes
    }

    #[test]
    fn a_request_round_trips_in_each_syntax() {
        for ts in TRANSFER_SYNTAXES {
            let bytes = request_bytes(ts, "1.2.3", &[("1.2.840.10008.5.1.4.1.1.1", "1.2.3.4")]);
            let read = read_request(&bytes, ts).unwrap();
            assert_eq!(read.transaction_uid, "1.2.3");
            assert_eq!(read.items.len(), 1);
            assert_eq!(read.items[0].sop_instance_uid, "1.2.3.4");
        }
    }

    #[test]
    fn results_say_failures_with_their_reasons() {
        let request = CommitmentRequest {
            transaction_uid: "1.2.3".into(),
            items: vec![
                CommitmentItem {
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
                    sop_instance_uid: "1.2.3.4".into(),
                },
                CommitmentItem {
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
                    sop_instance_uid: "1.2.3.5".into(),
                },
            ],
        };
        let ts = crate::sop::IMPLICIT_VR_LE;
        let (event, bytes) = event_report(
            &request,
            &[None, Some(failure::NO_SUCH_OBJECT_INSTANCE)],
            "PNEUMO",
            ts,
        )
        .unwrap();
        assert_eq!(event, FAILURES_EXIST);
        let ts = TransferSyntaxRegistry.get(ts).unwrap();
        let obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], ts).unwrap();
        let failed = obj.get(tags::FAILED_SOP_SEQUENCE).unwrap().items().unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(
            failed[0]
                .get(tags::FAILURE_REASON)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            0x0112
        );
        let (event, _) =
            event_report(&request, &[None, None], "PNEUMO", "1.2.840.10008.1.2").unwrap();
        assert_eq!(event, ALL_COMMITTED);
    }

    #[test]
    fn requests_without_what_they_must_name_are_refused() {
        let ts = crate::sop::EXPLICIT_VR_LE;
        let no_items = request_bytes(ts, "1.2.3", &[]);
        assert!(read_request(&no_items, ts)
            .unwrap_err()
            .1
            .contains("Referenced SOP Sequence"));
        let bad_uid = request_bytes(ts, "1.2.3", &[("1.2.840.10008.5.1.4.1.1.1", "1.2.x")]);
        let read = read_request(&bad_uid, ts).unwrap();
        assert!(!read.items[0].names_uids());
        let empty = request_bytes(ts, "1.2.3", &[("1.2.840.10008.5.1.4.1.1.1", "")]);
        assert!(!read_request(&empty, ts).unwrap().items[0].names_uids());
        let leading_zero =
            request_bytes(ts, "1.2.3", &[("1.2.840.10008.5.1.4.1.1.1", "1.2.099.1")]);
        assert!(read_request(&leading_zero, ts).unwrap().items[0].names_uids());
        let bad_transaction = request_bytes(ts, "1..2", &[("1.2.840.10008.5.1.4.1.1.1", "1.2")]);
        assert!(read_request(&bad_transaction, ts)
            .unwrap_err()
            .1
            .contains("Transaction UID"));
        assert!(read_request(b"\x08\x00\x95\x11\xff\xff", ts).is_err());
    }
}

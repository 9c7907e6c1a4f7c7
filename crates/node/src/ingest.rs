//! The SCP's handler: every received instance goes to the store, and the
//! store's verdict becomes the C-STORE status.

use std::sync::Arc;

use pneumo_dimse::{ReceivedInstance, Status, StoreHandler, StoreReply};
use pneumo_store::{Incoming, IngestOutcome, Store, StoreError};
use tracing::{info, warn};

pub struct IngestHandler {
    pub store: Arc<Store>,
}

impl StoreHandler for IngestHandler {
    async fn store(&self, instance: ReceivedInstance) -> StoreReply {
        let incoming = Incoming {
            spool_path: instance.path.clone(),
            sop_class_uid: instance.sop_class_uid.clone(),
            sop_instance_uid: instance.sop_instance_uid.clone(),
            transfer_syntax_uid: instance.transfer_syntax.clone(),
            dataset_len: instance.dataset_len,
            dataset_sha256: instance.dataset_sha256,
            calling_ae: instance.context.calling_ae.clone(),
            peer_address: instance.context.peer.to_string(),
        };
        match self.store.ingest(&incoming).await {
            Ok(IngestOutcome::Stored {
                instance_id,
                job_id,
            }) => {
                info!(sop_instance_uid = %instance.sop_instance_uid, instance_id, job_id, bytes = instance.dataset_len, "instance stored");
                StoreReply::success()
            }
            Ok(IngestOutcome::StoredConflicting {
                instance_id,
                job_id,
            }) => {
                info!(sop_instance_uid = %instance.sop_instance_uid, instance_id, job_id, "instance stored beside an earlier one with the same UID");
                StoreReply::success()
            }
            Ok(IngestOutcome::Duplicate { instance_id }) => {
                info!(sop_instance_uid = %instance.sop_instance_uid, instance_id, "duplicate of a stored instance; nothing written");
                StoreReply::success()
            }
            Err(e) => {
                let status = match &e {
                    StoreError::Unparseable(_) => Status::CANNOT_UNDERSTAND,
                    StoreError::Mismatch(_) => Status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    _ => Status::OUT_OF_RESOURCES,
                };
                warn!(sop_instance_uid = %instance.sop_instance_uid, %status, error = %e, "instance refused");
                StoreReply::failure(status, e.to_string())
            }
        }
    }
}

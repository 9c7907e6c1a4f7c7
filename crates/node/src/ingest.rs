//! The SCP's handler: every received instance goes to the store, and the
//! store's verdict becomes the C-STORE status.

use std::sync::Arc;

use pneumo_dimse::commitment::CommitmentItem;
use pneumo_dimse::{AssociationContext, ReceivedInstance, Status, StoreHandler, StoreReply};
use pneumo_store::{Incoming, IngestOutcome, Store, StoreError};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::diskguard::DiskGuard;
use crate::metrics::Metrics;
use crate::routing::RoutingSection;

pub struct IngestHandler {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub disk: Arc<DiskGuard>,
    pub routing: RoutingSection,
    /// Woken when an instance is owed to a destination.
    pub wake_outbox: Arc<Notify>,
    /// Where reports go (a re-sent copy's report, to a destination that
    /// never had it).
    pub results: crate::routing::ResultRouting,
    /// Woken when a job is waiting to be routed.
    pub wake_router: Arc<Notify>,
    /// The AE titles of Storage Commitment requesters whose results go on
    /// an association of the node's own (`dicom.commitment_requesters`).
    pub commitment_requesters: Vec<String>,
    /// Woken when such a result is owed.
    pub wake_commitment: Arc<Notify>,
}

/// Moves received jobs to `queued` (to be analysed) or `skipped` (with the
/// routing rule's reason); at start for jobs a previous process left, then
/// each time an instance is stored.
pub async fn run_router(
    store: Arc<Store>,
    routing: RoutingSection,
    wake: Arc<Notify>,
    wake_pipeline: Arc<Notify>,
) {
    let mut routing_failing = crate::repeated::RepeatedWarning::new("cannot route jobs");
    loop {
        match store
            .route_received_jobs(|h, ts| {
                let refusal = routing.analysis_refusal(h).or_else(|| {
                    (!pneumo_imaging::can_decode(ts))
                        .then(|| format!("transfer syntax {ts} cannot be decoded for analysis"))
                });
                // Said where an operator looks when a report was to be
                // expected (a modality analysed: a lateral view, a For
                // Processing image); the slices of a CT routed through are
                // not worth a line each.
                if let Some(reason) = &refusal {
                    if routing.analyses_modality(h.modality.as_deref()) {
                        info!(sop_instance_uid = %h.sop_instance_uid,
                            study_instance_uid = %h.study_instance_uid, reason, "not analysed");
                    } else {
                        debug!(sop_instance_uid = %h.sop_instance_uid, reason, "not analysed");
                    }
                }
                refusal
            })
            .await
        {
            Ok((0, 0)) => routing_failing.succeeded(),
            Ok((queued, skipped)) => {
                routing_failing.succeeded();
                debug!(queued, skipped, "jobs routed");
                if queued > 0 {
                    wake_pipeline.notify_one();
                }
            }
            Err(e) => {
                routing_failing.failed(&e);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        wake.notified().await;
    }
}

impl StoreHandler for IngestHandler {
    fn admit(&self, _context: &AssociationContext, _sop_class_uid: &str) -> Result<(), StoreReply> {
        match self.disk.refusal() {
            None => Ok(()),
            // Logged and counted with the other refusals the SCP answers
            // itself (`instance_refused`).
            Some(reason) => Err(StoreReply::failure(Status::OUT_OF_RESOURCES, reason)),
        }
    }

    fn room_while_receiving(&self, received: u64) -> Result<(), String> {
        match self.disk.refusal_while_receiving() {
            None => Ok(()),
            Some(reason) => Err(format!("{reason}, {} MB received", received / 1_000_000)),
        }
    }

    fn association_accepted(&self, _context: &AssociationContext) {
        Metrics::inc(&self.metrics.associations, 1);
    }

    fn association_rejected(&self, _calling_ae: &str, _why: &str) {
        Metrics::inc(&self.metrics.associations_rejected, 1);
    }

    fn instance_refused(&self, _reply: &StoreReply) {
        Metrics::inc(&self.metrics.instances_refused, 1);
    }

    fn check_data_set(&self, bytes: &[u8], transfer_syntax: &str) -> Result<(), String> {
        pneumo_store::check_data_set_bytes(bytes, transfer_syntax)
    }

    async fn commit(
        &self,
        context: &AssociationContext,
        items: &[CommitmentItem],
    ) -> Vec<Option<u16>> {
        use pneumo_dimse::commitment::failure;
        let mut outcomes = Vec::with_capacity(items.len());
        let mut not_committed = Vec::new();
        for item in items {
            let outcome = match self.store.kept_classes(&item.sop_instance_uid).await {
                Ok(classes) if classes.contains(&item.sop_class_uid) => None,
                Ok(classes) if !classes.is_empty() => Some(failure::CLASS_INSTANCE_CONFLICT),
                Ok(_) => Some(failure::NO_SUCH_OBJECT_INSTANCE),
                Err(e) => {
                    warn!(error = %e, sop_instance_uid = %item.sop_instance_uid,
                        "cannot look up an instance for storage commitment");
                    Some(failure::PROCESSING_FAILURE)
                }
            };
            if let Some(reason) = outcome {
                debug!(sop_instance_uid = %item.sop_instance_uid,
                    failure_reason = format_args!("{reason:04X}H"), "not committed");
                not_committed.push(item.sop_instance_uid.as_str());
            }
            outcomes.push(outcome);
        }
        // One line per request (one of 5,000 references wrote 4,500): the
        // first few named, each at debug level.
        if !not_committed.is_empty() {
            let first: Vec<&str> = not_committed.iter().take(5).copied().collect();
            info!(calling_ae = %context.calling_ae, count = not_committed.len(),
                first = %first.join(","), "instances not committed");
        }
        outcomes
    }

    async fn send_result_apart(
        &self,
        context: &AssociationContext,
        transaction_uid: &str,
        event_type_id: u16,
        data: &[u8],
    ) -> Result<bool, String> {
        // AE titles compare exactly, as dicom.allowed_callers do.
        if !self.commitment_requesters.contains(&context.calling_ae) {
            return Ok(false);
        }
        self.store
            .owe_commitment_result(&context.calling_ae, transaction_uid, event_type_id, data)
            .await
            .map_err(|e| format!("cannot keep the result to send it: {e}"))?;
        info!(calling_ae = %context.calling_ae, %transaction_uid,
            "storage commitment result to be sent on an association of its own");
        // (each requester's loop looks for its own)
        self.wake_commitment.notify_waiters();
        Ok(true)
    }

    async fn store(&self, instance: ReceivedInstance) -> StoreReply {
        let bytes = instance.dataset_len;
        let reply = self.keep(instance).await;
        if reply.status.is_failure() {
            Metrics::inc(&self.metrics.instances_refused, 1);
        } else {
            Metrics::inc(&self.metrics.instances_received, 1);
            Metrics::inc(&self.metrics.bytes_received, bytes);
        }
        reply
    }
}

impl IngestHandler {
    async fn keep(&self, instance: ReceivedInstance) -> StoreReply {
        let incoming = Incoming {
            spool_path: instance.path.clone(),
            sop_class_uid: instance.sop_class_uid.clone(),
            sop_instance_uid: instance.sop_instance_uid.clone(),
            transfer_syntax_uid: instance.transfer_syntax.clone(),
            dataset_len: instance.dataset_len,
            dataset_sha256: instance.dataset_sha256,
            calling_ae: instance.context.calling_ae.clone(),
            peer_address: instance.context.peer.to_string(),
            generated: false,
        };
        let calling_ae = instance.context.calling_ae.as_str();
        let mut forwarded = false;
        let route = |h: &pneumo_store::InstanceHeader| {
            let d = self.routing.forward_destinations(h, calling_ae);
            forwarded = !d.is_empty();
            d
        };
        let outcome = self.store.ingest(&incoming, route).await;
        if forwarded {
            self.wake_outbox.notify_one();
        }
        // A duplicate too: a re-sent copy that repaired a lost file puts
        // its failed analysis and parked deliveries back.
        if outcome.is_ok() {
            self.wake_router.notify_one();
        }
        if matches!(outcome, Ok(IngestOutcome::Duplicate { .. })) {
            self.wake_outbox.notify_one();
        }
        match outcome {
            Ok(IngestOutcome::Stored {
                instance_id,
                job_id,
            }) => {
                info!(sop_instance_uid = %instance.sop_instance_uid, instance_id, job_id = %job_id.map_or("none".into(), |j| j.to_string()), bytes = instance.dataset_len, "instance stored");
                StoreReply::success()
            }
            Ok(IngestOutcome::StoredConflicting {
                instance_id,
                job_id,
            }) => {
                info!(sop_instance_uid = %instance.sop_instance_uid, instance_id, job_id = %job_id.map_or("none".into(), |j| j.to_string()), "instance stored beside an earlier one with the same UID");
                StoreReply::success()
            }
            Ok(IngestOutcome::Duplicate {
                instance_id,
                newly_routed,
            }) => {
                // Its report, too, to a results destination configured since.
                let reports_owed = match self
                    .store
                    .owe_report_of(
                        instance_id,
                        &self.results.destinations_for(&[calling_ae.to_string()]),
                    )
                    .await
                {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "cannot owe the report of a re-sent instance");
                        0
                    }
                };
                if reports_owed > 0 {
                    self.wake_outbox.notify_one();
                }
                info!(sop_instance_uid = %instance.sop_instance_uid, instance_id, newly_routed, reports_owed, "duplicate of a stored instance; not stored again");
                StoreReply::success()
            }
            Err(e) => {
                let status = match &e {
                    StoreError::Unparseable(_) | StoreError::NotAUid(_) => {
                        Status::CANNOT_UNDERSTAND
                    }
                    StoreError::Mismatch(_) => Status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    _ => Status::OUT_OF_RESOURCES,
                };
                warn!(sop_instance_uid = %instance.sop_instance_uid, %status, error = %e, "instance refused");
                // The sender's Error Comment keeps 64 characters: the why
                // itself, without the status's own words before it.
                let comment = match &e {
                    StoreError::Unparseable(why) | StoreError::Mismatch(why) => why.clone(),
                    _ => e.to_string(),
                };
                StoreReply::failure(status, comment)
            }
        }
    }
}

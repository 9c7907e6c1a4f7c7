//! Delivery of the outbox: a worker that sends what is due to each
//! destination, records every answer and retries with back-off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pneumo_dimse::{scu::ClientAssociation, FileToSend, ScuOptions, StoreOutcome};
use pneumo_store::{backoff, OutboxItem, Store};
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::{info, info_span, warn, Instrument};

use crate::metrics::Metrics;
use crate::routing::Destination;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSection {
    /// First retry after this many seconds; each further retry waits twice as long...
    pub retry_base_s: u64,
    /// ...up to this many seconds.
    pub retry_cap_s: u64,
    /// Instances sent over one association at most.
    pub batch: usize,
}

impl Default for OutboxSection {
    fn default() -> Self {
        OutboxSection {
            retry_base_s: 2,
            retry_cap_s: 300,
            batch: 50,
        }
    }
}

pub struct OutboxWorker {
    pub store: Arc<Store>,
    pub destinations: Vec<Destination>,
    pub settings: OutboxSection,
    pub scu: ScuOptions,
    /// Woken when something is enqueued.
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

impl OutboxWorker {
    pub async fn run(self) {
        loop {
            let due = match self
                .store
                .due_deliveries((self.settings.batch * 4) as i64)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot read the outbox");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if due.is_empty() {
                let wait = match self.store.next_delivery_in().await {
                    Ok(Some(d)) => d.min(Duration::from_secs(5)),
                    _ => Duration::from_secs(5),
                };
                tokio::select! {
                    _ = self.wake.notified() => {},
                    _ = tokio::time::sleep(wait) => {},
                }
                continue;
            }
            let mut by_destination: BTreeMap<String, Vec<OutboxItem>> = BTreeMap::new();
            for item in due {
                by_destination
                    .entry(item.destination.clone())
                    .or_default()
                    .push(item);
            }
            for (name, items) in by_destination {
                for batch in items.chunks(self.settings.batch.max(1)) {
                    let span = info_span!("delivery", destination = %name);
                    self.deliver(&name, batch).instrument(span).await;
                }
            }
        }
    }

    fn retry_delay(&self, attempts_before: i64) -> Duration {
        backoff(
            attempts_before + 1,
            Duration::from_secs(self.settings.retry_base_s),
            Duration::from_secs(self.settings.retry_cap_s),
        )
    }

    async fn record(&self, result: Result<(), pneumo_store::StoreError>) {
        if let Err(e) = result {
            warn!(error = %e, "cannot record a delivery in the outbox");
        }
    }

    async fn retry_all(&self, items: &[OutboxItem], reason: &str) {
        Metrics::inc(&self.metrics.deliveries_failed, items.len() as u64);
        for item in items {
            let delay = self.retry_delay(item.attempts);
            self.record(self.store.mark_retry(item.id, reason, delay).await)
                .await;
        }
        if let Some(first) = items.first() {
            warn!(
                reason,
                instances = items.len(),
                retry_in_s = self.retry_delay(first.attempts).as_secs(),
                "delivery failed; will retry"
            );
        }
    }

    async fn deliver(&self, name: &str, items: &[OutboxItem]) {
        let Some(destination) = self.destinations.iter().find(|d| d.name == name) else {
            // Kept, not dropped: a configuration mistake must not lose what is owed.
            let reason = format!("destination `{name}` is not configured; kept until it is");
            for item in items {
                let delay = Duration::from_secs(self.settings.retry_cap_s);
                self.record(self.store.mark_retry(item.id, &reason, delay).await)
                    .await;
            }
            warn!(instances = items.len(), "{reason}");
            return;
        };
        let mut sendable = Vec::new();
        for item in items {
            match FileToSend::inspect(&self.store.instance_file(&item.path)) {
                Ok(f) => sendable.push((item, f)),
                Err(e) => {
                    let reason = format!("stored file unreadable: {e}");
                    self.record(self.store.mark_parked(item.id, &reason).await)
                        .await;
                }
            }
        }
        if sendable.is_empty() {
            return;
        }
        let files: Vec<FileToSend> = sendable.iter().map(|(_, f)| f.clone()).collect();
        let proposals = pneumo_dimse::scu::proposals_for(&files);
        let mut assoc = match ClientAssociation::open(&destination.address(), &self.scu, &proposals)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                let items: Vec<OutboxItem> = sendable.iter().map(|(i, _)| (*i).clone()).collect();
                self.retry_all(&items, &e.to_string()).await;
                return;
            }
        };
        for (n, (item, file)) in sendable.iter().enumerate() {
            match assoc.store(file).await {
                Ok(outcome) => self.record_outcome(item, &outcome).await,
                Err(e) => {
                    let rest: Vec<OutboxItem> =
                        sendable[n..].iter().map(|(i, _)| (*i).clone()).collect();
                    self.retry_all(&rest, &e.to_string()).await;
                    return;
                }
            }
        }
        if let Err(e) = assoc.release().await {
            warn!(error = %e, "release failed after delivery");
        }
    }

    async fn record_outcome(&self, item: &OutboxItem, outcome: &StoreOutcome) {
        let comment = outcome
            .error_comment
            .as_deref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        let result = match &outcome.result {
            Ok(status) if !status.is_failure() => {
                if status.is_warning() {
                    warn!(sop_instance_uid = %item.sop_instance_uid, %status, "delivered with a warning");
                } else {
                    info!(sop_instance_uid = %item.sop_instance_uid, "delivered");
                }
                self.store
                    .mark_sent(item.id, &format!("{status}{comment}"))
                    .await
            }
            Ok(status) if status.is_permanent_failure() => {
                Metrics::inc(&self.metrics.deliveries_failed, 1);
                warn!(sop_instance_uid = %item.sop_instance_uid, %status, "refused for good; parked");
                self.store
                    .mark_parked(item.id, &format!("{status}{comment}"))
                    .await
            }
            Ok(status) => {
                Metrics::inc(&self.metrics.deliveries_failed, 1);
                let delay = self.retry_delay(item.attempts);
                warn!(sop_instance_uid = %item.sop_instance_uid, %status, retry_in_s = delay.as_secs(), "refused; will retry");
                self.store
                    .mark_retry(item.id, &format!("{status}{comment}"), delay)
                    .await
            }
            // Nothing could be sent for this file (no accepted context): the
            // destination will not take it as it is.
            Err(reason) => {
                Metrics::inc(&self.metrics.deliveries_failed, 1);
                warn!(sop_instance_uid = %item.sop_instance_uid, reason, "cannot be sent; parked");
                self.store.mark_parked(item.id, reason).await
            }
        };
        self.record(result).await;
    }
}

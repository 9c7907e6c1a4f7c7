//! Sends Storage Commitment results to requesters that take them on an
//! association of their own (`dicom.commitment_requesters`): each result
//! was kept in the database before its N-ACTION was answered, and is sent
//! until the requester answers it, retried with back-off when it cannot be
//! reached, and given up after a day (a requester asks again after its own
//! time-out).

use std::sync::Arc;
use std::time::Duration;

use pneumo_dimse::{scu, ScuOptions};
use pneumo_store::{CommitmentResult, Store};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::config::CommitmentRequester;
use crate::repeated::RepeatedWarning;

/// How long a result is tried for.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How long a result answered or given up on is kept (for the metric and
/// an administrator's look at the database).
const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);
/// Waits between attempts: doubling from the first, up to the cap.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_CAP: Duration = Duration::from_secs(300);

pub struct CommitmentSender {
    pub store: Arc<Store>,
    pub requesters: Vec<CommitmentRequester>,
    pub scu: ScuOptions,
    pub wake: Arc<Notify>,
    pub stopping: watch::Receiver<bool>,
}

impl CommitmentSender {
    /// One loop per requester, side by side (sent in one queue, a
    /// requester that accepts and never answers held up every other's
    /// results for its time-out per result), and one that gives up what is
    /// owed to requesters no longer configured and forgets old results.
    pub async fn run(self: Arc<Self>) {
        let mut loops = tokio::task::JoinSet::new();
        for requester in self.requesters.clone() {
            let me = self.clone();
            loops.spawn(async move { me.serve(requester).await });
        }
        let me = self.clone();
        loops.spawn(async move { me.tidy().await });
        while loops.join_next().await.is_some() {}
    }

    async fn serve(&self, requester: CommitmentRequester) {
        let mut stopping = self.stopping.clone();
        let mut failing = RepeatedWarning::new("cannot read the commitment results owed");
        let ae = requester.ae_title.as_str();
        loop {
            // Armed before the look: a result owed while this loop sends is
            // not missed.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.store.due_commitment_results(ae).await {
                Ok(due) => {
                    failing.succeeded();
                    self.send_in_turn(&requester, due).await;
                }
                Err(e) => failing.failed(&e),
            }
            if *self.stopping.borrow() {
                return;
            }
            let next = match self.store.next_commitment_result_in(ae).await {
                Ok(Some(next)) => next.min(Duration::from_secs(60)),
                Ok(None) => Duration::from_secs(60),
                Err(_) => Duration::from_secs(5),
            };
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(next) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    /// Once a minute: results owed to a requester no longer configured are
    /// given up, and those finished long ago forgotten.
    async fn tidy(&self) {
        let mut stopping = self.stopping.clone();
        loop {
            match self.store.commitment_requesters_owed().await {
                Ok(owed) => {
                    for ae in owed {
                        if self.requesters.iter().any(|r| r.ae_title == ae) {
                            continue;
                        }
                        let why = "the requester is no longer in dicom.commitment_requesters";
                        let given_up = self.store.give_up_commitment_results_of(&ae, why).await;
                        if let Ok(n) = given_up {
                            warn!(requester = %ae, results = n,
                                "storage commitment results given up: {why}");
                        }
                        self.record(given_up.map(|_| ()));
                    }
                }
                Err(e) => self.record(Err(e)),
            }
            let pruned = self
                .store
                .forget_finished_commitment_results(KEEP_FINISHED)
                .await;
            self.record(pruned.map(|_| ()));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    /// One requester's results, in turn. When it cannot be reached, its
    /// other results wait as long as the one that failed.
    async fn send_in_turn(&self, requester: &CommitmentRequester, results: Vec<CommitmentResult>) {
        let mut stopping = self.stopping.clone();
        let mut put_off: Option<(Duration, String)> = None;
        for result in results {
            if *self.stopping.borrow() {
                return;
            }
            if let Some((delay, why)) = &put_off {
                let why = format!("not tried: {why}");
                let later = self
                    .store
                    .commitment_result_put_off(result.id, &why, *delay);
                self.record(later.await);
                continue;
            }
            // A send waiting on a silent requester is dropped at a stop
            // (the result stays owed, and goes after the restart): it held
            // the whole shutdown grace.
            tokio::select! {
                sent = self.send(requester, result) => put_off = sent,
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    /// Sends one result; when the requester could not be reached, how long
    /// its other results wait, and why.
    async fn send(
        &self,
        requester: &CommitmentRequester,
        result: CommitmentResult,
    ) -> Option<(Duration, String)> {
        let (id, transaction_uid) = (result.id, result.transaction_uid.as_str());
        let address = requester.address();
        let requester = &requester.ae_title;
        let age = pneumo_store::now_ms() - result.created_at_ms;
        if age > GIVE_UP_AFTER.as_millis() as i64 {
            let why = format!(
                "not delivered within {} hours ({} attempts)",
                GIVE_UP_AFTER.as_secs() / 3600,
                result.attempts
            );
            warn!(%requester, %transaction_uid, "storage commitment result given up: {why}");
            self.record(self.store.commitment_result_given_up(id, &why).await);
            return None;
        }
        let event_type = result.event_type_id as u16;
        let sent = scu::send_commitment_result(&address, &self.scu, event_type, &result.data).await;
        let (written, put_off) = match sent {
            Ok(status) => {
                if status.is_success() || status.is_warning() {
                    info!(%requester, %transaction_uid, %status, peer = %address,
                        "storage commitment result delivered");
                } else {
                    // An answer, if a refusal: the same again gets the same.
                    warn!(%requester, %transaction_uid, %status, peer = %address,
                        "storage commitment result not taken by the requester");
                }
                let status = status.to_string();
                (
                    self.store.commitment_result_answered(id, &status).await,
                    None,
                )
            }
            Err(e) => {
                let delay = pneumo_store::backoff(result.attempts + 1, RETRY_FIRST, RETRY_CAP);
                warn!(%requester, %transaction_uid, peer = %address, error = %e,
                    retry_in_s = delay.as_secs(), "storage commitment result not sent");
                let why = e.to_string();
                let written = self.store.commitment_result_retry(id, &why, delay).await;
                (written, Some((delay, why)))
            }
        };
        self.record(written);
        put_off
    }

    /// A result's state that could not be written is sent again (the
    /// requester matches it by its Transaction UID).
    fn record(&self, written: Result<(), pneumo_store::StoreError>) {
        if let Err(e) = written {
            warn!(error = %e, "cannot record a storage commitment result's delivery");
        }
    }
}

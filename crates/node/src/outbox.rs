//! Delivery of the outbox: a worker that sends what is due to each
//! destination, records every answer and retries with back-off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pneumo_dimse::scu::{self, ClientAssociation};
use pneumo_dimse::{FileToSend, ScuOptions, SendAs, Status, StoreOutcome};
use pneumo_store::{backoff, OutboxItem, Store};
use serde::Deserialize;
use tokio::sync::{watch, Notify};
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
    /// Longest wait for a destination to accept a connection, seconds.
    pub connect_timeout_s: u64,
    /// Longest wait for any answer of a destination (association, each
    /// C-STORE response), seconds; then the attempt fails and is retried.
    pub response_timeout_s: u64,
}

impl Default for OutboxSection {
    fn default() -> Self {
        OutboxSection {
            retry_base_s: 2,
            retry_cap_s: 300,
            batch: 50,
            connect_timeout_s: 10,
            response_timeout_s: 60,
        }
    }
}

/// A destination's answer to a delivery: its status text, and the UID the
/// instance went under when not its own.
pub type TakenAnswer = (String, Option<String>);

pub struct OutboxWorker {
    pub store: Arc<Store>,
    pub destinations: Vec<Destination>,
    pub settings: OutboxSection,
    pub scu: ScuOptions,
    /// Woken when something is enqueued.
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// True once the node stops: no new file is sent; the one in flight
    /// is finished and recorded.
    pub stopping: watch::Receiver<bool>,
    /// (Outbox row id, destination) → its answer, for deliveries it took
    /// whose `sent` the database could not record (a full disk): recorded
    /// when the database can, never sent again meanwhile (each pause sent
    /// the batch again: a PACS got 382 C-STOREs for 50 instances a minute).
    /// Lost with the process: then sent once more, at least once.
    /// Keyed by destination too: a row moved to another destination
    /// meanwhile is that one's to send.
    pub delivered_unrecorded: Mutex<HashMap<(i64, String), TakenAnswer>>,
    /// `report.uid_root`: the UIDs of reports sent as another class
    /// derive under it as the reports' own do.
    pub report_uid_root: Option<String>,
    /// Destination → how many times in a row it failed as a whole (no
    /// association, one lost before any answer, two A7xx): its back-off
    /// doubles with each, whichever row was tried (rows go least-tried
    /// first, so the most-tried row's attempts grew once per round of the
    /// whole backlog: a PACS owed 8 rows got 8 connections per back-off
    /// step). Ended by a success or warning answer; lost with the process
    /// (the rows' attempts are then the floor).
    pub failures_in_a_row: Mutex<HashMap<String, i64>>,
    /// Destination → the row its last association was lost on before any
    /// answer, since its last answer: lost so on one row, that row alone
    /// waits its back-off and the others go on at once; on a second row
    /// too, the destination waits. A row a PACS aborts on went first
    /// whenever it was due alone, and put everything owed there off (up to
    /// `retry_cap_s`) at each of its turns.
    pub lost_before_any_answer: Mutex<HashMap<String, i64>>,
    /// Destination → the row of its last A7xx answer, when no other answer
    /// came since: an A7xx on one row is that instance (too large now?), on
    /// a second row the destination (a full archive), across associations.
    /// Counted per association, rows arriving one at a time (as a modality
    /// sends) were each tried and refused. Lost with the process.
    pub out_of_resources_on: Mutex<HashMap<String, i64>>,
    /// Destinations that took a report as Comprehensive SR in place of its
    /// Comprehensive 3D SR: their later reports go so at once (a PACS that
    /// accepts 3D SR in negotiation and refuses it at C-STORE cost a
    /// refused C-STORE and a WARN per report, for good). Lost with the
    /// process: learnt again from the next report.
    pub take_comprehensive_sr: Mutex<std::collections::HashSet<String>>,
}

impl OutboxWorker {
    /// One delivery loop per destination, so that a destination that is
    /// slow, down or never answers holds up nobody else's deliveries; this
    /// task fans wake-ups out to them and keeps the rows of destinations no
    /// longer configured.
    pub async fn run(self) {
        let worker = Arc::new(self);
        let mut stopping = worker.stopping.clone();
        let mut wakes = Vec::new();
        let mut loops = tokio::task::JoinSet::new();
        for destination in &worker.destinations {
            let wake = Arc::new(Notify::new());
            wakes.push(wake.clone());
            let span = info_span!("delivery", destination = %destination.name);
            loops.spawn(
                worker
                    .clone()
                    .serve_destination(destination.clone(), wake)
                    .instrument(span),
            );
        }
        let configured: Vec<String> = worker.destinations.iter().map(|d| d.name.clone()).collect();
        worker.warn_of_unconfigured_owed(&configured).await;
        let cap = Duration::from_secs(worker.settings.retry_cap_s);
        while !*stopping.borrow() {
            match worker
                .store
                .put_off_unconfigured(
                    &configured,
                    "destination `{destination}` is not configured; kept until it is",
                    cap,
                )
                .await
            {
                Ok(unconfigured) => {
                    for (destination, n) in unconfigured {
                        warn!(
                            %destination,
                            deliveries = n,
                            retry_in_s = cap.as_secs(),
                            "deliveries to a destination that is not configured (any more); \
                             kept until it is (renamed? POST /api/deliveries/move?from=OLD&to=NEW)"
                        );
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the outbox"),
            }
            tokio::select! {
                _ = worker.wake.notified() => {},
                _ = tokio::time::sleep(cap.min(Duration::from_secs(60))) => {},
                _ = stopping.changed() => {},
            }
            for wake in &wakes {
                wake.notify_one();
            }
        }
        while loops.join_next().await.is_some() {}
    }

    /// Said at start: rows owed to a destination no longer configured
    /// (renamed, removed) were warned of only when next due, up to
    /// `retry_cap_s` later, or never while parked.
    async fn warn_of_unconfigured_owed(&self, configured: &[String]) {
        let counts = match self.store.outbox_counts().await {
            Ok(counts) => counts,
            Err(e) => return warn!(error = %e, "cannot read the outbox"),
        };
        for c in counts.iter().filter(|c| {
            (c.state == "pending" || c.state == "parked") && !configured.contains(&c.destination)
        }) {
            warn!(
                destination = %c.destination,
                state = %c.state,
                deliveries = c.count,
                "deliveries owed to a destination that is not configured; kept until it is \
                 (renamed? POST /api/deliveries/move?from=OLD&to=NEW; gone? \
                 POST /api/deliveries/cancel?destination=OLD)"
            );
        }
    }

    async fn serve_destination(self: Arc<Self>, destination: Destination, wake: Arc<Notify>) {
        let name = Some(destination.name.as_str());
        let mut stopping = self.stopping.clone();
        // Rounds in a row whose answers could not be recorded.
        let mut unrecordable = 0u32;
        while !*stopping.borrow() {
            let due = match self
                .store
                .due_deliveries(name, (self.settings.batch * 4) as i64)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot read the outbox");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let (due, recorded) = self.record_earlier_deliveries(due).await;
            if !recorded {
                self.pause_unrecordable(&mut unrecordable, &mut stopping)
                    .await;
                continue;
            }
            if due.is_empty() {
                let wait = match self.store.next_delivery_in(name).await {
                    Ok(Some(d)) => d.min(Duration::from_secs(5)),
                    _ => Duration::from_secs(5),
                };
                tokio::select! {
                    _ = wake.notified() => {},
                    _ = tokio::time::sleep(wait) => {},
                    _ = stopping.changed() => {},
                }
                continue;
            }
            for batch in due.chunks(self.settings.batch) {
                if *stopping.borrow() {
                    break;
                }
                match self.deliver(&destination, batch).await {
                    Delivery::Done => unrecordable = 0,
                    // The rest of `due` is put off with it: read again, so
                    // that a destination that is down gets one attempt per
                    // back-off, not one per batch. (After `Again`, read
                    // again for the untried rows, which now go first.)
                    Delivery::DestinationFailed | Delivery::Again => {
                        unrecordable = 0;
                        break;
                    }
                    // An answer the database could not record leaves its row
                    // due as before (a delivery taken is kept in
                    // `delivered_unrecorded`, not sent again): without a
                    // pause the loop would try again at once, again and again.
                    Delivery::NotRecorded => {
                        self.pause_unrecordable(&mut unrecordable, &mut stopping)
                            .await;
                        break;
                    }
                }
            }
        }
    }

    /// Records the deliveries among `due` that the destination took before
    /// the database could record them; returns the rest of `due`, to send,
    /// and whether every earlier one is recorded now.
    async fn record_earlier_deliveries(&self, due: Vec<OutboxItem>) -> (Vec<OutboxItem>, bool) {
        let (mut earlier, mut rest) = (Vec::new(), Vec::new());
        {
            let taken = self.delivered_unrecorded.lock().expect("not poisoned");
            if taken.is_empty() {
                return (due, true);
            }
            for item in due {
                match taken.get(&(item.id, item.destination.clone())) {
                    Some(answer) => earlier.push((answer.clone(), item)),
                    None => rest.push(item),
                }
            }
        }
        let mut all = true;
        for ((answer, sent_as), item) in earlier {
            if self.recorded(
                self.store
                    .mark_sent(&item, &answer, sent_as.as_deref())
                    .await,
            ) {
                info!(sop_instance_uid = %item.sop_instance_uid, "delivered (recorded late)");
                self.delivered_unrecorded
                    .lock()
                    .expect("not poisoned")
                    .remove(&(item.id, item.destination));
            } else {
                all = false;
            }
        }
        (rest, all)
    }

    /// The outbox cannot be written: a pause that doubles with each round
    /// in a row (from `retry_base_s`, at least 5 s, to `retry_cap_s`).
    /// (Not a delivery failure: the destination may have taken them all.)
    async fn pause_unrecordable(&self, rounds: &mut u32, stopping: &mut watch::Receiver<bool>) {
        *rounds += 1;
        let base = Duration::from_secs(self.settings.retry_base_s.max(5));
        let cap = Duration::from_secs(self.settings.retry_cap_s).max(base);
        let pause = backoff(i64::from(*rounds), base, cap);
        warn!(
            pause_s = pause.as_secs(),
            "the outbox cannot be written; deliveries paused"
        );
        tokio::select! {
            _ = tokio::time::sleep(pause) => {},
            _ = stopping.changed() => {},
        }
    }

    fn retry_delay(&self, attempts_before: i64) -> Duration {
        backoff(
            attempts_before + 1,
            Duration::from_secs(self.settings.retry_base_s),
            Duration::from_secs(self.settings.retry_cap_s),
        )
    }

    /// Whether the outbox took the answer (false: the database is full or
    /// locked, logged here).
    fn recorded(&self, result: Result<(), pneumo_store::StoreError>) -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "cannot record a delivery in the outbox");
                false
            }
        }
    }

    /// The destination, not these files, failed: `items` (tried, failing
    /// for `reason`) and everything else it is owed wait one back-off, that
    /// of its most-tried owed row (the outage so far). Rows of several attempt counts each
    /// fell due on their own, so a PACS that was down got an attempt every
    /// few seconds rather than one per back-off (`recorded_so_far`: the
    /// earlier answers of the batch were recorded). `new_rows_wait`: rows
    /// owed to it from now on wait too (it cannot be reached, or is full);
    /// else they are tried when owed (associations lost on two rows: the
    /// PACS may refuse those data sets alone, and every later image and
    /// report waited).
    async fn put_off(
        &self,
        destination: &Destination,
        items: &[&OutboxItem],
        reason: &str,
        recorded_so_far: bool,
        new_rows_wait: bool,
    ) -> Delivery {
        let owed = self
            .store
            .most_attempts_owed(&destination.name)
            .await
            .unwrap_or(0);
        // `items` are owed rows too; counted here should the read fail.
        let most = items.iter().map(|i| i.attempts).fold(owed, i64::max);
        let before = {
            let mut failures = self
                .failures_in_a_row
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = failures.entry(destination.name.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let delay = self.retry_delay(most.max(before));
        Metrics::inc(&self.metrics.deliveries_failed, items.len() as u64);
        let mut recorded = true;
        for item in items {
            recorded &= self.recorded(self.store.mark_retry(item, reason, delay).await);
        }
        if let Some(first) = items.first() {
            warn!(
                reason,
                instances = items.len(),
                first_instance = %first.sop_instance_uid,
                retry_in_s = delay.as_secs(),
                "delivery failed; will retry"
            );
        } else {
            // A7xx on two rows in a row (each said with its own row's
            // delay): the wait everything owed now has, theirs included.
            warn!(
                retry_in_s = delay.as_secs(),
                "the destination is out of resources (A7xx on two instances in a row); all it \
                 is owed waits, the refused instances included"
            );
        }
        let put_off = self
            .store
            .put_off_destination(&destination.name, delay, new_rows_wait)
            .await;
        if self.recorded(put_off.map(|_| ())) && recorded && recorded_so_far {
            Delivery::DestinationFailed
        } else {
            Delivery::NotRecorded
        }
    }

    /// Sends `items` over one association and records each answer. Items
    /// beyond what one association can propose (128 presentation contexts)
    /// are left due, untried, for the next batch.
    async fn deliver(&self, destination: &Destination, items: &[OutboxItem]) -> Delivery {
        let mut all = true;
        let mut sendable = Vec::new();
        for item in items {
            let path = self.store.instance_file(&item.path);
            // A truncated file would be sent as it is (a destination may
            // store the broken image) or aborted by it at every retry.
            // Same size, other bytes: a changed image reached the archive
            // as if it were the one sent.
            let (stored, owed) = (path.clone(), item.clone());
            let problem = tokio::task::spawn_blocking(move || owed.file_problem(&stored))
                .await
                .unwrap_or_else(|e| Some(format!("checking the stored file failed: {e}")));
            let checked = match problem {
                Some(problem) => Err(problem),
                None => FileToSend::inspect(&path)
                    .map_err(|e| format!("stored file unreadable: {e}"))
                    .and_then(|f| self.with_other_class(item, f)),
            };
            match checked {
                Ok(f) => sendable.push((item, f)),
                Err(reason) => {
                    warn!(sop_instance_uid = %item.sop_instance_uid, %reason, "cannot be sent; parked");
                    all &= self.recorded(self.store.mark_parked(item, &reason).await);
                }
            }
        }
        if sendable.is_empty() {
            return Delivery::recorded(all);
        }
        let mut files: Vec<FileToSend> = sendable.iter().map(|(_, f)| f.clone()).collect();
        let fit = scu::files_fitting_one_association(&files, self.scu.decompress.as_ref());
        files.truncate(fit);
        sendable.truncate(fit);
        let proposals = scu::proposals_for(&files, self.scu.decompress.as_ref());
        let mut assoc =
            match ClientAssociation::open(&destination.address(), &self.scu, &proposals).await {
                Ok(a) => a,
                Err(e) => {
                    let items: Vec<&OutboxItem> = sendable.iter().map(|(i, _)| *i).collect();
                    return self
                        .put_off(destination, &items, &e.to_string(), all, true)
                        .await;
                }
            };
        // Answers on this association: once it has answered, an association
        // lost on one instance is that instance's failure, not the
        // destination's.
        let mut answered = 0usize;
        for (item, file) in &sendable {
            if *self.stopping.borrow() {
                // The rest stay due, untried: sent after the restart.
                break;
            }
            // Moved to another destination or cancelled by an operator
            // since the batch was taken: not this destination's any more.
            if !self.store.still_owed(item).await.unwrap_or(true) {
                info!(sop_instance_uid = %item.sop_instance_uid, "no longer owed here (moved or cancelled); not sent");
                continue;
            }
            match assoc.store(file).await {
                Ok(outcome) => {
                    answered += 1;
                    if matches!(&outcome.result, Ok(s) if s.is_success() || s.is_warning()) {
                        self.failures_in_a_row
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&destination.name);
                        self.lost_before_any_answer
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&destination.name);
                        if outcome.sent_as.is_some() {
                            self.take_comprehensive_sr
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(destination.name.clone());
                        }
                    }
                    all &= self.record_outcome(item, file, &outcome).await;
                    // 3D SR refused at C-STORE (0122): the destination's
                    // reports go as Comprehensive SR from now on, the rest
                    // of this batch too, in an association proposed so (each
                    // was refused in turn: 60 refusals in a burst).
                    if matches!(&outcome.result, Ok(s) if *s == Status::SOP_CLASS_NOT_SUPPORTED)
                        && file.also_as.is_some()
                        && outcome.sent_as.is_none()
                    {
                        self.take_comprehensive_sr
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(destination.name.clone());
                        if let Err(e) = assoc.release().await {
                            warn!(error = %e, "release failed after delivery");
                        }
                        return Delivery::recorded(all).or_again();
                    }
                    let refused = matches!(&outcome.result, Ok(s) if s.is_out_of_resources());
                    let full = {
                        let mut last = self
                            .out_of_resources_on
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        if refused {
                            let before = last.insert(destination.name.clone(), item.id);
                            before.is_some_and(|row| row != item.id)
                        } else {
                            last.remove(&destination.name);
                            false
                        }
                    };
                    if full {
                        // The rest would be refused alike (a full archive
                        // answered a backlog of thousands, one WARN each, at
                        // every back-off): they wait with the destination,
                        // untried, their attempts unchanged.
                        if let Err(e) = assoc.release().await {
                            warn!(error = %e, "release failed after delivery");
                        }
                        // (The refused ones are owed rows: their attempts count.)
                        return self.put_off(destination, &[], "", all, true).await;
                    }
                }
                // The association lost (aborted, timed out) before any
                // answer: this row, the first time (or again the same row);
                // the destination, when another row was lost so before
                // since its last answer. Then the rows behind this one wait
                // with it, untried.
                Err(e) if answered == 0 => {
                    let first_loss = {
                        let mut lost = self
                            .lost_before_any_answer
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        let before = lost.insert(destination.name.clone(), item.id);
                        before.is_none_or(|row| row == item.id)
                    };
                    if first_loss {
                        // Still a failure of the destination's in a row (its
                        // back-off, should the next one be its, doubles on).
                        *self
                            .failures_in_a_row
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(destination.name.clone())
                            .or_insert(0) += 1;
                        let reason = format!(
                            "{e} ({} on this instance; the others go on)",
                            pneumo_store::LOST_BEFORE_ANY_ANSWER
                        );
                        all &= self.instance_failed(item, &reason).await;
                        return Delivery::recorded(all).or_again();
                    }
                    // What a PACS that does not know the calling AE title
                    // does, among others (Orthanc accepts, then drops the
                    // connection at the first C-STORE).
                    let question = match e {
                        // A slow PACS, not one that refuses the node.
                        scu::ScuError::Timeout(waited) => format!(
                            "is the destination overloaded, or outbox.response_timeout_s \
                             ({} s) too short for it?",
                            waited.as_secs()
                        ),
                        _ => format!(
                            "does the destination know this node's AE title {}, and take \
                             these instances' SOP class?",
                            self.scu.calling_ae
                        ),
                    };
                    let reason = format!(
                        "{e} ({} on two instances in a row: {question})",
                        pneumo_store::LOST_BEFORE_ANY_ANSWER,
                    );
                    return self
                        .put_off(destination, &[*item], &reason, all, false)
                        .await;
                }
                // A release the destination asked for mid-way: nothing
                // failed; the instance goes again, its attempts unchanged.
                Err(scu::ScuError::ReleasedByPeer) => {
                    info!(sop_instance_uid = %item.sop_instance_uid,
                        "the destination released the association before answering; sent again");
                    return Delivery::recorded(all).or_again();
                }
                // After answers: this instance. A PACS that aborts on one
                // data set, or never answers it, held up everything owed to
                // it for good; now that row alone waits its back-off, and
                // the rest go first in a new association.
                Err(e) => {
                    all &= self.instance_failed(item, &e.to_string()).await;
                    return Delivery::recorded(all).or_again();
                }
            }
        }
        if let Err(e) = assoc.release().await {
            warn!(error = %e, "release failed after delivery");
        }
        Delivery::recorded(all)
    }

    /// The association was lost on `item` alone: its row waits its own
    /// back-off, the others go on in a new association. Whether the outbox
    /// took it.
    async fn instance_failed(&self, item: &OutboxItem, reason: &str) -> bool {
        Metrics::inc(&self.metrics.deliveries_failed, 1);
        let delay = self.retry_delay(item.attempts);
        warn!(sop_instance_uid = %item.sop_instance_uid, reason, retry_in_s = delay.as_secs(),
            "delivery of this instance failed; will retry it, the others go on");
        self.recorded(self.store.mark_retry(item, reason, delay).await)
    }

    /// A report of the node's in Comprehensive 3D SR may also go as
    /// Comprehensive SR (the same document; no SCOORD3D in TID 1500 as the
    /// node writes it), under a UID of its own, to a PACS without 3D SR:
    /// older archives take Comprehensive SR only, and the reports already
    /// made could not be made again in another class. Received instances
    /// are never changed.
    fn with_other_class(
        &self,
        item: &OutboxItem,
        mut file: FileToSend,
    ) -> Result<FileToSend, String> {
        if item.generated && file.sop_class_uid == COMPREHENSIVE_3D_SR {
            let uid = pneumo_report::comprehensive_sr_copy_uid(
                &file.sop_instance_uid,
                self.report_uid_root.as_deref(),
            )
            .map_err(|e| format!("report: {e}"))?;
            file.also_as = Some(SendAs {
                sop_class_uid: COMPREHENSIVE_SR.to_string(),
                sop_instance_uid: uid,
                renamed_references: self.predecessors_as_copies(&file.path),
            });
            // It accepted 3D SR in negotiation and refused it at C-STORE,
            // or (a resend) took it as Comprehensive SR before.
            file.prefer_also_as = item.sent_as_uid.is_some()
                || item
                    .last_status
                    .as_deref()
                    .is_some_and(|s| s.starts_with(REFUSED_CLASS))
                || self
                    .take_comprehensive_sr
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&item.destination);
        }
        Ok(file)
    }

    /// The earlier documents a report names (its Predecessor Documents: a
    /// notice, a report it replaces) in Comprehensive 3D SR went to a PACS
    /// without 3D SR as Comprehensive SR too, under their copy's UID: the
    /// copy of this report names those, or it named UIDs that PACS never
    /// received.
    fn predecessors_as_copies(&self, path: &std::path::Path) -> Vec<(String, String)> {
        use dicom_dictionary_std::tags;
        let Ok(obj) = pneumo_store::open_instance(path, None) else {
            return Vec::new();
        };
        let items = |o: &dicom_object::InMemDicomObject, tag| {
            o.get(tag)
                .and_then(|e| e.items())
                .map(|i| i.to_vec())
                .unwrap_or_default()
        };
        let text = |o: &dicom_object::InMemDicomObject, tag| {
            o.get(tag)
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        };
        let mut renames = Vec::new();
        for study in items(&obj, tags::PREDECESSOR_DOCUMENTS_SEQUENCE) {
            for series in items(&study, tags::REFERENCED_SERIES_SEQUENCE) {
                for sop in items(&series, tags::REFERENCED_SOP_SEQUENCE) {
                    let class = text(&sop, tags::REFERENCED_SOP_CLASS_UID);
                    let Some(uid) = text(&sop, tags::REFERENCED_SOP_INSTANCE_UID) else {
                        continue;
                    };
                    if class.as_deref() != Some(COMPREHENSIVE_3D_SR) {
                        continue;
                    }
                    let root = self.report_uid_root.as_deref();
                    if let Ok(copy) = pneumo_report::comprehensive_sr_copy_uid(&uid, root) {
                        renames.push((uid, copy));
                    }
                }
            }
        }
        if !renames.is_empty() {
            renames.push((
                COMPREHENSIVE_3D_SR.to_string(),
                COMPREHENSIVE_SR.to_string(),
            ));
        }
        renames
    }

    /// Records the destination's answer; false if it could not be.
    async fn record_outcome(
        &self,
        item: &OutboxItem,
        file: &FileToSend,
        outcome: &StoreOutcome,
    ) -> bool {
        let mut comment = outcome
            .error_comment
            .as_deref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        if let Some(alt) = &outcome.sent_as {
            // A resend goes as it went before (one document for the PACS),
            // whether the destination takes 3D SR now or not: said so, not
            // the first delivery's reason again.
            let why = if item.sent_as_uid.is_some() {
                "again, as the destination received it before"
            } else {
                "the destination takes no Comprehensive 3D SR"
            };
            comment.push_str(&format!(
                " (sent as Comprehensive SR {}: {why})",
                alt.sop_instance_uid
            ));
        }
        let result = match &outcome.result {
            // Success or Warning only: a Cancel (FExx) or Pending (FFxx)
            // answer to a C-STORE means the peer did not store it.
            Ok(status) if status.is_success() || status.is_warning() => {
                let sent_as = outcome
                    .sent_as
                    .as_ref()
                    .map(|a| a.sop_instance_uid.as_str());
                let answer = format!("{status}{comment}");
                let sent = self.store.mark_sent(item, &answer, sent_as).await;
                // Said once recorded: a log ending in "delivered" before a
                // crash read as recorded, and the row went again.
                let recorded = sent.is_ok();
                if status.is_warning() {
                    warn!(sop_instance_uid = %item.sop_instance_uid, sent_as, %status, recorded, "delivered with a warning");
                } else {
                    info!(sop_instance_uid = %item.sop_instance_uid, sent_as, recorded, "delivered");
                }
                if sent.is_err() {
                    self.delivered_unrecorded
                        .lock()
                        .expect("not poisoned")
                        .insert(
                            (item.id, item.destination.clone()),
                            (answer, sent_as.map(String::from)),
                        );
                }
                sent
            }
            // Refused in its class at C-STORE though accepted in negotiation
            // (0122): due again at once, to go as the other class.
            Ok(status)
                if *status == Status::SOP_CLASS_NOT_SUPPORTED
                    && file.also_as.is_some()
                    && outcome.sent_as.is_none() =>
            {
                warn!(sop_instance_uid = %item.sop_instance_uid, %status,
                    "the destination refused Comprehensive 3D SR at C-STORE; sent as Comprehensive SR next");
                let reason = format!(
                    "{status}{comment} (SOP class not supported: the destination refused \
                     Comprehensive 3D SR; it goes as Comprehensive SR next)"
                );
                self.store.mark_retry(item, &reason, Duration::ZERO).await
            }
            Ok(status) if status.is_permanent_failure() => {
                Metrics::inc(&self.metrics.deliveries_failed, 1);
                warn!(sop_instance_uid = %item.sop_instance_uid, %status,
                    comment = outcome.error_comment.as_deref().unwrap_or(""),
                    "refused for good; parked (GET /api/deliveries?state=parked lists it; once the \
                     destination is put right, POST /api/deliveries/retry sends it again)");
                self.store
                    .mark_parked(item, &format!("{status}{comment}"))
                    .await
            }
            Ok(status) => {
                Metrics::inc(&self.metrics.deliveries_failed, 1);
                let delay = self.retry_delay(item.attempts);
                warn!(sop_instance_uid = %item.sop_instance_uid, %status, retry_in_s = delay.as_secs(), "refused; will retry");
                self.store
                    .mark_retry(item, &format!("{status}{comment}"), delay)
                    .await
            }
            // Nothing could be sent for this file (no accepted context): the
            // destination will not take it as it is.
            Err(reason) => {
                Metrics::inc(&self.metrics.deliveries_failed, 1);
                warn!(sop_instance_uid = %item.sop_instance_uid, reason, "cannot be sent; parked");
                self.store.mark_parked(item, reason).await
            }
        };
        self.recorded(result)
    }
}

/// How one batch went.
enum Delivery {
    /// Every answer (or reason for not sending) recorded.
    Done,
    /// The destination failed (no association, a lost one, or out of
    /// resources): its owed rows are put off.
    DestinationFailed,
    /// An answer could not be recorded in the outbox.
    NotRecorded,
    /// The association ended on one instance after others were answered:
    /// the rest of the batch is untried, and the outbox is read again.
    Again,
}

impl Delivery {
    fn recorded(all: bool) -> Delivery {
        if all {
            Delivery::Done
        } else {
            Delivery::NotRecorded
        }
    }

    /// `Again` where everything so far was recorded.
    fn or_again(self) -> Delivery {
        match self {
            Delivery::Done => Delivery::Again,
            other => other,
        }
    }
}

/// Comprehensive 3D SR, the node's default report SOP class.
const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";
/// Comprehensive SR, what an older PACS takes.
const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
/// How the last status of a report refused in its class begins (0122).
const REFUSED_CLASS: &str = "0122H";

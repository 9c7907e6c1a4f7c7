//! The outbox: instances owed to destinations, kept until delivered.
//!
//! A row is `pending` until the destination answers success or a warning
//! (`sent`) or refuses for good (`parked`, with its reason). Failures that may
//! pass are retried with exponential back-off; rows survive restarts, and a
//! retry sends the same stored file, so the destination sees one instance.

use std::path::PathBuf;
use std::time::Duration;
use tracing::warn;

use crate::jobs::NOTHING_MADE_UNSENT;
use crate::{now_ms, Store, StoreError};

/// Every state an outbox row can be in (the `outbox.state` CHECK of the
/// migrations).
pub const OUTBOX_STATES: &[&str] = &["pending", "sent", "parked"];

/// In the last status of a row whose association was lost on it before
/// any answer (aborted, or no answer in time): the destination may be
/// refusing that very instance, so what the node made of it does not wait
/// for it (see [`Store::due_deliveries`]).
pub const LOST_BEFORE_ANY_ANSWER: &str = "before any answer on the association";

/// SQL condition on an outbox row: its instance is of the study and/or is
/// the instance given (by its UID, or by the UID it was sent under); a
/// filter bound as NULL matches any. Its five parameters are bound by
/// `bind_study_and_instance!`.
macro_rules! of_study_or_instance {
    () => {
        "(instance_id IN (SELECT id FROM instances
                           WHERE (? IS NULL OR study_instance_uid = ?)
                             AND (? IS NULL OR sop_instance_uid = ?))
          OR sent_as_uid = ?)"
    };
}

/// Binds the parameters of `of_study_or_instance!`, which comes last in
/// the query (any sqlx query with `bind`).
macro_rules! bind_study_and_instance {
    ($query:expr, $study_instance_uid:expr, $sop_instance_uid:expr) => {
        $query
            .bind($study_instance_uid)
            .bind($study_instance_uid)
            .bind($sop_instance_uid)
            .bind($sop_instance_uid)
            .bind($sop_instance_uid)
    };
}

/// An instance due for delivery.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxItem {
    pub id: i64,
    pub instance_id: i64,
    pub destination: String,
    pub attempts: i64,
    pub sop_instance_uid: String,
    /// Relative to the data directory.
    pub path: String,
    /// The file's size when it was stored.
    pub file_size: i64,
    /// The SHA-256 of its data set as stored (hex).
    pub sha256: String,
    /// The transfer syntax it was stored in.
    pub transfer_syntax_uid: String,
    /// When retention removed the file, if it did.
    pub purged_at_ms: Option<i64>,
    /// Made by the node (a report), not received.
    pub generated: bool,
    /// The destination's last answer, or why none came.
    pub last_status: Option<String>,
    /// The UID it was last delivered under when not its own (a resend of a
    /// report that went as Comprehensive SR).
    pub sent_as_uid: Option<String>,
}

impl OutboxItem {
    /// Why its stored file cannot be sent, if it cannot (see
    /// [`crate::stored_copy_problem`]); `path` is where it is. Reads the
    /// whole file: call it from a blocking thread.
    pub fn file_problem(&self, path: &std::path::Path) -> Option<String> {
        crate::stored_copy_problem(
            path,
            &crate::StoredCopy {
                size: self.file_size,
                purged_at_ms: self.purged_at_ms,
                sha256: &self.sha256,
                transfer_syntax: &self.transfer_syntax_uid,
                generated: self.generated,
            },
        )
    }
}

/// Outbox rows per destination and state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxCount {
    pub destination: String,
    pub state: String,
    pub count: i64,
    /// Since when the longest-owed of these rows has been owed (made, or
    /// made owed again by a resend, a retry of a parked row or the repair
    /// of its file; ms since the epoch).
    pub oldest_owed_since_ms: i64,
}

/// Back-off before attempt `attempts + 1`: `base × 2^(attempts-1)`, capped.
pub fn backoff(attempts: i64, base: Duration, cap: Duration) -> Duration {
    let exp = attempts.clamp(1, 30) as u32 - 1;
    base.saturating_mul(2u32.saturating_pow(exp)).min(cap)
}

impl Store {
    /// Records that `instance_id` is owed to `destination` (once).
    pub async fn enqueue(&self, instance_id: i64, destination: &str) -> Result<(), StoreError> {
        enqueue(self.pool(), instance_id, destination).await?;
        Ok(())
    }

    /// The report (SR) made from `instance_id`, and its companion image,
    /// or the notice that it was not analysed (and its image), owed to each
    /// of `destinations` that was never owed it (a results destination
    /// configured after the analysis, or a second sender's). Returns how
    /// many rows were added.
    pub async fn owe_report_of(
        &self,
        instance_id: i64,
        destinations: &[String],
    ) -> Result<usize, StoreError> {
        type Made = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let made: Option<Made> = sqlx::query_as(
            "SELECT sr_instance_id, sc_instance_id, notice_instance_id, notice_sc_instance_id
             FROM jobs WHERE instance_id = ?",
        )
        .bind(instance_id)
        .fetch_optional(self.pool())
        .await?;
        let Some((report, companion, notice, notice_image)) = made else {
            return Ok(0);
        };
        // The rows and the job's state in one transaction: a row delivered
        // between the two (its job made `delivered`) was followed by the job
        // set back to `reported`, for good. IMMEDIATE: its reads decide its
        // writes (a deferred one fails when another connection wrote since).
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let mut added = 0;
        for id in [report, companion, notice, notice_image]
            .into_iter()
            .flatten()
        {
            // A report retention removed cannot be sent, nor restored by a
            // re-sent source: a row for it would be parked for good, its
            // job `reported` for ever (and its files kept by retention).
            let removed: bool =
                sqlx::query_scalar("SELECT purged_at_ms IS NOT NULL FROM instances WHERE id = ?")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            for d in destinations {
                if removed {
                    let owed: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM outbox WHERE instance_id = ? AND destination = ?)",
                    )
                    .bind(id)
                    .bind(d)
                    .fetch_one(&mut *tx)
                    .await?;
                    if !owed {
                        warn!(
                            destination = %d,
                            report_instance_id = id,
                            "a report retention removed cannot be sent to a destination that \
                             never had it (a report the node made is not restored by a re-sent \
                             image)"
                        );
                    }
                    continue;
                }
                added += usize::from(enqueue(&mut *tx, id, d).await?);
            }
        }
        if added > 0 {
            // Owed again: a `delivered` job is only `reported` until then.
            sqlx::query(
                "UPDATE jobs SET state = 'reported' WHERE instance_id = ? AND state = 'delivered'",
            )
            .bind(instance_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Pending rows whose time has come (of `destination`, or all), the
    /// least tried first, then the oldest: a row a destination aborts or
    /// never answers on goes behind the rest (first in every round, it held
    /// up everything else owed there for good).
    ///
    /// What the node made of an image (report, notice, their images) is
    /// not due while that image's delivery to the same destination is: it
    /// goes in a later round. After an outage the image, tried more often,
    /// went behind its report, and the PACS had a report of an image it
    /// did not have. An image put off on its own (a PACS refusing just it),
    /// or whose last try lost the association on it before any answer (a
    /// PACS that aborts on it: it goes first in every round), holds
    /// nothing up.
    pub async fn due_deliveries(
        &self,
        destination: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT o.id, o.instance_id, o.destination, o.attempts, i.sop_instance_uid, i.path, i.file_size,
                    i.sha256, i.transfer_syntax_uid, i.purged_at_ms, i.generated, o.last_status,
                    o.sent_as_uid
             FROM outbox o JOIN instances i ON i.id = o.instance_id
             WHERE o.state = 'pending' AND o.next_attempt_at_ms <= ?1 AND (?2 IS NULL OR o.destination = ?2)
               AND NOT (i.generated = 1 AND EXISTS (
                   SELECT 1 FROM outbox image
                   WHERE image.destination = o.destination AND image.state = 'pending'
                     AND image.next_attempt_at_ms <= ?1
                     AND instr(COALESCE(image.last_status, ''), ?4) = 0
                     AND image.instance_id IN (
                         SELECT instance_id FROM jobs WHERE sr_instance_id = o.instance_id
                         UNION ALL SELECT instance_id FROM jobs WHERE sc_instance_id = o.instance_id
                         UNION ALL SELECT instance_id FROM jobs WHERE notice_instance_id = o.instance_id
                         UNION ALL SELECT instance_id FROM jobs WHERE notice_sc_instance_id = o.instance_id)))
             ORDER BY o.attempts, o.next_attempt_at_ms, o.id LIMIT ?3",
        )
        .bind(now_ms())
        .bind(destination)
        .bind(limit)
        .bind(LOST_BEFORE_ANY_ANSWER)
        .fetch_all(self.pool())
        .await?)
    }

    /// Time until the next pending row (of `destination`, or any) is due
    /// (None: nothing pending).
    pub async fn next_delivery_in(
        &self,
        destination: Option<&str>,
    ) -> Result<Option<Duration>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at_ms) FROM outbox
             WHERE state = 'pending' AND (? IS NULL OR destination = ?)",
        )
        .bind(destination)
        .bind(destination)
        .fetch_one(self.pool())
        .await?;
        Ok(next.map(|t| Duration::from_millis((t - now_ms()).max(0) as u64)))
    }

    /// Due rows whose destination is none of `configured` are put off by
    /// `delay` with `reason` (`{destination}` in it replaced by the name):
    /// kept, never dropped, until the destination is configured again.
    /// Returns each such destination with how many rows were put off.
    pub async fn put_off_unconfigured(
        &self,
        configured: &[String],
        reason: &str,
        delay: Duration,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let now = now_ms();
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT destination FROM outbox WHERE state = 'pending' AND next_attempt_at_ms <= ?",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let mut put_off = Vec::new();
        for name in due.iter().filter(|d| !configured.contains(d)) {
            let n = sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_status = ?, next_attempt_at_ms = ?, updated_at_ms = ?
                 WHERE state = 'pending' AND next_attempt_at_ms <= ? AND destination = ?",
            )
            .bind(reason.replace("{destination}", name))
            .bind(now + delay.as_millis() as i64)
            .bind(now)
            .bind(now)
            .bind(name)
            .execute(self.pool())
            .await?
            .rows_affected();
            put_off.push((name.clone(), n));
        }
        Ok(put_off)
    }

    /// The destination could not be reached: its other pending rows due
    /// before `delay` from now wait that long too, untried (their attempts
    /// unchanged). Without this, rows whose back-offs had drifted apart came
    /// due one by one, each a connection attempt and a log line, thousands
    /// a minute while a PACS was down; aligned, they are also sent oldest
    /// first when it is back. Returns how many.
    /// The most attempts among the rows `destination` is owed (pending):
    /// how long its outage has lasted, in back-offs.
    pub async fn most_attempts_owed(&self, destination: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(MAX(attempts), 0) FROM outbox WHERE destination = ? AND state = 'pending'",
        )
        .bind(destination)
        .fetch_one(self.pool())
        .await?)
    }

    /// Puts everything pending to `destination` off by `delay`, and the
    /// rows owed to it from now on too when `new_rows_wait`.
    pub async fn put_off_destination(
        &self,
        destination: &str,
        delay: Duration,
        new_rows_wait: bool,
    ) -> Result<u64, StoreError> {
        let until = now_ms() + delay.as_millis() as i64;
        let mut tx = self.pool().begin().await?;
        // What a row owed to it meanwhile waits for (see `enqueue`).
        sqlx::query(
            "INSERT INTO destination_put_off (destination, until_ms) VALUES (?1, ?2)
             ON CONFLICT (destination) DO UPDATE SET until_ms = ?2",
        )
        .bind(destination)
        .bind(if new_rows_wait { until } else { 0 })
        .execute(&mut *tx)
        .await?;
        let put_off = sqlx::query(
            "UPDATE outbox SET next_attempt_at_ms = ?
             WHERE destination = ? AND state = 'pending' AND next_attempt_at_ms < ?",
        )
        .bind(until)
        .bind(destination)
        .bind(until)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(put_off)
    }

    /// Delivered. A job whose report and companion image have now reached
    /// every destination becomes `delivered`. One transaction: a process
    /// killed between the two writes left the row sent and its job
    /// `reported` for good (nothing sends it again).
    /// `sent_as_uid`: the UID it went under when not its own
    /// (`pneumo_dimse::SendAs`), which the destination now holds.
    pub async fn mark_sent(
        &self,
        item: &OutboxItem,
        status: &str,
        sent_as_uid: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        // Also over a resend an operator cancelled or moved back to `sent`
        // while it was on the wire: it went, and its row said it had not.
        let recorded = finish_attempt(&mut *tx, item, "sent", status, None, true).await?;
        if recorded == 0 {
            tracing::warn!(
                sop_instance_uid = %item.sop_instance_uid,
                destination = %item.destination,
                "delivered while an operator cancelled or moved its row: the destination has it, \
                 though no row says so"
            );
        }
        // (not on a row moved to another destination meanwhile)
        sqlx::query(
            "UPDATE outbox SET sent_as_uid = ?, sent_at_ms = ? WHERE id = ? AND destination = ?",
        )
        .bind(sent_as_uid)
        .bind(now_ms())
        .bind(item.id)
        .bind(&item.destination)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "UPDATE jobs SET state = 'delivered', updated_at_ms = ?
             WHERE state = 'reported'
               AND (SELECT instance_id FROM outbox WHERE id = ?) IN (sr_instance_id, sc_instance_id)
               AND {NOTHING_MADE_UNSENT}"
        ))
        .bind(now_ms())
        .bind(item.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Jobs left `reported` although every delivery of their report is
    /// sent (by a build that marked the two apart and was killed between
    /// them) become `delivered`. Returns how many.
    pub async fn settle_delivered_jobs(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE jobs SET state = 'delivered', updated_at_ms = ?
             WHERE state = 'reported'
               AND EXISTS (SELECT 1 FROM outbox o WHERE o.instance_id = jobs.sr_instance_id)
               AND {NOTHING_MADE_UNSENT}"
        ))
        .bind(now_ms())
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// An operator's retry: parked rows, and pending ones waiting for their
    /// next try (of `destination`, or all), are pending and due now, their
    /// attempts cleared (the back-off starts again); the last status is kept
    /// until the next answer replaces it. Returns how many.
    pub async fn requeue_deliveries(&self, destination: Option<&str>) -> Result<u64, StoreError> {
        let now = now_ms();
        // Rows owed from now on are due at once too.
        sqlx::query("DELETE FROM destination_put_off WHERE ?1 IS NULL OR destination = ?1")
            .bind(destination)
            .execute(self.pool())
            .await?;
        let r = sqlx::query(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at_ms = ?1, updated_at_ms = ?1,
                    owed_since_ms = CASE WHEN state = 'parked' THEN ?1 ELSE owed_since_ms END
             WHERE (state = 'parked' OR (state = 'pending' AND next_attempt_at_ms > ?1))
               AND (?2 IS NULL OR destination = ?2)",
        )
        .bind(now)
        .bind(destination)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected())
    }

    /// An operator's re-send: the `sent` rows of `destination` for one study
    /// or one instance (originals and reports; at least one filter) are
    /// pending and due now, attempts cleared: a PACS that lost what it was
    /// sent. Rows whose file retention removed stay `sent` (they could
    /// only be parked, an alert, with nothing to send). Returns how many
    /// were made pending, and how many were left for their removed file.
    pub async fn resend_deliveries(
        &self,
        destination: &str,
        study_instance_uid: Option<&str>,
        sop_instance_uid: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        if study_instance_uid.is_none() && sop_instance_uid.is_none() {
            return Ok((0, 0));
        }
        let now = now_ms();
        // IMMEDIATE: a deferred transaction that reads, then writes, failed
        // "database is locked" when another connection wrote in between.
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let count = sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM outbox
             WHERE destination = ? AND state = 'sent'
               AND instance_id IN (SELECT id FROM instances WHERE purged_at_ms IS NOT NULL) AND ",
            of_study_or_instance!()
        ))
        .bind(destination);
        let removed: i64 = bind_study_and_instance!(count, study_instance_uid, sop_instance_uid)
            .fetch_one(&mut *tx)
            .await?;
        let query = sqlx::query(concat!(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at_ms = ?, updated_at_ms = ?,
                    owed_since_ms = ?
             WHERE destination = ? AND state = 'sent'
               AND instance_id NOT IN (SELECT id FROM instances WHERE purged_at_ms IS NOT NULL) AND ",
            of_study_or_instance!()
        ))
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(destination);
        let resent = bind_study_and_instance!(query, study_instance_uid, sop_instance_uid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((resent, removed as u64))
    }

    /// An operator's cancel: the `pending` and/or `parked` rows owed to
    /// `destination` (of one study or instance when given) are dropped
    /// (never to be delivered: a destination removed for good, a PACS that
    /// will never take their syntax, an instance it aborts on). Jobs
    /// whose reports are then owed nowhere else become `delivered`, and the
    /// instances become removable by retention. Returns how many rows.
    pub async fn cancel_deliveries(
        &self,
        destination: &str,
        pending: bool,
        parked: bool,
        study_instance_uid: Option<&str>,
        sop_instance_uid: Option<&str>,
    ) -> Result<u64, StoreError> {
        // A resend cancelled: the row goes back to sent, as the destination
        // still has what it was sent before.
        let query = sqlx::query(concat!(
            "UPDATE outbox SET state = 'sent', updated_at_ms = ?,
                    last_status = 'resend cancelled; sent before at '
                                  || strftime('%Y-%m-%dT%H:%M:%SZ', sent_at_ms / 1000, 'unixepoch')
             WHERE destination = ? AND sent_at_ms IS NOT NULL
               AND ((state = 'pending' AND ?) OR (state = 'parked' AND ?))
               AND ",
            of_study_or_instance!()
        ))
        .bind(now_ms())
        .bind(destination)
        .bind(pending)
        .bind(parked);
        let resends = bind_study_and_instance!(query, study_instance_uid, sop_instance_uid)
            .execute(self.pool())
            .await?
            .rows_affected();
        let query = sqlx::query_scalar(concat!(
            "DELETE FROM outbox WHERE destination = ?
               AND ((state = 'pending' AND ?) OR (state = 'parked' AND ?))
               AND ",
            of_study_or_instance!(),
            " RETURNING instance_id"
        ))
        .bind(destination)
        .bind(pending)
        .bind(parked);
        let dropped: Vec<i64> =
            bind_study_and_instance!(query, study_instance_uid, sop_instance_uid)
                .fetch_all(self.pool())
                .await?;
        // A job whose report is now owed nowhere is done, though no row of
        // it remains for `settle_delivered_jobs` to see (it stayed
        // `reported` for good). One statement, the instances as a JSON array.
        let ids = dropped.iter().map(i64::to_string).collect::<Vec<_>>();
        sqlx::query(&format!(
            "UPDATE jobs SET state = 'delivered', updated_at_ms = ?1
             WHERE state = 'reported'
               AND (sr_instance_id IN (SELECT value FROM json_each(?2))
                    OR sc_instance_id IN (SELECT value FROM json_each(?2)))
               AND {NOTHING_MADE_UNSENT}"
        ))
        .bind(now_ms())
        .bind(format!("[{}]", ids.join(",")))
        .execute(self.pool())
        .await?;
        let cancelled = dropped.len() as u64 + resends;
        self.settle_delivered_jobs().await?;
        Ok(cancelled)
    }

    /// An operator's move: what `from` is owed (`pending` and `parked`) is
    /// owed to `to` instead, due now with its attempts cleared (a renamed
    /// destination, a PACS replaced by another). A row whose instance `to`
    /// already has a row for (sent, pending or parked) is dropped rather
    /// than owed twice; `from`'s sent rows stay as its history. Returns
    /// (moved, dropped).
    pub async fn move_deliveries(&self, from: &str, to: &str) -> Result<(u64, u64), StoreError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        // A resend moved: `to` is owed a new row, and `from`'s goes back to
        // sent, as `from` still has what it was sent before.
        let resends = sqlx::query(
            "INSERT INTO outbox (instance_id, destination, state, attempts, next_attempt_at_ms,
                                 created_at_ms, updated_at_ms)
             SELECT instance_id, ?1, 'pending', 0, ?2, ?2, ?2 FROM outbox
             WHERE destination = ?3 AND state IN ('pending', 'parked') AND sent_at_ms IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM outbox o
                               WHERE o.instance_id = outbox.instance_id AND o.destination = ?1)",
        )
        .bind(to)
        .bind(now)
        .bind(from)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE outbox SET state = 'sent', updated_at_ms = ?,
                    last_status = 'resend moved; sent before at '
                                  || strftime('%Y-%m-%dT%H:%M:%SZ', sent_at_ms / 1000, 'unixepoch')
             WHERE destination = ? AND state IN ('pending', 'parked') AND sent_at_ms IS NOT NULL",
        )
        .bind(now)
        .bind(from)
        .execute(&mut *tx)
        .await?;
        let moved = resends
            + sqlx::query(
                "UPDATE outbox SET destination = ?, state = 'pending', attempts = 0,
                               next_attempt_at_ms = ?, updated_at_ms = ?
             WHERE destination = ? AND state IN ('pending', 'parked')
               AND NOT EXISTS (SELECT 1 FROM outbox o
                               WHERE o.instance_id = outbox.instance_id AND o.destination = ?)",
            )
            .bind(to)
            .bind(now)
            .bind(now)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let dropped = sqlx::query(
            "DELETE FROM outbox WHERE destination = ? AND state IN ('pending', 'parked')",
        )
        .bind(from)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        self.settle_delivered_jobs().await?;
        Ok((moved, dropped))
    }

    pub async fn mark_parked(&self, item: &OutboxItem, reason: &str) -> Result<(), StoreError> {
        finish_attempt(self.pool(), item, "parked", reason, None, false)
            .await
            .map(|_| ())
    }

    /// A failed attempt: stays pending, next try after `delay`.
    pub async fn mark_retry(
        &self,
        item: &OutboxItem,
        reason: &str,
        delay: Duration,
    ) -> Result<(), StoreError> {
        finish_attempt(self.pool(), item, "pending", reason, Some(delay), false)
            .await
            .map(|_| ())
    }

    /// Whether `item` is still owed as it was taken: pending, to the same
    /// destination (an operator may have moved or cancelled it since).
    pub async fn still_owed(&self, item: &OutboxItem) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE id = ? AND destination = ? AND state = 'pending')",
        )
        .bind(item.id)
        .bind(&item.destination)
        .fetch_one(self.pool())
        .await?)
    }

    pub async fn outbox_counts(&self) -> Result<Vec<OutboxCount>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT destination, state, COUNT(*) AS count,
                    MIN(COALESCE(owed_since_ms, created_at_ms)) AS oldest_owed_since_ms
             FROM outbox GROUP BY destination, state ORDER BY destination, state",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// The absolute path of a stored instance file.
    pub fn instance_file(&self, relative: &str) -> PathBuf {
        self.data_dir().join(relative)
    }
}

/// Owes `instance_id` to `destination`; false when it already was (a row
/// exists, whatever its state).
pub(crate) async fn enqueue<'e, E>(
    executor: E,
    instance_id: i64,
    destination: &str,
) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let now = now_ms();
    // Due when the destination is: one that is down and backing off is
    // not tried again for each new row (a study arriving meant one
    // connection attempt per instance). A row's own back-off (an instance
    // the destination refused or aborted on) holds up no new row.
    let r = sqlx::query(
        "INSERT INTO outbox (instance_id, destination, state, next_attempt_at_ms, created_at_ms, updated_at_ms)
         VALUES (?1, ?2, 'pending',
                 MAX(?3, COALESCE((SELECT until_ms FROM destination_put_off WHERE destination = ?2), ?3)),
                 ?3, ?3)
         ON CONFLICT (instance_id, destination) DO NOTHING",
    )
    .bind(instance_id)
    .bind(destination)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records the answer on the row as it was taken: a row an operator moved
/// to another destination or cancelled meanwhile is left as it now is (the
/// answer was the old destination's).
async fn finish_attempt<'e, E>(
    executor: E,
    item: &OutboxItem,
    state: &str,
    status: &str,
    delay: Option<Duration>,
    over_sent: bool,
) -> Result<u64, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let now = now_ms();
    // Still pending: an answer that arrives after an operator cancelled the
    // row (back to `sent`) must not make it owed again; a success
    // (`over_sent`) is recorded over that `sent` too.
    let done = sqlx::query(
        "UPDATE outbox SET state = ?, attempts = attempts + 1, last_status = ?,
             next_attempt_at_ms = ?, updated_at_ms = ?
         WHERE id = ? AND destination = ? AND (state = 'pending' OR (state = 'sent' AND ?))",
    )
    .bind(state)
    .bind(status)
    .bind(now + delay.map(|d| d.as_millis() as i64).unwrap_or(0))
    .bind(now)
    .bind(item.id)
    .bind(&item.destination)
    .bind(over_sent)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, base, cap), Duration::from_secs(2));
        assert_eq!(backoff(2, base, cap), Duration::from_secs(4));
        assert_eq!(backoff(5, base, cap), Duration::from_secs(32));
        assert_eq!(backoff(6, base, cap), cap);
        assert_eq!(backoff(1000, base, cap), cap);
    }
}

//! The job queue: one job per received instance, driven by its state.

use crate::{now_ms, InstanceHeader, Store, StoreError};

/// Every state a job can be in, in pipeline order (the `jobs.state` CHECK
/// of the migrations).
pub const JOB_STATES: &[&str] = &[
    "received",
    "queued",
    "analysing",
    "reported",
    "delivered",
    "failed",
    "skipped",
];

/// Jobs per state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobCount {
    pub state: String,
    pub count: i64,
}

#[derive(sqlx::FromRow)]
struct ReceivedJob {
    id: i64,
    sop_class_uid: String,
    sop_instance_uid: String,
    study_instance_uid: String,
    series_instance_uid: String,
    modality: Option<String>,
    body_part_examined: Option<String>,
    view_position: Option<String>,
    transfer_syntax_uid: String,
    patient_age_years: Option<f64>,
    image_type: Option<String>,
    presentation_intent_type: Option<String>,
    manufacturer_model_name: Option<String>,
    conversion_type: Option<String>,
}

impl Store {
    /// Routes every job in state `received`: `queued` for analysis, or
    /// `skipped` with the reason `decide` gives (from the instance's header
    /// and transfer syntax). Returns (queued, skipped).
    pub async fn route_received_jobs(
        &self,
        decide: impl Fn(&InstanceHeader, &str) -> Option<String>,
    ) -> Result<(u64, u64), StoreError> {
        let jobs: Vec<ReceivedJob> = sqlx::query_as(
            "SELECT j.id, i.sop_class_uid, i.sop_instance_uid, i.study_instance_uid, i.series_instance_uid,
                    i.modality, i.body_part_examined, i.view_position, i.transfer_syntax_uid,
                    i.patient_age_years, i.image_type, i.presentation_intent_type,
                    i.manufacturer_model_name, i.conversion_type
             FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE j.state = 'received' ORDER BY j.id",
        )
        .fetch_all(self.pool())
        .await?;
        let (mut queued, mut skipped) = (0, 0);
        for job in jobs {
            let header = InstanceHeader {
                sop_class_uid: job.sop_class_uid,
                sop_instance_uid: job.sop_instance_uid,
                study_instance_uid: job.study_instance_uid,
                series_instance_uid: job.series_instance_uid,
                modality: job.modality,
                body_part_examined: job.body_part_examined,
                view_position: job.view_position,
                accession_number: None, // not a routing criterion
                patient_age_years: job.patient_age_years,
                image_type: job.image_type,
                presentation_intent_type: job.presentation_intent_type,
                manufacturer_model_name: job.manufacturer_model_name,
                conversion_type: job.conversion_type,
            };
            let refusal = decide(&header, &job.transfer_syntax_uid);
            let state = if refusal.is_some() {
                "skipped"
            } else {
                "queued"
            };
            sqlx::query("UPDATE jobs SET state = ?, reason = ?, updated_at_ms = ? WHERE id = ? AND state = 'received'")
                .bind(state)
                .bind(&refusal)
                .bind(now_ms())
                .bind(job.id)
                .execute(self.pool())
                .await?;
            if refusal.is_some() {
                skipped += 1;
            } else {
                queued += 1;
            }
        }
        Ok((queued, skipped))
    }

    pub async fn job_counts(&self) -> Result<Vec<JobCount>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT state, COUNT(*) AS count FROM jobs GROUP BY state ORDER BY state",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

/// The job states an operator may send back for another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryableState {
    Failed,
    Skipped,
    /// Analysed already: analysed again, e.g. by a model installed since
    /// (its report is new); with the same model the report is the same and
    /// nothing is sent again.
    Reported,
    Delivered,
}

impl RetryableState {
    pub const ALL: [RetryableState; 4] = [
        RetryableState::Failed,
        RetryableState::Skipped,
        RetryableState::Reported,
        RetryableState::Delivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryableState::Failed => "failed",
            RetryableState::Skipped => "skipped",
            RetryableState::Reported => "reported",
            RetryableState::Delivered => "delivered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// A job taken for analysis.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub job_id: i64,
    pub instance_id: i64,
    pub sop_instance_uid: String,
    /// Relative to the data directory.
    pub path: String,
    /// The file's size when it was stored.
    pub file_size: i64,
    /// The SHA-256 of its data set as received (hex).
    pub sha256: String,
    /// The transfer syntax it was stored in.
    pub transfer_syntax_uid: String,
    /// When retention removed the file, if it did.
    pub purged_at_ms: Option<i64>,
    /// Attempts including this one.
    pub attempts: i64,
}

impl ClaimedJob {
    /// This job, failed for `reason`.
    pub fn failed(&self, reason: String) -> FailedJob {
        FailedJob {
            job_id: self.job_id,
            instance_id: self.instance_id,
            sop_instance_uid: self.sop_instance_uid.clone(),
            path: self.path.clone(),
            reason,
        }
    }
}

/// Records which image `made` was made for (the image of job `job_id`),
/// once: a later job sharing the report, or a re-analysis linking the job
/// to another report, leaves it. (Migration 0020.)
async fn record_made_for(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job_id: i64,
    made: MadeInstances,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE instances SET made_for_instance_id = (SELECT instance_id FROM jobs WHERE id = ?1)
         WHERE id IN (?2, ?3) AND made_for_instance_id IS NULL",
    )
    .bind(job_id)
    .bind(made.report)
    .bind(made.companion)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Each instance of `made` owed to each of `destinations`, in `tx`.
async fn owe_each(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    made: MadeInstances,
    destinations: &[String],
) -> Result<(), StoreError> {
    for id in made.ids() {
        for d in destinations {
            crate::outbox::enqueue(&mut **tx, id, d).await?;
        }
    }
    Ok(())
}

/// A job that has just failed, with what a notice of it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedJob {
    pub job_id: i64,
    pub instance_id: i64,
    pub sop_instance_uid: String,
    /// The instance's file, relative to the data directory.
    pub path: String,
    pub reason: String,
}

/// The instances an analysis made: its report, and the companion image
/// when one is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MadeInstances {
    pub report: i64,
    pub companion: Option<i64>,
}

impl ClaimedJob {
    /// Why the job's stored file cannot be analysed, if it cannot (see
    /// [`stored_copy_problem`]); `path` is where it is. Reads the whole
    /// file: call it from a blocking thread.
    pub fn file_problem(&self, path: &std::path::Path) -> Option<String> {
        stored_copy_problem(
            path,
            &StoredCopy {
                size: self.file_size,
                purged_at_ms: self.purged_at_ms,
                sha256: &self.sha256,
                transfer_syntax: &self.transfer_syntax_uid,
                generated: false,
            },
        )
    }
}

/// What was recorded of a stored file, to tell whether the file on disk is
/// still it.
pub struct StoredCopy<'a> {
    /// The file's size when it was stored.
    pub size: i64,
    /// When retention removed the file, if it did.
    pub purged_at_ms: Option<i64>,
    /// The SHA-256 of its data set (hex).
    pub sha256: &'a str,
    /// The transfer syntax it was stored in.
    pub transfer_syntax: &'a str,
    /// Made by the node (a report, a companion image), not received.
    pub generated: bool,
}

/// Why a stored file is not what was stored, if it is not: removed by
/// retention, gone, another size (a truncated copy, a disk error), then
/// its File Meta naming another transfer syntax (the data set read, and
/// sent, in the wrong encoding) or its data set another SHA-256 (a byte
/// changed at the same size was analysed and forwarded as if intact).
/// The reason says how to put it back: an image by sending it to the node
/// again (the node puts the received copy back), what the node made by
/// re-analysing its image. Reads the whole file once the cheap checks
/// pass: call it from a blocking thread.
pub fn stored_copy_problem(path: &std::path::Path, copy: &StoredCopy<'_>) -> Option<String> {
    let repair = if copy.generated {
        "retry the analysis of its image to make it again \
         (POST /api/jobs/retry?state=reported,delivered&sop_instance_uid=<the image's UID>)"
    } else {
        "send the instance to the node again, the same bytes as first sent, to restore it"
    };
    let stored_size = copy.size;
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && copy.purged_at_ms.is_some() => {
            return Some(format!(
                "the stored file {shown} was removed by retention (retention.keep_days): an image \
                 sent to the node again is restored; a report the node made is not"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("the stored file {shown} is missing; {repair}"))
        }
        Err(e) => {
            return Some(format!(
                "the stored file {shown} cannot be read ({e}); {repair}"
            ))
        }
        Ok(m) if m.len() as i64 != stored_size => {
            return Some(format!(
                "the stored file {shown} is damaged ({} bytes, {stored_size} when it was \
                 stored); {repair}",
                m.len()
            ))
        }
        Ok(_) => {}
    }
    match crate::header::file_transfer_syntax(path) {
        Ok(ts) if ts.trim_end_matches(['\0', ' ']) == copy.transfer_syntax => {}
        Ok(ts) => {
            return Some(format!(
                "the stored file {shown} is damaged (its File Meta names transfer syntax {ts}, \
                 it was stored in {}); {repair}",
                copy.transfer_syntax
            ))
        }
        Err(e) => {
            return Some(format!(
                "the stored file {shown} is damaged (its File Meta cannot be read: {e}); {repair}"
            ))
        }
    }
    match crate::files::dataset_digest(path) {
        Ok((_, digest)) if hex::encode(digest) == copy.sha256 => None,
        Ok(_) => Some(format!(
            "the stored file {shown} is damaged (its data set is not the one received: another \
             SHA-256); {repair}"
        )),
        Err(e) => Some(format!(
            "the stored file {shown} cannot be read ({e}); {repair}"
        )),
    }
}

impl MadeInstances {
    pub fn ids(self) -> impl Iterator<Item = i64> {
        std::iter::once(self.report).chain(self.companion)
    }
}

/// SQL condition on a `jobs` row: it may be claimed (queued, or its
/// holder's lease expired) and has attempts left; `?1` is now, `?2` the
/// most attempts.
const CLAIMABLE: &str = "(state = 'queued' OR (state = 'analysing' AND lease_expires_at_ms < ?1))
    AND attempts < ?2";

/// SQL condition on a `jobs` row: nothing it made (report, companion image)
/// is owed anywhere, i.e. every outbox row of them is `sent` (a NULL
/// companion matches no row).
pub(crate) const NOTHING_MADE_UNSENT: &str = "NOT EXISTS (SELECT 1 FROM outbox o
    WHERE o.instance_id IN (jobs.sr_instance_id, jobs.sc_instance_id) AND o.state != 'sent')";

impl Store {
    /// Takes up to `limit` jobs for analysis under a lease: `queued` ones,
    /// and `analysing` ones whose lease expired (their holder died), that
    /// have been claimed fewer than `max_attempts` times (see
    /// `fail_exhausted_jobs` for the others).
    ///
    /// A job claimed before and never finished (its holder died with it:
    /// a crash, a kill, running out of memory) is a suspect: it is claimed
    /// alone, when nothing else is analysing, and nothing is claimed beside
    /// it. So the image that brings the node down uses up its own attempts,
    /// not those of the jobs that happened to be analysed with it (those
    /// failed "never finished" after three crashes, blamed for it).
    pub async fn claim_jobs(
        &self,
        owner: &str,
        lease: std::time::Duration,
        limit: i64,
        max_attempts: i64,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = now_ms();
        // IMMEDIATE: the reads below decide the write; a deferred
        // transaction's reader could not become the writer once another
        // connection had written (SQLITE_BUSY_SNAPSHOT, no busy wait:
        // "database is locked" warnings under load).
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let (in_flight, suspects_in_flight): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(attempts >= 2), 0) FROM jobs
             WHERE state = 'analysing' AND lease_expires_at_ms >= ?",
        )
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        if suspects_in_flight > 0 {
            return Ok(Vec::new());
        }
        let suspect: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE {CLAIMABLE} AND attempts >= 1 ORDER BY id LIMIT 1"
        ))
        .bind(now)
        .bind(max_attempts)
        .fetch_optional(&mut *tx)
        .await?;
        let chosen = match suspect {
            Some(_) if in_flight > 0 => return Ok(Vec::new()),
            Some(id) => format!("id = {id}"),
            None => format!(
                "id IN (SELECT id FROM jobs WHERE {CLAIMABLE} ORDER BY id LIMIT {})",
                limit.max(0)
            ),
        };
        let jobs: Vec<ClaimedJob> = sqlx::query_as(&format!(
            "UPDATE jobs SET state = 'analysing', lease_owner = ?3, lease_expires_at_ms = ?4,
                 attempts = attempts + 1, updated_at_ms = ?1
             WHERE {chosen} AND {CLAIMABLE}
             RETURNING id AS job_id, instance_id, attempts,
                 (SELECT sop_instance_uid FROM instances WHERE id = instance_id) AS sop_instance_uid,
                 (SELECT path FROM instances WHERE id = instance_id) AS path,
                 (SELECT file_size FROM instances WHERE id = instance_id) AS file_size,
                 (SELECT sha256 FROM instances WHERE id = instance_id) AS sha256,
                 (SELECT transfer_syntax_uid FROM instances WHERE id = instance_id) AS transfer_syntax_uid,
                 (SELECT purged_at_ms FROM instances WHERE id = instance_id) AS purged_at_ms"
        ))
        .bind(now)
        .bind(max_attempts)
        .bind(owner)
        .bind(now + lease.as_millis() as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(jobs)
    }

    /// Jobs claimed `max_attempts` times that never finished (each holder
    /// died: a crash, a kill or an out-of-memory while analysing that
    /// instance) become `failed` instead of being claimed again, so one
    /// instance that brings the process down cannot keep it down. Returns
    /// each.
    pub async fn fail_exhausted_jobs(
        &self,
        max_attempts: i64,
    ) -> Result<Vec<FailedJob>, StoreError> {
        let now = now_ms();
        let reason = format!(
            "analysis started {max_attempts} times and never finished (the node stopped during \
             each: a crash, a kill or running out of memory while analysing this instance); \
             not retried automatically"
        );
        let rows: Vec<FailedJob> = sqlx::query_as(
            "UPDATE jobs SET state = 'failed', reason = ?, lease_owner = NULL, lease_expires_at_ms = NULL,
                 updated_at_ms = ?
             WHERE attempts >= ? AND (state = 'queued' OR (state = 'analysing' AND lease_expires_at_ms < ?))
             RETURNING id AS job_id, instance_id,
                 (SELECT sop_instance_uid FROM instances WHERE id = instance_id) AS sop_instance_uid,
                 (SELECT path FROM instances WHERE id = instance_id) AS path, reason",
        )
        .bind(&reason)
        .bind(now)
        .bind(max_attempts)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// An operator's retry: jobs in `states` (`failed`, `skipped`) go back
    /// to `received`, their reason and attempts cleared, so the routing
    /// rules and the analysis run again as for a new instance. With
    /// `sop_instance_uid`, only that instance's job. Jobs of instances
    /// whose file retention removed are left as they are (nothing to
    /// analyse: they turned `failed`, their own reason overwritten).
    /// Returns how many.
    pub async fn requeue_jobs(
        &self,
        states: &[RetryableState],
        sop_instance_uid: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        for state in states {
            let r = sqlx::query(
                "UPDATE jobs SET state = 'received', reason = NULL, attempts = 0, lease_owner = NULL,
                     lease_expires_at_ms = NULL, updated_at_ms = ?
                 WHERE state = ? AND (? IS NULL OR instance_id IN
                     (SELECT id FROM instances WHERE sop_instance_uid = ?))
                   AND instance_id NOT IN (SELECT id FROM instances WHERE purged_at_ms IS NOT NULL)",
            )
            .bind(now_ms())
            .bind(state.as_str())
            .bind(sop_instance_uid)
            .bind(sop_instance_uid)
            .execute(self.pool())
            .await?;
            total += r.rows_affected();
        }
        Ok(total)
    }

    /// Returns every `analysing` job to `queued`. Only for start-up with a
    /// database no other process uses (SQLite: one node per data directory),
    /// where every lease left is a dead process's; returns how many.
    pub async fn release_all_leases(&self) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at_ms = NULL, updated_at_ms = ?
             WHERE state = 'analysing'",
        )
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected())
    }

    /// A job whose result could not be kept for a reason that is not its
    /// own (the database locked or full): claimable again after `delay`,
    /// with `reason` to show meanwhile, and this attempt not counted.
    pub async fn retry_job_later(
        &self,
        job_id: i64,
        owner: &str,
        reason: &str,
        delay: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE jobs SET reason = ?, attempts = MAX(attempts - 1, 0), lease_owner = NULL,
                 lease_expires_at_ms = ?, updated_at_ms = ?
             WHERE id = ? AND state = 'analysing' AND lease_owner = ?",
        )
        .bind(reason)
        .bind(now + delay.as_millis() as i64)
        .bind(now)
        .bind(job_id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// On a clean stop: the jobs `owner` still holds go back to the queue,
    /// their attempt not counted (it was cut by the stop, not by the
    /// instance: counting it failed healthy jobs after a few restarts).
    /// Returns how many.
    pub async fn release_jobs(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), lease_owner = NULL,
                 lease_expires_at_ms = NULL, updated_at_ms = ?
             WHERE state = 'analysing' AND lease_owner = ?",
        )
        .bind(now_ms())
        .bind(owner)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// A job that cannot succeed: `failed`, with its reason.
    pub async fn fail_job(
        &self,
        job_id: i64,
        owner: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'failed', reason = ?, lease_owner = NULL, lease_expires_at_ms = NULL,
                 updated_at_ms = ? WHERE id = ? AND state = 'analysing' AND lease_owner = ?",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(job_id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The notice that a failed job's image was not analysed (an SR, and
    /// the same as an image when one is made; stored like a report):
    /// recorded on the job and owed to `destinations`, in one transaction.
    /// False when the job is no longer `failed` (an operator sent it back
    /// meanwhile): nothing is recorded nor owed.
    pub async fn owe_notice(
        &self,
        job_id: i64,
        notice: MadeInstances,
        destinations: &[String],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET notice_instance_id = ?, notice_sc_instance_id = ?
             WHERE id = ? AND state = 'failed'",
        )
        .bind(notice.report)
        .bind(notice.companion)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        record_made_for(&mut tx, job_id, notice).await?;
        owe_each(&mut tx, notice, destinations).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The analysis is done and what it made is stored: the job becomes
    /// `reported` and its report (and companion image) are owed to
    /// `destinations`, in one transaction. Returns false when the lease was
    /// lost (another holder finished it: nothing is changed).
    pub async fn complete_job(
        &self,
        job_id: i64,
        owner: &str,
        result_json: &str,
        made: MadeInstances,
        destinations: &[String],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'reported', result_json = ?, sr_instance_id = ?, sc_instance_id = ?,
                 reason = NULL, lease_owner = NULL, lease_expires_at_ms = NULL, updated_at_ms = ?
             WHERE id = ? AND state = 'analysing' AND lease_owner = ?",
        )
        .bind(result_json)
        .bind(made.report)
        .bind(made.companion)
        .bind(now_ms())
        .bind(job_id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        record_made_for(&mut tx, job_id, made).await?;
        owe_each(&mut tx, made, destinations).await?;
        if !destinations.is_empty() {
            // A report an earlier job made (a copy of the source received
            // again under its UID) may have reached every destination
            // already: no delivery is left to move this job on.
            sqlx::query(&format!(
                "UPDATE jobs SET state = 'delivered' WHERE id = ? AND {NOTHING_MADE_UNSENT}"
            ))
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The data sets stored under the SOP Instance UID of `instance_id`
    /// before it, oldest first: (file relative to the data directory, or
    /// None when retention removed it; SHA-256 of the data set). Empty for
    /// the first received under its UID.
    pub async fn earlier_versions(
        &self,
        instance_id: i64,
    ) -> Result<Vec<(Option<String>, String)>, StoreError> {
        let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT f.path, f.sha256, f.purged_at_ms FROM instances i
             JOIN instances f ON f.sop_instance_uid = i.sop_instance_uid
             WHERE i.id = ? AND f.id < i.id ORDER BY f.id",
        )
        .bind(instance_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(path, sha, purged)| (purged.is_none().then_some(path), sha))
            .collect())
    }

    /// The report with SOP Instance UID `report_uid`, if stored: the
    /// instance whose job made it (the first job that links to it) and
    /// that job's result record.
    pub async fn report_maker(
        &self,
        report_uid: &str,
    ) -> Result<Option<(i64, Option<String>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT j.instance_id, j.result_json FROM jobs j
             JOIN instances r ON r.id = j.sr_instance_id
             WHERE r.sop_instance_uid = ? ORDER BY j.id LIMIT 1",
        )
        .bind(report_uid)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Records what report `sr_instance_id` states and the model input it
    /// was made from (made now, or made again over a lost file).
    pub async fn record_report_result(&self, r: &ReportResult) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO report_results (sr_instance_id, source_sop_instance_uid,
                 source_identity, contract_sha256, model_input_sha256, p_positive, decision)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r.sr_instance_id)
        .bind(&r.source_sop_instance_uid)
        .bind(&r.source_identity)
        .bind(&r.contract_sha256)
        .bind(&r.model_input_sha256)
        .bind(r.p_positive)
        .bind(&r.decision)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// What report `report_uid` states: (model input SHA-256, p, decision);
    /// None for a report made before they were recorded.
    pub async fn report_result(
        &self,
        report_uid: &str,
    ) -> Result<Option<(String, f64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.model_input_sha256, r.p_positive, r.decision FROM report_results r
             JOIN instances s ON s.id = r.sr_instance_id WHERE s.sop_instance_uid = ?",
        )
        .bind(report_uid)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The report (its SOP Instance UID) made by model `contract_sha256`
    /// for a copy of `source_sop_instance_uid` naming the same patient and
    /// study (`source_identity`) from this very model input, if any: the
    /// earliest.
    pub async fn report_from_input(
        &self,
        source_sop_instance_uid: &str,
        source_identity: &str,
        contract_sha256: &str,
        model_input_sha256: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT s.sop_instance_uid FROM report_results r
             JOIN instances s ON s.id = r.sr_instance_id
             WHERE r.source_sop_instance_uid = ? AND r.model_input_sha256 = ?
               AND r.source_identity = ? AND r.contract_sha256 = ?
             ORDER BY r.sr_instance_id LIMIT 1",
        )
        .bind(source_sop_instance_uid)
        .bind(model_input_sha256)
        .bind(source_identity)
        .bind(contract_sha256)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The latest not-analysed notice (SR) made for a copy stored under
    /// the SOP Instance UID of instance `instance_id` (this one included),
    /// in series `series_instance_uid` (one image's notices by one model):
    /// (study, series, SOP class, SOP instance UID). Found through the
    /// SOP Instance UID's index: a series has none, and every analysis
    /// asks.
    pub async fn latest_notice_of(
        &self,
        instance_id: i64,
        series_instance_uid: &str,
    ) -> Result<Option<(String, String, String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.study_instance_uid, r.series_instance_uid, r.sop_class_uid,
                    r.sop_instance_uid
             FROM instances me
             JOIN instances s ON s.sop_instance_uid = me.sop_instance_uid
             JOIN jobs j ON j.instance_id = s.id
             JOIN instances r ON r.id = j.notice_instance_id
             WHERE me.id = ? AND r.series_instance_uid = ?
             ORDER BY r.id DESC LIMIT 1",
        )
        .bind(instance_id)
        .bind(series_instance_uid)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The instance whose job made the report that stands for the job's
    /// image, for the patient and study its copy names (`source_identity`,
    /// as report_results has it): one an earlier analysis of the job made,
    /// or one of another copy stored under its SOP Instance UID (a PACS
    /// keeping the first copy shows that report beside it); the latest.
    /// Another patient's report is in another record, and does not stand.
    pub async fn standing_report_source(
        &self,
        job_id: i64,
        source_identity: &str,
    ) -> Result<Option<i64>, StoreError> {
        // A report made before report_results (no row) counts whatever it
        // names, as it did.
        Ok(sqlx::query_scalar(
            "SELECT j2.instance_id FROM jobs j2 JOIN instances i2 ON i2.id = j2.instance_id
                 LEFT JOIN report_results rr ON rr.sr_instance_id = j2.sr_instance_id
                 WHERE j2.sr_instance_id IS NOT NULL AND i2.sop_instance_uid =
                     (SELECT i.sop_instance_uid FROM jobs j JOIN instances i ON i.id = j.instance_id
                      WHERE j.id = ?)
                   AND (rr.sr_instance_id IS NULL OR rr.source_identity = ?)
                 ORDER BY j2.sr_instance_id DESC, j2.id LIMIT 1",
        )
        .bind(job_id)
        .bind(source_identity)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The latest report made, by the model whose contract hash is
    /// `contract_sha256`, for an earlier copy stored under the SOP
    /// Instance UID of instance `instance_id` naming the same patient and
    /// study (`source_identity`, as report_results has it), other than
    /// `report_uid`: (study, series, SOP class, SOP instance UID) of that
    /// report. A report made before report_results (no row) is not taken:
    /// whom it names is not known.
    pub async fn earlier_copy_report(
        &self,
        instance_id: i64,
        contract_sha256: &str,
        report_uid: &str,
        source_identity: &str,
    ) -> Result<Option<(String, String, String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.study_instance_uid, r.series_instance_uid, r.sop_class_uid,
                    r.sop_instance_uid
             FROM instances me
             JOIN instances s ON s.sop_instance_uid = me.sop_instance_uid AND s.id < me.id
             JOIN jobs j ON j.instance_id = s.id
             JOIN instances r ON r.id = j.sr_instance_id
             JOIN report_results rr ON rr.sr_instance_id = r.id AND rr.source_identity = ?4
             WHERE me.id = ?1 AND r.sop_instance_uid <> ?2
               AND json_extract(j.result_json, '$.prediction.model.contract_sha256') = ?3
             ORDER BY r.id DESC LIMIT 1",
        )
        .bind(instance_id)
        .bind(report_uid)
        .bind(contract_sha256)
        .bind(source_identity)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The SHA-256 of an instance's data set.
    pub async fn instance_sha256(&self, instance_id: i64) -> Result<String, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT sha256 FROM instances WHERE id = ?")
                .bind(instance_id)
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Why the file of a stored instance is not what was stored, if it is
    /// not (see [`stored_copy_problem`]). Reads the whole file.
    pub async fn stored_instance_problem(&self, id: i64) -> Result<Option<String>, StoreError> {
        type Row = (String, i64, String, String, Option<i64>, bool);
        let (path, size, sha256, syntax, purged_at_ms, generated): Row = sqlx::query_as(
            "SELECT path, file_size, sha256, transfer_syntax_uid, purged_at_ms, generated
             FROM instances WHERE id = ?",
        )
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        let path = self.instance_file(&path);
        tokio::task::spawn_blocking(move || {
            stored_copy_problem(
                &path,
                &StoredCopy {
                    size,
                    purged_at_ms,
                    sha256: &sha256,
                    transfer_syntax: &syntax,
                    generated,
                },
            )
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))
    }

    /// Whether retention removed the instance's file (its row says so).
    pub async fn removed_by_retention(&self, id: i64) -> Result<bool, StoreError> {
        let purged: Option<i64> =
            sqlx::query_scalar("SELECT purged_at_ms FROM instances WHERE id = ?")
                .bind(id)
                .fetch_one(self.pool())
                .await?;
        Ok(purged.is_some())
    }

    /// Puts a report the node made again, under its UID, where its file was
    /// lost or damaged (a report cannot be sent to the node again, as an
    /// image can): `spool` (written, its data set `sha256`) replaces the
    /// file, and the deliveries parked for want of it are due again.
    /// Returns how many deliveries resumed.
    pub async fn replace_generated_file(
        &self,
        id: i64,
        spool: &std::path::Path,
        dataset_size: u64,
        sha256: &str,
    ) -> Result<u64, StoreError> {
        let relative: String =
            sqlx::query_scalar("SELECT path FROM instances WHERE id = ? AND generated = 1")
                .bind(id)
                .fetch_one(self.pool())
                .await?;
        let (from, to) = (spool.to_path_buf(), self.instance_file(&relative));
        let file_size = tokio::task::spawn_blocking(move || crate::files::persist(&from, &to))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE instances SET file_size = ?, dataset_size = ?, sha256 = ?, purged_at_ms = NULL,
                 restored_at_ms = ?
             WHERE id = ?",
        )
        .bind(file_size as i64)
        .bind(dataset_size as i64)
        .bind(sha256)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let resumed = crate::db::resume_deliveries_parked_for_the_file(&mut tx, id, now).await?;
        tx.commit().await?;
        Ok(resumed)
    }

    /// The first stored instance with this SOP Instance UID.
    /// Every AE title that sent this instance (its first copy's, then
    /// those that sent it again), for routing its results.
    pub async fn callers_of(&self, instance_id: i64) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT calling_ae FROM (
                 SELECT calling_ae, 0 AS n FROM instances WHERE id = ?1
                 UNION SELECT calling_ae, rowid AS n FROM instance_callers WHERE instance_id = ?1)
             GROUP BY calling_ae ORDER BY MIN(n)",
        )
        .bind(instance_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// The instance whose job made the not-analysed notice
    /// `notice_sop_instance_uid` (the first, when several share it).
    pub async fn notice_maker(
        &self,
        notice_sop_instance_uid: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT j.instance_id FROM jobs j JOIN instances n ON n.id = j.notice_instance_id
             WHERE n.sop_instance_uid = ? ORDER BY j.id LIMIT 1",
        )
        .bind(notice_sop_instance_uid)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn instance_id_by_uid(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(crate::db::instances_with_uid(self.pool(), sop_instance_uid)
            .await?
            .first()
            .map(|(id, _)| *id))
    }
}

/// What a report states, and what it was made from (`record_report_result`).
pub struct ReportResult {
    pub sr_instance_id: i64,
    pub source_sop_instance_uid: String,
    pub source_identity: String,
    pub contract_sha256: String,
    pub model_input_sha256: String,
    pub p_positive: f64,
    pub decision: String,
}

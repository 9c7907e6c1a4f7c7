//! Read-only views for the status API.

use crate::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobView {
    pub job_id: i64,
    pub state: String,
    pub reason: Option<String>,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub result_json: Option<String>,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub modality: Option<String>,
    pub sr_sop_instance_uid: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InstanceView {
    pub instance_id: i64,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub modality: Option<String>,
    pub path: String,
    pub file_size: i64,
    pub sha256: String,
    pub calling_ae: String,
    pub received_at_ms: i64,
    /// When retention removed the file (None: kept).
    pub purged_at_ms: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryView {
    /// What is delivered: `original` (the instance, by a forwarding rule)
    /// or `report` (the SR or companion image made from it).
    pub kind: String,
    /// The SOP Instance UID delivered.
    pub sop_instance_uid: String,
    pub destination: String,
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<String>,
    pub updated_at_ms: i64,
}

/// One outbox row, for the operator's listing.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRowView {
    pub id: i64,
    /// `original` or `report` (the SR or companion image the node made).
    pub kind: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub destination: String,
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<String>,
    pub next_attempt_at_ms: i64,
    pub updated_at_ms: i64,
}

const JOB_COLUMNS: &str = "SELECT j.id AS job_id, j.state, j.reason, j.attempts, j.created_at_ms, j.updated_at_ms,
        j.result_json, i.sop_instance_uid, i.study_instance_uid, i.modality,
        (SELECT sop_instance_uid FROM instances s WHERE s.id = j.sr_instance_id) AS sr_sop_instance_uid
     FROM jobs j JOIN instances i ON i.id = j.instance_id";

/// What an outbox row delivers, on `instances i`: `original` (an instance
/// received) or `report` (the SR or companion image this node made).
const DELIVERY_KIND: &str = "CASE WHEN i.generated = 0 THEN 'original' ELSE 'report' END";

/// ` WHERE a AND b ...`, or nothing without conditions.
fn where_all(conditions: &[&str]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

impl Store {
    /// Jobs, newest first: optionally in one state, and older than job
    /// `before_id` (the next page of a listing); without their result
    /// JSON unless `with_result`.
    pub async fn list_jobs(
        &self,
        state: Option<&str>,
        before_id: Option<i64>,
        limit: i64,
        with_result: bool,
    ) -> Result<Vec<JobView>, StoreError> {
        // Conditions written only when given: `(? IS NULL OR j.state = ?)`
        // kept SQLite off the state index, and a listing of the few failed
        // jobs walked every job (45 s at 300,000).
        let mut conditions = Vec::new();
        if state.is_some() {
            conditions.push("j.state = ?");
        }
        if before_id.is_some() {
            conditions.push("j.id < ?");
        }
        let columns = if with_result {
            JOB_COLUMNS.to_string()
        } else {
            JOB_COLUMNS.replace("j.result_json,", "NULL AS result_json,")
        };
        let filter = where_all(&conditions);
        let sql = format!("{columns}{filter} ORDER BY j.id DESC LIMIT ?");
        let mut query = sqlx::query_as(&sql);
        if let Some(state) = state {
            query = query.bind(state);
        }
        if let Some(before) = before_id {
            query = query.bind(before);
        }
        Ok(query.bind(limit).fetch_all(self.pool()).await?)
    }

    /// Outbox rows, newest first: optionally in one state, to one
    /// destination, and older than row `before_id` (the next page).
    pub async fn list_deliveries(
        &self,
        state: Option<&str>,
        destination: Option<&str>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<OutboxRowView>, StoreError> {
        let mut conditions = Vec::new();
        if state.is_some() {
            conditions.push("o.state = ?");
        }
        if destination.is_some() {
            conditions.push("o.destination = ?");
        }
        if before_id.is_some() {
            conditions.push("o.id < ?");
        }
        let filter = where_all(&conditions);
        let sql = format!(
            "SELECT o.id, {DELIVERY_KIND} AS kind,
                    i.sop_instance_uid, i.study_instance_uid, o.destination, o.state, o.attempts,
                    o.last_status, o.next_attempt_at_ms, o.updated_at_ms
             FROM outbox o JOIN instances i ON i.id = o.instance_id{filter}
             ORDER BY o.id DESC LIMIT ?"
        );
        let mut query = sqlx::query_as(&sql);
        for value in [state, destination].into_iter().flatten() {
            query = query.bind(value);
        }
        if let Some(before) = before_id {
            query = query.bind(before);
        }
        Ok(query.bind(limit).fetch_all(self.pool()).await?)
    }

    /// Every instance row with this SOP Instance UID (more than one when a
    /// conflicting copy was kept), with its job and deliveries.
    pub async fn instance_details(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Vec<(InstanceView, Option<JobView>, Vec<DeliveryView>)>, StoreError> {
        let instances: Vec<InstanceView> = sqlx::query_as(
            "SELECT id AS instance_id, sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
                    transfer_syntax_uid, modality, path, file_size, sha256, calling_ae, received_at_ms, purged_at_ms
             FROM instances WHERE sop_instance_uid = ? ORDER BY id",
        )
        .bind(sop_instance_uid)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(instances.len());
        for inst in instances {
            let job: Option<JobView> =
                sqlx::query_as(&format!("{JOB_COLUMNS} WHERE j.instance_id = ?"))
                    .bind(inst.instance_id)
                    .fetch_optional(self.pool())
                    .await?;
            // Deliveries of the instance itself, of its report and of its
            // companion image.
            let deliveries: Vec<DeliveryView> = sqlx::query_as(
                &format!(
                    "SELECT {DELIVERY_KIND} AS kind,
                        i.sop_instance_uid, o.destination, o.state, o.attempts, o.last_status, o.updated_at_ms
                     FROM outbox o JOIN instances i ON i.id = o.instance_id
                     WHERE o.instance_id = ?
                        OR o.instance_id IN (SELECT sr_instance_id FROM jobs WHERE instance_id = ?
                                             UNION SELECT sc_instance_id FROM jobs WHERE instance_id = ?)
                     ORDER BY o.id"
                ),
            )
            .bind(inst.instance_id)
            .bind(inst.instance_id)
            .bind(inst.instance_id)
            .fetch_all(self.pool())
            .await?;
            out.push((inst, job, deliveries));
        }
        Ok(out)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.check_database_file()?;
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }
}

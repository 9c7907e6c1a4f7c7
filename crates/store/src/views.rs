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
    /// The notice that the image was not analysed (a failed job's).
    pub notice_sop_instance_uid: Option<String>,
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
    /// When the file was last put back (a re-sent copy, a report made
    /// again); retention counts its days from then too.
    pub restored_at_ms: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryView {
    /// What is delivered: `original` (the instance, by a forwarding rule),
    /// `report` (the SR or companion image made from it) or `notice` (the
    /// SR, or image, saying it was not analysed).
    pub kind: String,
    /// The SOP Instance UID of what is delivered, as stored.
    pub sop_instance_uid: String,
    /// The UID it was delivered under when it went as another class (the
    /// one the destination holds).
    pub sent_as_uid: Option<String>,
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
    /// `original`, `report` or `notice`, as in [`DeliveryView`].
    pub kind: String,
    pub sop_instance_uid: String,
    /// As in [`DeliveryView`].
    pub sent_as_uid: Option<String>,
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
        (SELECT sop_instance_uid FROM instances s WHERE s.id = j.sr_instance_id) AS sr_sop_instance_uid,
        (SELECT sop_instance_uid FROM instances s WHERE s.id = j.notice_instance_id) AS notice_sop_instance_uid
     FROM jobs j JOIN instances i ON i.id = j.instance_id";

/// What an outbox row delivers, on `instances i`: `original` (an instance
/// received), `report` (the SR or companion image this node made) or
/// `notice` (the SR, or image, saying an image was not analysed).
const DELIVERY_KIND: &str = "CASE WHEN i.generated = 0 THEN 'original'
     WHEN EXISTS (SELECT 1 FROM jobs n WHERE n.notice_instance_id = i.id)
       OR EXISTS (SELECT 1 FROM jobs n WHERE n.notice_sc_instance_id = i.id) THEN 'notice'
     ELSE 'report' END";

/// Which rows of a listing (jobs or deliveries), newest first; each filter
/// applies only when given.
#[derive(Debug, Clone, Default)]
pub struct Listing<'a> {
    /// The states of the rows (the job's or the delivery's); any when
    /// empty.
    pub states: Vec<&'a str>,
    /// Of one study: its originals and, for deliveries, the reports made
    /// for it.
    pub study_instance_uid: Option<&'a str>,
    /// Of one instance (every copy kept under that UID).
    pub sop_instance_uid: Option<&'a str>,
    /// Of the studies with this Accession Number (as received).
    pub accession_number: Option<&'a str>,
    /// Deliveries only: to this destination.
    pub destination: Option<&'a str>,
    /// Older than this row: the next page.
    pub before_id: Option<i64>,
    /// At most this many rows.
    pub limit: i64,
}

/// A value bound to a listing's condition.
enum Bound<'a> {
    Text(&'a str),
    Id(i64),
}

type ListingQuery<'q, T> =
    sqlx::query::QueryAs<'q, sqlx::Sqlite, T, sqlx::sqlite::SqliteArguments<'q>>;

impl<'a> Bound<'a> {
    fn bind_to<'q, T>(self, query: ListingQuery<'q, T>) -> ListingQuery<'q, T>
    where
        'a: 'q,
    {
        match self {
            Bound::Text(v) => query.bind(v),
            Bound::Id(v) => query.bind(v),
        }
    }
}

/// The table a listing reads, joined with `instances i`.
#[derive(Clone, Copy)]
enum Listed {
    Jobs,
    Deliveries,
}

impl Listed {
    /// The table's alias in the listing's query.
    fn alias(self) -> &'static str {
        match self {
            Listed::Jobs => "j",
            Listed::Deliveries => "o",
        }
    }

    /// The condition matching a SOP Instance UID, and how many times it
    /// binds the UID: a delivery is also found by the UID it was sent under.
    fn sop_instance_condition(self) -> (&'static str, usize) {
        match self {
            Listed::Jobs => ("i.sop_instance_uid = ?", 1),
            Listed::Deliveries => ("(i.sop_instance_uid = ? OR o.sent_as_uid = ?)", 2),
        }
    }
}

impl<'a> Listing<'a> {
    /// ` WHERE a AND b ...` on the `listed` table, or nothing; and the
    /// values to bind, in order. Conditions are written only when given:
    /// `(? IS NULL OR j.state = ?)` kept SQLite off the state index, and a
    /// listing of the few failed jobs walked every job (45 s at 300,000).
    fn conditions(&self, listed: Listed) -> (String, Vec<Bound<'a>>) {
        let row = listed.alias();
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if !self.states.is_empty() {
            let marks = vec!["?"; self.states.len()].join(", ");
            conditions.push(format!("{row}.state IN ({marks})"));
            values.extend(self.states.iter().map(|s| Bound::Text(s)));
        }
        if let Some(study) = self.study_instance_uid {
            conditions.push("i.study_instance_uid = ?".to_string());
            values.push(Bound::Text(study));
        }
        if let Some(sop) = self.sop_instance_uid {
            let (condition, binds) = listed.sop_instance_condition();
            conditions.push(condition.to_string());
            values.extend((0..binds).map(|_| Bound::Text(sop)));
        }
        if let Some(accession) = self.accession_number {
            conditions.push("i.accession_number = ?".to_string());
            values.push(Bound::Text(accession));
        }
        if let Some(destination) = self.destination {
            conditions.push(format!("{row}.destination = ?"));
            values.push(Bound::Text(destination));
        }
        if let Some(before) = self.before_id {
            conditions.push(format!("{row}.id < ?"));
            values.push(Bound::Id(before));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        (filter, values)
    }
}

impl Store {
    /// Jobs, newest first: optionally in one state, and older than job
    /// `before_id` (the next page of a listing); without their result
    /// JSON unless `with_result`.
    pub async fn list_jobs(
        &self,
        listing: &Listing<'_>,
        with_result: bool,
    ) -> Result<Vec<JobView>, StoreError> {
        let columns = if with_result {
            JOB_COLUMNS.to_string()
        } else {
            JOB_COLUMNS.replace("j.result_json,", "NULL AS result_json,")
        };
        let (filter, values) = listing.conditions(Listed::Jobs);
        let sql = format!("{columns}{filter} ORDER BY j.id DESC LIMIT ?");
        let mut query = sqlx::query_as(&sql);
        for value in values {
            query = value.bind_to(query);
        }
        Ok(query.bind(listing.limit).fetch_all(self.pool()).await?)
    }

    /// Outbox rows, newest first, as `listing` says.
    pub async fn list_deliveries(
        &self,
        listing: &Listing<'_>,
    ) -> Result<Vec<OutboxRowView>, StoreError> {
        let (filter, values) = listing.conditions(Listed::Deliveries);
        let sql = format!(
            "SELECT o.id, {DELIVERY_KIND} AS kind,
                    i.sop_instance_uid, o.sent_as_uid, i.study_instance_uid, o.destination, o.state,
                    o.attempts,
                    o.last_status, o.next_attempt_at_ms, o.updated_at_ms
             FROM outbox o JOIN instances i ON i.id = o.instance_id{filter}
             ORDER BY o.id DESC LIMIT ?"
        );
        let mut query = sqlx::query_as(&sql);
        for value in values {
            query = value.bind_to(query);
        }
        Ok(query.bind(listing.limit).fetch_all(self.pool()).await?)
    }

    /// Every instance row with this SOP Instance UID (more than one when a
    /// conflicting copy was kept), with its job and deliveries; for a UID a
    /// report was sent under (as another class), that report's.
    pub async fn instance_details(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Vec<(InstanceView, Option<JobView>, Vec<DeliveryView>)>, StoreError> {
        let sent_as_report: Option<String> = sqlx::query_scalar(
            "SELECT i.sop_instance_uid FROM outbox o JOIN instances i ON i.id = o.instance_id
             WHERE o.sent_as_uid = ? LIMIT 1",
        )
        .bind(sop_instance_uid)
        .fetch_optional(self.pool())
        .await?;
        let sop_instance_uid = sent_as_report.as_deref().unwrap_or(sop_instance_uid);
        let instances: Vec<InstanceView> = sqlx::query_as(
            "SELECT id AS instance_id, sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
                    transfer_syntax_uid, modality, path, file_size, sha256, calling_ae, received_at_ms, purged_at_ms,
                    restored_at_ms
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
            // companion image (and notices), and of those made for it
            // before a re-analysis linked its job to others.
            let deliveries: Vec<DeliveryView> = sqlx::query_as(
                &format!(
                    "SELECT {DELIVERY_KIND} AS kind,
                        i.sop_instance_uid, o.sent_as_uid, o.destination, o.state, o.attempts,
                        o.last_status, o.updated_at_ms
                     FROM outbox o JOIN instances i ON i.id = o.instance_id
                     WHERE o.instance_id = ?
                        OR o.instance_id IN (SELECT sr_instance_id FROM jobs WHERE instance_id = ?
                                             UNION SELECT sc_instance_id FROM jobs WHERE instance_id = ?
                                             UNION SELECT notice_instance_id FROM jobs WHERE instance_id = ?
                                             UNION SELECT notice_sc_instance_id FROM jobs WHERE instance_id = ?
                                             UNION SELECT id FROM instances WHERE made_for_instance_id = ?)
                     ORDER BY o.id"
                ),
            )
            .bind(inst.instance_id)
            .bind(inst.instance_id)
            .bind(inst.instance_id)
            .bind(inst.instance_id)
            .bind(inst.instance_id)
            .bind(inst.instance_id)
            .fetch_all(self.pool())
            .await?;
            out.push((inst, job, deliveries));
        }
        Ok(out)
    }

    /// Whether any outbox row, in any state, is or was owed to
    /// `destination` (one no longer configured still has its rows listed).
    pub async fn has_deliveries_to(&self, destination: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE destination = ?)")
                .bind(destination)
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Whether the database answers, and a write could begin.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.check_database_file()?;
        self.check_database_writable()?;
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        if !self.write_probe().write_could_begin().await? {
            return Err(StoreError::WriteLocked(
                crate::db::WRITE_PROBE_WAIT.as_secs(),
            ));
        }
        Ok(())
    }
}

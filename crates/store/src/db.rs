//! SQL of the ingest path (SQLite).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::header::InstanceHeader;

/// SQLite in WAL mode with `synchronous = FULL`: a committed row survives a
/// power cut, which is what acknowledging an instance promises.
pub async fn connect(
    data_dir: &Path,
    database_url: Option<&str>,
) -> Result<SqlitePool, sqlx::Error> {
    let options = connect_options(data_dir, database_url)?.create_if_missing(true);
    process_start();
    SqlitePoolOptions::new()
        .max_connections(8)
        // One connection always open: with none, SQLite folds and removes
        // the write-ahead log, and a log that is gone while the node runs
        // means it was deleted (see `Store::check_database_file`).
        .min_connections(1)
        .before_acquire(|conn, meta| {
            let age = meta.age;
            Box::pin(async move {
                Ok(!opened_before_a_fault(age) && outside_any_transaction(conn).await?)
            })
        })
        .connect_with(options)
        .await
}

fn connect_options(
    data_dir: &Path,
    database_url: Option<&str>,
) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(match database_url {
        Some(url) => SqliteConnectOptions::from_str(url)?,
        None => SqliteConnectOptions::new().filename(data_dir.join("pneumo-node.sqlite")),
    }
    .journal_mode(SqliteJournalMode::Wal)
    .synchronous(SqliteSynchronous::Full)
    .foreign_keys(true)
    .busy_timeout(Duration::from_secs(30)))
}

/// How long the write probe waits for the write lock: the node's own
/// transactions hold it for milliseconds.
pub const WRITE_PROBE_WAIT: Duration = Duration::from_secs(2);

/// A connection of its own on which a write is begun and rolled back, to
/// tell whether one could begin now: another process holding the write
/// lock (a `sqlite3` shell left in a transaction) had every C-STORE wait
/// 30 s and be refused while reads, and so `/readyz`, answered. Connected
/// when first used, and again after any error (a connection whose rollback
/// failed might hold the lock itself).
pub struct WriteProbe {
    options: Option<SqliteConnectOptions>,
    conn: tokio::sync::Mutex<Option<sqlx::SqliteConnection>>,
    /// The last probe's answer, for callers that come while one runs.
    last: std::sync::atomic::AtomicBool,
}

impl WriteProbe {
    /// None for a database that another connection cannot see (in memory).
    pub fn new(options: Option<SqliteConnectOptions>) -> WriteProbe {
        WriteProbe {
            options: options.map(|o| o.busy_timeout(WRITE_PROBE_WAIT)),
            conn: tokio::sync::Mutex::new(None),
            last: std::sync::atomic::AtomicBool::new(true),
        }
    }

    pub fn for_database(
        data_dir: &Path,
        database_url: Option<&str>,
        file: Option<&Path>,
    ) -> WriteProbe {
        WriteProbe::new(file.and_then(|_| connect_options(data_dir, database_url).ok()))
    }

    /// Closes its connection (before the pool's, so that the last one to
    /// close folds and removes the write-ahead log).
    pub async fn close(&self) {
        use sqlx::Connection;
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }

    /// Ok(true): a write could begin; Ok(false): the write lock stayed
    /// taken for [`WRITE_PROBE_WAIT`]. While another caller's probe runs,
    /// its predecessor's answer at once: callers queued [`WRITE_PROBE_WAIT`]
    /// each behind one another while the lock was held (twenty `/readyz`
    /// pollers waited 9 s, a scrape timed out).
    pub async fn write_could_begin(&self) -> Result<bool, sqlx::Error> {
        use sqlx::Connection;
        use std::sync::atomic::Ordering;
        let Some(options) = &self.options else {
            return Ok(true);
        };
        let Ok(mut conn) = self.conn.try_lock() else {
            return Ok(self.last.load(Ordering::Relaxed));
        };
        if conn.is_none() {
            *conn = Some(sqlx::SqliteConnection::connect_with(options).await?);
        }
        let c = conn.as_mut().expect("connected above");
        let began = sqlx::query("BEGIN IMMEDIATE").execute(&mut *c).await;
        let outcome = match began {
            Ok(_) => sqlx::query("ROLLBACK").execute(&mut *c).await.map(|_| true),
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("5") => {
                Ok(false)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(could) => self.last.store(could, Ordering::Relaxed),
            // closed: SQLite rolls back whatever it holds
            Err(_) => *conn = None,
        }
        outcome
    }
}

/// A database file opened to read only, writing nothing beside it
/// (`Store::open_to_read`).
pub async fn connect_to_read(file: &Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .read_only(true)
        .immutable(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
}

/// A read-only connection that reads a database's `-wal` too (it may add
/// a `-shm` beside them): for a database whose log holds commits.
pub async fn connect_to_read_with_log(file: &Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new().filename(file).read_only(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
}

/// Whether a pooled connection may be handed out: no transaction open,
/// neither in sqlx's count nor in SQLite. A statement that fails with
/// SQLITE_FULL or SQLITE_IOERR may make SQLite roll the whole transaction
/// back by itself; sqlx's ROLLBACK then fails and its count stays at one,
/// so its next "transaction" was a savepoint, whose rollback (ROLLBACK TO)
/// left a real transaction open on the connection: every later write on it,
/// instances acknowledged included, was never committed, and its write lock
/// locked out every other connection (seen on a full disk). Such a
/// connection is closed (SQLite rolls back what it holds) and replaced.
async fn outside_any_transaction(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    // Locking the handle waits for the commands queued before it (a
    // dropped transaction's rollback), so both counts are settled.
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is locked for this call, and sqlite3_get_autocommit
    // only reads the connection's state.
    let sqlite_autocommit =
        unsafe { libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) } != 0;
    drop(handle);
    let clean = sqlite_autocommit && !conn.is_in_transaction();
    if !clean {
        // On a full disk every round of every loop meets one: said once a
        // minute, with how many (45 lines a minute before).
        static SAID: std::sync::Mutex<(Option<std::time::Instant>, u64)> =
            std::sync::Mutex::new((None, 0));
        let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
        said.1 += 1;
        if said
            .0
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60))
        {
            tracing::warn!(
                connections = said.1,
                "a database connection was left inside a transaction (after a failed \
                 write); closed and replaced"
            );
            *said = (Some(std::time::Instant::now()), 0);
        }
    }
    Ok(clean)
}

/// When, after the process's start, a database operation last failed as
/// read-only or with an I/O error (milliseconds; 0: never).
static LAST_CONNECTION_FAULT_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

fn process_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

/// Notes an error that can leave a connection unusable for good: SQLite
/// opens a write-ahead log it cannot write read-only, and the connection
/// keeps it so for its life ("attempt to write a readonly database" on
/// every write long after the file was writable again: a `-wal` made
/// unwritable for a moment refused 13 of 20 instances after, and stalled
/// jobs until a restart). The connections opened before it are replaced
/// as they are next taken (`opened_before_a_fault`).
pub(crate) fn note_connection_fault(e: &sqlx::Error) {
    let sqlx::Error::Database(db) = e else {
        return;
    };
    // SQLITE_READONLY (8) and SQLITE_IOERR (10), with their extended codes.
    let primary = db
        .code()
        .and_then(|c| c.parse::<i64>().ok())
        .map(|c| c & 0xff);
    if matches!(primary, Some(8) | Some(10)) {
        let now = process_start().elapsed().as_millis() as u64;
        LAST_CONNECTION_FAULT_MS.store(now.max(1), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a connection of this age was opened before the last fault.
fn opened_before_a_fault(age: Duration) -> bool {
    let fault = LAST_CONNECTION_FAULT_MS.load(std::sync::atomic::Ordering::Relaxed);
    if fault == 0 {
        return false;
    }
    let opened_ms = (process_start().elapsed().saturating_sub(age)).as_millis() as u64;
    opened_ms <= fault
}

/// The file of the database `connect` opens; None for an in-memory one.
pub fn database_file(data_dir: &Path, database_url: Option<&str>) -> Option<PathBuf> {
    let file = match database_url {
        None => data_dir.join("pneumo-node.sqlite"),
        Some(url) => SqliteConnectOptions::from_str(url)
            .ok()?
            .get_filename()
            .to_path_buf(),
    };
    (!file.as_os_str().is_empty() && file.as_os_str() != ":memory:").then_some(file)
}

/// (id, sha256) of every instance row with this SOP Instance UID.
pub async fn instances_with_uid(
    pool: &SqlitePool,
    sop_instance_uid: &str,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, sha256 FROM instances WHERE sop_instance_uid = ? ORDER BY id")
        .bind(sop_instance_uid)
        .fetch_all(pool)
        .await
}

/// The stored file of an instance, relative to the data directory; None
/// when retention removed it.
pub async fn instance_path(pool: &SqlitePool, id: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT path FROM instances WHERE id = ? AND purged_at_ms IS NULL")
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub struct NewInstance<'a> {
    pub header: &'a InstanceHeader,
    pub transfer_syntax_uid: &'a str,
    pub path: &'a str,
    pub file_size: u64,
    pub dataset_size: u64,
    pub sha256: &'a str,
    pub calling_ae: &'a str,
    pub peer_address: &'a str,
    pub now_ms: i64,
    pub destinations: &'a [String],
    pub with_job: bool,
}

/// Inserts the instance, its `received` job and its outbox rows in one transaction.
pub async fn insert_instance_with_job(
    pool: &SqlitePool,
    row: &NewInstance<'_>,
) -> Result<(i64, Option<i64>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let h = row.header;
    let instance_id: i64 = sqlx::query_scalar(
        "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
             transfer_syntax_uid, modality, body_part_examined, view_position, path, file_size,
             dataset_size, sha256, calling_ae, peer_address, received_at_ms, generated, accession_number,
             patient_age_years, image_type, presentation_intent_type, manufacturer_model_name,
             conversion_type)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&h.sop_instance_uid)
    .bind(&h.sop_class_uid)
    .bind(&h.study_instance_uid)
    .bind(&h.series_instance_uid)
    .bind(row.transfer_syntax_uid)
    .bind(&h.modality)
    .bind(&h.body_part_examined)
    .bind(&h.view_position)
    .bind(row.path)
    .bind(row.file_size as i64)
    .bind(row.dataset_size as i64)
    .bind(row.sha256)
    .bind(row.calling_ae)
    .bind(row.peer_address)
    .bind(row.now_ms)
    .bind(!row.with_job)
    .bind(&h.accession_number)
    .bind(h.patient_age_years)
    .bind(&h.image_type)
    .bind(&h.presentation_intent_type)
    .bind(&h.manufacturer_model_name)
    .bind(&h.conversion_type)
    .fetch_one(&mut *tx)
    .await?;
    let job_id = if row.with_job {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (instance_id, state, created_at_ms, updated_at_ms)
             VALUES (?, 'received', ?, ?) RETURNING id",
        )
        .bind(instance_id)
        .bind(row.now_ms)
        .bind(row.now_ms)
        .fetch_one(&mut *tx)
        .await?;
        Some(id)
    } else {
        None
    };
    for destination in row.destinations {
        crate::outbox::enqueue(&mut *tx, instance_id, destination).await?;
    }
    tx.commit().await?;
    Ok((instance_id, job_id))
}

/// The deliveries of instance `id` parked because its file was missing or
/// damaged are due again (the file was put back); returns how many.
pub(crate) async fn resume_deliveries_parked_for_the_file(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    now: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at_ms = ?, updated_at_ms = ?,
                owed_since_ms = ?
         WHERE instance_id = ? AND state = 'parked'
           AND (last_status LIKE 'the stored file%' OR last_status LIKE 'stored file unreadable%')",
    )
    .bind(now)
    .bind(now)
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

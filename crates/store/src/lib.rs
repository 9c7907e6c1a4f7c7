//! Durable ingest: instance files and their rows in the database.
//!
//! The rule of the house: an instance is acknowledged only after its file is
//! fsync'd and renamed into `<data>/instances/<study>/<series>/<sop>.dcm`
//! and its row (with a job in state `received`) is committed. Duplicates with
//! identical data, or the same data set in another encoding, are a success
//! that writes nothing; duplicates with other data are kept beside the
//! first, never over it.

mod coded;
mod commitment;
mod cp246;
mod db;
mod described;
mod files;
mod header;
mod iso2022;
mod jobs;
mod lengths;
mod outbox;
mod recover;
mod retention;
mod same_data;
mod uid_locks;
mod un_values;
mod views;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::SqlitePool;
use thiserror::Error;
use tracing::{info, warn};

pub use commitment::{CommitmentResult, CommitmentResultCount};
pub use cp246::rewrite_un_sequences;
pub use db::database_file;
pub use described::names_term;
pub use files::dataset_digest;
pub use header::{
    check_data_set_bytes, check_element_lengths, is_product, open_instance, InstanceHeader,
};
pub use jobs::{
    stored_copy_problem, ClaimedJob, FailedJob, JobCount, MadeInstances, ReportResult,
    RetryableState, StoredCopy, JOB_STATES,
};
pub use outbox::{backoff, OutboxCount, OutboxItem, LOST_BEFORE_ANY_ANSWER, OUTBOX_STATES};
pub use retention::Purged;
pub use same_data::Decompress;
pub use uid_locks::UidLocks;
pub use un_values::reinterpret_un_values;
pub use views::{DeliveryView, InstanceView, JobView, Listing, OutboxRowView};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file of the database (it, its `-wal`, its `-shm`) this process
    /// may not write.
    #[error("the database's file {path} cannot be written: {source}; instances are refused (A700) until it can")]
    DatabaseNotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The lock file beside the database, in a folder that is missing or
    /// cannot be written (a `database.url` naming a folder not made).
    #[error("cannot make the database's lock file {path}: {source} (is the database's folder there and writable? database.url)")]
    DatabaseLock {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("data directory {path} does not exist, nor the folder {parent} it would be made in (a disk not yet mounted?): create that folder, or correct node.data_dir")]
    DataDirParentMissing { path: PathBuf, parent: PathBuf },
    #[error("no database at {0}: nothing to compare the files with (put the database, or its backup, in place first, or correct node.data_dir or database.url; with no backup at all, start `pneumo-node serve` once to make an empty database)")]
    NoDatabase(PathBuf),
    #[error("the database has a write-ahead log {0} (the node is running, or was killed): recent commits are there and a read-only dry run cannot see them; stop the node (or start and stop it once), then run this again")]
    UnfoldedLog(PathBuf),
    #[error(
        "data directory {path} is in use by another pneumo-node process \
         (it holds the lock on {lock}); one data directory serves one node"
    )]
    InUse { path: PathBuf, lock: PathBuf },
    #[error(
        "database {path} is in use by another pneumo-node process (it holds the lock on \
         {lock}); one database serves one node: check database.url"
    )]
    DatabaseInUse { path: PathBuf, lock: PathBuf },
    #[error(
        "the database file {0} is gone (deleted or moved while the node runs); \
         nothing is acknowledged until the node is restarted"
    )]
    DatabaseGone(PathBuf),
    #[error(
        "the database's write-ahead log {0} is gone (deleted while the node runs): what was \
         committed since its last checkpoint is only in the deleted file, which a clean stop \
         (SIGTERM) folds into the database and a kill -9 loses; nothing is acknowledged until \
         the node is stopped cleanly and started again"
    )]
    WriteAheadLogGone(PathBuf),
    #[error(
        "the database file {path} is damaged ({why}); nothing is acknowledged; stop the node \
         and restore the database from a backup"
    )]
    DatabaseDamaged { path: PathBuf, why: String },
    #[error("{}", database_error_in_words(.0))]
    Database(#[source] sqlx::Error),
    /// No write could begin: another process holds the database's write
    /// lock (reads still answer).
    #[error(
        "database locked for writing: no write could begin within {0} s (another process \
         holds its write lock: a sqlite3 shell or a tool left in a transaction?); instances \
         are refused (A700) until it is released"
    )]
    WriteLocked(u64),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The spool directory is a symbolic link: every start refuses it.
    #[error(
        "{0} is a symbolic link: the node removes the files it finds in its spool at start \
         (transfers a stop cut short), and would remove the link target's; make it a \
         directory on the same file system as instances/"
    )]
    SpoolIsALink(PathBuf),
    /// An applied migration is not this build's: every start fails alike.
    #[error(
        "the database was migrated by a build whose migration {0} differs from this build's \
         (a development build): this build cannot use it; run the build that wrote it, or \
         restore a backup this build or an earlier release made (docs/operations.md)"
    )]
    MigrationDiffers(i64),
    /// An applied migration is recorded as failed (sqlx's "partially
    /// applied"): every start fails alike.
    #[error(
        "the database records migration {0} as failed (partially applied): this build cannot \
         use it; restore a backup of the database made before it (docs/operations.md)"
    )]
    MigrationFailed(i64),
    #[error("the data set cannot be parsed: {0}")]
    Unparseable(String),
    /// A UID of the request that no UID can be (said first: an Error
    /// Comment holds 64 characters).
    #[error("{0}")]
    NotAUid(String),
    /// Said first in the sender's 64-character Error Comment: which UID,
    /// then the data set's value.
    #[error("{0}")]
    Mismatch(String),
    #[error("cannot write the instance file: {0}")]
    Io(#[from] std::io::Error),
    /// A directory or entry under `instances/` that cannot be read, while
    /// looking for files the database does not name.
    #[error("cannot read {path}: {source}")]
    ListingFiles {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Takes the exclusive advisory lock on `<data_dir>/pneumo-node.lock`
/// (released by the system when the process ends, however it ends).
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join("pneumo-node.lock");
    lock_file(&path, || StoreError::InUse {
        path: data_dir.to_path_buf(),
        lock: path.clone(),
    })
}

/// The same for the database file, wherever it is: a second node given
/// another data directory and the first's database (`database.url`) took
/// the first's deliveries and parked them, looking for their files in its
/// own directory.
fn lock_database(database: &Path) -> Result<std::fs::File, StoreError> {
    let mut name = database.as_os_str().to_owned();
    name.push(".pneumo-node.lock");
    let path = PathBuf::from(name);
    lock_file(&path, || StoreError::DatabaseInUse {
        path: database.to_path_buf(),
        lock: path.clone(),
    })
    .map_err(|e| match e {
        StoreError::DataDir { path, source } => StoreError::DatabaseLock { path, source },
        other => other,
    })
}

/// An exclusive advisory lock on `path`, created if needed; `in_use` is
/// the error when another process holds it.
fn lock_file(path: &Path, in_use: impl Fn() -> StoreError) -> Result<std::fs::File, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| StoreError::DataDir {
            path: path.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(in_use()),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::DataDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// An instance as received, spooled in a Part-10 file on the data
/// directory's file system.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub spool_path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub dataset_len: u64,
    pub dataset_sha256: [u8; 32],
    pub calling_ae: String,
    pub peer_address: String,
    /// Made by this node (a report): stored like any instance, but no job.
    pub generated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Kept, with a job in state `received` (none for a generated instance).
    Stored {
        instance_id: i64,
        job_id: Option<i64>,
    },
    /// The same SOP Instance UID with the same data set is already kept;
    /// forwarded to `newly_routed` destinations of the rules now loaded
    /// that were not owed it yet.
    Duplicate {
        instance_id: i64,
        newly_routed: usize,
    },
    /// The same SOP Instance UID with another data set: kept beside the first.
    StoredConflicting {
        instance_id: i64,
        job_id: Option<i64>,
    },
}

pub struct Store {
    data_dir: PathBuf,
    pool: SqlitePool,
    /// A connection of its own that `ping` begins a write on (see
    /// `WriteProbe::write_could_begin`); none for an in-memory database.
    write_probe: db::WriteProbe,
    /// Ingests of one SOP Instance UID run one at a time: two data sets
    /// arriving together under one UID must not both take the first's path,
    /// where the second rename would replace acknowledged bytes.
    ingest_locks: UidLocks,
    /// The SQLite file (none for an in-memory database): checked before an
    /// instance is acknowledged, since SQLite writes on into a deleted file.
    database_file: Option<PathBuf>,
    /// The database file and its write-ahead log as opened (the log exists
    /// while the node runs: a connection is always open), checked by
    /// identity: none when opened to read only.
    opened_files: Option<[OpenedFile; 2]>,
    /// The database file's largest size seen, and why it is damaged once
    /// it was found so (kept until a restart): see `check_database_file`.
    database_file_watch: std::sync::Arc<std::sync::Mutex<(u64, Option<String>)>>,
    /// SQLite's quick check of the whole database, run once after open in
    /// the background (stopped by `close`), then the look for files no
    /// instance row names.
    integrity_check: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Files under `instances/` that no instance row named when the start
    /// looked (`start_integrity_check`).
    unrecorded_files: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Decodes compressed pixel data to compare a re-encoded copy.
    decompress: Option<Decompress>,
    /// A start found `instances/` holding files and the database no
    /// instance (deleted or replaced), and `recover-files` has not run since
    /// (the `database_lost` row of `node_flags`, read at open).
    database_lost: bool,
    /// The exclusive locks on the data directory and on the database file,
    /// held while the store lives.
    _locks: Vec<std::fs::File>,
}

/// A SOP Class or Instance UID with a character no UID has, longer than
/// 64 characters or with an empty component: refused by name (the
/// parser's own words, "Invalid UID in file meta information group", told
/// the sender nothing it could act on). Leading zeros in a component pass:
/// older modalities write them (the report crate's `is_referable_uid`
/// draws the same line for what a report may reference).
fn incoming_uids_problem(incoming: &Incoming) -> Result<(), StoreError> {
    uids_problem(&[
        ("SOP Class UID", &incoming.sop_class_uid),
        ("SOP Instance UID", &incoming.sop_instance_uid),
    ])
}

/// The same for the Study and Series Instance UIDs of the data set: such
/// an image was acknowledged, its analysis failed ("the source attribute
/// StudyInstanceUID is invalid"), and no notice could be made (its series
/// and study are the image's): the radiologist was never told.
fn header_uids_problem(header: &InstanceHeader) -> Result<(), StoreError> {
    uids_problem(&[
        ("Study Instance UID", &header.study_instance_uid),
        ("Series Instance UID", &header.series_instance_uid),
    ])
}

fn uids_problem(uids: &[(&str, &String)]) -> Result<(), StoreError> {
    for &(name, uid) in uids {
        let value = uid.trim_end_matches(['\0', ' ']);
        if let Some(c) = value.chars().find(|c| *c != '.' && !c.is_ascii_digit()) {
            return Err(StoreError::NotAUid(format!(
                "{name}: {c:?} is not allowed in a UID (digits and dots only, PS3.5 9.1): {uid:?}"
            )));
        }
        // Stored, such a UID failed its analysis later, and a 65-character
        // one was forwarded to a PACS that reset the connection, for ever.
        if value.len() > 64 {
            return Err(StoreError::NotAUid(format!(
                "{name}: {} characters, a UID has at most 64 (PS3.5 9.1): {uid:?}",
                value.len()
            )));
        }
        if !value.is_empty() && value.split('.').any(str::is_empty) {
            return Err(StoreError::NotAUid(format!(
                "{name}: an empty component, a UID has digits between its dots (PS3.5 9.1): {uid:?}"
            )));
        }
    }
    Ok(())
}

/// What a start did to the database's schema, for the administrator
/// after an upgrade or a rollback: made it, migrated it (from which
/// migration to which), or found it migrated by a newer build.
fn log_schema(migrator: &sqlx::migrate::Migrator, applied_before: Option<&[i64]>) {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let Some(before) = applied_before else {
        info!(schema = known, "database created");
        return;
    };
    let was = before.iter().copied().max().unwrap_or(0);
    let added: Vec<i64> = migrator
        .iter()
        .map(|m| m.version)
        .filter(|v| !before.contains(v))
        .collect();
    if !added.is_empty() {
        info!(
            from = was,
            to = known,
            migrations = added.len(),
            "database migrated"
        );
    }
    if was > known {
        warn!(
            schema = was,
            this_build_knows = known,
            "the database was migrated by a newer build: this build runs on it (migrations only \
             add), without what the newer build added"
        );
    }
}

impl Store {
    /// Opens (creating when needed) the data directory and the database,
    /// applies the embedded migrations and clears spool files left by a
    /// previous process (never acknowledged, so never owed to anyone).
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Store, StoreError> {
        // The data directory is made, its parents are not: a data disk not
        // yet mounted would otherwise get a fresh store on the root file
        // system, acknowledged instances hidden once the disk mounts.
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let missing = |p: &Path| {
                std::fs::metadata(p).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            };
            if missing(data_dir) && missing(parent) {
                return Err(StoreError::DataDirParentMissing {
                    path: data_dir.to_path_buf(),
                    parent: parent.to_path_buf(),
                });
            }
        }
        let spool = refuse_a_linked_spool(data_dir)?;
        for dir in [data_dir.to_path_buf(), data_dir.join("instances"), spool] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| StoreError::DataDir { path: dir, source })?;
        }
        // Before anything is touched: a second process on this directory
        // would clear the first's spool under a transfer in progress, take
        // back its jobs and send every delivery a second time.
        let mut locks = vec![lock_data_dir(data_dir)?];
        let database_file = db::database_file(data_dir, database_url);
        // Whether or not this node names it by URL: a second node given
        // another data directory and this database by `database.url` takes
        // the same lock.
        if let Some(file) = &database_file {
            locks.push(lock_database(file)?);
        }
        let pool = db::connect(data_dir, database_url).await?;
        let write_probe =
            db::WriteProbe::for_database(data_dir, database_url, database_file.as_deref());
        // Migrations only add (tables, columns, indexes), so a database an
        // upgrade migrated still serves the build before it: downgrading
        // takes no restore. Without this, sqlx refuses a database with a
        // migration this build does not know.
        let mut migrator = migrator();
        migrator.set_ignore_missing(true);
        // None: a new database (no migration table yet).
        let applied: Option<Vec<i64>> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
                .fetch_all(&pool)
                .await
                .ok();
        adopt_development_migration_15(&pool).await?;
        migrator.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMismatch(version) => {
                StoreError::MigrationDiffers(version)
            }
            sqlx::migrate::MigrateError::Dirty(version) => StoreError::MigrationFailed(version),
            e => StoreError::Migration(e),
        })?;
        log_schema(&migrator, applied.as_deref());
        // EXISTS, not COUNT(*): a year of instances made the count take 6 s
        // of every start.
        let rows: i64 = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM instances)")
            .fetch_one(&pool)
            .await?;
        let has_files = std::fs::read_dir(data_dir.join("instances"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if rows == 0 && has_files {
            // Kept until recover-files: one instance received meanwhile,
            // and the next start would find the database no longer empty.
            sqlx::query(
                "INSERT OR IGNORE INTO node_flags (name, since_ms) VALUES ('database_lost', ?)",
            )
            .bind(now_ms())
            .execute(&pool)
            .await?;
        }
        let database_lost: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM node_flags WHERE name = 'database_lost')",
        )
        .fetch_one(&pool)
        .await?;
        if database_lost {
            warn!(
                data_dir = %data_dir.display(),
                "a start found instances/ holding files and the database no instance: was the \
                 database deleted or replaced? Those files are not known to this node \
                 (`pneumo-node recover-files` records them; /readyz is not ready until then)"
            );
        }
        let cleared = files::clear_spool(&data_dir.join("spool"));
        if cleared > 0 {
            info!(
                files = cleared,
                "removed spool files of unfinished transfers"
            );
        }
        // what the file must never fall below (see `check_database_file`)
        let database_file_size = database_file
            .as_deref()
            .and_then(|f| std::fs::metadata(f).ok())
            .map_or(0, |m| m.len());
        let store = Store {
            data_dir: data_dir.to_path_buf(),
            pool,
            write_probe,
            ingest_locks: UidLocks::default(),
            opened_files: database_file.as_deref().map(|f| {
                [
                    OpenedFile::of(f.to_path_buf()),
                    OpenedFile::of(write_ahead_log(f)),
                ]
            }),
            database_file,
            database_file_watch: std::sync::Arc::new(std::sync::Mutex::new((
                database_file_size,
                None,
            ))),
            integrity_check: std::sync::Mutex::new(None),
            unrecorded_files: Default::default(),
            decompress: None,
            database_lost,
            _locks: locks,
        };
        let settled = store.settle_delivered_jobs().await?;
        if settled > 0 {
            info!(
                jobs = settled,
                "jobs whose report was delivered everywhere marked delivered"
            );
        }
        Ok(store)
    }

    /// The database file, which must exist (`recover-files`: a database
    /// made empty in place of a backup not yet restored recorded every
    /// file as new, and its `-wal` was replayed over the backup copied in
    /// next).
    pub fn existing_database(
        data_dir: &Path,
        database_url: Option<&str>,
    ) -> Result<PathBuf, StoreError> {
        let file = db::database_file(data_dir, database_url)
            .unwrap_or_else(|| data_dir.join("pneumo-node.sqlite"));
        if file.is_file() {
            Ok(file)
        } else {
            Err(StoreError::NoDatabase(file))
        }
    }

    /// Opens an existing database to read it only, for `recover-files
    /// --dry-run` (the node stopped): no migration, no flag, no spool
    /// cleared, and nothing written, not even a `-wal` or `-shm` file
    /// (SQLite's `immutable`): a dry run that made them, run before a
    /// backup was copied in place, had SQLite replay an empty database over
    /// the backup. A database file that does not exist is an error, and so
    /// is a `-wal` beside it (its commits are invisible to an immutable
    /// read: the node runs, or was killed).
    pub async fn open_to_read(
        data_dir: &Path,
        database_url: Option<&str>,
    ) -> Result<Store, StoreError> {
        let file = Store::existing_database(data_dir, database_url)?;
        let log = write_ahead_log(&file);
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            return Err(StoreError::UnfoldedLog(log));
        }
        let pool = db::connect_to_read(&file).await?;
        // What a start would refuse, a dry run says (it listed nothing).
        check_applied_migrations(&pool).await?;
        Ok(Store {
            data_dir: data_dir.to_path_buf(),
            pool,
            write_probe: db::WriteProbe::new(None),
            ingest_locks: UidLocks::default(),
            opened_files: None,
            database_file: Some(file),
            database_file_watch: std::sync::Arc::new(std::sync::Mutex::new((0, None))),
            integrity_check: std::sync::Mutex::new(None),
            unrecorded_files: Default::default(),
            decompress: None,
            database_lost: false,
            _locks: Vec::new(),
        })
    }

    /// With a decoder, a copy of a stored instance re-sent in another
    /// transfer syntax is known for the same data set also when one of them
    /// is compressed (else only among native syntaxes).
    pub fn with_decompress(mut self, decompress: Decompress) -> Self {
        self.decompress = Some(decompress);
        self
    }

    /// Whether a start found `instances/` holding files and the database
    /// no instance (a database deleted or replaced), and `recover-files`
    /// has not recorded them since: those instances' jobs and deliveries
    /// are lost until it does.
    pub fn database_lost_at_open(&self) -> bool {
        self.database_lost
    }

    /// `recover-files` has recorded the files a lost database did not name.
    pub async fn clear_database_lost(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM node_flags WHERE name = 'database_lost'")
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the SCP spools incoming data sets.
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) fn write_probe(&self) -> &db::WriteProbe {
        &self.write_probe
    }

    /// Makes a received instance durable; see the crate documentation.
    /// `route` names the destinations the instance is forwarded to: their
    /// outbox rows are committed with the instance, so an acknowledged
    /// instance is never owed to a destination without the outbox knowing.
    pub async fn ingest(
        &self,
        incoming: &Incoming,
        route: impl FnOnce(&InstanceHeader) -> Vec<String>,
    ) -> Result<IngestOutcome, StoreError> {
        // The spool file gone or unreadable is this node's failure (A700),
        // not a data set that cannot be understood (C000, which senders do
        // not retry).
        std::fs::File::open(&incoming.spool_path).map_err(|e| {
            StoreError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", incoming.spool_path.display()),
            ))
        })?;
        incoming_uids_problem(incoming)?;
        let spool = incoming.spool_path.clone();
        let syntax = incoming.transfer_syntax_uid.clone();
        let (header, stored_digest) = tokio::task::spawn_blocking(move || {
            let _turn = header::deflated_in_memory_turn(&syntax);
            let dropped = header::drop_meta_elements_from_data_set(&spool)?;
            // What is stored is what its digest is checked against later
            // (and what an identical re-send, dropped alike, compares to).
            let mut stored_digest = None;
            if dropped > 0 {
                warn!(
                    bytes = dropped,
                    "the data set began with File Meta Information elements (group 0002), which \
                     a data set sent over the network must not hold: not kept in the stored file"
                );
                stored_digest = Some(files::dataset_digest(&spool)?);
            }
            header::check_whole_data_set(&spool)?;
            InstanceHeader::read(&spool).map(|h| (h, stored_digest))
        })
        .await
        .map_err(|e| StoreError::Unparseable(e.to_string()))??;
        header.check_against(incoming)?;
        header_uids_problem(&header)?;
        let (dataset_len, digest) =
            stored_digest.unwrap_or((incoming.dataset_len, incoming.dataset_sha256));
        let sha256 = hex::encode(digest);

        self.check_database_file()?;
        let _same_uid = self.ingest_locks.lock(&incoming.sop_instance_uid).await;
        let existing = db::instances_with_uid(&self.pool, &incoming.sop_instance_uid).await?;
        if let Some((id, _)) = existing.iter().find(|(_, sha)| *sha == sha256) {
            self.restore_missing_file(*id, &incoming.spool_path).await?;
            return self
                .routed_again(*id, &incoming.calling_ae, route(&header))
                .await;
        }
        if let Some(id) = self
            .same_data_set_in_another_encoding(&existing, &incoming.spool_path)
            .await
        {
            info!(
                sop_instance_uid = %incoming.sop_instance_uid,
                transfer_syntax = %incoming.transfer_syntax_uid,
                "the same data set in another encoding (transfer syntax, or sequence and item \
                 lengths): not stored again"
            );
            return self
                .routed_again(id, &incoming.calling_ae, route(&header))
                .await;
        }
        let conflicting = !existing.is_empty();
        let relative = files::instance_path(&header, conflicting.then_some(sha256.as_str()));
        if conflicting {
            warn!(
                sop_instance_uid = %incoming.sop_instance_uid,
                path = %relative.display(),
                "same SOP Instance UID with different content: kept beside the first"
            );
        }
        let final_path = self.data_dir.join(&relative);
        let spool = incoming.spool_path.clone();
        let file_size = tokio::task::spawn_blocking(move || files::persist(&spool, &final_path))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;

        let destinations = route(&header);
        let row = db::NewInstance {
            header: &header,
            transfer_syntax_uid: &incoming.transfer_syntax_uid,
            path: &relative.to_string_lossy(),
            file_size,
            dataset_size: dataset_len,
            sha256: &sha256,
            calling_ae: &incoming.calling_ae,
            peer_address: &incoming.peer_address,
            now_ms: now_ms(),
            destinations: &destinations,
            with_job: !incoming.generated,
        };
        match db::insert_instance_with_job(&self.pool, &row).await {
            Ok((instance_id, job_id)) if conflicting => Ok(IngestOutcome::StoredConflicting {
                instance_id,
                job_id,
            }),
            Ok((instance_id, job_id)) => Ok(IngestOutcome::Stored {
                instance_id,
                job_id,
            }),
            // Another association stored the same data set at the same moment.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let existing =
                    db::instances_with_uid(&self.pool, &incoming.sop_instance_uid).await?;
                match existing.iter().find(|(_, sha)| *sha == sha256) {
                    Some((id, _)) => Ok(IngestOutcome::Duplicate {
                        instance_id: *id,
                        newly_routed: 0,
                    }),
                    None => Err(self.unkeep(&relative, sqlx::Error::Database(e).into())),
                }
            }
            Err(e) => Err(self.unkeep(&relative, e.into())),
        }
    }

    /// A stored instance received again: nothing is written, but the
    /// routing rules now loaded (and this caller's AE title) apply, for the
    /// destinations that were never owed it: how an operator forwards a
    /// stored study after adding a rule. One that had it (sent, pending or
    /// parked) is not sent it again.
    async fn routed_again(
        &self,
        instance_id: i64,
        calling_ae: &str,
        destinations: Vec<String>,
    ) -> Result<IngestOutcome, StoreError> {
        // Before its report is owed (by the caller of this): an analysis
        // finishing now reads the callers after it commits.
        sqlx::query(
            "INSERT OR IGNORE INTO instance_callers (instance_id, calling_ae) VALUES (?, ?)",
        )
        .bind(instance_id)
        .bind(calling_ae)
        .execute(&self.pool)
        .await?;
        let mut newly_routed = 0;
        for d in destinations {
            newly_routed += usize::from(outbox::enqueue(&self.pool, instance_id, &d).await?);
        }
        Ok(IngestOutcome::Duplicate {
            instance_id,
            newly_routed,
        })
    }

    /// The stored copy (of `existing`, same SOP Instance UID, other bytes)
    /// that holds the same data set as `spool`, if one does.
    async fn same_data_set_in_another_encoding(
        &self,
        existing: &[(i64, String)],
        spool: &Path,
    ) -> Option<i64> {
        let mut stored = Vec::with_capacity(existing.len());
        for (id, _) in existing {
            if let Ok(Some(path)) = db::instance_path(&self.pool, *id).await {
                stored.push((*id, self.data_dir.join(path)));
            }
        }
        let (spool, decompress) = (spool.to_path_buf(), self.decompress);
        tokio::task::spawn_blocking(move || {
            same_data::same_data_set_as(&spool, &stored, decompress)
        })
        .await
        .ok()
        .flatten()
    }

    /// A re-sent copy of a stored instance whose file is gone (deleted by
    /// hand, lost with a disk) or damaged (truncated, unreadable, other
    /// bytes than were received) puts the file back: the sender is told the
    /// node holds the instance, and re-sending is how an operator repairs a
    /// lost or damaged file. The data set is the same bytes (same SHA-256).
    async fn restore_missing_file(&self, id: i64, spool: &Path) -> Result<(), StoreError> {
        // Missing, another size, another File Meta or data set: the same
        // check as before an analysis or a sending.
        let Some(damage) = self.stored_instance_problem(id).await? else {
            return Ok(());
        };
        let (relative, purged_at_ms): (String, Option<i64>) =
            sqlx::query_as("SELECT path, purged_at_ms FROM instances WHERE id = ?")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        let final_path = self.data_dir.join(&relative);
        let (from, to) = (spool.to_path_buf(), final_path.clone());
        let file_size = tokio::task::spawn_blocking(move || files::persist(&from, &to))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        // The file back, what failed for want of it runs again: deliveries
        // parked and the analysis failed because of the file.
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE instances SET file_size = ?, purged_at_ms = NULL, restored_at_ms = ?
             WHERE id = ?",
        )
        .bind(file_size as i64)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let deliveries = db::resume_deliveries_parked_for_the_file(&mut tx, id, now).await?;
        let jobs = sqlx::query(
            "UPDATE jobs SET state = 'received', reason = NULL, attempts = 0, updated_at_ms = ?
             WHERE instance_id = ? AND state = 'failed' AND reason LIKE 'the stored file%'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if purged_at_ms.is_some() {
            // Retention's doing, as documented: no damage to look for.
            info!(
                path = %final_path.display(),
                deliveries_resumed = deliveries,
                analyses_resumed = jobs,
                "the file of a stored instance, removed by retention, is kept again from the copy just received"
            );
        } else {
            warn!(
                path = %final_path.display(),
                was = %damage,
                deliveries_resumed = deliveries,
                analyses_resumed = jobs,
                "the file of a stored instance was missing or damaged; restored from the copy just received"
            );
        }
        Ok(())
    }

    /// The file of an instance refused after it was moved into place (its
    /// row could not be committed: the database locked or full) is removed,
    /// so that a refusal leaves nothing behind (on a full disk, the space
    /// is what recovery needs). No acknowledged instance has this path: the
    /// ingest lock of its UID is held, and an instance stored under the UID
    /// already would have made it a `.<sha256>` path.
    fn unkeep(&self, relative: &Path, error: StoreError) -> StoreError {
        let path = self.data_dir.join(relative);
        if let Err(e) = std::fs::remove_file(&path) {
            warn!(path = %path.display(), error = %e, "cannot remove the file of a refused instance");
        }
        error
    }

    /// Err when the database file or its write-ahead log was deleted or
    /// moved under the running node (or replaced: any SQLite client opening
    /// the path after makes a new, empty one): SQLite would go on writing
    /// into the unlinked file, and every acknowledgement would be lost at
    /// the next start; until a restart. Err too, until a restart, once the
    /// file was found shorter than it was (truncated: queries answered from
    /// SQLite's page cache and write-ahead log went on while the rows were
    /// gone, and `/readyz` said ready).
    pub fn check_database_file(&self) -> Result<(), StoreError> {
        let Some(f) = &self.database_file else {
            return Ok(());
        };
        if let Some([database, log]) = &self.opened_files {
            if database.gone() {
                return Err(StoreError::DatabaseGone(f.clone()));
            }
            if log.gone() {
                return Err(StoreError::WriteAheadLogGone(log.path.clone()));
            }
        } else if !f.exists() {
            return Err(StoreError::DatabaseGone(f.clone()));
        }
        let mut watch = self
            .database_file_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if watch.1.is_none() {
            watch.1 = database_file_damage(f, &mut watch.0);
        }
        match &watch.1 {
            Some(why) => Err(StoreError::DatabaseDamaged {
                path: f.clone(),
                why: why.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether the database's files can be written: a `-wal` made
    /// unwritable (`chattr +i`, a `chown`) refused every C-STORE while the
    /// write probe, whose open connection needs no new write to the log to
    /// begin a transaction, said ready.
    pub fn check_database_writable(&self) -> Result<(), StoreError> {
        use std::os::unix::ffi::OsStrExt;
        let Some(f) = &self.database_file else {
            return Ok(());
        };
        for suffix in ["", "-wal", "-shm"] {
            let mut name = f.as_os_str().to_owned();
            name.push(suffix);
            let path = PathBuf::from(name);
            let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: access(2) reads the NUL-terminated path only.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(StoreError::DatabaseNotWritable { path, source: e });
                }
            }
        }
        Ok(())
    }

    /// The SOP classes under which an instance with this SOP Instance UID
    /// is kept, file present at its stored size (none when never
    /// received, or removed by retention or by hand): what a Storage
    /// Commitment request is answered by.
    pub async fn kept_classes(&self, sop_instance_uid: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT sop_class_uid, path, file_size FROM instances \
             WHERE sop_instance_uid = ? AND purged_at_ms IS NULL",
        )
        .bind(sop_instance_uid)
        .fetch_all(&self.pool)
        .await?;
        // Present with the size it was stored with: a file emptied or cut
        // was committed (and a modality deletes its copy on commitment).
        // The bytes themselves are checked before each analysis and send.
        Ok(rows
            .into_iter()
            .filter(|(_, path, size)| {
                std::fs::metadata(self.data_dir.join(path))
                    .is_ok_and(|m| m.is_file() && m.len() == *size as u64)
            })
            .map(|(class, _, _)| class)
            .collect())
    }

    /// Number of instance rows for a SOP Instance UID.
    pub async fn count_instances_with_uid(
        &self,
        sop_instance_uid: &str,
    ) -> Result<usize, StoreError> {
        Ok(db::instances_with_uid(&self.pool, sop_instance_uid)
            .await?
            .len())
    }

    pub async fn close(&self) {
        if let Some(check) = self
            .integrity_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            check.abort();
        }
        self.write_probe.close().await;
        // The write-ahead log folded into the database file and emptied
        // now: the last connection's close, which removes it, may still be
        // under way on its worker thread when the process exits, and what
        // was committed is then in the database file all the same.
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(
                error = %e,
                "cannot fold the write-ahead log into the database: its -wal holds the latest \
                 commits (instances acknowledged): keep it beside the database, and make the \
                 database file writable before the next start"
            );
        }
        self.pool.close().await;
    }

    /// [`Store::close`], for a one-shot command that exits next
    /// (`recover-files`): the pool's close returns once its connections are
    /// told to close; their worker threads close them (and the last removes
    /// the log) a moment later, which is waited for here, at most 10 s, so
    /// that the process does not exit first (a `-wal` was left every other
    /// run; with 2 s, still now and then on a loaded machine).
    pub async fn close_and_wait_for_the_log(&self) {
        self.close().await;
        let Some(file) = &self.database_file else {
            return;
        };
        let log = write_ahead_log(file);
        let gone = || async {
            for _ in 0..100 {
                if !log.exists() {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            false
        };
        // Now and then the log outlived the pool (a connection closed late,
        // not as the last): a connection of its own, opened and closed
        // alone, folds it in and removes it.
        for _ in 0..5 {
            if gone().await {
                return;
            }
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(file)
                .create_if_missing(false);
            if let Ok(mut conn) = sqlx::ConnectOptions::connect(&options).await {
                let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut conn)
                    .await;
                let _ = sqlx::Connection::close(conn).await;
            }
        }
        if log.exists() {
            tracing::warn!(log = %log.display(), "the write-ahead log is still beside the database");
        }
    }

    /// Runs SQLite's `quick_check` over the whole database in the
    /// background (`serve`, after opening the store); a database it finds
    /// malformed is damaged until a restart, as a shrunk one is
    /// (`check_database_file`): a backup restored over a stale write-ahead
    /// log was malformed, and `/readyz` said ready while every C-STORE was
    /// refused. Not for one-shot commands: a check cut by `close` left its
    /// connection to close after the process, and `recover-files` left
    /// the `-wal` it must fold in.
    ///
    /// Then files under `instances/` that no instance row names are
    /// counted (`unrecorded_files`) and a warning says to run
    /// `recover-files`: a database backup restored over newer files
    /// without it, or a `-wal` deleted after a crash, left instances
    /// acknowledged to their senders unknown to the node, without a word
    /// (a start that finds the database empty says so already).
    pub fn start_integrity_check(&self, own_ae_title: &str) {
        if self.database_file.is_none() {
            return;
        }
        let pool = self.pool.clone();
        let watch = self.database_file_watch.clone();
        let (data_dir, counted) = (self.data_dir.clone(), self.unrecorded_files.clone());
        let own_ae_title = own_ae_title.trim().to_string();
        let database_lost = self.database_lost;
        let check = tokio::spawn(async move {
            quick_check(&pool, &watch).await;
            if !database_lost {
                count_unrecorded_files(&pool, &data_dir, &counted, &own_ae_title).await;
            }
        });
        *self
            .integrity_check
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(check);
    }

    /// Files under `instances/` no instance row named when the start looked.
    pub fn unrecorded_files_found(&self) -> u64 {
        self.unrecorded_files
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        db::note_connection_fault(&e);
        StoreError::Database(e)
    }
}

/// See `Store::start_integrity_check`.
async fn quick_check(pool: &sqlx::SqlitePool, watch: &std::sync::Mutex<(u64, Option<String>)>) {
    let found = match sqlx::query_scalar::<_, String>("PRAGMA quick_check(3)")
        .fetch_all(pool)
        .await
    {
        Ok(lines) if lines == ["ok"] => return,
        Ok(lines) => format!(
            "SQLite's quick_check found it malformed: {}",
            lines.join("; ").replace('\n', " ")
        ),
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("11") | Some("26")) => {
            format!("SQLite's quick_check found it malformed: {e}")
        }
        Err(e) => {
            warn!(error = %e, "the database's integrity check could not run");
            return;
        }
    };
    warn!(why = %found, "the database is damaged");
    let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
    w.1.get_or_insert(found);
}

/// See `Store::start_integrity_check`.
async fn count_unrecorded_files(
    pool: &sqlx::SqlitePool,
    data_dir: &Path,
    counted: &std::sync::atomic::AtomicU64,
    own_ae_title: &str,
) {
    let root = data_dir.join("instances");
    let files = match tokio::task::spawn_blocking(move || recover::files_under(&root)).await {
        Ok(Ok(files)) => files,
        Ok(Err(e)) => {
            warn!(error = %e, "cannot look for files the database does not name");
            return;
        }
        Err(_) => return,
    };
    let mut unrecorded = Vec::new();
    for path in &files {
        let Some(relative) = path.strip_prefix(data_dir).ok().and_then(Path::to_str) else {
            continue;
        };
        match path_recorded(pool, relative).await {
            Ok(true) => {}
            Ok(false) => unrecorded.push(relative.to_string()),
            Err(e) => {
                warn!(error = %e, "cannot look for files the database does not name");
                return;
            }
        }
    }
    // Reports and companion images this node made (its AE title as their
    // source, the product's name on them) are made again, at the same
    // path, when their image is analysed, and `recover-files` leaves them:
    // not counted (after a restore and recover-files, the start warned of
    // them and said to run recover-files, which did nothing). Another
    // node's report, received, is an instance like any other.
    let (dir, listed) = (data_dir.to_path_buf(), std::mem::take(&mut unrecorded));
    let own = own_ae_title.to_string();
    let (listed, remade) = tokio::task::spawn_blocking(move || {
        listed.into_iter().partition::<Vec<_>, _>(|relative| {
            let path = dir.join(relative);
            !(crate::InstanceHeader::read(&path).is_ok_and(|h| h.made_by_the_product())
                && header::source_ae_title(&path).is_some_and(|ae| ae == own))
        })
    })
    .await
    .unwrap_or_default();
    unrecorded = listed;
    if !remade.is_empty() {
        info!(
            files = remade.len(),
            first = %remade[0],
            "reports made by this node under instances/ that the database does not name: made \
             again when their images are analysed"
        );
    }
    counted.store(
        unrecorded.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Some(first) = unrecorded.first() {
        warn!(
            files = unrecorded.len(),
            first = %first,
            "files under instances/ that the database does not name: instances acknowledged \
             to their senders are unknown to the node (a database backup restored over newer \
             files, a -wal deleted after a crash) or a stop fell between a file and its row; \
             stop the node and run `pneumo-node recover-files` (docs/operations.md)"
        );
    }
    // A stop between a file and its row (kill -9 while a report was
    // stored) leaves a file the job run again records moments later: the
    // files counted are looked at again, 5 s then doubling to a minute, until
    // none is left unnamed (the count stayed up, and the warning stood,
    // until the next restart).
    let mut wait = std::time::Duration::from_secs(5);
    while !unrecorded.is_empty() {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(60));
        let mut left = Vec::with_capacity(unrecorded.len());
        for relative in unrecorded {
            let there = data_dir.join(&relative).exists();
            if there && !path_recorded(pool, &relative).await.unwrap_or(false) {
                left.push(relative);
            }
        }
        unrecorded = left;
        counted.store(
            unrecorded.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if unrecorded.is_empty() {
            info!(
                "the files under instances/ the database did not name are now named by it, or gone"
            );
        }
    }
}

/// Whether an instance row names the file at `relative` (to the data
/// directory).
async fn path_recorded(pool: &sqlx::SqlitePool, relative: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM instances WHERE path = ?)")
        .bind(relative)
        .fetch_one(pool)
        .await
}

/// Why the database file is damaged, if it is: shorter than `largest`
/// (its largest size seen, raised here; SQLite never shrinks it, as the
/// node does not vacuum). Only `stat`ed: opening and closing the file
/// would drop the POSIX locks SQLite holds on it (closing any descriptor
/// of a file releases the process's locks on it).
fn database_file_damage(f: &Path, largest: &mut u64) -> Option<String> {
    let size = match std::fs::metadata(f) {
        Ok(m) => m.len(),
        Err(e) => return Some(format!("it cannot be read ({e})")),
    };
    if size < *largest {
        return Some(format!(
            "it shrank from {} to {size} bytes: truncated while the node runs",
            *largest
        ));
    }
    *largest = size;
    None
}

/// Milliseconds since the Unix epoch: the clock of every time in the
/// database.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This build's migrations, embedded.
fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations")
}

/// The migrations applied to the database (version, sqlx's checksum);
/// None without the migrations table (a new database).
async fn applied_migrations(pool: &sqlx::SqlitePool) -> Option<Vec<(i64, Vec<u8>)>> {
    sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success = 1")
        .fetch_all(pool)
        .await
        .ok()
}

/// `MigrationFailed` when the database records a migration as failed, and
/// `MigrationDiffers` when a migration applied to it is not this build's
/// (the start would refuse either), read without writing; migrations this
/// build does not know (a newer build's) are no difference, nor is the
/// development builds' 15 (`adopt_development_migration_15`), nor a
/// database without any.
async fn check_applied_migrations(pool: &sqlx::SqlitePool) -> Result<(), StoreError> {
    let Some(applied) = applied_migrations(pool).await else {
        return Ok(());
    };
    let failed: Option<i64> =
        sqlx::query_scalar("SELECT MIN(version) FROM _sqlx_migrations WHERE success = 0")
            .fetch_one(pool)
            .await
            .ok()
            .flatten();
    if let Some(version) = failed {
        return Err(StoreError::MigrationFailed(version));
    }
    let ours = migrator();
    for (version, checksum) in applied {
        let adopted = version == 15 && is_development_migration_15(&checksum);
        if !adopted
            && ours
                .iter()
                .any(|m| m.version == version && *m.checksum != *checksum)
        {
            return Err(StoreError::MigrationDiffers(version));
        }
    }
    Ok(())
}

/// sqlx's checksum (SHA-384 of the text) of migration 15 as builds
/// 1c202ad to a99d25a wrote it: with the notice image's column, which the
/// released migrations add in 16.
const DEVELOPMENT_MIGRATION_15: &str = "2055f0aa36a46e2f1fe421bd4dc32d4c2beeee1d9c5ad93f45b61bf58355cdc9d87a1758d8fec978763205d7956ba508";

fn is_development_migration_15(checksum: &[u8]) -> bool {
    let hex: String = checksum.iter().map(|b| format!("{b:02x}")).collect();
    hex == DEVELOPMENT_MIGRATION_15
}

/// A database those builds migrated has this build's schema up to 16 by
/// another path (15 with both columns, no 16), and every start refused it
/// (`MigrationDiffers`): no upgrade kept its data. Its records are set to
/// the released migrations' (15's checksum, 16 applied) when its `jobs`
/// has both columns; the migrations after 16 then run as on any database.
async fn adopt_development_migration_15(pool: &sqlx::SqlitePool) -> Result<(), StoreError> {
    let Some(applied) = applied_migrations(pool).await else {
        return Ok(());
    };
    let development_15 = applied
        .iter()
        .any(|(v, c)| *v == 15 && is_development_migration_15(c));
    if !development_15 || applied.iter().any(|(v, _)| *v == 16) {
        return Ok(());
    }
    let columns: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pragma_table_info('jobs') \
         WHERE name IN ('notice_instance_id', 'notice_sc_instance_id')",
    )
    .fetch_one(pool)
    .await?;
    let ours = migrator();
    let released = |version| ours.iter().find(|m| m.version == version);
    let (Some(m15), Some(m16), 2) = (released(15), released(16), columns) else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE _sqlx_migrations SET checksum = ? WHERE version = 15")
        .bind(m15.checksum.as_ref())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations \
         (version, description, installed_on, success, checksum, execution_time) \
         VALUES (16, ?, CURRENT_TIMESTAMP, 1, ?, 0)",
    )
    .bind(m16.description.as_ref())
    .bind(m16.checksum.as_ref())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::warn!(
        "the database was migrated by a development build (its migration 15 added the notice \
         image's column, which the released migration 16 adds): the schema is the same, its \
         migration records are now the released ones"
    );
    Ok(())
}

/// For `check-config`: `MigrationDiffers` or `MigrationFailed` when the
/// SQLite database of `data_dir` holds a migration this build's start
/// would refuse (see `check_applied_migrations`). Nothing
/// said of a database that is not there yet. Read as it is: without its
/// log when it has none (nothing written, not even a `-wal`; see
/// `open_to_read`), through it when it has one (a node running, or one
/// killed: what it holds is the database's newest state).
pub async fn check_database_migrations(
    data_dir: &Path,
    database_url: Option<&str>,
) -> Result<(), StoreError> {
    let Ok(file) = Store::existing_database(data_dir, database_url) else {
        return Ok(());
    };
    let logged = std::fs::metadata(write_ahead_log(&file)).is_ok_and(|m| m.len() > 0);
    let pool = if logged {
        db::connect_to_read_with_log(&file).await?
    } else {
        db::connect_to_read(&file).await?
    };
    let checked = check_applied_migrations(&pool).await;
    pool.close().await;
    checked
}

/// The write-ahead log SQLite keeps beside `database` (`<name>-wal`).
fn write_ahead_log(database: &Path) -> PathBuf {
    database.with_file_name(format!(
        "{}-wal",
        database.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// The spool directory of `data_dir`, unless it is a symbolic link: every
/// regular file in the spool is removed at start (transfers a stop cut),
/// through a link another directory's files.
pub fn refuse_a_linked_spool(data_dir: &Path) -> Result<PathBuf, StoreError> {
    let spool = data_dir.join("spool");
    if std::fs::symlink_metadata(&spool).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(StoreError::SpoolIsALink(spool));
    }
    Ok(spool)
}

/// Why `instances/` cannot take the files received into `spool/`, if it
/// cannot: it is on another file system (a link to, or a mount of, a larger
/// disk), and a received file is moved into place by a rename, which cannot
/// cross file systems (every C-STORE was refused, A700 "Invalid
/// cross-device link", while /readyz said ready).
pub fn instances_elsewhere(data_dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let instances = data_dir.join("instances");
    let spool = data_dir.join("spool");
    let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let received_into = if spool.exists() { &spool } else { data_dir };
    match (device(&instances), device(received_into)) {
        (Some(a), Some(b)) if a != b => Some(format!(
            "{} is on another file system than {}: received files are moved into it by a \
             rename, which cannot cross file systems; put the whole data directory \
             (node.data_dir) on the disk meant for the instances",
            instances.display(),
            received_into.display()
        )),
        _ => None,
    }
}

/// A database error as the log and a sender's Error Comment (64
/// characters) show it: SQLite's "database is locked" came out cut as
/// "database error: error returned from database: (code: 5) database".
fn database_error_in_words(e: &sqlx::Error) -> String {
    match e.as_database_error().and_then(|d| d.code()).as_deref() {
        Some("5") | Some("6") => format!("database is locked (by another process?): {e}"),
        _ => format!("database error: {e}"),
    }
}

/// A file SQLite holds open, known by its device and inode when the store
/// opened: deleted, or replaced by another file at its path, it is no
/// longer what SQLite writes into. Once found so, so until a restart.
struct OpenedFile {
    path: PathBuf,
    identity: Option<(u64, u64)>,
    lost: std::sync::atomic::AtomicBool,
}

impl OpenedFile {
    fn of(path: PathBuf) -> OpenedFile {
        OpenedFile {
            identity: file_identity(&path),
            path,
            lost: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn gone(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.lost.load(Ordering::Relaxed) {
            return true;
        }
        // (unknown at open: nothing to compare with)
        let gone = self.identity.is_some() && file_identity(&self.path) != self.identity;
        if gone {
            self.lost.store(true, Ordering::Relaxed);
        }
        gone
    }
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

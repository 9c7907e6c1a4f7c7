//! Retention: the files of instances whose work is done, removed once
//! nothing has happened to them for a configured time.
//!
//! An instance's file may go when it was received (or made), and last put
//! back if it was, before the cut-off, its job (if any) is finished
//! (`reported`, `delivered`, `failed` or `skipped`) and last changed
//! before the cut-off, and none of its
//! deliveries is owed (`pending`) or waiting for an operator (`parked`) or
//! changed since the cut-off. The row stays, marked `purged_at_ms`.

use std::path::Path;

use tracing::warn;

use crate::{now_ms, Store, StoreError};

/// The rule above, on `instances i`, with the cut-off bound as `?1`.
const REMOVABLE: &str = "i.purged_at_ms IS NULL AND i.received_at_ms < ?1
    AND (i.restored_at_ms IS NULL OR i.restored_at_ms < ?1)
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.instance_id = i.id
        AND (j.state IN ('received', 'queued', 'analysing') OR j.updated_at_ms >= ?1))
    AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.instance_id = i.id
        AND (o.state IN ('pending', 'parked') OR o.updated_at_ms >= ?1))";

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub files: u64,
    pub bytes: u64,
    /// Candidates looked at: fewer than the limit means the pass is done
    /// (files can be fewer when some were already gone).
    pub examined: u64,
}

#[derive(sqlx::FromRow)]
struct Candidate {
    id: i64,
    sop_instance_uid: String,
    path: String,
    file_size: i64,
}

impl Store {
    /// Removes the files of instances that the rule above lets go, given
    /// the cut-off (milliseconds since the epoch), oldest first, at most
    /// `limit` of them; returns what was removed. Call again while it
    /// examines `limit` candidates.
    pub async fn purge_before(&self, cutoff_ms: i64, limit: i64) -> Result<Purged, StoreError> {
        let candidates: Vec<Candidate> = sqlx::query_as(&format!(
            "SELECT i.id, i.sop_instance_uid, i.path, i.file_size FROM instances i
             WHERE {REMOVABLE} ORDER BY i.received_at_ms, i.id LIMIT ?2"
        ))
        .bind(cutoff_ms)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let mut purged = Purged {
            examined: candidates.len() as u64,
            ..Purged::default()
        };
        for c in candidates {
            // Under the instance's ingest lock, and the rule checked again
            // in the same statement: a copy being received now (which may
            // put the file back, or owe it to a destination) goes first or
            // after, never between the mark and the removal.
            let _same_uid = self.ingest_locks.lock(&c.sop_instance_uid).await;
            let marked = sqlx::query(&format!(
                "UPDATE instances SET purged_at_ms = ?2 WHERE id = ?3 AND id IN
                     (SELECT i.id FROM instances i WHERE i.id = ?3 AND {REMOVABLE})"
            ))
            .bind(cutoff_ms)
            .bind(now_ms())
            .bind(c.id)
            .execute(self.pool())
            .await?
            .rows_affected();
            if marked == 0 {
                continue;
            }
            let path = self.data_dir().join(&c.path);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    purged.files += 1;
                    purged.bytes += c.file_size.max(0) as u64;
                    remove_empty_parents(&path, &self.data_dir().join("instances"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Marked but still there: the next pass does not see it
                // again; said now, with the path to remove by hand.
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "retention cannot remove a file")
                }
            }
        }
        Ok(purged)
    }
}

/// The series and study folders a removal left empty go too (never
/// `instances/` itself).
fn remove_empty_parents(file: &Path, instances: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == instances || !d.starts_with(instances) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

//! Files under `instances/` that the database does not name: left by a
//! process killed between an instance's rename and its commit, or found
//! after a database backup older than the files was restored (instances
//! acknowledged after the backup, which their senders will not send again).

use std::path::{Path, PathBuf};

use crate::{Store, StoreError};

impl Store {
    /// The files under `instances/` without an instance row, as paths
    /// relative to the data directory (as the database writes them), in
    /// path order.
    pub async fn unrecorded_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut unrecorded = Vec::new();
        for path in files_under(&self.data_dir.join("instances"))? {
            let Ok(relative) = path.strip_prefix(&self.data_dir) else {
                continue;
            };
            // Paths the node writes are ASCII; any other name is not one of its files.
            let Some(text) = relative.to_str() else {
                unrecorded.push(relative.to_path_buf());
                continue;
            };
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM instances WHERE path = ?)")
                    .bind(text)
                    .fetch_one(self.pool())
                    .await?;
            if !known {
                unrecorded.push(relative.to_path_buf());
            }
        }
        Ok(unrecorded)
    }

    /// Where instance `instance_id`'s file is kept (absolute), unless
    /// retention removed it.
    pub async fn stored_file_of(&self, instance_id: i64) -> Result<Option<PathBuf>, StoreError> {
        Ok(crate::db::instance_path(self.pool(), instance_id)
            .await?
            .map(|relative| self.data_dir.join(relative)))
    }
}

/// Every regular file below `root`, sorted; none when `root` does not
/// exist (a data directory that never stored an instance).
pub(crate) fn files_under(root: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut files = Vec::new();
    if !root.exists() {
        return Ok(files);
    }
    let unreadable = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::ListingFiles { path, source }
    };
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(unreadable(&dir))? {
            let entry = entry.map_err(unreadable(&dir))?;
            let kind = entry.file_type().map_err(unreadable(&entry.path()))?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

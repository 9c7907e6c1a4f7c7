//! The disk guard: below a free-space floor on the data directory, new
//! C-STOREs are refused (A700) and `/readyz` says why; it recovers by itself
//! when space returns.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct StorageStatus {
    pub ok: bool,
    pub writable: bool,
    pub free_bytes: Option<u64>,
    pub floor_bytes: u64,
    pub reason: Option<String>,
}

pub struct DiskGuard {
    pub data_dir: PathBuf,
    pub floor_bytes: u64,
}

impl DiskGuard {
    /// Bytes available to this (unprivileged) process on the data directory's file system.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        free_bytes(&self.data_dir)
    }

    pub fn status(&self) -> StorageStatus {
        // Where the node writes: the database beside the data directory,
        // transfers into spool/, instances renamed into instances/. A
        // spool/ removed under the node is made again at the next store,
        // here too.
        let _ = std::fs::create_dir_all(self.data_dir.join("spool"));
        let not_writable = [
            self.data_dir.clone(),
            self.data_dir.join("spool"),
            self.data_dir.join("instances"),
        ]
        .into_iter()
        .find_map(|dir| tempfile_probe(&dir).err().map(|e| (dir, e)));
        let writable = not_writable.is_none();
        let free = self.free_bytes().ok();
        let elsewhere = pneumo_store::instances_elsewhere(&self.data_dir);
        let reason = match (&not_writable, free) {
            // A full disk is not a permission problem: said so.
            (Some((dir, e)), _) if e.kind() == std::io::ErrorKind::StorageFull => Some(format!(
                "the disk of {} is full ({e}): free space on it (retention.keep_days, when set, removes the files of finished instances)",
                dir.display()
            )),
            (Some((dir, e)), _) => Some(format!("{} is not writable: {e}", dir.display())),
            (_, None) => Some("cannot read free space of the data directory".to_string()),
            // Mounted or linked there while the node runs.
            _ if elsewhere.is_some() => elsewhere,
            (_, Some(f)) if f < self.floor_bytes => Some(format!(
                "free space {} MB is below the floor of {} MB (node.min_free_mb)",
                f / 1_000_000,
                self.floor_bytes / 1_000_000
            )),
            _ => None,
        };
        StorageStatus {
            ok: reason.is_none(),
            writable,
            free_bytes: free,
            floor_bytes: self.floor_bytes,
            reason,
        }
    }

    /// Why a new instance must be refused now, if it must.
    pub fn refusal(&self) -> Option<String> {
        match self.free_bytes() {
            Ok(f) if f < self.floor_bytes => Some(format!(
                "out of disk space: {} MB free, floor {} MB",
                f / 1_000_000,
                self.floor_bytes / 1_000_000
            )),
            Ok(_) => None,
            Err(e) => Some(format!("cannot read free space: {e}")),
        }
    }

    /// Why a transfer admitted above the floor must stop, if it must: the
    /// free space fell below half the floor (the other half stays for the
    /// database, the reports and the transfers admitted beside it).
    pub fn refusal_while_receiving(&self) -> Option<String> {
        let reserve = self.floor_bytes / 2;
        match self.free_bytes() {
            Ok(f) if f < reserve => Some(format!(
                "out of disk space while receiving: {} MB free, below half the floor of {} MB",
                f / 1_000_000,
                self.floor_bytes / 1_000_000
            )),
            _ => None,
        }
    }
}

fn tempfile_probe(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(".write-probe");
    let written = std::fs::write(&probe, b"ok");
    let _ = std::fs::remove_file(&probe);
    written
}

#[cfg(unix)]
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
pub fn free_bytes(_path: &std::path::Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

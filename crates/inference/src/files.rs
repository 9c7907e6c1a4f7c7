//! The model's files as they were when it was loaded.
//!
//! ONNX Runtime maps a model's external-data file into memory: a file
//! copied over it while the node runs changes the weights under the
//! running session (a mix of two models, reported under the first one's
//! contract). A model file replaced on disk is not what runs either. So
//! the files are stamped at load and looked at around each batch. A stamp
//! that moved is not yet a change: `chmod`, `chown`, `touch`, a backup
//! restoring attributes or a deployment writing the same bytes move it
//! too. The files are then hashed and compared with their hash at load;
//! only other bytes (or a hash not taken yet) stop the model, until the
//! node is restarted.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// What identifies a file's content cheaply: its size, modification time
/// and (on Unix) device, inode and change time (which every write moves,
/// also one that sets the modification time back, as `cp -p` does).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    file: (u64, u64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let (file, changed) = {
            use std::os::unix::fs::MetadataExt;
            ((m.dev(), m.ino()), (m.ctime(), m.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let (file, changed) = ((0, 0), (0, 0));
        Some(Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            file,
            changed,
        })
    }
}

type Stamps = Vec<Option<Stamp>>;

/// What the last looks found: the stamps under which each file holds
/// the loaded bytes, and the last stamps found with other bytes (with
/// why), so that a file is hashed again only when its stamp moves again.
#[derive(Debug)]
struct Seen {
    same_bytes: Stamps,
    other_bytes: Option<(Stamps, String)>,
}

/// The files' hashes as loaded: each file's, and the one over all of them
/// one after the other.
#[derive(Debug, Clone)]
struct Hashes {
    each: Vec<String>,
    all: String,
}

/// The model file and its external-data files, stamped.
#[derive(Debug)]
pub(crate) struct ModelFiles {
    paths: Vec<PathBuf>,
    loaded: Stamps,
    /// Their hashes as loaded, once taken; `None` inside when the files
    /// moved while they were hashed (nothing to compare with then).
    loaded_hashes: OnceLock<Option<Hashes>>,
    seen: Mutex<Seen>,
}

const MOVED_WHILE_HASHED: &str = "the files changed while they were hashed";

impl ModelFiles {
    /// Stamps `model` and the external-data `locations` its initializers
    /// name (relative to its directory, as ONNX Runtime reads them).
    pub(crate) fn stamp<'a>(model: &Path, locations: impl IntoIterator<Item = &'a String>) -> Self {
        let dir = model.parent().unwrap_or(Path::new("."));
        let paths: Vec<PathBuf> = std::iter::once(model.to_path_buf())
            .chain(locations.into_iter().map(|l| dir.join(l)))
            .collect();
        let loaded: Stamps = paths.iter().map(|p| Stamp::of(p)).collect();
        ModelFiles {
            paths,
            seen: Mutex::new(Seen {
                same_bytes: loaded.clone(),
                other_bytes: None,
            }),
            loaded,
            loaded_hashes: OnceLock::new(),
        }
    }

    /// Hashes the files as loaded (blocking) and keeps the hashes for
    /// later looks. Returns the SHA-256 over the files' contents one after
    /// the other: of a model in one file, what `sha256sum` prints for it.
    /// An error when they cannot be read, or moved while they were read.
    pub(crate) fn sha256(&self) -> std::io::Result<String> {
        use sha2::{Digest, Sha256};
        if let Some(known) = self.loaded_hashes.get() {
            return known
                .as_ref()
                .map(|h| h.all.clone())
                .ok_or_else(|| std::io::Error::other(MOVED_WHILE_HASHED));
        }
        let mut all = Sha256::new();
        let mut each = Vec::new();
        for (path, stamp) in self.paths.iter().zip(&self.loaded) {
            let mut one = Sha256::new();
            let mut file = std::fs::File::open(path)?;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut file, &mut buffer)?;
                if n == 0 {
                    break;
                }
                one.update(&buffer[..n]);
                all.update(&buffer[..n]);
            }
            each.push(format!("{:x}", one.finalize()));
            let moved = Stamp::of(path) != *stamp;
            if moved {
                self.loaded_hashes.get_or_init(|| None);
                return Err(std::io::Error::other(MOVED_WHILE_HASHED));
            }
        }
        let hashes = Hashes {
            each,
            all: format!("{:x}", all.finalize()),
        };
        let kept = self.loaded_hashes.get_or_init(|| Some(hashes));
        kept.as_ref()
            .map(|h| h.all.clone())
            .ok_or_else(|| std::io::Error::other(MOVED_WHILE_HASHED))
    }

    /// The first file that no longer holds the bytes that were loaded,
    /// said in words. Blocking: a moved stamp costs a hash of that file.
    pub(crate) fn changed(&self) -> Option<String> {
        let now: Stamps = self.paths.iter().map(|p| Stamp::of(p)).collect();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now == seen.same_bytes {
            return None;
        }
        if let Some((stamps, why)) = &seen.other_bytes {
            if *stamps == now {
                return Some(why.clone());
            }
        }
        let loaded = self.loaded_hashes.get().cloned().flatten();
        for (i, path) in self.paths.iter().enumerate() {
            if now[i] == seen.same_bytes[i] {
                continue;
            }
            let how = match (&now[i], &loaded) {
                (None, _) => "it is gone",
                (Some(_), None) => "before its bytes could be compared with those loaded",
                (Some(stamp), Some(hashes)) => {
                    if sha256_of(path, stamp).as_ref() == Some(&hashes.each[i]) {
                        seen.same_bytes[i] = now[i].clone();
                        continue;
                    }
                    "its bytes are no longer those loaded"
                }
            };
            let why = format!(
                "the model's file {} changed on disk after the model was loaded ({how})",
                path.display()
            );
            seen.other_bytes = Some((now, why.clone()));
            return Some(why);
        }
        seen.other_bytes = None;
        None
    }
}

/// SHA-256 of one file, taken while its stamp stays `stamp`.
fn sha256_of(path: &Path, stamp: &Stamp) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).ok()?, &mut hasher).ok()?;
    let hex = format!("{:x}", hasher.finalize());
    (Stamp::of(path).as_ref() == Some(stamp)).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after_a_tick() {
        // coarse file-system clocks: let the change time move
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    #[test]
    fn other_bytes_written_replaced_or_removed_are_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        let data = dir.path().join("m.onnx.data");
        std::fs::write(&model, b"graph").unwrap();
        std::fs::write(&data, b"weights").unwrap();
        let stamped = || {
            let files = ModelFiles::stamp(&model, [&"m.onnx.data".to_string()]);
            files.sha256().unwrap();
            files
        };
        let files = stamped();
        assert_eq!(files.changed(), None);
        // rewritten in place, same size (as `cp` over it does)
        after_a_tick();
        std::fs::write(&data, b"WEIGHTS").unwrap();
        let why = files.changed().unwrap();
        assert!(why.contains("m.onnx.data changed on disk"), "{why}");
        assert!(why.contains("no longer those loaded"), "{why}");
        // asked again without a move: the same answer, not hashed again
        assert_eq!(files.changed().unwrap(), why);
        std::fs::write(&data, b"weights").unwrap();
        let files = stamped();
        // rewritten with the modification time set back (`cp -p`)
        let mtime = std::fs::metadata(&data).unwrap().modified().unwrap();
        after_a_tick();
        std::fs::write(&data, b"weighty").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&data)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(files.changed().is_some());
        std::fs::write(&data, b"weights").unwrap();
        let files = stamped();
        // replaced by another file under its name
        let other = dir.path().join("other");
        std::fs::write(&other, b"Graph").unwrap();
        std::fs::rename(&other, &model).unwrap();
        assert!(files.changed().unwrap().contains("m.onnx changed"));
        let files = ModelFiles::stamp(&model, []);
        files.sha256().unwrap();
        std::fs::remove_file(&model).unwrap();
        assert!(files.changed().unwrap().contains("it is gone"));
    }

    #[test]
    fn the_same_bytes_under_a_moved_stamp_are_no_change() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"graph").unwrap();
        let files = ModelFiles::stamp(&model, []);
        files.sha256().unwrap();
        // chmod: only the change time moves
        after_a_tick();
        std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(files.changed(), None);
        // the same bytes written over it, then a copy renamed over it
        after_a_tick();
        std::fs::write(&model, b"graph").unwrap();
        assert_eq!(files.changed(), None);
        let copy = dir.path().join("copy");
        std::fs::write(&copy, b"graph").unwrap();
        std::fs::rename(&copy, &model).unwrap();
        assert_eq!(files.changed(), None);
        // other bytes, then the loaded ones back
        after_a_tick();
        std::fs::write(&model, b"Graph").unwrap();
        assert!(files.changed().is_some());
        after_a_tick();
        std::fs::write(&model, b"graph").unwrap();
        assert_eq!(files.changed(), None);
    }

    #[test]
    fn a_move_before_the_hash_was_taken_is_a_change() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"graph").unwrap();
        let files = ModelFiles::stamp(&model, []);
        after_a_tick();
        std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o600)).unwrap();
        // the files moved since they were stamped: no hash of them as loaded
        assert!(files.sha256().is_err());
        assert!(files
            .changed()
            .unwrap()
            .contains("before its bytes could be compared"));
    }
}

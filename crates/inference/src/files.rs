//! The model's files as they were when it was loaded.
//!
//! ONNX Runtime maps a model's external-data file into memory: a file
//! copied over it while the node runs changes the weights under the
//! running session (a mix of two models, reported under the first one's
//! contract). A model file replaced on disk is not what runs either. So
//! the files are stamped at load and looked at around each batch, by path
//! (what a restart would load) and through descriptors held open since
//! the load (what the session maps: after an identical copy was renamed
//! into place, the old file, still mapped, could be written through a
//! hard link while the path looked unchanged).
//!
//! A stamp that moved between batches is not yet a change: `chmod`,
//! `chown`, `touch`, a backup restoring attributes or a deployment
//! renaming the same bytes into place move it too. That file is then
//! hashed and compared with its hash at load; only other bytes (or a move
//! before the first hash was taken) stop the model, until the node is
//! restarted or the files hold the loaded bytes again. A stamp that moves
//! during a batch drops the batch's results whatever the bytes are then:
//! a change made and undone within one batch fed it other weights.

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
        Some(Stamp::from(std::fs::metadata(path).ok()?))
    }

    fn of_open(file: &std::fs::File) -> Option<Stamp> {
        Some(Stamp::from(file.metadata().ok()?))
    }

    fn from(m: std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let (file, changed) = {
            use std::os::unix::fs::MetadataExt;
            ((m.dev(), m.ino()), (m.ctime(), m.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let (file, changed) = ((0, 0), (0, 0));
        Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            file,
            changed,
        }
    }
}

/// The stamps of every file, by path and through the held descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Look {
    by_path: Vec<Option<Stamp>>,
    held: Vec<Option<Stamp>>,
}

/// What the last looks found: the stamps under which each file holds
/// the loaded bytes, and the last look found with other bytes (with why),
/// so that a file is hashed again only when its stamp moves again.
#[derive(Debug)]
struct Seen {
    same_bytes: Look,
    other_bytes: Option<(Look, String)>,
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
    /// The files as opened at load (None: could not be opened).
    held: Vec<Option<std::fs::File>>,
    loaded: Look,
    /// Their hashes as loaded, once taken; `None` inside when the files
    /// moved while they were hashed (nothing to compare with then).
    loaded_hashes: OnceLock<Option<Hashes>>,
    seen: Mutex<Seen>,
}

const MOVED_WHILE_HASHED: &str = "the files changed while they were hashed";

impl ModelFiles {
    /// Stamps `model` and the external-data `locations` its initializers
    /// name (relative to its directory, as ONNX Runtime reads them), and
    /// keeps them open.
    pub(crate) fn stamp<'a>(model: &Path, locations: impl IntoIterator<Item = &'a String>) -> Self {
        let dir = model.parent().unwrap_or(Path::new("."));
        let paths: Vec<PathBuf> = std::iter::once(model.to_path_buf())
            .chain(locations.into_iter().map(|l| dir.join(l)))
            .collect();
        let held: Vec<Option<std::fs::File>> =
            paths.iter().map(|p| std::fs::File::open(p).ok()).collect();
        let mut files = ModelFiles {
            paths,
            held,
            loaded: Look {
                by_path: Vec::new(),
                held: Vec::new(),
            },
            loaded_hashes: OnceLock::new(),
            seen: Mutex::new(Seen {
                same_bytes: Look {
                    by_path: Vec::new(),
                    held: Vec::new(),
                },
                other_bytes: None,
            }),
        };
        files.loaded = files.look();
        files
            .seen
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .same_bytes = files.loaded.clone();
        files
    }

    /// The files' stamps now (a few `stat` calls).
    pub(crate) fn look(&self) -> Look {
        Look {
            by_path: self.paths.iter().map(|p| Stamp::of(p)).collect(),
            held: self
                .held
                .iter()
                .map(|f| f.as_ref().and_then(Stamp::of_open))
                .collect(),
        }
    }

    /// Hashes the files as loaded (blocking, through the held
    /// descriptors) and keeps the hashes for later looks. Returns the
    /// SHA-256 over the files' contents one after the other: of a model in
    /// one file, what `sha256sum` prints for it. An error when they cannot
    /// be read, or moved while they were read.
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
        for (i, path) in self.paths.iter().enumerate() {
            let file = self.held[i].as_ref().ok_or_else(|| {
                std::io::Error::other(format!("{} could not be opened", path.display()))
            })?;
            let mut one = Sha256::new();
            read_all(file, |bytes| {
                one.update(bytes);
                all.update(bytes);
            })?;
            each.push(format!("{:x}", one.finalize()));
            let moved = Stamp::of(path) != self.loaded.by_path[i]
                || Stamp::of_open(file) != self.loaded.held[i];
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

    /// Each file with its SHA-256 as loaded (as `sha256sum` prints it for
    /// that file alone), once hashed.
    pub(crate) fn file_hashes(&self) -> Vec<(PathBuf, Option<String>)> {
        let known = self.loaded_hashes.get().cloned().flatten();
        self.paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), known.as_ref().map(|h| h.each[i].clone())))
            .collect()
    }

    /// The first file that no longer holds the bytes that were loaded,
    /// said in words. Blocking: a moved stamp costs a hash of that file.
    pub(crate) fn changed(&self) -> Option<String> {
        self.changed_at(&self.look())
    }

    /// Before a run: its look, or why the model may not run.
    pub(crate) fn before_run(&self) -> Result<Look, String> {
        let look = self.look();
        match self.changed_at(&look) {
            Some(why) => Err(why),
            None => Ok(look),
        }
    }

    /// After a run: why its results are dropped, when a stamp moved while
    /// it ran (whatever the bytes are now: a change undone within the run
    /// fed it other weights).
    pub(crate) fn after_run(&self, before: &Look) -> Result<(), String> {
        let now = self.look();
        if now == *before {
            return Ok(());
        }
        let moved = self
            .paths
            .iter()
            .enumerate()
            .find(|(i, _)| now.by_path[*i] != before.by_path[*i] || now.held[*i] != before.held[*i])
            .map(|(_, p)| p.display().to_string())
            .unwrap_or_default();
        Err(format!(
            "the model's file {moved} changed on disk while the model ran: its results are \
             dropped, and the images analysed again"
        ))
    }

    fn changed_at(&self, now: &Look) -> Option<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *now == seen.same_bytes {
            return None;
        }
        if let Some((look, why)) = &seen.other_bytes {
            if look == now {
                return Some(why.clone());
            }
        }
        let loaded = self.loaded_hashes.get().cloned().flatten();
        for (i, path) in self.paths.iter().enumerate() {
            let path_moved = now.by_path[i] != seen.same_bytes.by_path[i];
            let held_moved = now.held[i] != seen.same_bytes.held[i];
            if !path_moved && !held_moved {
                continue;
            }
            let how = match (&now.by_path[i], &loaded) {
                (None, _) => "it is gone",
                (Some(_), None) => "before its bytes could be compared with those loaded",
                (Some(stamp), Some(hashes)) => {
                    let started = std::time::Instant::now();
                    let want = Some(&hashes.each[i]);
                    let same = (!path_moved || sha256_of_path(path, stamp).as_ref() == want)
                        && (!held_moved || self.sha256_of_held(i, &now.held[i]).as_ref() == want);
                    tracing::info!(
                        file = %path.display(),
                        same_bytes = same,
                        ms = started.elapsed().as_millis() as u64,
                        "a model file's stamp moved: its bytes were compared with those loaded"
                    );
                    if same {
                        seen.same_bytes.by_path[i] = now.by_path[i].clone();
                        seen.same_bytes.held[i] = now.held[i].clone();
                        continue;
                    }
                    if held_moved && !path_moved {
                        "the file the running model was loaded from, still open, was written"
                    } else {
                        "its bytes are no longer those loaded"
                    }
                }
            };
            let why = format!(
                "the model's file {} changed on disk after the model was loaded ({how})",
                path.display()
            );
            seen.other_bytes = Some((now.clone(), why.clone()));
            return Some(why);
        }
        if seen.other_bytes.take().is_some() {
            tracing::info!("the model's files hold the loaded bytes again: analyses go on");
        }
        None
    }

    /// SHA-256 of held file `i`, taken while its stamp stays `stamp`.
    fn sha256_of_held(&self, i: usize, stamp: &Option<Stamp>) -> Option<String> {
        let file = self.held[i].as_ref()?;
        let hex = sha256_of(file)?;
        (Stamp::of_open(file) == *stamp).then_some(hex)
    }
}

/// Feeds `file`'s bytes from its start to `take`, without moving its
/// offset (the file is shared between looks).
fn read_all(file: &std::fs::File, mut take: impl FnMut(&[u8])) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buffer, at)?;
        if n == 0 {
            return Ok(());
        }
        take(&buffer[..n]);
        at += n as u64;
    }
}

/// SHA-256 of one file by its path, taken while its stamp stays `stamp`.
fn sha256_of_path(path: &Path, stamp: &Stamp) -> Option<String> {
    let hex = sha256_of(&std::fs::File::open(path).ok()?)?;
    (Stamp::of(path).as_ref() == Some(stamp)).then_some(hex)
}

/// SHA-256 of an open file's bytes (lower-case hex).
fn sha256_of(file: &std::fs::File) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    read_all(file, |bytes| hasher.update(bytes)).ok()?;
    Some(format!("{:x}", hasher.finalize()))
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
    fn the_loaded_file_is_watched_after_a_copy_was_renamed_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"graph").unwrap();
        let link = dir.path().join("snapshot");
        std::fs::hard_link(&model, &link).unwrap();
        let files = ModelFiles::stamp(&model, []);
        files.sha256().unwrap();
        // the same bytes renamed into place: the path is a new file, the
        // loaded one lives on (mapped by the session, and here linked)
        after_a_tick();
        let copy = dir.path().join("copy");
        std::fs::write(&copy, b"graph").unwrap();
        std::fs::rename(&copy, &model).unwrap();
        assert_eq!(files.changed(), None);
        // the loaded file written through its other name: the path is
        // unchanged, the running model's weights are not
        after_a_tick();
        std::fs::write(&link, b"Graph").unwrap();
        let why = files.changed().unwrap();
        assert!(why.contains("still open, was written"), "{why}");
    }

    #[test]
    fn a_change_undone_during_a_run_drops_its_results() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"graph").unwrap();
        let files = ModelFiles::stamp(&model, []);
        files.sha256().unwrap();
        let before = files.before_run().unwrap();
        after_a_tick();
        std::fs::write(&model, b"Graph").unwrap();
        after_a_tick();
        std::fs::write(&model, b"graph").unwrap();
        // the bytes are the loaded ones again, and the run saw others
        let why = files.after_run(&before).unwrap_err();
        assert!(why.contains("changed on disk while the model ran"), "{why}");
        assert_eq!(files.changed(), None);
        let before = files.before_run().unwrap();
        assert_eq!(files.after_run(&before), Ok(()));
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

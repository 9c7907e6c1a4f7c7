//! The model's files as they were when it was loaded.
//!
//! ONNX Runtime maps a model's external-data file into memory: a file
//! copied over it while the node runs changes the weights under the
//! running session (a mix of two models, reported under the first one's
//! contract). A model file replaced on disk is not what runs either. So
//! the files are stamped at load and looked at around each batch: once one
//! changed, the model no longer runs until the node is restarted.

use std::path::{Path, PathBuf};
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

/// The model file and its external-data files, stamped.
#[derive(Debug)]
pub(crate) struct ModelFiles {
    stamped: Vec<(PathBuf, Option<Stamp>)>,
}

impl ModelFiles {
    /// Stamps `model` and the external-data `locations` its initializers
    /// name (relative to its directory, as ONNX Runtime reads them).
    pub(crate) fn stamp<'a>(model: &Path, locations: impl IntoIterator<Item = &'a String>) -> Self {
        let dir = model.parent().unwrap_or(Path::new("."));
        let paths =
            std::iter::once(model.to_path_buf()).chain(locations.into_iter().map(|l| dir.join(l)));
        ModelFiles {
            stamped: paths.map(|p| (p.clone(), Stamp::of(&p))).collect(),
        }
    }

    /// SHA-256 over the files' contents, one after the other: of a model
    /// in one file, what `sha256sum` prints for it.
    pub(crate) fn sha256(&self) -> std::io::Result<String> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for (path, _) in &self.stamped {
            std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
        }
        Ok(format!("{:x}", hasher.finalize()))
    }

    /// The first file that is no longer as it was stamped, said in words.
    pub(crate) fn changed(&self) -> Option<String> {
        self.stamped.iter().find_map(|(path, stamp)| {
            (Stamp::of(path) != *stamp).then(|| {
                format!(
                    "the model's file {} changed on disk after the model was loaded",
                    path.display()
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_rewritten_replaced_or_removed_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        let data = dir.path().join("m.onnx.data");
        std::fs::write(&model, b"graph").unwrap();
        std::fs::write(&data, b"weights").unwrap();
        let files = ModelFiles::stamp(&model, [&"m.onnx.data".to_string()]);
        assert_eq!(files.changed(), None);
        // rewritten in place, same size (as `cp` over it does)
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&data, b"WEIGHTS").unwrap();
        assert!(files
            .changed()
            .unwrap()
            .contains("m.onnx.data changed on disk"));
        let files = ModelFiles::stamp(&model, [&"m.onnx.data".to_string()]);
        // rewritten with the modification time set back (`cp -p`)
        let mtime = std::fs::metadata(&data).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&data, b"weights").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&data)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(files.changed().is_some());
        let files = ModelFiles::stamp(&model, [&"m.onnx.data".to_string()]);
        // replaced by another file under its name
        let other = dir.path().join("other");
        std::fs::write(&other, b"graph").unwrap();
        std::fs::rename(&other, &model).unwrap();
        assert!(files.changed().unwrap().contains("m.onnx changed"));
        let files = ModelFiles::stamp(&model, []);
        std::fs::remove_file(&model).unwrap();
        assert!(files.changed().is_some());
    }
}

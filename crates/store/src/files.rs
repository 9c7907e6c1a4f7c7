//! Instance files: where they go and how they get there durably.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::header::InstanceHeader;

/// `instances/<study>/<series>/<sop>.dcm`, relative to the data directory;
/// with `conflict_sha` (a second data set under the same SOP Instance UID)
/// `<sop>.<first 16 hex digits of its SHA-256>.dcm` beside the first.
pub fn instance_path(header: &InstanceHeader, conflict_sha: Option<&str>) -> PathBuf {
    let file = match conflict_sha {
        None => format!("{}.dcm", path_component(&header.sop_instance_uid)),
        Some(sha) => format!(
            "{}.{}.dcm",
            path_component(&header.sop_instance_uid),
            &sha[..16.min(sha.len())]
        ),
    };
    [
        "instances",
        &path_component(&header.study_instance_uid),
        &path_component(&header.series_instance_uid),
        &file,
    ]
    .iter()
    .collect()
}

/// A UID as a file name. Valid UIDs (digits and dots) are used as they are;
/// anything else (a peer can send any bytes) becomes `x` + a hash of it, so
/// that no value can leave the directory or collide with a valid UID.
fn path_component(uid: &str) -> String {
    let valid = !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && Path::new(uid)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if valid {
        uid.to_string()
    } else {
        format!("x{}", &hex::encode(Sha256::digest(uid.as_bytes()))[..32])
    }
}

/// The length and SHA-256 of a Part-10 file's data set: the bytes after
/// its File Meta group, whose length its first element, (0002,0000) UL,
/// gives (what a received instance's SHA-256 is taken over). Err when the
/// file cannot be read or has no such header (a damaged file).
pub fn dataset_digest(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    let mut head = [0u8; 144];
    file.read_exact(&mut head)?;
    let group_length_tag = [0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00];
    if &head[128..132] != b"DICM" || head[132..140] != group_length_tag {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no Part-10 header with a File Meta group length",
        ));
    }
    let group_length = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    file.seek(SeekFrom::Start(144 + u64::from(group_length)))?;
    let mut hasher = Sha256::new();
    let len = std::io::copy(&mut std::io::BufReader::new(file), &mut hasher)?;
    Ok((len, hasher.finalize().into()))
}

/// fsyncs the spool file, renames it to `target` and fsyncs the directories
/// it touched, so that the file is there after a power cut. Returns its size.
pub fn persist(spool: &Path, target: &Path) -> std::io::Result<u64> {
    // The operator needs the place, not only "Permission denied".
    persist_here(spool, target).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{} (moving it to {})", e, target.display()),
        )
    })
}

fn persist_here(spool: &Path, target: &Path) -> std::io::Result<u64> {
    let file = File::open(spool)?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    drop(file);
    let parent = target
        .parent()
        .ok_or_else(|| std::io::Error::other("instance path without a directory"))?;
    let created = create_dirs(parent)?;
    std::fs::rename(spool, target)?;
    sync_dir(parent)?;
    // A directory created now must itself be recorded in its parent.
    for dir in created {
        if let Some(p) = dir.parent() {
            sync_dir(p)?;
        }
    }
    Ok(size)
}

/// Creates `dir` and its missing ancestors; returns those it created.
fn create_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    std::fs::create_dir_all(dir)?;
    Ok(missing)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes every file in the spool directory; returns how many.
pub fn clear_spool(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(study: &str, series: &str, sop: &str) -> InstanceHeader {
        InstanceHeader {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
            sop_instance_uid: sop.into(),
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            modality: None,
            body_part_examined: None,
            view_position: None,
            accession_number: None,
            patient_age_years: None,
            image_type: None,
            presentation_intent_type: None,
            conversion_type: None,
            manufacturer_model_name: None,
        }
    }

    #[test]
    fn paths_follow_study_series_sop() {
        let p = instance_path(&header("1.2", "1.2.3", "1.2.3.4"), None);
        assert_eq!(p, PathBuf::from("instances/1.2/1.2.3/1.2.3.4.dcm"));
        let p = instance_path(
            &header("1.2", "1.2.3", "1.2.3.4"),
            Some("abcdef0123456789ffff"),
        );
        assert_eq!(
            p,
            PathBuf::from("instances/1.2/1.2.3/1.2.3.4.abcdef0123456789.dcm")
        );
    }

    #[test]
    fn hostile_uids_cannot_escape() {
        let p = instance_path(&header("..", "../../etc", "/passwd"), None);
        let s = p.to_string_lossy();
        assert!(!s.contains(".."), "{s}");
        assert_eq!(p.components().count(), 4);
        assert!(p.starts_with("instances"));
    }

    #[test]
    fn persist_moves_and_creates_directories() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("x.part");
        std::fs::write(&spool, b"data").unwrap();
        let target = dir.path().join("a/b/c.dcm");
        assert_eq!(persist(&spool, &target).unwrap(), 4);
        assert!(!spool.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"data");
        std::fs::write(dir.path().join("y.part"), b"1").unwrap();
        assert_eq!(clear_spool(dir.path()), 1);
    }
}

//! `pneumo-node recover-files`: records the files under `instances/` that
//! the database does not name, as if they had just been received, so that
//! they are analysed and forwarded by the next `serve`.
//!
//! Such files come from a database backup restored over newer files (the
//! instances acknowledged after the backup: their senders will not send
//! them again), or from a process killed between an instance's rename and
//! its commit. Run with the node stopped: the store's lock refuses a second
//! process on the data directory.

use std::path::Path;

use anyhow::{Context, Result};
use pneumo_dimse::FileToSend;
use pneumo_store::{Incoming, IngestOutcome, Store};

use crate::config::Config;

pub async fn run(config: &Config, store: Store, dry_run: bool) -> Result<()> {
    let data_dir = config.node.data_dir.clone();
    let files = store
        .unrecorded_files()
        .await
        .context("listing the files under instances/")?;
    let node_ae = config.dicom.ae_title.trim();
    let (mut recorded, mut reports, mut failed) = (0, 0, 0);
    for relative in &files {
        let path = data_dir.join(relative);
        let shown = relative.display();
        let meta = match FileToSend::inspect(&path) {
            Ok(meta) => meta,
            Err(why) => {
                println!("FAILED   {shown}: {why} (left in place)");
                failed += 1;
                continue;
            }
        };
        // Reports and companion images this node made carry its own AE
        // title and the product's name: they are made again, with the same
        // UIDs, when their image is analysed; recorded as received they
        // would be routed as images. The AE title alone is not enough: the
        // node's own `store` sends originals under it.
        if meta.source_ae_title == node_ae && made_by_the_product(&path) {
            println!("LEFT     {shown}: made by this node (made again when its image is analysed)");
            reports += 1;
            continue;
        }
        if dry_run {
            println!(
                "FOUND    {shown}: {} from {}",
                meta.sop_instance_uid,
                display_ae(&meta.source_ae_title)
            );
            recorded += 1;
            continue;
        }
        match record(config, &store, &path, &meta).await {
            Ok(outcome) => {
                println!(
                    "RECORDED {shown}: {} from {} ({outcome})",
                    meta.sop_instance_uid,
                    display_ae(&meta.source_ae_title)
                );
                recorded += 1;
            }
            Err(why) => {
                println!("FAILED   {shown}: {why:#} (left in place)");
                failed += 1;
            }
        }
    }
    if !dry_run {
        // What a lost database left unknown is known now (a file that is no
        // instance was named above and is the operator's).
        store
            .clear_database_lost()
            .await
            .context("recording that the files are recovered")?;
    }
    // Closed, so SQLite folds the write-ahead log into the database file
    // and removes it: left behind, it held what was recorded (a copy of
    // the main file alone lacked it) and was replayed over any database
    // copied in afterwards.
    store.close_and_wait_for_the_log().await;
    let verb = if dry_run { "to record" } else { "recorded" };
    println!(
        "{} files the database did not name: {recorded} {verb}, {reports} made by this node left, {failed} failed",
        files.len()
    );
    if failed > 0 {
        anyhow::bail!("{failed} files could not be recorded");
    }
    Ok(())
}

/// Whether the file is a report or image a node made (the product's name
/// on it).
fn made_by_the_product(path: &Path) -> bool {
    pneumo_store::InstanceHeader::read(path).is_ok_and(|h| h.made_by_the_product())
}

fn display_ae(ae: &str) -> &str {
    if ae.is_empty() {
        "an unknown caller"
    } else {
        ae
    }
}

/// Stores a copy of the file through the ingest path, as a C-STORE would:
/// its row, its job, its forwards under the routing now configured. The
/// copy is renamed over the file (the same path for the same UIDs), or the
/// file is removed once the store holds its data set under another path.
async fn record(
    config: &Config,
    store: &Store,
    path: &Path,
    meta: &FileToSend,
) -> Result<&'static str> {
    let spool = store
        .spool_dir()
        .join(format!("recover-{}.part", uuid::Uuid::new_v4()));
    std::fs::copy(path, &spool).with_context(|| format!("copying to {}", spool.display()))?;
    let result = async {
        let (dataset_len, dataset_sha256) =
            pneumo_store::dataset_digest(&spool).context("reading the data set")?;
        let incoming = Incoming {
            spool_path: spool.clone(),
            sop_class_uid: meta.sop_class_uid.clone(),
            sop_instance_uid: meta.sop_instance_uid.clone(),
            transfer_syntax_uid: meta.transfer_syntax.clone(),
            dataset_len,
            dataset_sha256,
            calling_ae: meta.source_ae_title.clone(),
            peer_address: "recovered from its file".to_string(),
            generated: false,
        };
        let outcome = store
            .ingest(&incoming, |h| {
                config
                    .routing
                    .forward_destinations(h, &meta.source_ae_title)
            })
            .await?;
        Ok::<_, anyhow::Error>(outcome)
    }
    .await;
    let _ = std::fs::remove_file(&spool);
    let outcome = result?;
    let (IngestOutcome::Stored { instance_id, .. }
    | IngestOutcome::StoredConflicting { instance_id, .. }
    | IngestOutcome::Duplicate { instance_id, .. }) = outcome;
    // Removed only once the store holds its data set in another file.
    let stored = store.stored_file_of(instance_id).await?;
    if stored.is_some_and(|kept| kept != path && kept.exists()) {
        std::fs::remove_file(path)
            .with_context(|| format!("removing {} (now stored elsewhere)", path.display()))?;
    }
    Ok(match outcome {
        IngestOutcome::Stored { .. } => "stored, its job received",
        IngestOutcome::StoredConflicting { .. } => "stored beside another copy of its UID",
        IngestOutcome::Duplicate { .. } => "the same data set was already stored",
    })
}

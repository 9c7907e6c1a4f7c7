//! Retention: the node is a cache beside the PACS, not an archive. With
//! `retention.keep_days` set, the files of instances whose work is done
//! (analysed, delivered, nothing owed or parked) and that nothing has
//! happened to for that many days are removed; their rows stay.

use std::sync::Arc;
use std::time::Duration;

use pneumo_store::Store;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Days an instance's file is kept after the last thing that happened
    /// to it (received, analysed, delivered); 0 keeps every file.
    pub keep_days: u32,
    /// Seconds between two passes (the first runs a minute after start).
    pub interval_s: u64,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            keep_days: 0,
            interval_s: 3600,
        }
    }
}

/// Files removed per statement batch: a pass over a year of backlog
/// releases the database between batches.
const BATCH: i64 = 500;

pub struct Retention {
    pub store: Arc<Store>,
    pub settings: RetentionSection,
    pub metrics: Arc<Metrics>,
    pub stopping: watch::Receiver<bool>,
}

impl Retention {
    pub async fn run(mut self) {
        if self.settings.keep_days == 0 {
            return;
        }
        let keep = Duration::from_secs(u64::from(self.settings.keep_days) * 86_400);
        let mut next = Duration::from_secs(60.min(self.settings.interval_s));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = self.stopping.wait_for(|s| *s) => return,
            }
            next = Duration::from_secs(self.settings.interval_s);
            self.pass(keep).await;
        }
    }

    async fn pass(&self, keep: Duration) {
        let cutoff = pneumo_store::now_ms() - keep.as_millis() as i64;
        let mut total = pneumo_store::Purged::default();
        loop {
            if *self.stopping.borrow() {
                break;
            }
            match self.store.purge_before(cutoff, BATCH).await {
                Ok(p) => {
                    total.files += p.files;
                    total.bytes += p.bytes;
                    Metrics::inc(&self.metrics.retention_files_removed, p.files);
                    Metrics::inc(&self.metrics.retention_bytes_removed, p.bytes);
                    if p.examined < BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "retention pass stopped; the next one carries on");
                    break;
                }
            }
        }
        if total.files > 0 {
            info!(
                files = total.files,
                bytes = total.bytes,
                keep_days = self.settings.keep_days,
                "retention removed the files of finished instances"
            );
        }
    }
}

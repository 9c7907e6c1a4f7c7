//! The job queue: one job per received instance, driven by its state.

use crate::{now_ms, InstanceHeader, Store, StoreError};

/// Jobs per state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobCount {
    pub state: String,
    pub count: i64,
}

#[derive(sqlx::FromRow)]
struct ReceivedJob {
    id: i64,
    sop_class_uid: String,
    sop_instance_uid: String,
    study_instance_uid: String,
    series_instance_uid: String,
    modality: Option<String>,
    body_part_examined: Option<String>,
    view_position: Option<String>,
}

impl Store {
    /// Routes every job in state `received`: `queued` for analysis, or
    /// `skipped` with the reason `decide` gives. Returns (queued, skipped).
    pub async fn route_received_jobs(
        &self,
        decide: impl Fn(&InstanceHeader) -> Option<String>,
    ) -> Result<(u64, u64), StoreError> {
        let jobs: Vec<ReceivedJob> = sqlx::query_as(
            "SELECT j.id, i.sop_class_uid, i.sop_instance_uid, i.study_instance_uid, i.series_instance_uid,
                    i.modality, i.body_part_examined, i.view_position
             FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE j.state = 'received' ORDER BY j.id",
        )
        .fetch_all(self.pool())
        .await?;
        let (mut queued, mut skipped) = (0, 0);
        for job in jobs {
            let header = InstanceHeader {
                sop_class_uid: job.sop_class_uid,
                sop_instance_uid: job.sop_instance_uid,
                study_instance_uid: job.study_instance_uid,
                series_instance_uid: job.series_instance_uid,
                modality: job.modality,
                body_part_examined: job.body_part_examined,
                view_position: job.view_position,
            };
            let refusal = decide(&header);
            let state = if refusal.is_some() {
                "skipped"
            } else {
                "queued"
            };
            sqlx::query("UPDATE jobs SET state = ?, reason = ?, updated_at_ms = ? WHERE id = ? AND state = 'received'")
                .bind(state)
                .bind(&refusal)
                .bind(now_ms())
                .bind(job.id)
                .execute(self.pool())
                .await?;
            if refusal.is_some() {
                skipped += 1;
            } else {
                queued += 1;
            }
        }
        Ok((queued, skipped))
    }

    pub async fn job_counts(&self) -> Result<Vec<JobCount>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT state, COUNT(*) AS count FROM jobs GROUP BY state ORDER BY state",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

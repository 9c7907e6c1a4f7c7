//! Storage Commitment results owed to requesters that take them on an
//! association of their own: `pending` until the requester answers the
//! N-EVENT-REPORT (`sent`, with its status) or the node stops trying
//! (`given_up`, with why). Rows survive restarts.

use std::time::Duration;

use crate::{now_ms, Store, StoreError};

/// A result due to be sent.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommitmentResult {
    pub id: i64,
    pub requester_ae: String,
    pub transaction_uid: String,
    pub event_type_id: i64,
    /// The Event Information, in Explicit VR Little Endian.
    pub data: Vec<u8>,
    pub attempts: i64,
    pub created_at_ms: i64,
}

/// Results per state, for /metrics and the API.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CommitmentResultCount {
    pub state: String,
    pub count: i64,
}

impl Store {
    /// Keeps a result to send to `requester_ae`; due at once. Committed
    /// before the N-ACTION is answered success.
    pub async fn owe_commitment_result(
        &self,
        requester_ae: &str,
        transaction_uid: &str,
        event_type_id: u16,
        data: &[u8],
    ) -> Result<i64, StoreError> {
        let now = now_ms();
        let id = sqlx::query_scalar(
            "INSERT INTO commitment_results
                 (requester_ae, transaction_uid, event_type_id, data, created_at_ms, next_attempt_ms)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(requester_ae)
        .bind(transaction_uid)
        .bind(event_type_id as i64)
        .bind(data)
        .bind(now)
        .bind(now)
        .fetch_one(self.pool())
        .await?;
        Ok(id)
    }

    /// `requester_ae`'s pending results whose next attempt is due, oldest
    /// first.
    pub async fn due_commitment_results(
        &self,
        requester_ae: &str,
    ) -> Result<Vec<CommitmentResult>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, requester_ae, transaction_uid, event_type_id, data, attempts, created_at_ms
             FROM commitment_results
             WHERE state = 'pending' AND requester_ae = ? AND next_attempt_ms <= ?
             ORDER BY next_attempt_ms, id LIMIT 64",
        )
        .bind(requester_ae)
        .bind(now_ms())
        .fetch_all(self.pool())
        .await?)
    }

    /// How long until `requester_ae`'s next pending result is due (None:
    /// none pending).
    pub async fn next_commitment_result_in(
        &self,
        requester_ae: &str,
    ) -> Result<Option<Duration>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_ms) FROM commitment_results
             WHERE state = 'pending' AND requester_ae = ?",
        )
        .bind(requester_ae)
        .fetch_one(self.pool())
        .await?;
        Ok(next.map(|at| Duration::from_millis((at - now_ms()).max(0) as u64)))
    }

    /// The requesters pending results are owed to.
    pub async fn commitment_requesters_owed(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT requester_ae FROM commitment_results WHERE state = 'pending'",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Gives up every pending result owed to `requester_ae` (`why`);
    /// how many.
    pub async fn give_up_commitment_results_of(
        &self,
        requester_ae: &str,
        why: &str,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE commitment_results SET state = 'given_up', finished_at_ms = ?, last_status = ?
             WHERE state = 'pending' AND requester_ae = ?",
        )
        .bind(now_ms())
        .bind(why)
        .bind(requester_ae)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// The requester answered (`status`, success or not): no more tries.
    pub async fn commitment_result_answered(
        &self,
        id: i64,
        status: &str,
    ) -> Result<(), StoreError> {
        self.finish_commitment_result(id, "sent", status).await
    }

    /// No more tries (`why`).
    pub async fn commitment_result_given_up(&self, id: i64, why: &str) -> Result<(), StoreError> {
        self.finish_commitment_result(id, "given_up", why).await
    }

    async fn finish_commitment_result(
        &self,
        id: i64,
        state: &str,
        status: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE commitment_results
             SET state = ?, attempts = attempts + 1, finished_at_ms = ?, last_status = ?
             WHERE id = ?",
        )
        .bind(state)
        .bind(now_ms())
        .bind(status)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A failed attempt (`why`): tried again after `delay`.
    pub async fn commitment_result_retry(
        &self,
        id: i64,
        why: &str,
        delay: Duration,
    ) -> Result<(), StoreError> {
        self.reschedule_commitment_result(id, why, delay, 1).await
    }

    /// Not tried this time (`why`: its requester just failed): due again
    /// after `delay`, its attempts unchanged.
    pub async fn commitment_result_put_off(
        &self,
        id: i64,
        why: &str,
        delay: Duration,
    ) -> Result<(), StoreError> {
        self.reschedule_commitment_result(id, why, delay, 0).await
    }

    async fn reschedule_commitment_result(
        &self,
        id: i64,
        why: &str,
        delay: Duration,
        attempts_added: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE commitment_results
             SET attempts = attempts + ?, next_attempt_ms = ?, last_status = ?
             WHERE id = ?",
        )
        .bind(attempts_added)
        .bind(now_ms() + delay.as_millis() as i64)
        .bind(why)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Forgets results answered or given up on more than `age` ago.
    pub async fn forget_finished_commitment_results(
        &self,
        age: Duration,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM commitment_results WHERE state <> 'pending' AND finished_at_ms < ?",
        )
        .bind(now_ms() - age.as_millis() as i64)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    pub async fn commitment_result_counts(&self) -> Result<Vec<CommitmentResultCount>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT state, COUNT(*) AS count FROM commitment_results GROUP BY state ORDER BY state",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

//! One-at-a-time sections per UID, striped over a fixed set of mutexes.

use std::hash::{Hash, Hasher};

use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 64;

/// Async locks keyed by a UID (two UIDs may share a stripe: they then wait
/// for each other too, which is harmless). Not reentrant: a holder must not
/// take a lock of the same `UidLocks` again.
pub struct UidLocks(Vec<Mutex<()>>);

impl Default for UidLocks {
    fn default() -> Self {
        UidLocks((0..STRIPES).map(|_| Mutex::new(())).collect())
    }
}

impl UidLocks {
    pub async fn lock(&self, uid: &str) -> MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        uid.hash(&mut hasher);
        self.0[(hasher.finish() % STRIPES as u64) as usize]
            .lock()
            .await
    }
}

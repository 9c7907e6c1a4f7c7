//! A warning a loop meets at every round (the database full or locked):
//! said when it starts, then once a minute with how often it recurred, and
//! when it ends; at every round it filled the log (36 lines in 40 s).

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How often a recurring warning is said again.
const EVERY: Duration = Duration::from_secs(60);

pub struct RepeatedWarning {
    what: &'static str,
    since: Option<(Instant, u64)>,
}

impl RepeatedWarning {
    pub fn new(what: &'static str) -> Self {
        RepeatedWarning { what, since: None }
    }

    /// The loop failed again with `error`.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        let what = self.what;
        match &mut self.since {
            None => {
                warn!(error = %error, "{what}");
                self.since = Some((Instant::now(), 0));
            }
            Some((said_at, repeats)) => {
                *repeats += 1;
                if said_at.elapsed() >= EVERY {
                    warn!(error = %error, repeats = *repeats, "{what} (still)");
                    *said_at = Instant::now();
                    *repeats = 0;
                }
            }
        }
    }

    /// The loop succeeded: an ongoing warning is said to be over.
    pub fn succeeded(&mut self) {
        if self.since.take().is_some() {
            info!("{} no more", self.what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn said_once_then_over() {
        let mut w = RepeatedWarning::new("cannot claim jobs");
        for _ in 0..100 {
            w.failed(&"database or disk is full");
        }
        assert!(matches!(w.since, Some((_, 99))));
        w.succeeded();
        assert!(w.since.is_none());
    }
}

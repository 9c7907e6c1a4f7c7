//! Prometheus metrics: counters kept in memory, job and outbox counts read
//! from the database at scrape time (so they are right across restarts).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A cumulative histogram with fixed bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if value <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub struct Metrics {
    pub associations: AtomicU64,
    pub associations_rejected: AtomicU64,
    pub instances_received: AtomicU64,
    pub instances_refused: AtomicU64,
    pub bytes_received: AtomicU64,
    pub deliveries_failed: AtomicU64,
    pub retention_files_removed: AtomicU64,
    pub retention_bytes_removed: AtomicU64,
    pub inference_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            associations: AtomicU64::new(0),
            associations_rejected: AtomicU64::new(0),
            instances_received: AtomicU64::new(0),
            instances_refused: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            deliveries_failed: AtomicU64::new(0),
            retention_files_removed: AtomicU64::new(0),
            retention_bytes_removed: AtomicU64::new(0),
            inference_seconds: Histogram::new(&[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

impl Metrics {
    pub fn inc(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// The text exposition format. `jobs` and `outbox` are (labels, count).
    pub fn render(
        &self,
        jobs: &[(String, i64)],
        outbox: &[(String, String, i64, i64)],
        destinations: &[String],
        active_associations: usize,
    ) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut out,
            "pneumo_associations_total",
            "Associations accepted.",
            get(&self.associations),
        );
        counter(
            &mut out,
            "pneumo_associations_rejected_total",
            "Association requests answered A-ASSOCIATE-RJ (limit reached, unknown AE title, ...).",
            get(&self.associations_rejected),
        );
        let _ = writeln!(
            out,
            "# HELP pneumo_associations_active Associations being served.\n# TYPE pneumo_associations_active gauge\npneumo_associations_active {active_associations}"
        );
        counter(
            &mut out,
            "pneumo_instances_received_total",
            "Instances stored or found already stored (C-STORE success).",
            get(&self.instances_received),
        );
        counter(
            &mut out,
            "pneumo_instances_refused_total",
            "C-STORE requests answered with a failure.",
            get(&self.instances_refused),
        );
        counter(
            &mut out,
            "pneumo_bytes_received_total",
            "Data set bytes of successful C-STOREs.",
            get(&self.bytes_received),
        );
        let _ = writeln!(
            out,
            "# HELP pneumo_jobs Jobs by state.\n# TYPE pneumo_jobs gauge"
        );
        for state in pneumo_store::JOB_STATES {
            let n = jobs
                .iter()
                .find(|(s, _)| s == state)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(out, "pneumo_jobs{{state=\"{state}\"}} {n}");
        }
        // Every configured destination (and any other still owed rows) in
        // every state, 0 when it has none: a series that vanished when its
        // last parked row was retried left alert rules to `absent()`.
        let mut names: Vec<&str> = destinations.iter().map(String::as_str).collect();
        names.extend(outbox.iter().map(|(d, ..)| d.as_str()));
        names.sort_unstable();
        names.dedup();
        let row = |destination: &str, state: &str| {
            outbox
                .iter()
                .find(|(d, s, ..)| d == destination && s == state)
                .map(|(_, _, n, age_s)| (*n, *age_s))
                .unwrap_or((0, 0))
        };
        let _ = writeln!(out, "# HELP pneumo_outbox Outbox rows by destination and state.\n# TYPE pneumo_outbox gauge");
        for destination in &names {
            for state in pneumo_store::OUTBOX_STATES {
                let (n, _) = row(destination, state);
                let _ = writeln!(
                    out,
                    "pneumo_outbox{{destination=\"{destination}\",state=\"{state}\"}} {n}"
                );
            }
        }
        // What to alert on: a delivery waiting long, whatever the count.
        let _ = writeln!(out, "# HELP pneumo_outbox_oldest_seconds Age of the oldest delivery waiting (pending) or given up on (parked), by destination (0: none).\n# TYPE pneumo_outbox_oldest_seconds gauge");
        for destination in &names {
            for state in ["pending", "parked"] {
                let (_, age_s) = row(destination, state);
                let _ = writeln!(
                    out,
                    "pneumo_outbox_oldest_seconds{{destination=\"{destination}\",state=\"{state}\"}} {age_s}"
                );
            }
        }
        let depth: i64 = outbox
            .iter()
            .filter(|(_, s, _, _)| s == "pending")
            .map(|(_, _, n, _)| n)
            .sum();
        let _ = writeln!(out, "# HELP pneumo_outbox_depth Deliveries pending (waiting to be sent or retried; parked ones are not counted).\n# TYPE pneumo_outbox_depth gauge\npneumo_outbox_depth {depth}");
        counter(
            &mut out,
            "pneumo_delivery_failures_total",
            "Deliveries that failed an attempt (retried or parked): each delivery of the batch tried (up to outbox.batch) counts once per failed connection to its destination.",
            get(&self.deliveries_failed),
        );
        counter(
            &mut out,
            "pneumo_retention_files_removed_total",
            "Instance files removed by retention (retention.keep_days).",
            get(&self.retention_files_removed),
        );
        counter(
            &mut out,
            "pneumo_retention_bytes_removed_total",
            "Bytes of the instance files removed by retention.",
            get(&self.retention_bytes_removed),
        );
        self.inference_seconds.render(
            &mut out,
            "pneumo_inference_seconds",
            "Time from a job's tensor to its prediction.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::default();
        Metrics::inc(&m.instances_received, 3);
        m.inference_seconds.observe(0.02);
        m.inference_seconds.observe(0.3);
        let text = m.render(
            &[("queued".into(), 2)],
            &[
                ("pacs".into(), "pending".into(), 4, 95),
                ("pacs".into(), "sent".into(), 7, 3600),
            ],
            &["archive".into(), "pacs".into()],
            1,
        );
        // Configured but owed nothing: its series are there, at 0.
        assert!(text.contains("pneumo_outbox{destination=\"archive\",state=\"parked\"} 0"));
        assert!(text
            .contains("pneumo_outbox_oldest_seconds{destination=\"archive\",state=\"pending\"} 0"));
        assert!(text.contains("pneumo_outbox{destination=\"pacs\",state=\"parked\"} 0"));
        assert!(text
            .contains("pneumo_outbox_oldest_seconds{destination=\"pacs\",state=\"pending\"} 95"));
        assert!(!text.contains("pneumo_outbox_oldest_seconds{destination=\"pacs\",state=\"sent\"}"));
        assert!(text.contains("pneumo_instances_received_total 3"));
        assert!(text.contains("pneumo_jobs{state=\"queued\"} 2"));
        assert!(text.contains("pneumo_jobs{state=\"failed\"} 0"));
        assert!(text.contains("pneumo_outbox_depth 4"));
        assert!(text.contains("pneumo_inference_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("pneumo_inference_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("pneumo_inference_seconds_count 2"));
    }
}

//! A prediction and the model identity it carries.

use serde::Serialize;

use crate::contract::{ModelContract, WeightsKind};
use crate::model::ExecutionProvider;

/// Which model produced a result (for reports, logs and the SR UID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelIdentity {
    pub name: String,
    pub version: String,
    pub weights_kind: WeightsKind,
    pub weights_sha256: String,
    /// The contract's SHA-256 ([`ModelContract::contract_sha256`]).
    pub contract_sha256: String,
    pub precision: String,
}

impl From<&ModelContract> for ModelIdentity {
    fn from(c: &ModelContract) -> Self {
        ModelIdentity {
            name: c.model_name.clone(),
            version: c.model_version.clone(),
            weights_kind: c.weights_kind,
            weights_sha256: c.weights_sha256.clone(),
            contract_sha256: c.contract_sha256.clone(),
            precision: c.precision.clone(),
        }
    }
}

/// The result for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The graph's output row.
    pub logits: Vec<f32>,
    /// softmax(logits), one per label, computed in f64 (as the decision is).
    pub probabilities: Vec<f64>,
    /// The contract's labels, in output order.
    pub labels: Vec<String>,
    pub positive_label: String,
    /// P(positive_label).
    pub p_positive: f64,
    pub threshold: f64,
    /// p_positive ≥ threshold.
    pub positive: bool,
    /// The provider that computed it.
    pub execution_provider: ExecutionProvider,
    pub model: ModelIdentity,
    /// `DEMO MODEL - NOT FOR DIAGNOSIS` for a demo model, else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Numerically stable softmax: exp(z_i - max z) / Σ exp(z_j - max z),
/// accumulated in f64.
pub fn softmax(z: &[f32]) -> Vec<f64> {
    // In f64 from the start: z - max z in f32 rounds, and so would p, and a
    // probability a few 1e-9 from the threshold came out on the wrong side.
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = z
        .iter()
        .map(|v| (f64::from(*v) - f64::from(m)).exp())
        .collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::softmax;

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 999.0]);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6);
        assert!((p[0] - 0.731_058_6).abs() < 1e-6);
        assert_eq!(softmax(&[0.0, 0.0]), vec![0.5, 0.5]);
    }

    #[test]
    fn a_probability_just_off_the_threshold_stays_on_its_side() {
        // Logits whose softmax is a few 1e-9 from a decimal threshold: in
        // f32 (or with z - max z rounded to f32) they landed on it or across.
        for (t, off) in [(0.3, -5e-9), (0.7, -1e-9), (0.1, 1e-9), (0.1, 5e-9)] {
            let target: f64 = t + off;
            let z1 = ((1.0 - t) / t).ln() as f32;
            let z0 = (f64::from(z1) - ((1.0 - target) / target).ln()) as f32;
            let exact = 1.0 / (1.0 + (f64::from(z1) - f64::from(z0)).exp());
            let p = softmax(&[z0, z1])[0];
            assert!((p - exact).abs() < 1e-15, "{p} vs {exact}");
            assert_eq!(p >= t, exact >= t, "t={t} p={p}");
        }
    }
}

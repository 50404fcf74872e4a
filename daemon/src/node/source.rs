//! Where a member's contribution to a round comes from: the
//! [`UpdateSource`] trait, and [`TestVectors`], the deterministic source
//! that lets a consortium be checked against the plain mean without any
//! training.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::model::GlobalModel;

/// Context of the test-vector generator's key derivation.
const TEST_VECTOR: &str = "primia 2026-11 daemon test vector v1";

/// Context of the test example count.
const TEST_EXAMPLES: &str = "primia 2026-11 daemon test example count v1";

/// Largest example count a test vector claims when none is configured.
pub const MAX_TEST_EXAMPLES: u32 = 1000;

/// One member's contribution to one round: `n_examples` and the update
/// `delta` to the round's base model. Secret (it is what secure aggregation
/// hides): wiped on drop, and `Debug` shows only sizes.
pub struct Update {
    /// n_u, the weight of this member in the mean.
    pub n_examples: u32,
    /// One entry per model parameter.
    pub delta: Zeroizing<Vec<f32>>,
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Update")
            .field("parameters", &self.delta.len())
            .finish_non_exhaustive()
    }
}

/// What a member feeds into rounds. The driver asks it for the initial
/// model once and for an update each round; it runs on a blocking thread,
/// so it may train for as long as the round's deadlines allow.
pub trait UpdateSource: Send + 'static {
    /// Number of model parameters; the same at every member.
    fn parameter_count(&self) -> usize;

    /// Everything about this source that must be the same at every member
    /// for their updates to be combined (architecture and its fingerprint,
    /// training hyperparameters), as one line of text. Members compare it
    /// when they connect and refuse to work with a member whose line
    /// differs, showing both.
    fn settings(&self) -> String {
        format!("parameters={}", self.parameter_count())
    }

    /// Measures `model` on this member's own validation data, for its
    /// metrics history. Nothing by default.
    fn evaluate(&mut self, _model: &GlobalModel) -> anyhow::Result<BTreeMap<String, f64>> {
        Ok(BTreeMap::new())
    }

    /// The model of round 0, from which the consortium starts. Every member
    /// must produce the same one (from shared settings, never from local
    /// data): its hash is what the first round agrees on.
    fn initial_model(&mut self) -> anyhow::Result<Vec<f32>>;

    /// This member's update for `round`, starting from `base` (the model of
    /// round `round - 1`).
    fn update(&mut self, round: u64, base: &GlobalModel) -> anyhow::Result<Update>;
}

/// Deterministic test vectors: member `name` contributes, in round r, the
/// vector [`test_vector`]`(name, r, parameters)` with weight
/// [`test_examples`]`(name)` (or a fixed count). The initial model is zero.
#[derive(Debug, Clone)]
pub struct TestVectors {
    name: String,
    parameters: usize,
    n_examples: Option<u32>,
}

impl TestVectors {
    /// Test vectors of member `name` with `parameters` entries; the example
    /// count is `n_examples`, or [`test_examples`]`(name)` when `None`.
    pub fn new(name: impl Into<String>, parameters: usize, n_examples: Option<u32>) -> Self {
        Self {
            name: name.into(),
            parameters,
            n_examples,
        }
    }
}

impl UpdateSource for TestVectors {
    fn parameter_count(&self) -> usize {
        self.parameters
    }

    fn settings(&self) -> String {
        format!("test-vectors vector_len={}", self.parameters)
    }

    fn initial_model(&mut self) -> anyhow::Result<Vec<f32>> {
        Ok(vec![0.0; self.parameters])
    }

    fn update(&mut self, round: u64, _base: &GlobalModel) -> anyhow::Result<Update> {
        Ok(Update {
            n_examples: self.n_examples.unwrap_or_else(|| test_examples(&self.name)),
            delta: Zeroizing::new(test_vector(&self.name, round, self.parameters)),
        })
    }
}

/// The test vector of member `name` in `round`: `parameters` values in
/// [-1, 1), from blake3 in XOF mode keyed by the member and the round.
pub fn test_vector(name: &str, round: u64, parameters: usize) -> Vec<f32> {
    let mut hasher = blake3::Hasher::new_derive_key(TEST_VECTOR);
    hasher.update(&(name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(&round.to_le_bytes());
    let mut xof = hasher.finalize_xof();
    let mut out = Vec::with_capacity(parameters);
    let mut buf = [0u8; 4096];
    while out.len() < parameters {
        let take = (parameters - out.len()).min(buf.len() / 4);
        let bytes = &mut buf[..take * 4];
        xof.fill(bytes);
        // 24 random bits: exactly representable in f32.
        out.extend(bytes.chunks_exact(4).map(|c| {
            let v = u32::from_le_bytes(c.try_into().expect("4 bytes")) >> 8;
            v as f32 / (1u32 << 23) as f32 - 1.0
        }));
    }
    out
}

/// The example count member `name` claims with test vectors: 1 to
/// [`MAX_TEST_EXAMPLES`], from its name, so members weigh differently.
pub fn test_examples(name: &str) -> u32 {
    let h = blake3::Hasher::new_derive_key(TEST_EXAMPLES)
        .update(name.as_bytes())
        .finalize();
    let v = u32::from_le_bytes(h.as_bytes()[..4].try_into().expect("4 bytes"));
    1 + v % MAX_TEST_EXAMPLES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_bounded_and_distinct() {
        let a = test_vector("st-mary", 1, 10_000);
        assert_eq!(a, test_vector("st-mary", 1, 10_000));
        assert_eq!(a[..5], test_vector("st-mary", 1, 5)[..]);
        assert_ne!(a, test_vector("st-mary", 2, 10_000));
        assert_ne!(a, test_vector("st-marx", 1, 10_000));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = a.iter().map(|v| f64::from(*v)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!(test_vector("x", 0, 0).is_empty());
    }

    #[test]
    fn example_counts_are_in_range_and_differ() {
        let counts: Vec<u32> = (0..20).map(|i| test_examples(&format!("m{i}"))).collect();
        assert!(counts.iter().all(|c| (1..=MAX_TEST_EXAMPLES).contains(c)));
        assert!(counts.windows(2).any(|w| w[0] != w[1]));
    }
}

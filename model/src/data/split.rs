//! Splitting one data set across K hospitals, deterministic by seed: IID or label-skewed (Dirichlet).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use super::Dataset;
use crate::error::{ModelError, Result};

/// How examples are dealt out to hospitals.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum SplitScheme {
    /// Shuffled and dealt evenly: every hospital sees the same label mix.
    Iid,
    /// For every class, the hospitals' shares are drawn from Dirichlet(alpha):
    /// small alpha (0.1) gives strongly skewed label mixes, large alpha
    /// (100) is close to IID. The usual benchmark for non-IID federated
    /// learning (Hsu et al. 2019).
    Dirichlet {
        alpha: f64,
        /// Redraw until every hospital has at least this many examples.
        min_per_hospital: usize,
    },
}

/// Most redraws of the Dirichlet proportions before giving up on `min_per_hospital`.
const MAX_DIRICHLET_DRAWS: usize = 10_000;

/// Which examples each hospital holds, and its counts per class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HospitalSplit {
    /// Indices into the original data set, ascending, per hospital.
    pub indices: Vec<Vec<usize>>,
    /// `counts[h][c]`: examples of class c at hospital h.
    pub counts: Vec<Vec<usize>>,
}

impl HospitalSplit {
    /// One line per hospital, e.g. `hospital 0: 523 examples (class 0: 130, class 1: 393)`.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for (h, counts) in self.counts.iter().enumerate() {
            let total: usize = counts.iter().sum();
            let per: Vec<String> = counts
                .iter()
                .enumerate()
                .map(|(c, n)| format!("class {c}: {n}"))
                .collect();
            s.push_str(&format!(
                "hospital {h}: {total} examples ({})\n",
                per.join(", ")
            ));
        }
        s
    }
}

/// Splits `labels` (classes `0..classes`) among `hospitals`.
pub fn split_indices(
    labels: &[u32],
    classes: usize,
    hospitals: usize,
    scheme: SplitScheme,
    seed: u64,
) -> Result<HospitalSplit> {
    if hospitals == 0 {
        return Err(ModelError::InvalidConfig("zero hospitals".into()));
    }
    if labels.len() < hospitals {
        return Err(ModelError::InvalidConfig(format!(
            "{} examples cannot be split among {hospitals} hospitals",
            labels.len()
        )));
    }
    if let Some(l) = labels.iter().find(|l| **l as usize >= classes) {
        return Err(ModelError::InvalidData(format!(
            "label {l} is not below the class count {classes}"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut indices: Vec<Vec<usize>> = vec![Vec::new(); hospitals];
    match scheme {
        SplitScheme::Iid => {
            let mut all: Vec<usize> = (0..labels.len()).collect();
            all.shuffle(&mut rng);
            for (i, idx) in all.into_iter().enumerate() {
                indices[i % hospitals].push(idx);
            }
        }
        SplitScheme::Dirichlet {
            alpha,
            min_per_hospital,
        } => {
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(ModelError::InvalidConfig(format!(
                    "Dirichlet alpha must be a positive number, got {alpha}"
                )));
            }
            if min_per_hospital.saturating_mul(hospitals) > labels.len() {
                return Err(ModelError::InvalidConfig(format!(
                    "{} examples cannot give each of {hospitals} hospitals {min_per_hospital}",
                    labels.len()
                )));
            }
            let gamma = Gamma::new(alpha, 1.0)
                .map_err(|e| ModelError::InvalidConfig(format!("Dirichlet alpha {alpha}: {e}")))?;
            let by_class: Vec<Vec<usize>> = (0..classes)
                .map(|c| {
                    (0..labels.len())
                        .filter(|&i| labels[i] as usize == c)
                        .collect()
                })
                .collect();
            let mut draws = 0;
            loop {
                draws += 1;
                for h in indices.iter_mut() {
                    h.clear();
                }
                for members in &by_class {
                    let mut members = members.clone();
                    members.shuffle(&mut rng);
                    let p = dirichlet(&gamma, hospitals, &mut rng);
                    // Cut points at the cumulative proportions.
                    let n = members.len();
                    let mut start = 0;
                    let mut cum = 0.0;
                    for (h, ph) in p.iter().enumerate() {
                        cum += ph;
                        let end = if h + 1 == hospitals {
                            n
                        } else {
                            ((cum * n as f64).round() as usize).clamp(start, n)
                        };
                        indices[h].extend_from_slice(&members[start..end]);
                        start = end;
                    }
                }
                if indices.iter().all(|h| h.len() >= min_per_hospital) {
                    break;
                }
                if draws >= MAX_DIRICHLET_DRAWS {
                    return Err(ModelError::InvalidConfig(format!(
                        "no Dirichlet({alpha}) split in {MAX_DIRICHLET_DRAWS} draws gave each of \
                         {hospitals} hospitals at least {min_per_hospital} examples; \
                         raise alpha or lower the minimum"
                    )));
                }
            }
        }
    }
    for h in indices.iter_mut() {
        h.sort_unstable();
    }
    let counts = indices
        .iter()
        .map(|idx| {
            let mut c = vec![0; classes];
            for &i in idx {
                c[labels[i] as usize] += 1;
            }
            c
        })
        .collect();
    Ok(HospitalSplit { indices, counts })
}

/// One draw from the symmetric Dirichlet(alpha, ..., alpha) as normalised Gamma draws.
fn dirichlet(gamma: &Gamma<f64>, k: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let g: Vec<f64> = (0..k).map(|_| gamma.sample(rng)).collect();
    let sum: f64 = g.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        g.into_iter().map(|x| x / sum).collect()
    } else {
        // Tiny alpha can underflow every draw to 0: the limit of the
        // distribution puts everything on one hospital, picked at random.
        let mut p = vec![0.0; k];
        p[rand::Rng::random_range(rng, 0..k)] = 1.0;
        p
    }
}

impl Dataset {
    /// Splits this data set among `hospitals`; returns each hospital's data and the split.
    pub fn split_hospitals(
        &self,
        hospitals: usize,
        scheme: SplitScheme,
        seed: u64,
    ) -> Result<(Vec<Dataset>, HospitalSplit)> {
        let split = split_indices(self.labels(), self.classes(), hospitals, scheme, seed)?;
        let parts = split
            .indices
            .iter()
            .map(|idx| self.subset(idx))
            .collect::<Result<Vec<_>>>()?;
        Ok((parts, split))
    }
}

//! Renyi-DP accounting of the Poisson-subsampled Gaussian mechanism (the mechanism DP-SGD runs).
//!
//! One DP-SGD step samples each example with probability q, clips each
//! sampled example's gradient to L2 norm C and adds N(0, sigma^2 C^2) noise
//! to their sum. Its Renyi divergence of order alpha is computed as in
//! Mironov, Talwar and Zhang, "Renyi Differential Privacy of the Sampled
//! Gaussian Mechanism" (2019): exactly, as a finite binomial sum, for integer
//! orders (Section 3.2), and by the convergent two-sided series with erfc
//! weights for fractional orders (Section 3.3). Everything is summed in log
//! space, because the terms span hundreds of orders of magnitude.
//!
//! RDP composes additively over steps; the total is converted to
//! (epsilon, delta) with the conversion of Balle et al. 2020 (Proposition 12)
//! / Canonne, Kamath and Steinke 2020:
//!
//! `eps = rdp + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1)`
//!
//! minimised over the order grid, which is what Opacus' `get_privacy_spent`
//! and Google's `dp_accounting` `compute_epsilon` do. Neighbouring data sets
//! differ by adding or removing one example.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The Renyi orders the accountant evaluates, smallest first.
///
/// Google `dp_accounting`'s default grid (1.1 to 10.9 in steps of 0.1, the
/// integers 11 to 63, and 128, 256, 512, 1024) with a few more integer
/// orders between 64 and 256, where the best order lies for small epsilon
/// budgets. Fractional orders matter for large budgets (epsilon of 8 or
/// more lands on orders below 3).
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..=63).map(f64::from));
    orders.extend([
        64.0, 80.0, 96.0, 112.0, 128.0, 160.0, 192.0, 256.0, 512.0, 1024.0,
    ]);
    orders
}

/// Terms of the fractional-order series evaluated at most before an order is
/// dropped from the grid; a dropped order only makes the bound looser, never
/// wrong. The series converges within a few hundred terms in the regimes
/// DP-SGD is run in; this bounds the time spent on pathological ones.
const MAX_FRACTIONAL_TERMS: usize = 5000;

/// Above this argument erfc underflows towards subnormals in f64, so its
/// logarithm comes from the asymptotic series instead.
const ERFC_SERIES_FROM: f64 = 25.0;

/// Largest order whose binomial sum is evaluated exactly; larger orders are
/// refused (they never help at any delta worth asking for).
const MAX_ORDER: f64 = 4096.0;

fn invalid(message: String) -> ModelError {
    ModelError::InvalidConfig(message)
}

/// Checks a sampling rate q: the probability that an example is in a batch.
pub fn check_sample_rate(q: f64) -> Result<()> {
    if q.is_finite() && q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(invalid(format!("sample rate {q} is not in (0, 1]")))
    }
}

/// Checks a noise multiplier sigma: the noise standard deviation over the clipping norm.
pub fn check_noise_multiplier(sigma: f64) -> Result<()> {
    if sigma.is_finite() && sigma > 0.0 {
        Ok(())
    } else {
        Err(invalid(format!("noise multiplier {sigma} is not positive")))
    }
}

/// Checks delta, the probability with which the epsilon guarantee may fail.
pub fn check_delta(delta: f64) -> Result<()> {
    if delta.is_finite() && delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(invalid(format!("delta {delta} is not in (0, 1)")))
    }
}

/// Checks a target epsilon.
pub fn check_epsilon(epsilon: f64) -> Result<()> {
    if epsilon.is_finite() && epsilon > 0.0 {
        Ok(())
    } else {
        Err(invalid(format!("epsilon {epsilon} is not positive")))
    }
}

fn check_orders(orders: &[f64]) -> Result<()> {
    if orders.is_empty() {
        return Err(invalid("the list of Renyi orders is empty".into()));
    }
    if let Some(a) = orders
        .iter()
        .find(|a| !(a.is_finite() && **a > 1.0 && **a <= MAX_ORDER))
    {
        return Err(invalid(format!(
            "Renyi order {a} is not in (1, {MAX_ORDER}]"
        )));
    }
    Ok(())
}

/// log(exp(x) + exp(y)) without overflow.
fn log_add(x: f64, y: f64) -> f64 {
    let (lo, hi) = if x < y { (x, y) } else { (y, x) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

/// log(erfc(x)), accurate in the far tail where erfc itself underflows.
fn log_erfc(x: f64) -> f64 {
    if x < ERFC_SERIES_FROM {
        libm::erfc(x).ln()
    } else {
        // Laurent series at infinity: erfc(x) ~ exp(-x^2 - 1/(2x^2) + 5/(8x^4) ...) / (x sqrt(pi)).
        let x2 = x * x;
        -std::f64::consts::PI.ln() / 2.0 - x.ln() - x2 - 0.5 / x2 + 0.625 / (x2 * x2)
            - 37.0 / 24.0 / (x2 * x2 * x2)
            + 353.0 / 64.0 / (x2 * x2 * x2 * x2)
    }
}

/// log A_alpha for an integer order: the exact finite sum
/// `A = sum_i C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2))`.
fn log_a_integer(q: f64, sigma: f64, alpha: u32) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_s2 = 2.0 * sigma * sigma;
    let mut log_a = f64::NEG_INFINITY;
    // log C(alpha, i), updated term by term: C(a, i+1) = C(a, i) (a - i) / (i + 1).
    let mut log_coef = 0.0f64;
    for i in 0..=alpha {
        let fi = f64::from(i);
        let term = log_coef + fi * log_q + f64::from(alpha - i) * log_1mq + (fi * fi - fi) / two_s2;
        log_a = log_add(log_a, term);
        if i < alpha {
            log_coef += (f64::from(alpha - i) / (fi + 1.0)).ln();
        }
    }
    log_a
}

/// log(exp(x) - exp(y)) for x >= y; `None` when x < y (the difference
/// would be negative, which the series below never legitimately produces).
fn log_sub(x: f64, y: f64) -> Option<f64> {
    if y == f64::NEG_INFINITY {
        return Some(x);
    }
    if x < y {
        return None;
    }
    if x == y {
        return Some(f64::NEG_INFINITY);
    }
    Some((-(y - x).exp()).ln_1p() + x)
}

/// log A_alpha for a fractional order, by the series of Mironov et al.
/// Section 3.3 split at z0 into the two integrals A0 and A1, each the
/// generalised binomial expansion of its integrand.
///
/// The coefficients C(alpha, i) of a fractional order alternate in sign
/// once i exceeds alpha; they are summed with their signs, which is the
/// exact series (as Opacus' `_compute_log_a_for_frac_alpha` and TensorFlow
/// Privacy sum it; `dp_accounting` adds magnitudes instead, a looser upper
/// bound that fails to converge at small orders for large q). Returns
/// `None` when the series has not converged after [`MAX_FRACTIONAL_TERMS`]
/// terms or a partial sum would turn negative through rounding: the order is
/// then left out, which can only make the reported epsilon larger.
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> Option<f64> {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let s2 = sigma * sigma;
    let z0 = s2 * (1.0 / q - 1.0).ln() + 0.5;
    let sqrt2_sigma = std::f64::consts::SQRT_2 * sigma;
    let log_half = 0.5f64.ln();
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    // log |C(alpha, i)| and the sign of C(alpha, i), updated term by term:
    // C(a, i+1) = C(a, i) (a - i) / (i + 1).
    let mut log_coef = 0.0f64;
    let mut positive = true;
    for i in 0..MAX_FRACTIONAL_TERMS {
        let fi = i as f64;
        let j = alpha - fi;
        let log_t0 = log_coef + fi * log_q + j * log_1mq;
        let log_t1 = log_coef + j * log_q + fi * log_1mq;
        let log_e0 = log_half + log_erfc((fi - z0) / sqrt2_sigma);
        let log_e1 = log_half + log_erfc((z0 - j) / sqrt2_sigma);
        let log_s0 = log_t0 + (fi * fi - fi) / (2.0 * s2) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * s2) + log_e1;
        if positive {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0)?;
            log_a1 = log_sub(log_a1, log_s1)?;
        }
        // The terms have fallen below e^-30 (A itself is at least 1).
        if log_s0.max(log_s1) < -30.0 {
            return Some(log_add(log_a0, log_a1));
        }
        let ratio = (alpha - fi) / (fi + 1.0);
        if ratio == 0.0 {
            // Only for integer alpha, which is summed exactly elsewhere.
            return Some(log_add(log_a0, log_a1));
        }
        if ratio < 0.0 {
            positive = !positive;
        }
        log_coef += ratio.abs().ln();
    }
    None
}

/// RDP of one step of the Poisson-subsampled Gaussian mechanism at `order`.
///
/// Infinite when the fractional series does not converge (the order is then
/// useless, not dangerous: the minimum over orders ignores it).
pub fn rdp_step(sample_rate: f64, noise_multiplier: f64, order: f64) -> Result<f64> {
    check_sample_rate(sample_rate)?;
    check_noise_multiplier(noise_multiplier)?;
    check_orders(&[order])?;
    Ok(rdp_step_unchecked(sample_rate, noise_multiplier, order))
}

fn rdp_step_unchecked(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 1.0 {
        // No subsampling: the Gaussian mechanism itself.
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 {
        Some(log_a_integer(q, sigma, alpha as u32))
    } else {
        log_a_fractional(q, sigma, alpha)
    };
    match log_a {
        // Rounding can leave log A a hair below 0 when it should be a tiny
        // positive number; RDP is never negative.
        Some(l) if l.is_finite() => (l / (alpha - 1.0)).max(0.0),
        _ => f64::INFINITY,
    }
}

/// Total RDP of `steps` steps at each of `orders`.
pub fn compute_rdp(
    sample_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    orders: &[f64],
) -> Result<Vec<f64>> {
    check_sample_rate(sample_rate)?;
    check_noise_multiplier(noise_multiplier)?;
    check_orders(orders)?;
    Ok(orders
        .iter()
        .map(|&a| {
            if steps == 0 {
                0.0
            } else {
                rdp_step_unchecked(sample_rate, noise_multiplier, a) * steps as f64
            }
        })
        .collect())
}

/// An (epsilon, delta) guarantee and the Renyi order that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrivacySpent {
    pub epsilon: f64,
    pub delta: f64,
    /// The order at which the conversion was tightest. At the largest or
    /// smallest order of the grid, a wider grid might give a smaller epsilon.
    pub order: f64,
}

/// Converts RDP values (one per order) to the smallest epsilon at `delta`
/// over the orders, with the conversion of Balle et al. 2020.
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> Result<PrivacySpent> {
    check_delta(delta)?;
    check_orders(orders)?;
    if orders.len() != rdp.len() {
        return Err(invalid(format!(
            "{} Renyi orders but {} RDP values",
            orders.len(),
            rdp.len()
        )));
    }
    if let Some(r) = rdp.iter().find(|r| r.is_nan() || **r < 0.0) {
        return Err(invalid(format!(
            "RDP value {r} is not a non-negative number"
        )));
    }
    let log_delta = delta.ln();
    let mut best = PrivacySpent {
        epsilon: f64::INFINITY,
        delta,
        order: orders[0],
    };
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if r == 0.0 {
            0.0
        } else {
            r + ((a - 1.0) / a).ln() - (log_delta + a.ln()) / (a - 1.0)
        };
        if eps < best.epsilon {
            best.epsilon = eps;
            best.order = a;
        }
    }
    // The conversion can dip below 0 for tiny RDP; epsilon 0 is the floor.
    best.epsilon = best.epsilon.max(0.0);
    Ok(best)
}

/// The classic RDP conversion of Mironov 2017 (Proposition 3),
/// `eps = rdp + log(1/delta) / (alpha - 1)`: looser than
/// [`epsilon_from_rdp`]; kept to reproduce figures published with it (the
/// moments accountant of Abadi et al. 2016 is this bound at integer orders).
pub fn epsilon_from_rdp_classic(orders: &[f64], rdp: &[f64], delta: f64) -> Result<PrivacySpent> {
    check_delta(delta)?;
    check_orders(orders)?;
    if orders.len() != rdp.len() {
        return Err(invalid(format!(
            "{} Renyi orders but {} RDP values",
            orders.len(),
            rdp.len()
        )));
    }
    let mut best = PrivacySpent {
        epsilon: f64::INFINITY,
        delta,
        order: orders[0],
    };
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = r - delta.ln() / (a - 1.0);
        if eps < best.epsilon {
            best.epsilon = eps;
            best.order = a;
        }
    }
    Ok(best)
}

/// Epsilon at `delta` after `steps` DP-SGD steps with sampling rate
/// `sample_rate` and noise multiplier `noise_multiplier`, over [`default_orders`].
pub fn epsilon(
    sample_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    delta: f64,
) -> Result<PrivacySpent> {
    check_delta(delta)?;
    let orders = default_orders();
    let rdp = compute_rdp(sample_rate, noise_multiplier, steps, &orders)?;
    epsilon_from_rdp(&orders, &rdp, delta)
}

/// The answer of [`noise_multiplier_for`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NoiseSearch {
    pub noise_multiplier: f64,
    /// What that noise multiplier spends: at most the target.
    pub spent: PrivacySpent,
}

/// Largest noise multiplier tried before the target is declared out of reach.
const MAX_NOISE_MULTIPLIER: f64 = 1e4;
/// Bisection stops when the bracket is this narrow, relative to its top.
const NOISE_RELATIVE_TOLERANCE: f64 = 1e-6;

/// The smallest noise multiplier (to a relative 1e-6) whose epsilon after
/// `steps` steps at `sample_rate` is at most `target_epsilon` at `delta`.
///
/// Epsilon falls monotonically as the noise grows (each order's RDP does,
/// and so does their minimum), so bisection applies. The result is the
/// upper end of the final bracket: its epsilon is always at most the target.
pub fn noise_multiplier_for(
    sample_rate: f64,
    steps: u64,
    delta: f64,
    target_epsilon: f64,
) -> Result<NoiseSearch> {
    check_sample_rate(sample_rate)?;
    check_delta(delta)?;
    check_epsilon(target_epsilon)?;
    if steps == 0 {
        return Err(invalid(
            "no steps: any noise multiplier spends nothing".into(),
        ));
    }
    let eps_at = |sigma: f64| epsilon(sample_rate, sigma, steps, delta);
    // Bracket: hi meets the target, lo does not.
    let mut hi = 1.0;
    let mut hi_spent = eps_at(hi)?;
    let mut lo;
    if hi_spent.epsilon <= target_epsilon {
        lo = hi / 2.0;
        loop {
            let s = eps_at(lo)?;
            if s.epsilon > target_epsilon {
                break;
            }
            hi = lo;
            hi_spent = s;
            lo /= 2.0;
            if lo < 1e-6 {
                // Even almost no noise meets the target (a huge budget).
                return Ok(NoiseSearch {
                    noise_multiplier: hi,
                    spent: hi_spent,
                });
            }
        }
    } else {
        loop {
            lo = hi;
            hi *= 2.0;
            if hi > MAX_NOISE_MULTIPLIER {
                return Err(invalid(format!(
                    "epsilon {target_epsilon} at delta {delta} is out of reach even with noise \
                     multiplier {MAX_NOISE_MULTIPLIER}; ask for a larger epsilon or delta"
                )));
            }
            hi_spent = eps_at(hi)?;
            if hi_spent.epsilon <= target_epsilon {
                break;
            }
        }
    }
    while hi - lo > NOISE_RELATIVE_TOLERANCE * hi {
        let mid = 0.5 * (lo + hi);
        let s = eps_at(mid)?;
        if s.epsilon <= target_epsilon {
            hi = mid;
            hi_spent = s;
        } else {
            lo = mid;
        }
    }
    Ok(NoiseSearch {
        noise_multiplier: hi,
        spent: hi_spent,
    })
}

/// A stretch of identical DP steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Composition {
    pub sample_rate: f64,
    pub noise_multiplier: f64,
    pub steps: u64,
}

/// The privacy spent so far by one data set: records every DP-SGD step
/// taken on it and reports epsilon for a delta.
///
/// Its state is the list of (sample rate, noise multiplier, steps) stretches,
/// small and exact, so it can be stored durably (it is serde-serialisable)
/// and the RDP recomputed on load; the running RDP per order is kept too,
/// so [`PrivacyAccountant::epsilon`] costs only the conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyAccountant {
    history: Vec<Composition>,
    #[serde(skip)]
    orders: Vec<f64>,
    #[serde(skip)]
    rdp: Vec<f64>,
}

impl Default for PrivacyAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl PrivacyAccountant {
    /// An accountant that has seen no steps, over [`default_orders`].
    pub fn new() -> Self {
        let orders = default_orders();
        let rdp = vec![0.0; orders.len()];
        PrivacyAccountant {
            history: Vec::new(),
            orders,
            rdp,
        }
    }

    /// Rebuilds an accountant from its recorded history (as after deserialising).
    pub fn from_history(history: Vec<Composition>) -> Result<Self> {
        let mut acc = Self::new();
        for c in history {
            acc.record(c.sample_rate, c.noise_multiplier, c.steps)?;
        }
        Ok(acc)
    }

    /// The stretches recorded, merged where consecutive ones share parameters.
    pub fn history(&self) -> &[Composition] {
        &self.history
    }

    /// Total steps recorded.
    pub fn steps(&self) -> u64 {
        self.history.iter().map(|c| c.steps).sum()
    }

    /// Records `steps` steps at sampling rate `sample_rate` and noise multiplier `noise_multiplier`.
    pub fn record(&mut self, sample_rate: f64, noise_multiplier: f64, steps: u64) -> Result<()> {
        if self.orders.is_empty() {
            // Deserialised without the cache: rebuild it from the history.
            *self = Self::from_history(std::mem::take(&mut self.history))?;
        }
        let add = compute_rdp(sample_rate, noise_multiplier, steps, &self.orders)?;
        if steps == 0 {
            return Ok(());
        }
        for (r, a) in self.rdp.iter_mut().zip(add) {
            *r += a;
        }
        match self.history.last_mut() {
            Some(last)
                if last.sample_rate == sample_rate && last.noise_multiplier == noise_multiplier =>
            {
                last.steps += steps;
            }
            _ => self.history.push(Composition {
                sample_rate,
                noise_multiplier,
                steps,
            }),
        }
        Ok(())
    }

    /// Epsilon at `delta` once `steps` more steps at `sample_rate` and
    /// `noise_multiplier` are taken, leaving this accountant as it is: the
    /// check a member makes before a round, to stop contributing rather
    /// than overspend its budget.
    pub fn epsilon_after(
        &self,
        sample_rate: f64,
        noise_multiplier: f64,
        steps: u64,
        delta: f64,
    ) -> Result<PrivacySpent> {
        let mut next = self.clone();
        next.record(sample_rate, noise_multiplier, steps)?;
        next.epsilon(delta)
    }

    /// Epsilon spent so far at `delta`.
    pub fn epsilon(&self, delta: f64) -> Result<PrivacySpent> {
        if self.orders.is_empty() {
            // Deserialised without the cache.
            return Self::from_history(self.history.clone())?.epsilon(delta);
        }
        epsilon_from_rdp(&self.orders, &self.rdp, delta)
    }
}

//! Fixed-point encoding of weighted model updates into the ring Z/2^64, and back.
//!
//! Member u contributes `x_u = [ n_u * clip(delta_u[i]) * 2^SCALE_BITS, rounded ]
//! ++ [ n_u ]`, each entry a two's-complement value in Z/2^64. The masked sum
//! of all members, once unmasked, is the plain sum of these vectors; decoding
//! it gives the total number of examples and the weighted sum, and
//! [`DecodedSum::mean`] the FedAvg mean `sum_u n_u delta_u / sum_u n_u`.
//!
//! # The no-wrap bound
//!
//! With `CLIP = 2^CLIP_LOG2`, every encoded coordinate satisfies
//! `|round(n_u * clip(d) * 2^SCALE_BITS)| <= n_u * CLIP * 2^SCALE_BITS`
//! (the right side is an integer, so rounding cannot cross it). Summed over at
//! most `MAX_MEMBERS` members, each with `n_u <= MAX_EXAMPLES`:
//!
//! ```text
//! |weighted coordinate| <= MAX_MEMBERS * MAX_EXAMPLES * CLIP * 2^SCALE_BITS
//!                        =  2^10       * 2^20         * 2^2  * 2^30
//!                        =  2^62
//! example count          <= MAX_MEMBERS * MAX_EXAMPLES = 2^30
//! 2^62 + 2^30 < 2^63
//! ```
//!
//! so every summed coordinate, and even a coordinate plus the count, lies in
//! the signed range of `i64`: reading the wrapped `u64` sum as `i64` gives the
//! exact integer sum. A `const` assertion below re-checks this whenever a
//! constant changes.
//!
//! The same bound lets [`decode_sum`] reject a corrupt sum (a wrong or missing
//! mask): an honest sum never exceeds `total_examples * CLIP * 2^SCALE_BITS`
//! in any coordinate, while a leftover mask, uniform over 2^64, breaks it in
//! almost every coordinate.
//!
//! # Precision
//!
//! Each member's coordinate is rounded once, an error of at most
//! `2^-(SCALE_BITS + 1)` in `n_u * delta`; the weighted sum of k members is off
//! by at most `k * 2^-(SCALE_BITS + 1)`, about `k * 4.7e-10`, and the mean by
//! that divided by the total example count. That is far below f32 resolution
//! of typical parameter updates.

use crate::{CryptoError, Result, Ring};

/// Fractional bits of the encoding.
pub const SCALE_BITS: u32 = 30;

/// log2 of [`CLIP`]; the bound is exact because [`CLIP`] is a power of two.
pub const CLIP_LOG2: u32 = 2;

/// Each coordinate of an update is clipped to `[-CLIP, CLIP]` before encoding.
/// Generous for per-round parameter deltas of a network trained with a
/// modest learning rate; a larger value would cost precision bits.
pub const CLIP: f32 = (1u32 << CLIP_LOG2) as f32;

/// The largest number of members whose updates may be summed.
pub const MAX_MEMBERS: u32 = 1 << 10;

/// The largest number of training examples one member may claim (n_u).
pub const MAX_EXAMPLES: u32 = 1 << 20;

/// The largest example count of a valid sum.
pub const MAX_TOTAL_EXAMPLES: u64 = MAX_MEMBERS as u64 * MAX_EXAMPLES as u64;

/// `CLIP * 2^SCALE_BITS`: the largest encoded magnitude per example.
const CLIP_FIXED: u64 = 1 << (CLIP_LOG2 + SCALE_BITS);

/// `2^SCALE_BITS` as a float.
const SCALE: f64 = (1u64 << SCALE_BITS) as f64;

// The no-wrap bound of the module doc, checked at compile time.
const _: () = {
    let weighted = MAX_TOTAL_EXAMPLES as u128 * CLIP_FIXED as u128;
    assert!(weighted + (MAX_TOTAL_EXAMPLES as u128) < (1u128 << 63));
    assert!(MAX_MEMBERS >= 1000);
    // n_u * CLIP * 2^SCALE_BITS must be exact in an f64 mantissa.
    assert!((MAX_EXAMPLES as u64 * CLIP_FIXED) < 1u64 << 53);
};

/// Encodes member input `x_u` into `out` (cleared first):
/// `[n_examples * clip(delta[i])` in fixed point for each i`] ++ [n_examples]`,
/// length `delta.len() + 1`.
///
/// Errors on a NaN or infinite coordinate (naming its index, never its value)
/// and on `n_examples > MAX_EXAMPLES`; `out` is then left empty.
pub fn encode_update(n_examples: u32, delta: &[f32], out: &mut Vec<Ring>) -> Result<()> {
    out.clear();
    if n_examples > MAX_EXAMPLES {
        return Err(CryptoError::TooManyExamples {
            n: n_examples,
            max: MAX_EXAMPLES,
        });
    }
    // One pass that the compiler vectorises decides; the index is looked
    // for only on failure.
    if !delta.iter().fold(true, |ok, d| ok & d.is_finite()) {
        let index = delta.iter().position(|d| !d.is_finite()).unwrap_or(0);
        return Err(CryptoError::NonFinite { index });
    }
    out.reserve(delta.len() + 1);
    let weight = f64::from(n_examples) * SCALE;
    out.extend(delta.iter().map(|&d| {
        // Exact product (see the const assertion), then one rounding.
        round_half_away(weight * f64::from(d.clamp(-CLIP, CLIP))) as u64
    }));
    out.push(u64::from(n_examples));
    Ok(())
}

/// `x.round() as i64`, bit for bit, for `|x| <= 2^53`, without the call
/// into libm that `f64::round` makes on baseline x86-64 (it has no
/// rounding instruction before SSE4.1): truncate, then step away from zero
/// when the exact remainder is at least one half. This is the hot loop of
/// encoding an update; it runs about twice as fast this way.
#[inline(always)]
fn round_half_away(x: f64) -> i64 {
    let t = x as i64;
    // Exact: |x| <= 2^53, so t is exact in f64 and x - t lies in (-1, 1).
    let rem = x - t as f64;
    t + i64::from(rem >= 0.5) - i64::from(rem <= -0.5)
}

/// A decoded sum of member inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSum {
    /// `sum_u n_u`.
    pub total_examples: u64,
    /// `sum_u n_u * clip(delta_u[i])`, coordinate by coordinate.
    pub weighted_sum: Vec<f64>,
}

impl DecodedSum {
    /// The weighted FedAvg mean `weighted_sum / total_examples`; all zeros
    /// (no change to the model) when no member had any example.
    pub fn mean(&self) -> Vec<f32> {
        if self.total_examples == 0 {
            return vec![0.0; self.weighted_sum.len()];
        }
        let total = self.total_examples as f64;
        self.weighted_sum
            .iter()
            .map(|w| (w / total) as f32)
            .collect()
    }
}

/// Decodes an unmasked sum of member inputs (as produced by summing
/// [`encode_update`] outputs in the ring).
///
/// Rejects an empty vector and any sum that no set of at most
/// [`MAX_MEMBERS`] valid inputs can produce: a count above
/// [`MAX_TOTAL_EXAMPLES`] or a coordinate above `total * CLIP`. A sum that
/// still carries a mask fails here with overwhelming probability.
pub fn decode_sum(sum: &[Ring]) -> Result<DecodedSum> {
    let (total_examples, body) = checked(sum)?;
    Ok(DecodedSum {
        total_examples,
        weighted_sum: body.iter().map(|&w| weighted(w)).collect(),
    })
}

/// Decodes an unmasked sum as [`decode_sum`] does, with the same checks,
/// and returns the total example count and an iterator over the
/// coordinates of its weighted mean ([`DecodedSum::mean`], bit for bit),
/// without building the decoded sum or the mean: for a model of millions of
/// parameters that saves two vectors and two passes, and a caller that
/// zips it with another slice gets a loop the compiler vectorises.
pub fn mean_of(sum: &[Ring]) -> Result<(u64, impl ExactSizeIterator<Item = f32> + '_)> {
    let (total, body) = checked(sum)?;
    let divisor = total as f64;
    // The arithmetic of `decode_sum` then `mean`, step by step.
    let mean = body.iter().map(move |&w| {
        if total == 0 {
            0.0
        } else {
            (weighted(w) / divisor) as f32
        }
    });
    Ok((total, mean))
}

/// `sum_u n_u * clip(delta_u[i])` from coordinate i of a checked sum.
#[inline(always)]
fn weighted(w: Ring) -> f64 {
    w as i64 as f64 / SCALE
}

/// The checks of [`decode_sum`]: returns the total example count and the
/// coordinates. A first pass over every coordinate (which the compiler
/// vectorises) decides; the index of a bad one is looked for only on
/// failure.
fn checked(sum: &[Ring]) -> Result<(u64, &[Ring])> {
    let (&total, body) = sum.split_last().ok_or(CryptoError::EmptySum)?;
    if total > MAX_TOTAL_EXAMPLES {
        return Err(CryptoError::TotalOutOfRange {
            total,
            max: MAX_TOTAL_EXAMPLES,
        });
    }
    // At most 2^62, so no overflow.
    let limit = total * CLIP_FIXED;
    let in_range = |w: &Ring| (*w as i64).unsigned_abs() <= limit;
    if !body.iter().fold(true, |ok, w| ok & in_range(w)) {
        let index = body.iter().position(|w| !in_range(w)).unwrap_or(0);
        return Err(CryptoError::SumOutOfRange { index });
    }
    Ok((total, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::add_assign;

    fn encode(n: u32, delta: &[f32]) -> Vec<Ring> {
        let mut out = vec![123; 3];
        encode_update(n, delta, &mut out).unwrap();
        out
    }

    fn sum_of(inputs: &[Vec<Ring>]) -> Vec<Ring> {
        let mut acc = vec![0; inputs[0].len()];
        for x in inputs {
            add_assign(&mut acc, x);
        }
        acc
    }

    /// The fast rounding is `f64::round` bit for bit: at and beside every
    /// tie, at the extremes of the encoding and on a spread of values.
    #[test]
    fn rounding_matches_f64_round() {
        let extreme = (u64::from(MAX_EXAMPLES) * CLIP_FIXED) as f64;
        let mut xs = vec![
            0.0,
            -0.0,
            extreme,
            -extreme,
            extreme - 0.5,
            0.49999999999999994,
        ];
        for k in -1000i64..=1000 {
            let tie = k as f64 + 0.5;
            xs.extend([tie, tie.next_up(), tie.next_down(), k as f64]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
            xs.push((unit * 2.0 - 1.0) * extreme / 2f64.powi((state % 50) as i32));
        }
        for x in xs {
            assert_eq!(round_half_away(x), x.round() as i64, "{x:e}");
        }
    }

    #[test]
    fn layout_and_simple_values() {
        let x = encode(3, &[0.5, -1.0, 0.0]);
        assert_eq!(x.len(), 4);
        assert_eq!(x[0], 3 << (SCALE_BITS - 1));
        assert_eq!(x[1] as i64, -(3i64 << SCALE_BITS));
        assert_eq!(x[2], 0);
        assert_eq!(x[3], 3);
        let d = decode_sum(&x).unwrap();
        assert_eq!(d.total_examples, 3);
        assert_eq!(d.weighted_sum, vec![1.5, -3.0, 0.0]);
        assert_eq!(d.mean(), vec![0.5, -1.0, 0.0]);
    }

    #[test]
    fn weighted_mean_of_members() {
        let a = encode(1, &[1.0, 2.0]);
        let b = encode(3, &[3.0, -2.0]);
        let d = decode_sum(&sum_of(&[a, b])).unwrap();
        assert_eq!(d.total_examples, 4);
        assert_eq!(d.mean(), vec![2.5, -1.0]);
    }

    /// Every member at MAX_EXAMPLES with every coordinate at +CLIP (and at
    /// -CLIP): the sum reaches the bound of the module doc and decodes exactly.
    #[test]
    fn all_members_at_the_edge_do_not_wrap() {
        for sign in [1.0f32, -1.0] {
            let delta = [sign * CLIP, sign * CLIP * 10.0, sign * f32::MAX];
            let x = encode(MAX_EXAMPLES, &delta);
            let mut acc = vec![0u64; x.len()];
            for _ in 0..MAX_MEMBERS {
                add_assign(&mut acc, &x);
            }
            let d = decode_sum(&acc).unwrap();
            assert_eq!(d.total_examples, MAX_TOTAL_EXAMPLES);
            let extreme = f64::from(sign) * MAX_TOTAL_EXAMPLES as f64 * f64::from(CLIP);
            assert_eq!(d.weighted_sum, vec![extreme; 3]);
            assert_eq!(acc[0] as i64, (sign as i64) * (1i64 << 62));
            assert_eq!(d.mean(), vec![sign * CLIP; 3]);
        }
        // Half at +CLIP, half at -CLIP.
        let plus = encode(MAX_EXAMPLES, &[CLIP]);
        let minus = encode(MAX_EXAMPLES, &[-CLIP]);
        let mut acc = vec![0u64; 2];
        for i in 0..MAX_MEMBERS {
            add_assign(&mut acc, if i % 2 == 0 { &plus } else { &minus });
        }
        assert_eq!(decode_sum(&acc).unwrap().weighted_sum, vec![0.0]);
    }

    #[test]
    fn values_beyond_clip_are_clipped() {
        let x = encode(2, &[CLIP * 1.5, -CLIP - 0.001, f32::MIN, CLIP]);
        let d = decode_sum(&x).unwrap();
        assert_eq!(d.mean(), vec![CLIP, -CLIP, -CLIP, CLIP]);
    }

    #[test]
    fn non_finite_and_too_many_examples_refused() {
        let mut out = Vec::new();
        for (i, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
            .into_iter()
            .enumerate()
        {
            let mut delta = vec![0.1f32; 5];
            delta[i + 1] = bad;
            assert_eq!(
                encode_update(7, &delta, &mut out).unwrap_err(),
                CryptoError::NonFinite { index: i + 1 }
            );
            assert!(out.is_empty());
        }
        assert_eq!(
            encode_update(MAX_EXAMPLES + 1, &[0.0], &mut out).unwrap_err(),
            CryptoError::TooManyExamples {
                n: MAX_EXAMPLES + 1,
                max: MAX_EXAMPLES
            }
        );
        encode_update(MAX_EXAMPLES, &[0.0], &mut out).unwrap();
    }

    #[test]
    fn rounding_error_is_bounded() {
        // Values that are not multiples of 2^-SCALE_BITS.
        let members = 50u32;
        let deltas: Vec<Vec<f32>> = (0..members)
            .map(|u| {
                (0..100)
                    .map(|i| ((u * 131 + i * 17) as f32).sin() * 0.37)
                    .collect()
            })
            .collect();
        let ns: Vec<u32> = (0..members).map(|u| 1 + u * 977 % 5000).collect();
        let inputs: Vec<Vec<Ring>> = ns.iter().zip(&deltas).map(|(&n, d)| encode(n, d)).collect();
        let d = decode_sum(&sum_of(&inputs)).unwrap();
        let total: u64 = ns.iter().map(|&n| u64::from(n)).sum();
        assert_eq!(d.total_examples, total);
        let bound = f64::from(members) * 0.5 / SCALE;
        for i in 0..100 {
            let exact: f64 = ns
                .iter()
                .zip(&deltas)
                .map(|(&n, d)| f64::from(n) * f64::from(d[i]))
                .sum();
            let err = (d.weighted_sum[i] - exact).abs();
            assert!(err <= bound, "coordinate {i}: error {err} > {bound}");
            let mean_err = (f64::from(d.mean()[i]) - exact / total as f64).abs();
            // The f32 result adds at most half an f32 ulp of the mean.
            assert!(
                mean_err <= bound / total as f64 + 1e-7,
                "mean {i}: {mean_err}"
            );
        }
    }

    #[test]
    fn decode_rejects_corrupt_sums() {
        assert_eq!(decode_sum(&[]).unwrap_err(), CryptoError::EmptySum);
        assert_eq!(
            decode_sum(&[0, MAX_TOTAL_EXAMPLES + 1]).unwrap_err(),
            CryptoError::TotalOutOfRange {
                total: MAX_TOTAL_EXAMPLES + 1,
                max: MAX_TOTAL_EXAMPLES
            }
        );
        // One example allows |coordinate| <= CLIP_FIXED.
        decode_sum(&[CLIP_FIXED, (CLIP_FIXED as i64).wrapping_neg() as u64, 1]).unwrap();
        assert_eq!(
            decode_sum(&[0, CLIP_FIXED + 1, 1]).unwrap_err(),
            CryptoError::SumOutOfRange { index: 1 }
        );
        assert_eq!(
            decode_sum(&[1, 0, 0]).unwrap_err(),
            CryptoError::SumOutOfRange { index: 0 }
        );
        // A leftover mask is caught.
        let mut x = encode(100, &[0.25; 64]);
        crate::prg::add_mask(&crate::Secret32::from_bytes([7; 32]), &mut x[..64]);
        assert!(matches!(
            decode_sum(&x),
            Err(CryptoError::SumOutOfRange { .. })
        ));
    }

    #[test]
    fn zero_examples_give_zero_mean() {
        let x = encode(0, &[1.0, -1.0]);
        assert_eq!(x, vec![0, 0, 0]);
        let d = decode_sum(&x).unwrap();
        assert_eq!(d.mean(), vec![0.0, 0.0]);
    }
}

//! Shamir t-of-n secret sharing of 32-byte secrets over the curve25519 scalar field.
//!
//! # Construction (pinned)
//!
//! The field is Z/l with l = 2^252 + 27742317777372353535851937790883648493,
//! curve25519-dalek's `Scalar`. A [`Secret32`] is cut into two 16-byte halves,
//! `lo = secret[0..16]` and `hi = secret[16..32]`, each read as a
//! little-endian integer below 2^128 < l, so each half is one field element.
//! Each half gets its own uniformly random polynomial p of degree at most
//! t - 1 with p(0) = the half; share i (index x = i, 1 <= i <= n) holds both
//! polynomials evaluated at x. Sharing the halves independently at the same x
//! costs two field elements per share and keeps the 32-byte secret a pair of
//! field elements without any bias (a 256-bit secret does not fit in Z/l).
//!
//! The polynomial is drawn by its values rather than its coefficients:
//! p(1), ..., p(t - 1) are uniform in Z/l (64 random bytes reduced mod l), and
//! together with p(0) they fix p. Since evaluation at t distinct points is a
//! bijection between polynomials of degree < t and value tuples, this is the
//! same distribution as uniform coefficients. It makes shares 1..t-1 free and
//! lets shares t..n follow from a table of finite differences with additions
//! only, which are several times cheaper than the multiplications of Horner's
//! rule.
//!
//! Any t shares determine both polynomials and so the secret (Lagrange
//! interpolation at 0). Fewer than t shares are consistent with every secret
//! equally: for any candidate secret and the t - 1 known points there is
//! exactly one polynomial of degree t - 1 through them, so the shares carry
//! no information (the tests check this).
//!
//! Interpolation checks that both recovered halves are below 2^128. An honest
//! split always passes; a share of another secret, or a share hit by random
//! corruption, shifts a half by an essentially uniform field element and
//! fails with probability about 1 - 2^-124. This is a sanity check, not
//! authentication: a deliberately small change to a share can pass it, which
//! is why shares travel under AEAD and inside signed messages.
//!
//! # Encoding of a share
//!
//! `index (u16, little-endian) || y_lo (32 bytes) || y_hi (32 bytes)`, the
//! y values as canonical little-endian scalars.
//!
//! # Cost
//!
//! Splitting is about 2 (t^2 / 2 + (n - t) t) field additions and no
//! multiplications. Building an [`Interpolator`] for t indices is t^2 / 7
//! field multiplications (the differences of u16 indices are multiplied as
//! integers, seven at a time, before entering the field) plus one batched
//! inversion; each [`Interpolator::combine`] is then 2 t multiplications,
//! which is why the protocol builds one per surviving index set and reuses it
//! for every seed shared to that set.

use core::fmt;

use curve25519_dalek::Scalar;
use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{CryptoError, Result, Secret32};

/// The largest number of shares: every nonzero `u16` index.
pub const MAX_SHARES: u16 = u16::MAX;

/// One member's share of a [`Secret32`]: zeroized on drop; `Debug` prints
/// only the index.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Share {
    index: u16,
    /// Shares of the low and high 16-byte halves of the secret.
    y: [Scalar; 2],
}

impl Share {
    /// Bytes of [`Self::to_bytes`]: index (2) and two scalars (2 x 32).
    pub const ENCODED_LEN: usize = 2 + 64;

    /// The x coordinate, `1..=n`.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The encoding pinned in the module doc, in a buffer wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(Self::ENCODED_LEN));
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(self.y[0].as_bytes());
        out.extend_from_slice(self.y[1].as_bytes());
        out
    }

    /// Parses [`Self::to_bytes`]; rejects a wrong length, index 0 and
    /// non-canonical scalars.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() != Self::ENCODED_LEN {
            return Err(CryptoError::ShareLength {
                got: b.len(),
                expected: Self::ENCODED_LEN,
            });
        }
        let index = u16::from_le_bytes([b[0], b[1]]);
        if index == 0 {
            return Err(CryptoError::ZeroShareIndex);
        }
        let scalar = |bytes: &[u8]| -> Result<Scalar> {
            let mut buf = Zeroizing::new([0u8; 32]);
            buf.copy_from_slice(bytes);
            Option::from(Scalar::from_canonical_bytes(*buf))
                .ok_or(CryptoError::NonCanonicalShare { index })
        };
        Ok(Self {
            index,
            y: [scalar(&b[2..34])?, scalar(&b[34..66])?],
        })
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Splits `secret` into `n` shares with indices `1..=n`, any `threshold` of
/// which rebuild it. `threshold == 1` is allowed and gives every share holder
/// the secret.
pub fn split<R: CryptoRng + ?Sized>(
    secret: &Secret32,
    threshold: u16,
    n: u16,
    rng: &mut R,
) -> Result<Vec<Share>> {
    if threshold == 0 || threshold > n {
        return Err(CryptoError::InvalidThreshold {
            threshold,
            n,
            max: MAX_SHARES,
        });
    }
    let d = usize::from(threshold) - 1;
    let n_us = usize::from(n);
    let mut shares: Vec<Share> = (1..=n)
        .map(|index| Share {
            index,
            y: [Scalar::ZERO; 2],
        })
        .collect();
    let halves = secret_to_halves(secret);
    // w[k] = p(k) for k = 0..=d: the secret half, then d uniform values.
    let mut w: Zeroizing<Vec<Scalar>> = Zeroizing::new(Vec::with_capacity(d + 1));
    let mut wide = Zeroizing::new([0u8; 64]);
    for (h, half) in halves.iter().enumerate() {
        w.clear();
        w.push(*half);
        for _ in 0..d {
            rng.fill_bytes(&mut *wide);
            w.push(Scalar::from_bytes_mod_order_wide(&wide));
        }
        // Shares 1..=d are the drawn values themselves.
        for (share, value) in shares.iter_mut().zip(&w[1..]) {
            share.y[h] = *value;
        }
        // Backward differences at d, in place: afterwards w[d - j] holds
        // nabla^j p(d). Pass j overwrites w[0..=d-j] with the j-th forward
        // differences and leaves w[d-j+1..] (the lower orders at d) alone.
        for j in 1..=d {
            for k in 0..=d - j {
                w[k] = w[k + 1] - w[k];
            }
        }
        // Step x -> x + 1: nabla^j p(x+1) = nabla^j p(x) + nabla^(j+1) p(x+1),
        // highest order first; nabla^d is constant. Then w[d] = p(x + 1).
        for share in &mut shares[d..n_us] {
            for k in 1..=d {
                let lower = w[k - 1];
                w[k] += lower;
            }
            share.y[h] = w[d];
        }
    }
    Ok(shares)
}

/// Rebuilds the secret from the first `threshold` of `shares`, which must have
/// distinct nonzero indices. Fails on too few shares and on shares that do
/// not interpolate to a 32-byte secret.
pub fn reconstruct(shares: &[Share], threshold: u16) -> Result<Secret32> {
    let t = usize::from(threshold);
    if t == 0 {
        return Err(CryptoError::InvalidThreshold {
            threshold,
            n: u16::try_from(shares.len()).unwrap_or(u16::MAX),
            max: MAX_SHARES,
        });
    }
    if shares.len() < t {
        return Err(CryptoError::TooFewShares {
            got: shares.len(),
            need: t,
        });
    }
    let used = &shares[..t];
    let indices: Vec<u16> = used.iter().map(Share::index).collect();
    let refs: Vec<&Share> = used.iter().collect();
    Interpolator::new(&indices)?.combine(&refs)
}

/// Lagrange coefficients at 0 for a fixed set of share indices, computed once
/// with a single batched inversion and reused for every secret shared to the
/// same members.
#[derive(Debug)]
pub struct Interpolator {
    indices: Vec<u16>,
    /// `coeffs[i]` multiplies the share with index `indices[i]`. Public: they
    /// depend only on the index set.
    coeffs: Vec<Scalar>,
}

impl Interpolator {
    /// Prepares interpolation from shares with exactly these indices, in this
    /// order. Rejects an empty set, index 0 and duplicates.
    pub fn new(indices: &[u16]) -> Result<Self> {
        if indices.is_empty() {
            return Err(CryptoError::EmptyIndexSet);
        }
        let mut sorted = indices.to_vec();
        sorted.sort_unstable();
        if sorted[0] == 0 {
            return Err(CryptoError::ZeroShareIndex);
        }
        if let Some(pair) = sorted.windows(2).find(|p| p[0] == p[1]) {
            return Err(CryptoError::DuplicateShareIndex { index: pair[0] });
        }
        Ok(Self {
            indices: indices.to_vec(),
            coeffs: lagrange_at(indices, 0),
        })
    }

    /// The index set this interpolator was built for.
    pub fn indices(&self) -> &[u16] {
        &self.indices
    }

    /// Rebuilds the secret from shares given in the order of the indices.
    pub fn combine(&self, shares: &[&Share]) -> Result<Secret32> {
        if shares.len() != self.indices.len() {
            return Err(CryptoError::ShareCountMismatch {
                got: shares.len(),
                expected: self.indices.len(),
            });
        }
        let mut acc = Zeroizing::new([Scalar::ZERO; 2]);
        for (position, ((share, &expected), c)) in shares
            .iter()
            .zip(&self.indices)
            .zip(&self.coeffs)
            .enumerate()
        {
            if share.index != expected {
                return Err(CryptoError::ShareIndexMismatch {
                    position,
                    expected,
                    got: share.index,
                });
            }
            acc[0] += c * share.y[0];
            acc[1] += c * share.y[1];
        }
        halves_to_secret(&acc)
    }
}

/// Lagrange basis polynomials through the distinct integer points `xs`,
/// evaluated at `at`: `l_i(at) = prod_{j != i} (at - x_j) / (x_i - x_j)`.
///
/// Numerators by prefix and suffix products (O(t)); each denominator is a
/// product of t - 1 integers below 2^16 in absolute value, multiplied seven at
/// a time in a `u128` (at most 2^112) before entering the field, and all
/// denominators are inverted at once.
pub(crate) fn lagrange_at(xs: &[u16], at: u16) -> Vec<Scalar> {
    /// Factors below 2^16 that fit in a u128 together.
    const BATCH: usize = 7;
    let signed = |v: i64| -> Scalar {
        let s = Scalar::from(v.unsigned_abs());
        if v < 0 { -s } else { s }
    };
    let t = xs.len();
    let diffs: Vec<Scalar> = xs
        .iter()
        .map(|&x| signed(i64::from(at) - i64::from(x)))
        .collect();
    // suffix[i] = prod_{j >= i} diffs[j]
    let mut suffix = vec![Scalar::ONE; t + 1];
    for i in (0..t).rev() {
        suffix[i] = suffix[i + 1] * diffs[i];
    }
    let mut denominators: Vec<Scalar> = xs
        .iter()
        .enumerate()
        .map(|(i, &xi)| {
            let mut acc = Scalar::ONE;
            let mut partial: u128 = 1;
            let mut in_partial = 0;
            let mut negative = false;
            for (j, &xj) in xs.iter().enumerate() {
                if j == i {
                    continue;
                }
                let diff = i64::from(xi) - i64::from(xj);
                negative ^= diff < 0;
                partial *= u128::from(diff.unsigned_abs());
                in_partial += 1;
                if in_partial == BATCH {
                    acc *= Scalar::from(partial);
                    partial = 1;
                    in_partial = 0;
                }
            }
            acc *= Scalar::from(partial);
            if negative { -acc } else { acc }
        })
        .collect();
    // Nonzero because the xs are distinct and |x_i - x_j| < l.
    Scalar::batch_invert(&mut denominators);
    let mut prefix = Scalar::ONE;
    let mut out = Vec::with_capacity(t);
    for i in 0..t {
        out.push(prefix * suffix[i + 1] * denominators[i]);
        prefix *= diffs[i];
    }
    out
}

/// The two 16-byte halves of a secret as field elements.
pub(crate) fn secret_to_halves(secret: &Secret32) -> Zeroizing<[Scalar; 2]> {
    let mut buf = Zeroizing::new([0u8; 32]);
    let mut halves = Zeroizing::new([Scalar::ZERO; 2]);
    for (h, half) in halves.iter_mut().enumerate() {
        buf[..16].copy_from_slice(&secret.expose()[16 * h..16 * (h + 1)]);
        // Below 2^128 < l, so already canonical.
        *half = Scalar::from_bytes_mod_order(*buf);
    }
    halves
}

/// The inverse of [`secret_to_halves`]; fails if a half is not below 2^128.
pub(crate) fn halves_to_secret(halves: &[Scalar; 2]) -> Result<Secret32> {
    let mut out = Zeroizing::new([0u8; 32]);
    for (h, half) in halves.iter().enumerate() {
        let bytes = half.as_bytes();
        if bytes[16..].iter().any(|&b| b != 0) {
            return Err(CryptoError::InconsistentShares);
        }
        out[16 * h..16 * (h + 1)].copy_from_slice(&bytes[..16]);
    }
    Ok(Secret32::from_bytes(*out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn secret(seed: u64) -> Secret32 {
        Secret32::random(&mut rng(seed))
    }

    fn check_reconstructs(shares: &[Share], t: u16, s: &Secret32) {
        assert_eq!(reconstruct(shares, t).unwrap().expose(), s.expose());
    }

    #[test]
    fn any_t_shares_reconstruct() {
        let s = secret(1);
        let shares = split(&s, 3, 5, &mut rng(2)).unwrap();
        assert_eq!(shares.len(), 5);
        assert_eq!(
            shares.iter().map(Share::index).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        for a in 0..5 {
            for b in 0..5 {
                for c in 0..5 {
                    if a == b || b == c || a == c {
                        continue;
                    }
                    let pick: Vec<Share> = [a, b, c]
                        .iter()
                        .map(|&i| Share::from_bytes(&shares[i].to_bytes()).unwrap())
                        .collect();
                    check_reconstructs(&pick, 3, &s);
                }
            }
        }
        // More than t shares: only the first t are used.
        check_reconstructs(&shares, 3, &s);
    }

    /// The difference-table evaluation agrees with Lagrange interpolation
    /// through (0, secret) and the drawn points 1..t-1, at every index.
    #[test]
    fn shares_lie_on_one_polynomial_through_the_secret() {
        for (t, n) in [(1u16, 5u16), (2, 2), (3, 9), (8, 40), (20, 21)] {
            let s = secret(u64::from(t) * 1000 + u64::from(n));
            let shares = split(&s, t, n, &mut rng(60)).unwrap();
            let halves = secret_to_halves(&s);
            let xs: Vec<u16> = (0..t).collect();
            for x in 1..=n {
                let l = lagrange_at(&xs, x);
                for h in 0..2 {
                    let mut y = l[0] * halves[h];
                    for (li, share) in l[1..].iter().zip(&shares) {
                        y += li * share.y[h];
                    }
                    assert_eq!(y, shares[usize::from(x) - 1].y[h], "t={t} n={n} x={x}");
                }
            }
        }
    }

    #[test]
    fn threshold_one_and_threshold_n() {
        let s = secret(3);
        let shares = split(&s, 1, 4, &mut rng(4)).unwrap();
        for sh in &shares {
            check_reconstructs(std::slice::from_ref(sh), 1, &s);
        }
        let shares = split(&s, 4, 4, &mut rng(5)).unwrap();
        check_reconstructs(&shares, 4, &s);
    }

    #[test]
    fn extreme_secrets() {
        for bytes in [[0u8; 32], [0xff; 32]] {
            let s = Secret32::from_bytes(bytes);
            let shares = split(&s, 2, 3, &mut rng(6)).unwrap();
            check_reconstructs(&shares[1..], 2, &s);
        }
    }

    #[test]
    fn large_n_1000_t_667() {
        let s = secret(7);
        let shares = split(&s, 667, 1000, &mut rng(8)).unwrap();
        assert_eq!(shares.len(), 1000);
        // The last 667 shares (indices 334..=1000), in reverse order.
        let picked: Vec<&Share> = shares[333..].iter().rev().collect();
        let indices: Vec<u16> = picked.iter().map(|s| s.index()).collect();
        let ip = Interpolator::new(&indices).unwrap();
        assert_eq!(ip.combine(&picked).unwrap().expose(), s.expose());
        // 666 shares are too few.
        assert_eq!(
            reconstruct(&shares[..666], 667).unwrap_err(),
            CryptoError::TooFewShares {
                got: 666,
                need: 667
            }
        );
    }

    #[test]
    fn interpolator_reused_across_secrets() {
        let indices = [2u16, 5, 7];
        let ip = Interpolator::new(&indices).unwrap();
        assert_eq!(ip.indices(), &indices);
        for seed in 10..20 {
            let s = secret(seed);
            let shares = split(&s, 3, 8, &mut rng(seed + 100)).unwrap();
            let picked: Vec<&Share> = indices
                .iter()
                .map(|&i| &shares[usize::from(i) - 1])
                .collect();
            assert_eq!(ip.combine(&picked).unwrap().expose(), s.expose());
        }
    }

    #[test]
    fn interpolator_rejects_bad_input() {
        assert_eq!(
            Interpolator::new(&[]).unwrap_err(),
            CryptoError::EmptyIndexSet
        );
        assert_eq!(
            Interpolator::new(&[1, 0]).unwrap_err(),
            CryptoError::ZeroShareIndex
        );
        assert_eq!(
            Interpolator::new(&[3, 1, 3]).unwrap_err(),
            CryptoError::DuplicateShareIndex { index: 3 }
        );
        let shares = split(&secret(21), 2, 3, &mut rng(22)).unwrap();
        let ip = Interpolator::new(&[1, 2]).unwrap();
        assert_eq!(
            ip.combine(&[&shares[0]]).unwrap_err(),
            CryptoError::ShareCountMismatch {
                got: 1,
                expected: 2
            }
        );
        assert_eq!(
            ip.combine(&[&shares[0], &shares[2]]).unwrap_err(),
            CryptoError::ShareIndexMismatch {
                position: 1,
                expected: 2,
                got: 3
            }
        );
    }

    #[test]
    fn reconstruct_rejects_bad_input() {
        let s = secret(23);
        let shares = split(&s, 3, 5, &mut rng(24)).unwrap();
        assert!(matches!(
            reconstruct(&shares[..2], 3),
            Err(CryptoError::TooFewShares { got: 2, need: 3 })
        ));
        assert!(matches!(
            reconstruct(&shares, 0),
            Err(CryptoError::InvalidThreshold { .. })
        ));
        let dup = vec![
            Share::from_bytes(&shares[0].to_bytes()).unwrap(),
            Share::from_bytes(&shares[1].to_bytes()).unwrap(),
            Share::from_bytes(&shares[0].to_bytes()).unwrap(),
        ];
        assert_eq!(
            reconstruct(&dup, 3).unwrap_err(),
            CryptoError::DuplicateShareIndex { index: 1 }
        );
    }

    #[test]
    fn split_rejects_bad_parameters() {
        let s = secret(25);
        for (t, n) in [(0, 5), (6, 5), (1, 0), (0, 0)] {
            assert!(matches!(
                split(&s, t, n, &mut rng(26)),
                Err(CryptoError::InvalidThreshold { .. })
            ));
        }
    }

    #[test]
    fn corrupted_share_is_detected() {
        let s = secret(27);
        let shares = split(&s, 3, 5, &mut rng(28)).unwrap();
        let mut bytes = shares[1].to_bytes();
        // Bit 168 of y_lo: the shift is -3 * 2^168 mod l (the Lagrange
        // coefficient of index 2 in {1, 2, 3} is -3), far above 2^128.
        bytes[2 + 21] ^= 1;
        let bad = Share::from_bytes(&bytes).unwrap();
        let picked = [&shares[0], &bad, &shares[2]];
        let ip = Interpolator::new(&[1, 2, 3]).unwrap();
        assert_eq!(
            ip.combine(&picked).unwrap_err(),
            CryptoError::InconsistentShares
        );
        // A share of another secret with the right index is caught too.
        let other = split(&secret(29), 3, 5, &mut rng(30)).unwrap();
        let picked = [&shares[0], &shares[1], &other[2]];
        assert_eq!(
            ip.combine(&picked).unwrap_err(),
            CryptoError::InconsistentShares
        );
    }

    #[test]
    fn share_decoding_rejects_bad_bytes() {
        let shares = split(&secret(31), 2, 2, &mut rng(32)).unwrap();
        let good = shares[0].to_bytes();
        assert_eq!(good.len(), Share::ENCODED_LEN);
        assert_eq!(&good[..2], &[1, 0]);
        assert_eq!(
            Share::from_bytes(&good[..65]).unwrap_err(),
            CryptoError::ShareLength {
                got: 65,
                expected: 66
            }
        );
        let mut long = good.to_vec();
        long.push(0);
        assert!(matches!(
            Share::from_bytes(&long),
            Err(CryptoError::ShareLength { .. })
        ));
        let mut zero = good.to_vec();
        zero[..2].copy_from_slice(&[0, 0]);
        assert_eq!(
            Share::from_bytes(&zero).unwrap_err(),
            CryptoError::ZeroShareIndex
        );
        // l itself, and 2^256 - 1, are not canonical.
        let mut l_bytes = (Scalar::ZERO - Scalar::ONE).to_bytes();
        l_bytes[0] += 1; // l - 1 ends in 0xec, so no carry: this is l
        for (at, bad) in [(2usize, l_bytes), (34, [0xff; 32])] {
            let mut b = good.to_vec();
            b[at..at + 32].copy_from_slice(&bad);
            assert_eq!(
                Share::from_bytes(&b).unwrap_err(),
                CryptoError::NonCanonicalShare { index: 1 }
            );
        }
        let big_index = {
            let mut b = good.to_vec();
            b[..2].copy_from_slice(&u16::MAX.to_le_bytes());
            Share::from_bytes(&b).unwrap()
        };
        assert_eq!(big_index.index(), u16::MAX);
    }

    /// Fewer than t shares say nothing about the secret: fix t - 1 real shares
    /// of a secret A; for every candidate secret B (A itself, and others) there
    /// is exactly one value of an unseen t-th share that completes them into a
    /// valid sharing of B, and distinct candidates need distinct values. Since
    /// the unseen share is uniform (it depends on a fresh uniform coefficient),
    /// every candidate is equally likely given the t - 1 shares.
    #[test]
    fn fewer_than_t_shares_are_consistent_with_every_secret() {
        let t = 5u16;
        let a = secret(40);
        let shares = split(&a, t, 9, &mut rng(41)).unwrap();
        let known: Vec<&Share> = [1usize, 3, 4, 8].iter().map(|&i| &shares[i]).collect();
        let unseen_index = 7u16; // not among the known indices 2, 4, 5, 9
        assert!(known.iter().all(|s| s.index() != unseen_index));

        let mut candidates = vec![Secret32::from_bytes(*a.expose())];
        let mut r = rng(42);
        for _ in 0..5 {
            candidates.push(Secret32::random(&mut r));
        }
        candidates.push(Secret32::from_bytes([0u8; 32]));

        let mut completions: Vec<[u8; 64]> = Vec::new();
        for b in &candidates {
            // The polynomial through (0, b) and the known points, evaluated at
            // the unseen index.
            let mut xs = vec![0u16];
            xs.extend(known.iter().map(|s| s.index()));
            let l = lagrange_at(&xs, unseen_index);
            let b_halves = secret_to_halves(b);
            let mut y = [Scalar::ZERO; 2];
            for h in 0..2 {
                y[h] = l[0] * b_halves[h];
                for (li, s) in l[1..].iter().zip(&known) {
                    y[h] += li * s.y[h];
                }
            }
            let completion = Share {
                index: unseen_index,
                y,
            };
            let mut all: Vec<&Share> = known.clone();
            all.push(&completion);
            let indices: Vec<u16> = all.iter().map(|s| s.index()).collect();
            let rebuilt = Interpolator::new(&indices).unwrap().combine(&all).unwrap();
            assert_eq!(
                rebuilt.expose(),
                b.expose(),
                "the t - 1 shares admit candidate B"
            );
            let mut enc = [0u8; 64];
            enc.copy_from_slice(&completion.to_bytes()[2..]);
            completions.push(enc);
        }
        // The real unseen share completes A, and only A.
        assert_eq!(&completions[0][..], &shares[6].to_bytes()[2..]);
        for (i, c) in completions.iter().enumerate() {
            for d in &completions[i + 1..] {
                assert_ne!(c, d, "distinct secrets need distinct completions");
            }
        }
        // Interpolating the t - 1 shares alone as if the threshold were t - 1
        // does not give A back.
        let owned: Vec<Share> = known
            .iter()
            .map(|s| Share::from_bytes(&s.to_bytes()).unwrap())
            .collect();
        match reconstruct(&owned, t - 1) {
            Ok(wrong) => assert_ne!(wrong.expose(), a.expose()),
            Err(e) => assert_eq!(e, CryptoError::InconsistentShares),
        }
    }

    /// With t = 2, one share is t - 1 shares: its value is uniform whatever the
    /// secret. Checks the low bit of the low-half share over many splits of two
    /// extreme secrets.
    #[test]
    fn a_single_share_is_uniform_whatever_the_secret() {
        let mut r = rng(50);
        let trials = 4000;
        for s in [
            Secret32::from_bytes([0u8; 32]),
            Secret32::from_bytes([0xff; 32]),
        ] {
            let mut ones = 0u32;
            for _ in 0..trials {
                let shares = split(&s, 2, 2, &mut r).unwrap();
                ones += u32::from(shares[0].y[0].as_bytes()[0] & 1);
            }
            // Mean 2000, sd ~32: 6 sd.
            assert!((1800..=2200).contains(&ones), "{ones}");
        }
    }
}

//! Property tests of the public API: Shamir, fixed point and mask cancellation.

use primia_crypto::fixed::{self, decode_sum, encode_update};
use primia_crypto::{Interpolator, Ring, Secret32, Share, add_assign, prg, reconstruct, split};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// (t, n, seed, a permutation key) with 1 <= t <= n <= 60.
fn sharing_params() -> impl Strategy<Value = (u16, u16, u64, Vec<u32>)> {
    (1u16..=60)
        .prop_flat_map(|n| (1..=n, Just(n)))
        .prop_flat_map(|(t, n)| {
            (
                Just(t),
                Just(n),
                any::<u64>(),
                proptest::collection::vec(any::<u32>(), usize::from(n)),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any t-subset of the shares, in any order, rebuilds the secret; the
    /// shares survive encoding.
    #[test]
    fn split_reconstruct_any_subset((t, n, seed, keys) in sharing_params()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let secret = Secret32::random(&mut rng);
        let shares = split(&secret, t, n, &mut rng).unwrap();
        prop_assert_eq!(shares.len(), usize::from(n));
        // A random order of all shares, by sorting on random keys; take t.
        let mut order: Vec<usize> = (0..usize::from(n)).collect();
        order.sort_by_key(|&i| keys[i]);
        let picked: Vec<Share> = order[..usize::from(t)]
            .iter()
            .map(|&i| Share::from_bytes(&shares[i].to_bytes()).unwrap())
            .collect();
        let rebuilt = reconstruct(&picked, t).unwrap();
        prop_assert_eq!(rebuilt.expose(), secret.expose());
        let indices: Vec<u16> = picked.iter().map(Share::index).collect();
        let refs: Vec<&Share> = picked.iter().collect();
        let ip = Interpolator::new(&indices).unwrap();
        let combined = ip.combine(&refs).unwrap();
        prop_assert_eq!(combined.expose(), secret.expose());
        if t > 1 {
            prop_assert!(reconstruct(&picked[..usize::from(t) - 1], t).is_err());
        }
    }

    /// Decoding an encoded update gives it back within the rounding bound,
    /// clipped, with the example count exact.
    #[test]
    fn encode_decode_roundtrip(
        n in 0u32..=fixed::MAX_EXAMPLES,
        delta in proptest::collection::vec(-2.0f32 * fixed::CLIP..2.0 * fixed::CLIP, 0..200),
    ) {
        let mut x = Vec::new();
        encode_update(n, &delta, &mut x).unwrap();
        prop_assert_eq!(x.len(), delta.len() + 1);
        let d = decode_sum(&x).unwrap();
        prop_assert_eq!(d.total_examples, u64::from(n));
        let half_step = 0.5 / f64::from(1u32 << fixed::SCALE_BITS);
        for (w, &v) in d.weighted_sum.iter().zip(&delta) {
            let exact = f64::from(n) * f64::from(v.clamp(-fixed::CLIP, fixed::CLIP));
            prop_assert!((w - exact).abs() <= half_step, "{} vs {}", w, exact);
        }
    }

    /// The streaming mean agrees bit for bit with decode_sum then mean, on
    /// honest sums of several members and on arbitrary (mostly invalid)
    /// vectors, where both must refuse with the same error.
    #[test]
    fn streaming_mean_matches_decoded_mean(
        members in proptest::collection::vec(
            (0u32..=fixed::MAX_EXAMPLES, proptest::collection::vec(-8.0f32..8.0, 40)),
            1..6,
        ),
        garbage in proptest::collection::vec(any::<u64>(), 0..40),
        small_total in 0u64..4,
    ) {
        let mut honest = vec![0u64; 41];
        for (n, delta) in &members {
            let mut x = Vec::new();
            encode_update(*n, delta, &mut x).unwrap();
            add_assign(&mut honest, &x);
        }
        let mut with_small_total = garbage.clone();
        with_small_total.push(small_total);
        for sum in [honest, garbage, with_small_total] {
            let got = fixed::mean_of(&sum)
                .map(|(total, mean)| (total, mean.map(f32::to_bits).collect::<Vec<u32>>()));
            match decode_sum(&sum) {
                Ok(d) => {
                    let (total, streamed) = got.unwrap();
                    prop_assert_eq!(total, d.total_examples);
                    let want: Vec<u32> = d.mean().iter().map(|m| m.to_bits()).collect();
                    prop_assert_eq!(streamed, want);
                }
                Err(e) => prop_assert_eq!(got.unwrap_err().to_string(), e.to_string()),
            }
        }
    }

    /// add_mask then sub_mask gives back the original; masks of several seeds
    /// with opposite signs cancel in a sum, as pairwise masks must.
    #[test]
    fn masks_cancel(
        seed in any::<[u8; 32]>(),
        other in any::<[u8; 32]>(),
        orig in proptest::collection::vec(any::<u64>(), 0..5000),
    ) {
        let s = Secret32::from_bytes(seed);
        let mut v = orig.clone();
        prg::add_mask(&s, &mut v);
        if orig.len() >= 8 {
            prop_assert_ne!(&v, &orig);
        }
        prg::sub_mask(&s, &mut v);
        prop_assert_eq!(&v, &orig);

        // Member u adds PRG(s_uv), member v subtracts it: the sum is clean.
        let s_uv = Secret32::from_bytes(other);
        let mut yu: Vec<Ring> = orig.clone();
        let mut yv: Vec<Ring> = orig.iter().map(|x| x.rotate_left(7)).collect();
        prg::add_mask(&s_uv, &mut yu);
        prg::sub_mask(&s_uv, &mut yv);
        add_assign(&mut yu, &yv);
        let expect: Vec<Ring> = orig.iter().map(|x| x.wrapping_add(x.rotate_left(7))).collect();
        prop_assert_eq!(yu, expect);
    }
}

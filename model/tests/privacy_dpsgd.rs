//! DP-SGD: per-example clipping bound, noise scale, Poisson sampling, and training with an accountant.

use candle_core::{Device, Tensor};
use primia_model::privacy::{
    self, DpConfig, DpTrainer, PrivacyAccountant, clipped_gradient_sum, dp_local_update,
    dpsgd::{gaussian_noise, poisson_batch},
    per_example_gradients, private_gradient,
};
use primia_model::{
    Architecture, ClassWeighting, Dataset, LrSchedule, Model, ModelSpec, OptimizerKind,
    TrainConfig, evaluate,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZE: usize = 16;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn model(seed: u64) -> Model {
    Model::new(
        ModelSpec::new(Architecture::CompactCnn, SIZE, 2).unwrap(),
        seed,
    )
    .unwrap()
}

/// Class 1 has a bright patch in the left lung field, on top of noise.
fn easy(n: usize, seed: u64) -> Dataset {
    let mut r = rng(seed);
    let mut images = Vec::with_capacity(n * SIZE * SIZE);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as u32;
        for y in 0..SIZE {
            for x in 0..SIZE {
                let patch = label == 1 && (4..9).contains(&x) && (5..11).contains(&y);
                let v = 0.4 + if patch { 0.3 } else { 0.0 } + r.random_range(-0.15..0.15);
                images.push(v);
            }
        }
        labels.push(label);
    }
    Dataset::new(images, labels, SIZE, 2).unwrap()
}

fn batch(n: usize, seed: u64) -> (Tensor, Vec<u32>) {
    let mut r = rng(seed);
    let pixels: Vec<f32> = (0..n * SIZE * SIZE).map(|_| r.random()).collect();
    let labels = (0..n).map(|_| r.random_range(0..2u32)).collect();
    let x = Tensor::from_vec(pixels, (n, 1, SIZE, SIZE), &Device::Cpu).unwrap();
    (x, labels)
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn no_clipped_per_example_gradient_exceeds_the_bound() {
    let m = model(1);
    let (x, labels) = batch(12, 2);
    let weights = [1.0f32, 3.0];
    let per = per_example_gradients(&m, &x, &labels, &weights).unwrap();
    let raw: Vec<f64> = per.iter().map(|g| norm(g)).collect();
    // A bound below some norms and above others: both cases occur.
    let mut sorted = raw.clone();
    sorted.sort_by(f64::total_cmp);
    let clip = 0.5 * (sorted[5] + sorted[6]);
    let c = clipped_gradient_sum(&m, &x, &labels, &weights, clip).unwrap();
    let mut clipped_any = false;
    let mut kept_any = false;
    let mut expect = vec![0.0f64; c.sum.len()];
    for (i, g) in per.iter().enumerate() {
        assert!(
            (c.norms[i] - raw[i]).abs() <= 1e-4 * raw[i],
            "norm of example {i}"
        );
        let f = c.factors[i];
        assert!(f > 0.0 && f <= 1.0);
        let clipped: Vec<f32> = g.iter().map(|v| v * f as f32).collect();
        assert!(
            norm(&clipped) <= clip * (1.0 + 1e-6),
            "example {i}: clipped norm {} above {clip}",
            norm(&clipped)
        );
        if raw[i] > clip {
            clipped_any = true;
            assert!((norm(&clipped) - clip).abs() <= 1e-4 * clip);
        } else {
            kept_any = true;
            assert_eq!(f, 1.0);
        }
        for (e, v) in expect.iter_mut().zip(&clipped) {
            *e += f64::from(*v);
        }
    }
    assert!(clipped_any && kept_any);
    // The sum is the sum of the clipped gradients, so its norm is at most n C.
    let diff: f64 = c
        .sum
        .iter()
        .zip(&expect)
        .map(|(a, b)| (f64::from(*a) - b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(diff <= 1e-4 * norm(&c.sum), "clipped sum differs by {diff}");
    assert!(norm(&c.sum) <= clip * 12.0);

    // One example alone with a tiny bound: the whole step moves by at most C.
    let (x1, l1) = batch(1, 3);
    let tiny = 1e-3;
    let one = clipped_gradient_sum(&m, &x1, &l1, &weights, tiny).unwrap();
    assert!(one.norms[0] > tiny);
    assert!(norm(&one.sum) <= tiny * (1.0 + 1e-6));
}

/// Sample variance of `v` and its mean.
fn moments(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

/// The noise added to a step is N(0, sigma^2 C^2) per coordinate, divided
/// by the expected batch size: checked on the ~25k coordinates of the model,
/// within 5 standard errors (the sample variance of n normal draws has
/// relative standard error sqrt(2 / (n - 1))).
#[test]
fn noise_has_the_configured_variance() {
    let m = model(4);
    let dp = DpConfig {
        clip_norm: 0.7,
        noise_multiplier: 1.3,
        sample_rate: 0.05,
    };
    let expected_batch = 5.0;
    let want_std = dp.noise_multiplier * dp.clip_norm / expected_batch;
    let check = |values: Vec<f64>, what: &str| {
        let n = values.len() as f64;
        let (mean, var) = moments(&values);
        let se_var = want_std.powi(2) * (2.0 / (n - 1.0)).sqrt();
        assert!(
            (var - want_std.powi(2)).abs() <= 5.0 * se_var,
            "{what}: variance {var} vs {} (n = {n})",
            want_std.powi(2)
        );
        assert!(
            mean.abs() <= 5.0 * want_std / n.sqrt(),
            "{what}: mean {mean}"
        );
    };

    // An empty Poisson batch: the step is the noise alone.
    let empty = Tensor::zeros((0, 1, SIZE, SIZE), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = [1.0f32, 1.0];
    let g = private_gradient(&m, &empty, &[], &w, &dp, expected_batch, &mut rng(5)).unwrap();
    assert_eq!(g.len(), m.param_count());
    assert!(m.param_count() > 20_000);
    check(g.iter().map(|v| f64::from(*v)).collect(), "empty batch");

    // A real batch: private gradient minus clipped sum / expected batch is the noise.
    let (x, labels) = batch(6, 6);
    let g = private_gradient(&m, &x, &labels, &w, &dp, expected_batch, &mut rng(7)).unwrap();
    let c = clipped_gradient_sum(&m, &x, &labels, &w, dp.clip_norm).unwrap();
    let noise: Vec<f64> = g
        .iter()
        .zip(&c.sum)
        .map(|(p, s)| f64::from(*p) - f64::from(*s) / expected_batch)
        .collect();
    check(noise, "batch of 6");

    // Fresh noise each call.
    let a = private_gradient(&m, &x, &labels, &w, &dp, expected_batch, &mut rng(8)).unwrap();
    assert_ne!(a, g);

    // The generator itself, at a larger count.
    let raw = gaussian_noise(200_000, 2.5, &mut rng(9)).unwrap();
    let (mean, var) = moments(&raw.iter().map(|v| f64::from(*v)).collect::<Vec<_>>());
    let se = 6.25 * (2.0f64 / 199_999.0).sqrt();
    assert!((var - 6.25).abs() <= 5.0 * se, "variance {var}");
    assert!(mean.abs() <= 5.0 * 2.5 / 200_000f64.sqrt());
}

#[test]
fn poisson_batches_have_the_right_size_distribution() {
    let mut r = rng(10);
    let (n, q) = (5000usize, 0.02);
    let sizes: Vec<f64> = (0..400)
        .map(|_| poisson_batch(n, q, &mut r).len() as f64)
        .collect();
    let (mean, var) = moments(&sizes);
    let want_var = n as f64 * q * (1.0 - q);
    assert!(
        (mean - 100.0).abs() <= 5.0 * (want_var / 400.0).sqrt(),
        "mean {mean}"
    );
    assert!(
        (var / want_var - 1.0).abs() < 0.35,
        "variance {var} vs {want_var}"
    );
    // Indices are distinct, in range, and every example can be drawn.
    let b = poisson_batch(50, 0.5, &mut r);
    assert!(b.windows(2).all(|w| w[0] < w[1]) && b.iter().all(|&i| i < 50));
    let mut seen = [false; 50];
    for _ in 0..100 {
        for i in poisson_batch(50, 0.1, &mut r) {
            seen[i] = true;
        }
    }
    assert!(seen.iter().all(|s| *s));
    // Small rates give empty batches.
    let empties = (0..200)
        .filter(|_| poisson_batch(10, 0.05, &mut r).is_empty())
        .count();
    assert!(
        (80..160).contains(&empties),
        "{empties} empty batches of 200"
    );
}

fn dp_train_config() -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerKind::adamw(),
        lr: 3e-3,
        schedule: LrSchedule::Constant,
        class_weighting: ClassWeighting::None,
        augment: None,
        ..TrainConfig::default()
    }
}

#[test]
fn dp_sgd_learns_and_the_accountant_counts_every_step() {
    let d = easy(128, 11);
    let mut m = model(12);
    let before = evaluate(&m, &d).unwrap();
    let dp = DpConfig {
        clip_norm: 1.0,
        noise_multiplier: 0.8,
        sample_rate: DpConfig::sample_rate_for(32, d.len()),
    };
    let mut acc = PrivacyAccountant::new();
    let mut trainer = DpTrainer::new(&m, &dp_train_config(), dp).unwrap();
    let mut seen = 0;
    let report = trainer
        .train_steps(&mut m, &d, 40, &mut rng(13), &mut acc, |_| seen += 1)
        .unwrap();
    let after = evaluate(&m, &d).unwrap();
    assert_eq!(report.steps, 40);
    assert_eq!(seen, 40);
    // Poisson batches: about 32 images per step, not exactly.
    assert!((900..1700).contains(&report.images), "{report:?}");
    assert!(
        after.loss < before.loss * 0.8 && after.accuracy > 0.8,
        "loss {} -> {}, accuracy {} ({report:?})",
        before.loss,
        after.loss,
        after.accuracy
    );
    assert_eq!(acc.steps(), 40);
    let want = privacy::epsilon(dp.sample_rate, dp.noise_multiplier, 40, 1e-5).unwrap();
    let got = acc.epsilon(1e-5).unwrap().epsilon;
    assert!(
        (got - want.epsilon).abs() <= 1e-12 * want.epsilon,
        "{got} vs {want:?}"
    );
}

#[test]
fn local_update_with_mostly_empty_batches_still_moves_by_noise_only() {
    let d = easy(20, 14);
    let mut m = model(15);
    let dp = DpConfig {
        clip_norm: 0.5,
        noise_multiplier: 2.0,
        sample_rate: 0.01,
    };
    let mut acc = PrivacyAccountant::new();
    let cfg = TrainConfig {
        optimizer: OptimizerKind::sgd(),
        lr: 0.01,
        ..dp_train_config()
    };
    let up = dp_local_update(&mut m, &d, 10, &cfg, &dp, &mut acc, &mut rng(16)).unwrap();
    assert_eq!(up.report.steps, 10);
    assert!(up.report.images < 10);
    assert_eq!(up.delta.len(), m.param_count());
    assert!(up.delta.iter().any(|v| *v != 0.0));
    assert_eq!(acc.steps(), 10);
}

#[test]
fn bad_dp_settings_are_refused() {
    let m = model(17);
    let ok = DpConfig {
        clip_norm: 1.0,
        noise_multiplier: 1.0,
        sample_rate: 0.1,
    };
    for (bad, what) in [
        (
            DpConfig {
                clip_norm: 0.0,
                ..ok
            },
            "clipping norm",
        ),
        (
            DpConfig {
                clip_norm: f64::NAN,
                ..ok
            },
            "clipping norm",
        ),
        (
            DpConfig {
                noise_multiplier: -1.0,
                ..ok
            },
            "noise multiplier",
        ),
        (
            DpConfig {
                sample_rate: 0.0,
                ..ok
            },
            "sample rate",
        ),
        (
            DpConfig {
                sample_rate: 1.5,
                ..ok
            },
            "sample rate",
        ),
    ] {
        let e = DpTrainer::new(&m, &dp_train_config(), bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{e}");
    }
    // Labels that do not fit the model.
    let (x, _) = batch(2, 18);
    let e = per_example_gradients(&m, &x, &[0, 5], &[1.0, 1.0]).unwrap_err();
    assert!(e.to_string().contains("label 5"), "{e}");
    let e = per_example_gradients(&m, &x, &[0], &[1.0, 1.0]).unwrap_err();
    assert!(e.to_string().contains("2 images and 1 labels"), "{e}");
}

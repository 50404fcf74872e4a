//! Training and evaluation on tiny synthetic data: the loss goes down, runs are reproducible, configs are checked.

use primia_model::data::phantom::phantom;
use primia_model::kernels;
use primia_model::{
    Architecture, AugmentConfig, ClassWeighting, Dataset, LrSchedule, Model, ModelSpec,
    OptimizerKind, TrainConfig, Trainer, evaluate, local_update, train_steps,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Small enough to keep the suite fast, big enough to learn from: 16x16
/// phantoms (the smallest input the networks take).
const SIZE: usize = 16;

fn data(n: usize, seed: u64) -> Dataset {
    phantom(n, SIZE, 0.5, seed).unwrap()
}

/// A task the network must pick up within a few dozen steps: class 1 has a
/// faint bright patch in the left lung field, on top of noise. (The phantom
/// is deliberately harder than that: it takes epochs, not steps.)
fn easy(n: usize, seed: u64) -> Dataset {
    let mut r = rng(seed);
    let mut images = Vec::with_capacity(n * SIZE * SIZE);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as u32;
        for y in 0..SIZE {
            for x in 0..SIZE {
                let patch = label == 1 && (4..9).contains(&x) && (5..11).contains(&y);
                let v = 0.4 + if patch { 0.25 } else { 0.0 } + r.random_range(-0.15..0.15);
                images.push(v);
            }
        }
        labels.push(label);
    }
    Dataset::new(images, labels, SIZE, 2).unwrap()
}

fn model(seed: u64) -> Model {
    Model::new(
        ModelSpec::new(Architecture::CompactCnn, SIZE, 2).unwrap(),
        seed,
    )
    .unwrap()
}

fn config(optimizer: OptimizerKind, lr: f64) -> TrainConfig {
    TrainConfig {
        optimizer,
        lr,
        batch_size: 16,
        schedule: LrSchedule::Constant,
        augment: None,
        ..TrainConfig::default()
    }
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A batch is trained in parts side by side when there are threads for it,
/// and in turn when there are not: the weights come out bit for bit the
/// same either way.
#[test]
fn training_does_not_depend_on_the_number_of_threads() {
    let d = data(80, 3);
    let run = |threads: usize| {
        kernels::with_threads(threads, || {
            let mut m = model(1);
            let mut t = Trainer::new(&m, &config(OptimizerKind::sgd(), 0.05)).unwrap();
            t.train_steps(&mut m, &d, 3, &mut rng(2), |_| {}).unwrap();
            m.flatten().unwrap()
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

/// Training must lower the loss on the data it trains on, for both optimisers.
#[test]
fn loss_goes_down() {
    let d = easy(64, 1);
    for (opt, lr) in [(OptimizerKind::adamw(), 3e-3), (OptimizerKind::sgd(), 0.05)] {
        let mut m = model(1);
        let before = evaluate(&m, &d).unwrap().loss;
        let cfg = config(opt.clone(), lr);
        let report = train_steps(&mut m, &d, 24, &cfg, &mut rng(2)).unwrap();
        let after = evaluate(&m, &d).unwrap().loss;
        assert!(
            after < before * 0.8,
            "{opt:?}: loss {before} -> {after} ({report:?})"
        );
        assert_eq!(report.steps, 24);
        assert_eq!(report.images, 24 * 16);
        assert_eq!(report.examples, 64);
        assert!(report.mean_loss.is_finite());
    }
}

#[test]
fn same_seed_same_weights_after_training() {
    let d = data(48, 3);
    let cfg = TrainConfig {
        batch_size: 16,
        augment: Some(AugmentConfig::default()),
        ..TrainConfig::default()
    };
    let run = |data_seed: u64| {
        let mut m = model(5);
        train_steps(&mut m, &d, 6, &cfg, &mut rng(data_seed)).unwrap();
        m.flatten().unwrap()
    };
    let a = run(7);
    let b = run(7);
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "two runs from the same seeds differ"
    );
    let c = run(8);
    assert_ne!(
        a, c,
        "another batch/augmentation seed must change the result"
    );
}

#[test]
fn local_update_is_the_weight_change() {
    let d = data(32, 4);
    let mut m = model(2);
    let start = m.flatten().unwrap();
    let up = local_update(
        &mut m,
        &d,
        3,
        &config(OptimizerKind::adamw(), 1e-3),
        &mut rng(1),
    )
    .unwrap();
    let end = m.flatten().unwrap();
    assert_eq!(up.examples, 32);
    assert_eq!(up.delta.len(), start.len());
    for ((s, e), dlt) in start.iter().zip(&end).zip(&up.delta) {
        assert_eq!(*dlt, e - s);
    }
    assert!(up.delta.iter().any(|x| *x != 0.0));
}

/// A trainer keeps its schedule position and epoch order across calls;
/// the steps-per-epoch arithmetic matches the data size.
#[test]
fn trainer_counts_steps_across_calls() {
    let d = data(40, 5);
    let mut m = model(3);
    let cfg = TrainConfig {
        schedule: LrSchedule::cosine(2, 6),
        ..config(OptimizerKind::sgd(), 0.01)
    };
    let mut t = Trainer::new(&m, &cfg).unwrap();
    assert_eq!(t.steps_per_epoch(&d), 3);
    let mut lrs = Vec::new();
    let mut r = rng(0);
    t.train_steps(&mut m, &d, 2, &mut r, |s| lrs.push((s.step, s.lr)))
        .unwrap();
    t.train_steps(&mut m, &d, 4, &mut r, |s| lrs.push((s.step, s.lr)))
        .unwrap();
    assert_eq!(t.step_count(), 6);
    let steps: Vec<u64> = lrs.iter().map(|x| x.0).collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4, 5]);
    assert!((lrs[0].1 - 0.005).abs() < 1e-12 && (lrs[1].1 - 0.01).abs() < 1e-12);
    assert!(lrs[5].1 < lrs[2].1);
}

#[test]
fn class_weighting_balances_the_loss() {
    // 3:1 imbalance: balanced weights are n / (K n_c) = 40/(2*30), 40/(2*10).
    let d = data(200, 6);
    let idx: Vec<usize> = {
        let zeros = (0..d.len()).filter(|&i| d.labels()[i] == 0).take(30);
        let ones = (0..d.len()).filter(|&i| d.labels()[i] == 1).take(10);
        zeros.chain(ones).collect()
    };
    let d = d.subset(&idx).unwrap();
    let w = primia_model::train::class_weights(&ClassWeighting::Balanced, &d).unwrap();
    assert!((w[0] - 40.0 / 60.0).abs() < 1e-6 && (w[1] - 2.0).abs() < 1e-6);
    assert!(primia_model::train::class_weights(&ClassWeighting::Manual(vec![1.0]), &d).is_err());
}

#[test]
fn bad_configs_and_data_are_refused() {
    let d = data(8, 7);
    let mut m = model(0);
    let good = config(OptimizerKind::adamw(), 1e-3);
    for bad in [
        TrainConfig {
            lr: 0.0,
            ..good.clone()
        },
        TrainConfig {
            lr: f64::NAN,
            ..good.clone()
        },
        TrainConfig {
            batch_size: 0,
            ..good.clone()
        },
        TrainConfig {
            weight_decay: -1.0,
            ..good.clone()
        },
        TrainConfig {
            optimizer: OptimizerKind::Sgd {
                momentum: 1.5,
                nesterov: false,
            },
            ..good.clone()
        },
        TrainConfig {
            max_grad_norm: Some(0.0),
            ..good.clone()
        },
        TrainConfig {
            augment: Some(AugmentConfig {
                zoom: (2.0, 1.0),
                ..AugmentConfig::default()
            }),
            ..good.clone()
        },
    ] {
        assert!(
            train_steps(&mut m, &d, 1, &bad, &mut rng(0)).is_err(),
            "{bad:?}"
        );
    }
    // Images of the wrong size, and the wrong number of classes.
    let big = phantom(4, 28, 0.5, 0).unwrap();
    let err = train_steps(&mut m, &big, 1, &good, &mut rng(0)).unwrap_err();
    assert!(err.to_string().contains("28x28"), "{err}");
    let three = Dataset::new(vec![0.5; 3 * SIZE * SIZE], vec![0, 1, 2], SIZE, 3).unwrap();
    assert!(train_steps(&mut m, &three, 1, &good, &mut rng(0)).is_err());
    assert!(evaluate(&m, &three).is_err());
}

/// Divergence is reported, not trained through: an absurd learning rate
/// must give an error naming the problem, or finite weights.
#[test]
fn divergence_is_an_error_not_nan_weights() {
    let d = data(32, 8);
    let mut m = model(0);
    let cfg = TrainConfig {
        lr: 10.0,
        max_grad_norm: None,
        ..config(OptimizerKind::sgd(), 10.0)
    };
    match train_steps(&mut m, &d, 30, &cfg, &mut rng(0)) {
        Err(e) => assert!(e.to_string().contains("diverged"), "{e}"),
        Ok(_) => assert!(m.flatten().unwrap().iter().all(|v| v.is_finite())),
    }
}

/// Plain SGD (no momentum, no decay) with SCAFFOLD's correction `corr`
/// moves the weights by `-lr * sum(g_k + corr)`: the mean raw gradient the
/// trainer reports must be exactly `(x - y) / (k * lr) - corr`, and a zero
/// correction must leave training as it was, bit for bit.
#[test]
fn drift_correction_shifts_every_step_and_reports_the_raw_gradient() {
    let d = easy(64, 3);
    let plain = OptimizerKind::Sgd {
        momentum: 0.0,
        nesterov: false,
    };
    let cfg = TrainConfig {
        weight_decay: 0.0,
        ..config(plain, 0.05)
    };
    let (steps, lr) = (5u64, 0.05f64);

    let mut a = model(1);
    let start = a.flatten().unwrap();
    let mut t = Trainer::new(&a, &cfg).unwrap();
    assert!(t.mean_gradient(&a).unwrap().is_none());
    t.train_steps(&mut a, &d, steps, &mut rng(9), |_| {})
        .unwrap();
    let mut b = model(1);
    let mut t = Trainer::new(&b, &cfg).unwrap();
    t.set_drift_correction(&b, &vec![0.0; start.len()]).unwrap();
    t.train_steps(&mut b, &d, steps, &mut rng(9), |_| {})
        .unwrap();
    assert_eq!(a.flatten().unwrap(), b.flatten().unwrap());

    let corr: Vec<f32> = (0..start.len())
        .map(|i| 0.02 * ((i % 7) as f32 - 3.0))
        .collect();
    let mut c = model(1);
    let mut t = Trainer::new(&c, &cfg).unwrap();
    t.set_drift_correction(&c, &corr).unwrap();
    t.train_steps(&mut c, &d, steps, &mut rng(9), |_| {})
        .unwrap();
    let mean = t.mean_gradient(&c).unwrap().expect("steps were taken");
    let end = c.flatten().unwrap();
    let mut worst = 0.0f64;
    for i in 0..start.len() {
        let implied = f64::from(start[i] - end[i]) / (steps as f64 * lr) - f64::from(corr[i]);
        worst = worst.max((implied - f64::from(mean[i])).abs());
    }
    assert!(worst < 2e-3, "mean gradient off by {worst}");
    // The correction did move the weights away from the uncorrected run.
    assert_ne!(end, a.flatten().unwrap());

    let err = Trainer::new(&c, &cfg)
        .unwrap()
        .set_drift_correction(&c, &[0.0; 3])
        .unwrap_err();
    assert!(err.to_string().contains("3"), "{err}");
}

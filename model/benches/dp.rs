//! DP-SGD training throughput against plain training of the same model, in the same run.
//!
//! `cargo bench -p primia-model --bench dp -- [cnn|resnet18] [steps] [repetitions]`.
//! Synthetic phantom images at 28x28, 512 of them; plain training draws
//! batches of 64, DP-SGD Poisson-samples with q = 64/512 (64 images per step
//! on average) and clips per example, adds noise and records each step in
//! an accountant. Both use the default recipe (AdamW, balanced classes)
//! without augmentation, so the figures compare gradient computation, not
//! image preparation. The two alternate, `steps` steps each, `repetitions`
//! times; each run prints a line, and the last line gives the medians:
//! `dp-throughput dp_img_s=<x> plain_img_s=<y> ratio=<x/y>`.

use std::time::Instant;

use primia_model::data::phantom::phantom;
use primia_model::privacy::{DpConfig, DpTrainer, PrivacyAccountant};
use primia_model::{Architecture, Model, ModelSpec, TrainConfig, Trainer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn main() {
    // SAFETY: first thing in main, no other thread yet; as in `primiad`.
    unsafe { primia_model::runtime::configure_process() };
    // `cargo bench` passes `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let name = args.first().map(String::as_str).unwrap_or("cnn");
    let arch = match name {
        "cnn" => Architecture::CompactCnn,
        "resnet18" => Architecture::ResNet18,
        other => {
            eprintln!("unknown model {other}; use cnn or resnet18");
            std::process::exit(2);
        }
    };
    let steps: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let batch = 64;
    let size = 28;
    let data = phantom(batch * 8, size, 0.5, 1).expect("phantom data");
    let spec = ModelSpec::new(arch, size, 2).expect("spec");
    let cfg = TrainConfig {
        batch_size: batch,
        augment: None,
        ..TrainConfig::default()
    };
    let dp = DpConfig {
        clip_norm: 1.0,
        noise_multiplier: 1.0,
        sample_rate: DpConfig::sample_rate_for(batch, data.len()),
    };
    let mut plain_model = Model::new(spec.clone(), 1).expect("model");
    let mut dp_model = Model::new(spec, 1).expect("model");
    let mut plain = Trainer::new(&plain_model, &cfg).expect("trainer");
    let mut private = DpTrainer::new(&dp_model, &cfg, dp).expect("dp trainer");
    let mut accountant = PrivacyAccountant::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // Warm-up: first-touch allocations and caches.
    plain
        .train_steps(&mut plain_model, &data, 2, &mut rng, |_| {})
        .expect("warm-up");
    private
        .train_steps(&mut dp_model, &data, 2, &mut rng, &mut accountant, |_| {})
        .expect("warm-up");
    let (mut plain_rates, mut dp_rates) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        let r = plain
            .train_steps(&mut plain_model, &data, steps, &mut rng, |_| {})
            .expect("plain training");
        let plain_img_s = r.images as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let r = private
            .train_steps(
                &mut dp_model,
                &data,
                steps,
                &mut rng,
                &mut accountant,
                |_| {},
            )
            .expect("dp training");
        let dp_img_s = r.images as f64 / t.elapsed().as_secs_f64();
        println!(
            "model={name} plain_img_s={plain_img_s:.1} dp_img_s={dp_img_s:.1} dp_images={}",
            r.images
        );
        plain_rates.push(plain_img_s);
        dp_rates.push(dp_img_s);
    }
    let p = median(&mut plain_rates);
    let d = median(&mut dp_rates);
    println!(
        "dp-throughput dp_img_s={d:.1} plain_img_s={p:.1} ratio={:.3}",
        d / p
    );
}

//! Training throughput (images per second) of one network, printed as plain lines for `scripts/bench-train.sh`.
//!
//! `cargo bench -p primia-model --bench train_throughput -- [cnn|resnet18] [steps] [repetitions]`.
//! Synthetic phantom images at 28x28, batch 64 (16 for ResNet-18 unless
//! `BENCH_BATCH` says otherwise), the default recipe (AdamW, balanced
//! classes, gradient clipping) without augmentation, so that the figure
//! measures the network's forward and backward passes and the optimiser,
//! as the PyTorch script does. Each repetition prints
//! `candle model=<name> batch=<b> cpu_ms_per_img=<c> img_s=<x>`.

use std::time::Instant;

use primia_model::data::phantom::phantom;
use primia_model::{Architecture, Model, ModelSpec, TrainConfig, Trainer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn main() {
    // SAFETY: first thing in main, no other thread yet. The same process
    // settings as `primiad`, which is what hospitals train with.
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
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let size = 28;
    let data = phantom(batch * 8, size, 0.5, 1).expect("phantom data");
    let mut model = Model::new(ModelSpec::new(arch, size, 2).expect("spec"), 1).expect("model");
    let cfg = TrainConfig {
        batch_size: batch,
        augment: None,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model, &cfg).expect("trainer");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // Warm-up: first-touch allocations and caches.
    trainer
        .train_steps(&mut model, &data, 2, &mut rng, |_| {})
        .expect("warm-up");
    for _ in 0..reps {
        let t = Instant::now();
        let cpu = process_cpu_s();
        let r = trainer
            .train_steps(&mut model, &data, steps, &mut rng, |_| {})
            .expect("training");
        let img_s = r.images as f64 / t.elapsed().as_secs_f64();
        // CPU time per image: on a machine shared with other work, a
        // steadier measure of the kernels' cost than wall time (it counts
        // spinning threads too).
        let cpu_ms = match (cpu, process_cpu_s()) {
            (Some(a), Some(b)) => format!("{:.3}", (b - a) * 1e3 / r.images as f64),
            _ => "na".into(),
        };
        println!("candle model={name} batch={batch} cpu_ms_per_img={cpu_ms} img_s={img_s:.1}");
    }
}

/// User plus system CPU seconds of this process so far, from /proc (Linux only).
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 12th and 13th, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

//! Training and inference throughput of the networks on the CPU (images per second).
//!
//! `cargo bench -p primia-model --bench train`. Batches are synthetic
//! phantom images, so the bench needs no data files.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use primia_model::data::phantom::phantom;
use primia_model::{Architecture, Model, ModelSpec, TrainConfig, Trainer, predict_proba};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn bench_train_step(c: &mut Criterion, arch: Architecture, size: usize, batch: usize) {
    let data = phantom(batch * 4, size, 0.5, 1).unwrap();
    let mut model = Model::new(ModelSpec::new(arch, size, 2).unwrap(), 1).unwrap();
    let cfg = TrainConfig {
        batch_size: batch,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model, &cfg).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut g = c.benchmark_group(format!("train_step/{arch}/{size}px"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function(format!("batch{batch}"), |b| {
        b.iter(|| {
            trainer
                .train_steps(&mut model, &data, 1, &mut rng, |_| {})
                .unwrap()
        })
    });
    g.finish();
}

fn bench_inference(c: &mut Criterion, arch: Architecture, size: usize, n: usize) {
    let data = phantom(n, size, 0.5, 2).unwrap();
    let model = Model::new(ModelSpec::new(arch, size, 2).unwrap(), 1).unwrap();
    let mut g = c.benchmark_group(format!("inference/{arch}/{size}px"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("{n}images"), |b| {
        b.iter_batched(
            || (),
            |_| predict_proba(&model, &data).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_train_step(c, Architecture::CompactCnn, 28, 64);
    bench_inference(c, Architecture::CompactCnn, 28, 256);
    bench_train_step(c, Architecture::ResNet18, 28, 16);
}

criterion_group!(train, benches);
criterion_main!(train);

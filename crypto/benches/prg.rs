//! Benchmarks of the round's hot primitives: mask expansion, Shamir, agreement.
//!
//! `cargo bench -p primia-crypto --bench prg`. Throughput of the mask PRG is
//! reported in bytes of mask per second (8 bytes per ring element). The
//! `add_mask` rows name the keystream implementation: the first is the one
//! this CPU runs, the others those it could fall back to; the
//! `blake3 xof (v1)` row is the PRG of version 1 (a keyed blake3 XOF, fused
//! through an 8 KiB buffer), kept here as the yardstick that version 2's
//! AES-128 counter mode replaced.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use primia_crypto::{
    AgreementSecret, IdentityKey, Interpolator, Secret32, Share, kdf, prg, reconstruct, split,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Version 1 of the mask PRG: a keyed blake3 XOF added in 8 KiB pieces.
fn blake3_xof_add(key: &[u8; 32], out: &mut [u64]) {
    let mut xof = blake3::Hasher::new_keyed(key).finalize_xof();
    let mut buf = [0u8; 8192];
    for chunk in out.chunks_mut(1024) {
        let bytes = &mut buf[..chunk.len() * 8];
        xof.fill(bytes);
        for (o, w) in chunk.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = o.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
        }
    }
}

fn bench_mask(c: &mut Criterion) {
    let seed = Secret32::from_bytes([7; 32]);
    let mut group = c.benchmark_group("prg");
    let add_mask = format!("add_mask {}", prg::implementation());
    for len in [1_000_000usize, 100_000] {
        let mut v = vec![0u64; len];
        group.throughput(Throughput::Bytes(8 * len as u64));
        group.bench_with_input(BenchmarkId::new(&add_mask, len), &len, |b, _| {
            b.iter(|| prg::add_mask(black_box(&seed), black_box(&mut v)))
        });
        for other in ["aes-ni", "aes crate"] {
            if other != prg::implementation() && prg::add_mask_with(other, &seed, &mut v) {
                let id = BenchmarkId::new(format!("add_mask {other}"), len);
                group.bench_with_input(id, &len, |b, _| {
                    b.iter(|| prg::add_mask_with(other, black_box(&seed), black_box(&mut v)))
                });
            }
        }
        group.bench_with_input(BenchmarkId::new("blake3 xof (v1)", len), &len, |b, _| {
            b.iter(|| blake3_xof_add(black_box(&[7; 32]), black_box(&mut v)))
        });
        group.bench_with_input(BenchmarkId::new("sub_mask", len), &len, |b, _| {
            b.iter(|| prg::sub_mask(black_box(&seed), black_box(&mut v)))
        });
    }
    group.finish();

    // Ten masks over one vector: one pass per seed against one fused pass.
    let seeds: Vec<Secret32> = (0..10u8).map(|i| Secret32::from_bytes([i; 32])).collect();
    let refs: Vec<&Secret32> = seeds.iter().collect();
    let mut group = c.benchmark_group("prg10");
    for len in [1_000_000usize, 100_000] {
        let mut v = vec![0u64; len];
        group.throughput(Throughput::Bytes(10 * 8 * len as u64));
        group.bench_with_input(BenchmarkId::new("add_mask x10", len), &len, |b, _| {
            b.iter(|| {
                for s in &refs {
                    prg::add_mask(s, black_box(&mut v));
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("apply_masks 10", len), &len, |b, _| {
            b.iter(|| prg::apply_masks(black_box(&refs[..5]), &refs[5..], black_box(&mut v)))
        });
    }
    group.finish();
}

fn bench_shamir(c: &mut Criterion) {
    let (t, n) = (51u16, 100u16);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let secret = Secret32::random(&mut rng);
    let mut group = c.benchmark_group("shamir");
    group.bench_function("split n=100 t=51", |b| {
        b.iter(|| split(black_box(&secret), t, n, &mut rng).unwrap())
    });
    let shares: Vec<Share> = split(&secret, t, n, &mut rng).unwrap();
    group.bench_function("reconstruct n=100 t=51", |b| {
        b.iter(|| reconstruct(black_box(&shares), t).unwrap())
    });
    let indices: Vec<u16> = shares[..usize::from(t)].iter().map(Share::index).collect();
    group.bench_function("interpolator new t=51", |b| {
        b.iter(|| Interpolator::new(black_box(&indices)).unwrap())
    });
    let ip = Interpolator::new(&indices).unwrap();
    let refs: Vec<&Share> = shares[..usize::from(t)].iter().collect();
    group.bench_function("interpolator combine t=51", |b| {
        b.iter(|| ip.combine(black_box(&refs)).unwrap())
    });
    group.finish();
}

fn bench_agree(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let a = AgreementSecret::generate(&mut rng);
    let b = AgreementSecret::generate(&mut rng).public();
    c.bench_function("x25519 agree", |bench| {
        bench.iter(|| a.agree(black_box(&b)).unwrap())
    });
}

fn bench_identity(c: &mut Criterion) {
    let key = IdentityKey::generate(&mut ChaCha20Rng::seed_from_u64(3));
    let public = key.public();
    let msg = vec![0x5a_u8; 1024];
    let sig = key.sign(kdf::MESSAGE_SIGNATURE, &msg);
    c.bench_function("ed25519 sign 1 KiB", |b| {
        b.iter(|| key.sign(kdf::MESSAGE_SIGNATURE, black_box(&msg)))
    });
    c.bench_function("ed25519 verify_strict 1 KiB", |b| {
        b.iter(|| {
            public
                .verify(kdf::MESSAGE_SIGNATURE, black_box(&msg), &sig)
                .unwrap()
        })
    });
}

criterion_group!(
    benches,
    bench_mask,
    bench_shamir,
    bench_agree,
    bench_identity
);
criterion_main!(benches);

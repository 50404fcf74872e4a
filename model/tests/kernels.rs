//! The custom CPU kernels give the same outputs and gradients as candle's stock layers on random inputs.

use candle_core::{D, Device, Tensor, Var};
use primia_model::kernels;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn var(rng: &mut ChaCha8Rng, dims: &[usize]) -> Var {
    Var::from_tensor(&random(rng, dims)).unwrap()
}

/// Asserts that two tensors agree to `tol` relative to the larger magnitude.
fn check_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = w.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if worst > tol * scale {
        let i = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, 0.0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m })
            .0;
        let bad = g
            .iter()
            .zip(&w)
            .filter(|(a, b)| (*a - *b).abs() > tol * scale)
            .count();
        eprintln!(
            "{what}: worst at {i}: got {} want {}; {bad} bad of {}",
            g[i],
            w[i],
            g.len()
        );
    }
    assert!(
        worst <= tol * scale,
        "{what}: max difference {worst} exceeds {tol} x {scale}"
    );
}

/// A scalar loss with random weights per output element, so every
/// gradient entry is exercised (a plain sum would hide transposition bugs).
fn loss(y: &Tensor, r: &Tensor) -> Tensor {
    (y * r).unwrap().sum_all().unwrap()
}

struct ConvCase {
    n: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

fn check_conv(rng: &mut ChaCha8Rng, c: &ConvCase) {
    let name = format!(
        "conv n={} {}->{} {}x{} k={} s={} p={}",
        c.n, c.c_in, c.c_out, c.h, c.w, c.k, c.stride, c.pad
    );
    let x = var(rng, &[c.n, c.c_in, c.h, c.w]);
    let w = var(rng, &[c.c_out, c.c_in, c.k, c.k]);
    let want = x.conv2d(&w, c.pad, c.stride, 1, 1).unwrap();
    let got = kernels::conv2d(&x, &w, c.stride, c.pad).unwrap();
    check_close(&format!("{name}: output"), &got, &want, 1e-5);
    let r = random(rng, want.dims());
    let gw = loss(&want, &r).backward().unwrap();
    let gg = loss(&got, &r).backward().unwrap();
    for (what, t) in [("input", &x), ("weight", &w)] {
        check_close(
            &format!("{name}: {what} gradient"),
            gg.get(t.as_tensor()).unwrap(),
            gw.get(t.as_tensor()).unwrap(),
            1e-4,
        );
    }
}

#[test]
fn convolution_matches_candle() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let cases = [
        // The compact CNN's six convolutions at 28x28, batch 64.
        (64, 1, 16, 28, 28, 3, 1, 1),
        (64, 16, 16, 28, 28, 3, 1, 1),
        (64, 16, 32, 14, 14, 3, 1, 1),
        (64, 32, 32, 14, 14, 3, 1, 1),
        (64, 32, 64, 7, 7, 3, 1, 1),
        (64, 64, 64, 7, 7, 3, 1, 1),
        // Batch 1, odd and non-square sizes.
        (1, 3, 5, 9, 7, 3, 1, 1),
        (1, 4, 8, 5, 5, 3, 1, 0),
        // Kernels larger than the image, with "same" padding.
        (2, 2, 3, 2, 3, 7, 1, 3),
        (2, 3, 4, 6, 5, 5, 1, 2),
        // Strided convolutions: the stems, ResNet's downsampling 3x3 and 1x1.
        (2, 1, 16, 57, 57, 3, 2, 1),
        (3, 8, 16, 15, 15, 3, 2, 1),
        (2, 8, 16, 7, 7, 1, 2, 0),
        (2, 8, 16, 6, 6, 1, 1, 0),
        (2, 3, 8, 21, 21, 7, 2, 3),
    ];
    for (n, c_in, c_out, h, w, k, stride, pad) in cases {
        check_conv(
            &mut rng,
            &ConvCase {
                n,
                c_in,
                c_out,
                h,
                w,
                k,
                stride,
                pad,
            },
        );
    }
}

/// candle's group normalisation as the layers wrote it before the custom
/// kernel; with `relu_mask`, followed by ReLU.
///
/// The ReLU is applied as a product with a mask computed from the kernel's
/// output (a constant for the gradient): where the pre-activation is within
/// rounding of zero the two computations may land on different sides, and
/// the gradient would then differ there by design, not by error.
fn reference_group_norm(
    x: &Tensor,
    g: &Tensor,
    b: &Tensor,
    groups: usize,
    relu_mask: Option<&Tensor>,
) -> Tensor {
    let (n, c, h, w) = x.dims4().unwrap();
    let xg = x.reshape((n, groups, (c / groups) * h * w)).unwrap();
    let mean = xg.mean_keepdim(D::Minus1).unwrap();
    let centred = xg.broadcast_sub(&mean).unwrap();
    let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let normed = centred
        .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
        .unwrap()
        .reshape((n, c, h, w))
        .unwrap();
    let y = normed
        .broadcast_mul(&g.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
        .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
        .unwrap();
    match relu_mask {
        Some(got) => {
            let mask = got.detach().gt(0.0).unwrap().to_dtype(y.dtype()).unwrap();
            (y * mask).unwrap()
        }
        None => y,
    }
}

#[test]
fn group_norm_matches_candle() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let cases = [
        (64, 16, 28, 28, 4, true),
        (64, 32, 14, 14, 8, true),
        (64, 64, 7, 7, 8, true),
        (1, 64, 7, 7, 32, false),
        (3, 12, 5, 3, 3, true),
        (2, 8, 1, 1, 2, false),
    ];
    for (n, c, h, w, groups, relu) in cases {
        let name = format!("group_norm n={n} c={c} {h}x{w} groups={groups} relu={relu}");
        // Off-centre inputs with a scale, so the statistics matter.
        let x =
            Var::from_tensor(&random(&mut rng, &[n, c, h, w]).affine(3.0, 0.5).unwrap()).unwrap();
        let g = Var::from_tensor(&(random(&mut rng, &[c]) + 1.0).unwrap()).unwrap();
        let b = var(&mut rng, &[c]);
        let got = kernels::group_norm(&x, &g, &b, groups, 1e-5, relu).unwrap();
        let want = reference_group_norm(&x, &g, &b, groups, relu.then_some(&got));
        check_close(&format!("{name}: output"), &got, &want, 1e-5);
        let r = random(&mut rng, want.dims());
        let gw = loss(&want, &r).backward().unwrap();
        let gg = loss(&got, &r).backward().unwrap();
        for (what, t) in [("input", &x), ("scale", &g), ("shift", &b)] {
            check_close(
                &format!("{name}: {what} gradient"),
                gg.get(t.as_tensor()).unwrap(),
                gw.get(t.as_tensor()).unwrap(),
                1e-4,
            );
        }
    }
}

/// Checks the fused convolution, GroupNorm and ReLU (then 2x2 max-pool if
/// `pool`) against candle's convolution, [`reference_group_norm`] and
/// [`reference_max_pool`] on each case `(n, c_in, c_out, size, stride,
/// groups)`: the output, all four gradients, and a second backward pass
/// through the same graph.
fn check_fused(seed: u64, cases: &[(usize, usize, usize, usize, usize, usize)], pool: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for &(n, c_in, c_out, size, stride, groups) in cases {
        let op = if pool {
            "conv_norm_relu_pool"
        } else {
            "conv_norm_relu"
        };
        let name = format!("{op} n={n} {c_in}->{c_out} {size}px s={stride} g={groups}");
        let x = var(&mut rng, &[n, c_in, size, size]);
        let w = var(&mut rng, &[c_out, c_in, 3, 3]);
        let g = Var::from_tensor(&(random(&mut rng, &[c_out]) + 1.0).unwrap()).unwrap();
        let b = var(&mut rng, &[c_out]);
        let unpooled = kernels::conv_norm_relu(&x, &w, &g, &b, stride, 1, groups, 1e-5).unwrap();
        let z = x.conv2d(&w, 1, stride, 1, 1).unwrap();
        let mut want = reference_group_norm(&z, &g, &b, groups, Some(&unpooled));
        let got = if pool {
            want = reference_max_pool(&want);
            kernels::conv_norm_relu_pool(&x, &w, &g, &b, stride, 1, groups, 1e-5).unwrap()
        } else {
            unpooled
        };
        check_close(&format!("{name}: output"), &got, &want, 1e-5);
        let r = random(&mut rng, want.dims());
        let gw = loss(&want, &r).backward().unwrap();
        let gg = loss(&got, &r).backward().unwrap();
        for (what, t) in [("input", &x), ("weight", &w), ("scale", &g), ("shift", &b)] {
            check_close(
                &format!("{name}: {what} gradient"),
                gg.get(t.as_tensor()).unwrap(),
                gw.get(t.as_tensor()).unwrap(),
                1e-4,
            );
        }
        // A second backward pass through the same graph gives the same.
        let again = loss(&got, &r).backward().unwrap();
        check_close(
            &format!("{name}: second backward"),
            again.get(w.as_tensor()).unwrap(),
            gg.get(w.as_tensor()).unwrap(),
            0.0,
        );
    }
}

#[test]
fn fused_conv_norm_relu_matches_candle() {
    // The compact CNN's units at batch 64 and 1, and a strided stem.
    let cases = [
        (64, 1, 16, 28, 1, 4),
        (64, 16, 32, 14, 1, 8),
        (1, 32, 64, 7, 1, 8),
        (3, 16, 16, 13, 2, 4),
    ];
    check_fused(9, &cases, false);
}

#[test]
fn group_norm_gradient_flows_through_a_broadcast() {
    // The last normalisation's output gradient comes from global average
    // pooling as a broadcast (non-contiguous) tensor.
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x = var(&mut rng, &[4, 16, 7, 7]);
    let g = Var::from_tensor(&(random(&mut rng, &[16]) + 1.0).unwrap()).unwrap();
    let b = var(&mut rng, &[16]);
    let r = random(&mut rng, &[4, 16]);
    let pooled = |y: Tensor| loss(&y.mean((2, 3)).unwrap(), &r);
    let got = kernels::group_norm(&x, &g, &b, 4, 1e-5, true).unwrap();
    let gw = pooled(reference_group_norm(&x, &g, &b, 4, Some(&got)))
        .backward()
        .unwrap();
    let gg = pooled(got).backward().unwrap();
    for (what, t) in [("input", &x), ("scale", &g), ("shift", &b)] {
        check_close(
            &format!("pooled group_norm: {what} gradient"),
            gg.get(t.as_tensor()).unwrap(),
            gw.get(t.as_tensor()).unwrap(),
            1e-4,
        );
    }
}

/// 2x2 max-pooling written as a reshape and two max reductions, whose
/// gradient goes to the maximum (candle's `max_pool2d` backward scales it
/// by the window's share of maxima, a quarter when there is no tie, so it
/// is only the reference for the forward pass).
fn reference_max_pool(x: &Tensor) -> Tensor {
    let (n, c, h, w) = x.dims4().unwrap();
    let (ho, wo) = (h / 2, w / 2);
    x.narrow(2, 0, 2 * ho)
        .unwrap()
        .narrow(3, 0, 2 * wo)
        .unwrap()
        .reshape((n, c, ho, 2, wo, 2))
        .unwrap()
        .max(5)
        .unwrap()
        .max(3)
        .unwrap()
}

#[test]
fn max_pool_matches_candle() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (n, c, h, w) in [
        (64, 16, 28, 28),
        (64, 32, 14, 14),
        (1, 3, 7, 7),
        (2, 2, 5, 8),
    ] {
        let name = format!("max_pool n={n} c={c} {h}x{w}");
        // Distinct values: with ties the maximum, and so the gradient, is
        // a matter of convention.
        let mut v: Vec<f32> = (0..n * c * h * w).map(|i| i as f32 / 1024.0).collect();
        v.shuffle(&mut rng);
        let x = Var::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap();
        let got = kernels::max_pool2x2(&x).unwrap();
        check_close(
            &format!("{name}: output"),
            &got,
            &x.max_pool2d(2).unwrap(),
            0.0,
        );
        let want = reference_max_pool(&x);
        check_close(&format!("{name}: reference output"), &got, &want, 0.0);
        let r = random(&mut rng, want.dims());
        let gw = loss(&want, &r).backward().unwrap();
        let gg = loss(&got, &r).backward().unwrap();
        check_close(
            &format!("{name}: input gradient"),
            gg.get(x.as_tensor()).unwrap(),
            gw.get(x.as_tensor()).unwrap(),
            0.0,
        );
    }
}

#[test]
fn fused_conv_norm_relu_pool_matches_candle() {
    // The compact CNN's pooled units at batch 64 and 1, odd sizes
    // (trailing row and column dropped) and a strided convolution.
    let cases = [
        (64, 16, 16, 28, 1, 4),
        (1, 32, 32, 14, 1, 8),
        (3, 8, 8, 13, 1, 4),
        (2, 4, 8, 9, 2, 2),
        (1, 16, 16, 7, 1, 4),
    ];
    check_fused(10, &cases, true);
}

#[test]
fn kernels_refuse_mismatched_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let x = random(&mut rng, &[2, 3, 8, 8]);
    let w = random(&mut rng, &[4, 5, 3, 3]);
    let e = kernels::conv2d(&x, &w, 1, 1).unwrap_err().to_string();
    assert!(e.contains("3 channels"), "{e}");
    let g = random(&mut rng, &[3]);
    let e = kernels::group_norm(&x, &g, &g, 2, 1e-5, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 channels in 2 groups"), "{e}");
    let w = random(&mut rng, &[4, 3, 11, 11]);
    let e = kernels::conv2d(&x, &w, 1, 1).unwrap_err().to_string();
    assert!(e.contains("larger than padded input"), "{e}");
}

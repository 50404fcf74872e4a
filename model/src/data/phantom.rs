//! A synthetic, deterministic chest X-ray phantom: the data set the product uses when none is given.
//!
//! Each image is a frontal chest radiograph drawn from a parametric
//! anatomy: a soft-tissue thorax, two dark lung fields, heart and
//! mediastinum, a spine, clavicles and curved ribs, hilar vessels, then
//! exposure, contrast (gamma) and quantum noise. Class 1 ("opacity") adds
//! patchy consolidations and/or a diffuse lower-zone haze inside the lungs,
//! with a strength drawn so that many cases are faint. Class 0 has
//! look-alikes: benign small nodules (nipple shadows) and a soft-tissue
//! haze over the lower zones from body habitus. So the classes overlap: a
//! network starts well below AUC 1 and improves with training, and no
//! single pixel or brightness statistic separates them.
//!
//! Image i depends only on (seed, i), so any subset can be regenerated
//! exactly and generation does not depend on the order of calls.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{Dataset, Splits};
use crate::error::{ModelError, Result};

/// Largest phantom side; generation costs O(side^2) per image.
pub const MAX_PHANTOM_SIDE: usize = 512;

/// Class names of the phantom.
pub const PHANTOM_CLASSES: [&str; 2] = ["normal", "opacity"];

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Soft inside-ness of an axis-aligned ellipse: ~1 inside, ~0 outside,
/// with an edge of width `soft` (in units of the normalised radius).
fn ellipse(u: f32, v: f32, cu: f32, cv: f32, au: f32, av: f32, soft: f32) -> f32 {
    let du = (u - cu) / au;
    let dv = (v - cv) / av;
    let r = (du * du + dv * dv).sqrt();
    sigmoid((1.0 - r) / soft)
}

fn gauss2(d2: f32, sigma: f32) -> f32 {
    (-d2 / (2.0 * sigma * sigma)).exp()
}

/// A blob: centre, radius and amplitude.
#[derive(Debug, Clone, Copy)]
struct Blob {
    u: f32,
    v: f32,
    radius: f32,
    amp: f32,
}

/// A vessel streak from the hilum.
#[derive(Debug, Clone, Copy)]
struct Streak {
    u0: f32,
    v0: f32,
    dir: (f32, f32),
    length: f32,
    amp: f32,
}

/// Everything that varies between images.
#[derive(Debug, Clone)]
struct Anatomy {
    // Pose: the patient frame is shifted, scaled and rotated in the image.
    shift: (f32, f32),
    scale: f32,
    rot: f32,
    lung_w: f32,
    lung_h: f32,
    lung_v: f32,
    heart_w: f32,
    rib_phase: f32,
    rib_amp: f32,
    rib_curve: f32,
    streaks: Vec<Streak>,
    habitus_haze: f32,
    benign: Vec<Blob>,
    // Disease (empty / zero for class 0).
    patches: Vec<Blob>,
    diffuse: [f32; 2],
    // Acquisition.
    gain: f32,
    offset: f32,
    gamma: f32,
    noise: f32,
}

impl Anatomy {
    fn draw(rng: &mut ChaCha8Rng, positive: bool) -> Self {
        let mut u = |lo: f32, hi: f32| rng.random_range(lo..hi);
        let lung_w = u(0.24, 0.31);
        let lung_h = u(0.50, 0.62);
        let lung_v = u(-0.06, 0.02);
        let mut a = Anatomy {
            shift: (u(-0.06, 0.06), u(-0.06, 0.06)),
            scale: u(0.9, 1.06),
            rot: u(-0.07, 0.07),
            lung_w,
            lung_h,
            lung_v,
            heart_w: u(0.2, 0.3),
            rib_phase: u(0.0, 0.19),
            rib_amp: u(0.05, 0.12),
            rib_curve: u(0.22, 0.38),
            streaks: Vec::new(),
            habitus_haze: u(0.0, 0.06),
            benign: Vec::new(),
            patches: Vec::new(),
            diffuse: [0.0, 0.0],
            gain: u(0.85, 1.15),
            offset: u(-0.05, 0.05),
            gamma: u(0.8, 1.25),
            noise: u(0.015, 0.045),
        };
        for side in [-1.0f32, 1.0] {
            for _ in 0..rng.random_range(2..5) {
                let ang: f32 = rng.random_range(-2.4f32..2.4)
                    + if side < 0.0 {
                        std::f32::consts::PI
                    } else {
                        0.0
                    };
                a.streaks.push(Streak {
                    u0: side * 0.16,
                    v0: lung_v + 0.02,
                    dir: (ang.cos(), ang.sin()),
                    length: rng.random_range(0.15..0.35),
                    amp: rng.random_range(0.02..0.05),
                });
            }
        }
        // Benign round shadows: appear in either class.
        if rng.random_bool(0.35) {
            for _ in 0..rng.random_range(1..3) {
                let (bu, bv) = point_in_lung(rng, &a);
                a.benign.push(Blob {
                    u: bu,
                    v: bv,
                    radius: rng.random_range(0.035..0.07),
                    amp: rng.random_range(0.05..0.15),
                });
            }
        }
        if positive {
            // Skewed towards faint disease: a good share of positives is
            // hard to see against the noise and the look-alikes.
            let t: f32 = rng.random_range(0.0..1.0);
            let strength = 0.05 + 0.35 * t.powf(1.5);
            let kind = rng.random_range(0..3); // 0 patchy, 1 diffuse, 2 both
            if kind != 1 {
                for _ in 0..rng.random_range(1..4) {
                    let (bu, bv) = point_in_lung(rng, &a);
                    a.patches.push(Blob {
                        u: bu,
                        v: bv,
                        radius: rng.random_range(0.1..0.25),
                        amp: strength * rng.random_range(0.7..1.3),
                    });
                }
            }
            if kind != 0 {
                let both = rng.random_bool(0.5);
                let first = rng.random_range(0..2);
                for (s, d) in a.diffuse.iter_mut().enumerate() {
                    if both || s == first {
                        *d = strength * rng.random_range(0.5..0.9);
                    }
                }
            }
        }
        a
    }

    /// Grey level (before acquisition effects) at patient-frame point (u, v).
    fn density(&self, u: f32, v: f32) -> f32 {
        let body = ellipse(u, v, 0.0, 0.08, 0.92, 1.08, 0.05);
        let mut d = 0.06 + 0.46 * body;
        // Lungs, both sides: dark air; what lies in them adds back density.
        let mut lung_total = 0.0;
        for (si, side) in [-1.0f32, 1.0].into_iter().enumerate() {
            let cu = side * 0.36;
            let lung = ellipse(u, v, cu, self.lung_v, self.lung_w, self.lung_h, 0.07);
            lung_total += lung;
            // Upper zones hold more air, so they are darker.
            let apex = 0.04 * (-(v - self.lung_v) / self.lung_h).clamp(-1.0, 1.0);
            d -= lung * (0.3 + apex);
            // Lower-zone weight for hazes: 0 at the apex, 1 at the base.
            let lower = ((v - (self.lung_v - 0.2)) / (self.lung_h + 0.2)).clamp(0.0, 1.0);
            d += lung * lower * (self.habitus_haze + self.diffuse[si]);
            // Hilar vessels.
            d += lung * 0.06 * gauss2((u - side * 0.18).powi(2) + (v - self.lung_v).powi(2), 0.1);
        }
        // Heart, to the patient's left (image right), and mediastinum/spine.
        d += 0.2 * ellipse(u, v, 0.14, 0.26, self.heart_w + 0.04, 0.24, 0.1);
        d += 0.16 * body * gauss2(u * u, 0.08);
        // Clavicles.
        let clav = v - (-0.72 + 0.16 * u.abs());
        if (0.08..0.62).contains(&u.abs()) {
            d += 0.1 * gauss2(clav * clav, 0.03);
        }
        // Ribs: arcs falling towards the sides, over the whole chest.
        if u.abs() < 0.82 {
            for k in 0..9 {
                let yk = -0.78 + k as f32 * 0.19 + self.rib_phase;
                let dist = v - (yk + self.rib_curve * u * u);
                d += body * self.rib_amp * gauss2(dist * dist, 0.028);
            }
        }
        for s in &self.streaks {
            let (pu, pv) = (u - s.u0, v - s.v0);
            let along = pu * s.dir.0 + pv * s.dir.1;
            if (0.0..s.length).contains(&along) {
                let across = -pu * s.dir.1 + pv * s.dir.0;
                d += lung_total.min(1.0)
                    * s.amp
                    * (1.0 - along / s.length)
                    * gauss2(across * across, 0.015);
            }
        }
        for b in &self.benign {
            d += b.amp * gauss2((u - b.u).powi(2) + (v - b.v).powi(2), b.radius);
        }
        for b in &self.patches {
            d += lung_total.min(1.0)
                * b.amp
                * gauss2((u - b.u).powi(2) + (v - b.v).powi(2), b.radius);
        }
        d
    }
}

/// A random point well inside one of the lungs.
fn point_in_lung(rng: &mut ChaCha8Rng, a: &Anatomy) -> (f32, f32) {
    let side = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
    let r: f32 = rng.random_range(0.0f32..0.75).sqrt();
    let t: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    (
        side * 0.36 + r * t.cos() * a.lung_w,
        a.lung_v + r * t.sin() * a.lung_h,
    )
}

/// Renders one image of `size` x `size` grey levels in [0, 1].
fn render(a: &Anatomy, size: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    // Supersampling keeps thin ribs from aliasing at 28x28.
    let ss = if size <= 64 { 3 } else { 1 };
    let (sin, cos) = a.rot.sin_cos();
    let noise = Normal::new(0.0f32, a.noise).expect("finite noise");
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let mut acc = 0.0;
            for sy in 0..ss {
                for sx in 0..ss {
                    let px = (x as f32 + (sx as f32 + 0.5) / ss as f32) / size as f32 * 2.0 - 1.0;
                    let py = (y as f32 + (sy as f32 + 0.5) / ss as f32) / size as f32 * 2.0 - 1.0;
                    // Image point to patient frame: undo shift, rotation, scale.
                    let (qx, qy) = (px - a.shift.0, py - a.shift.1);
                    let u = (cos * qx + sin * qy) / a.scale;
                    let v = (-sin * qx + cos * qy) / a.scale;
                    acc += a.density(u, v);
                }
            }
            let d = acc / (ss * ss) as f32;
            let g = (a.gain * d + a.offset).clamp(0.0, 1.0).powf(a.gamma);
            out.push((g + noise.sample(rng)).clamp(0.0, 1.0));
        }
    }
    out
}

fn image_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"primia/phantom/v1\0");
    h.update(&seed.to_le_bytes());
    h.update(&index.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// `n` phantom images of side `size`, about `prevalence` of them class 1,
/// the examples numbered `first..first + n` of the stream for `seed`.
pub fn phantom_range(
    first: u64,
    n: usize,
    size: usize,
    prevalence: f64,
    seed: u64,
) -> Result<Dataset> {
    if !(8..=MAX_PHANTOM_SIDE).contains(&size) {
        return Err(ModelError::InvalidConfig(format!(
            "phantom side {size} is outside 8..={MAX_PHANTOM_SIDE}"
        )));
    }
    if !(0.0..=1.0).contains(&prevalence) {
        return Err(ModelError::InvalidConfig(format!(
            "prevalence {prevalence} is not a probability"
        )));
    }
    let mut images = Vec::with_capacity(n * size * size);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let mut rng = image_rng(seed, first + i);
        let positive = rng.random_bool(prevalence);
        let a = Anatomy::draw(&mut rng, positive);
        images.extend(render(&a, size, &mut rng));
        labels.push(u32::from(positive));
    }
    Dataset::with_class_names(
        images,
        labels,
        size,
        PHANTOM_CLASSES.iter().map(|s| s.to_string()).collect(),
    )
}

/// `n` phantom images (see [`phantom_range`]).
pub fn phantom(n: usize, size: usize, prevalence: f64, seed: u64) -> Result<Dataset> {
    phantom_range(0, n, size, prevalence, seed)
}

/// Default sizes of the built-in data set: like PneumoniaMNIST in scale.
pub const PHANTOM_TRAIN: usize = 4000;
pub const PHANTOM_VAL: usize = 500;
pub const PHANTOM_TEST: usize = 600;
/// Prevalence of class 1 in the built-in data set (PneumoniaMNIST's is 0.74).
pub const PHANTOM_PREVALENCE: f64 = 0.5;

/// Train, validation and test phantom sets: disjoint ranges of one stream.
pub fn phantom_splits(
    size: usize,
    n_train: usize,
    n_val: usize,
    n_test: usize,
    seed: u64,
) -> Result<Splits> {
    let p = PHANTOM_PREVALENCE;
    Ok(Splits {
        train: phantom_range(0, n_train, size, p, seed)?,
        val: phantom_range(n_train as u64, n_val, size, p, seed)?,
        test: phantom_range((n_train + n_val) as u64, n_test, size, p, seed)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let a = phantom(20, 28, 0.5, 3).unwrap();
        let b = phantom(20, 28, 0.5, 3).unwrap();
        assert_eq!(a, b);
        assert!(a.pixels().iter().all(|v| (0.0..=1.0).contains(v)));
        let c = phantom(20, 28, 0.5, 4).unwrap();
        assert_ne!(a.pixels(), c.pixels());
        // Image i does not depend on how many come before it in a call.
        let tail = phantom_range(10, 10, 28, 0.5, 3).unwrap();
        assert_eq!(tail.image(0), a.image(10));
    }

    #[test]
    fn both_classes_and_refusals() {
        let d = phantom(200, 32, 0.5, 1).unwrap();
        let c = d.class_counts();
        assert!(c[0] > 60 && c[1] > 60, "{c:?}");
        assert!(phantom(2, 4, 0.5, 1).is_err());
        assert!(phantom(2, 28, 1.5, 1).is_err());
    }

    /// The classes differ on average (opacities add density in the lungs)
    /// but the mean brightness alone is a poor classifier: the phantom is
    /// not trivially separable.
    #[test]
    fn mean_brightness_does_not_separate_classes() {
        let d = phantom(400, 28, 0.5, 9).unwrap();
        let means: Vec<f32> = (0..d.len())
            .map(|i| d.image(i).iter().sum::<f32>() / 784.0)
            .collect();
        let auc = crate::metrics::roc_auc(&means, d.labels()).unwrap();
        assert!(auc > 0.5 && auc < 0.8, "mean-brightness AUC {auc}");
    }
}

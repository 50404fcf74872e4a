//! Data augmentation for chest X-rays, on the CPU, on grey-level images in [0, 1], seeded.
//!
//! Only changes a real radiograph can show are drawn: small rotations
//! (patient positioning), shifts and zoom (field of view, distance to the
//! detector), and brightness/contrast (exposure, detector response). No
//! vertical flips (a chest is never upside down) and no horizontal flips
//! by default either (the heart is on the patient's left, and networks use
//! that).

use rand::Rng;

/// Ranges of the random transformations; each is drawn uniformly.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AugmentConfig {
    /// Rotation within +-this many degrees.
    pub max_rotation_deg: f32,
    /// Shift within +-this fraction of the image side, on each axis.
    pub max_shift_frac: f32,
    /// Zoom factor range (> 1 enlarges).
    pub zoom: (f32, f32),
    /// Added grey level within +-this.
    pub max_brightness: f32,
    /// Contrast factor range around the image mean.
    pub contrast: (f32, f32),
    /// Mirror left-right with this probability (0 by default; see the module note).
    pub hflip_prob: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            max_rotation_deg: 10.0,
            max_shift_frac: 0.08,
            zoom: (0.9, 1.1),
            max_brightness: 0.1,
            contrast: (0.8, 1.2),
            hflip_prob: 0.0,
        }
    }
}

impl AugmentConfig {
    /// Checks that every range is sane.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.max_rotation_deg.is_finite()
            && (0.0..=45.0).contains(&self.max_rotation_deg)
            && (0.0..=0.5).contains(&self.max_shift_frac)
            && self.zoom.0 > 0.0
            && self.zoom.0 <= self.zoom.1
            && self.zoom.1 <= 4.0
            && (0.0..=1.0).contains(&self.max_brightness)
            && self.contrast.0 > 0.0
            && self.contrast.0 <= self.contrast.1
            && self.contrast.1 <= 4.0
            && (0.0..=1.0).contains(&self.hflip_prob);
        if ok {
            Ok(())
        } else {
            Err(format!("augmentation ranges out of bounds: {self:?}"))
        }
    }
}

/// Writes a randomly transformed copy of the `size` x `size` image `src` into `dst`.
///
/// Geometry is an inverse mapping with bilinear sampling; pixels that map
/// outside the source take the nearest edge value, which for radiographs
/// (dark or uniform borders) looks like a wider field of view rather than
/// a black wedge.
pub fn augment_into<R: Rng + ?Sized>(
    src: &[f32],
    size: usize,
    cfg: &AugmentConfig,
    rng: &mut R,
    dst: &mut [f32],
) {
    assert_eq!(src.len(), size * size);
    assert_eq!(dst.len(), size * size);
    let mut draw = |lo: f32, hi: f32| {
        if hi > lo {
            rng.random_range(lo..hi)
        } else {
            lo
        }
    };
    let angle = draw(-cfg.max_rotation_deg, cfg.max_rotation_deg).to_radians();
    let s = size as f32;
    let tx = draw(-cfg.max_shift_frac, cfg.max_shift_frac) * s;
    let ty = draw(-cfg.max_shift_frac, cfg.max_shift_frac) * s;
    let zoom = draw(cfg.zoom.0, cfg.zoom.1);
    let brightness = draw(-cfg.max_brightness, cfg.max_brightness);
    let contrast = draw(cfg.contrast.0, cfg.contrast.1);
    let flip = cfg.hflip_prob > 0.0 && rng.random_bool(cfg.hflip_prob);

    let c = (s - 1.0) / 2.0;
    let (sin, cos) = angle.sin_cos();
    let last = (size - 1) as f32;
    let mut sum = 0.0f32;
    for y in 0..size {
        for x in 0..size {
            // Output pixel -> centred coordinates -> undo shift, rotation, zoom.
            let ox = if flip { last - x as f32 } else { x as f32 } - c - tx;
            let oy = y as f32 - c - ty;
            let sx = ((cos * ox + sin * oy) / zoom + c).clamp(0.0, last);
            let sy = ((-sin * ox + cos * oy) / zoom + c).clamp(0.0, last);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let top = src[y0 * size + x0] * (1.0 - fx) + src[y0 * size + x1] * fx;
            let bottom = src[y1 * size + x0] * (1.0 - fx) + src[y1 * size + x1] * fx;
            let v = top * (1.0 - fy) + bottom * fy;
            dst[y * size + x] = v;
            sum += v;
        }
    }
    let mean = sum / (size * size) as f32;
    for v in dst.iter_mut() {
        *v = ((*v - mean) * contrast + mean + brightness).clamp(0.0, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn identity() -> AugmentConfig {
        AugmentConfig {
            max_rotation_deg: 0.0,
            max_shift_frac: 0.0,
            zoom: (1.0, 1.0),
            max_brightness: 0.0,
            contrast: (1.0, 1.0),
            hflip_prob: 0.0,
        }
    }

    #[test]
    fn identity_ranges_leave_image_unchanged() {
        let src: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let mut dst = vec![0.0; 64];
        augment_into(
            &src,
            8,
            &identity(),
            &mut ChaCha8Rng::seed_from_u64(1),
            &mut dst,
        );
        for (a, b) in src.iter().zip(&dst) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn never_flips_vertically_and_is_seeded() {
        // A bright top half must stay mostly on top under the default ranges.
        let size = 28;
        let src: Vec<f32> = (0..size * size)
            .map(|i| if i / size < size / 2 { 0.9 } else { 0.1 })
            .collect();
        let cfg = AugmentConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut dst = vec![0.0; size * size];
        for _ in 0..50 {
            augment_into(&src, size, &cfg, &mut rng, &mut dst);
            let top: f32 = dst[..size * size / 2].iter().sum();
            let bottom: f32 = dst[size * size / 2..].iter().sum();
            assert!(top > bottom + 50.0, "top {top} bottom {bottom}");
            assert!(dst.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        let mut a = vec![0.0; size * size];
        let mut b = vec![0.0; size * size];
        augment_into(&src, size, &cfg, &mut ChaCha8Rng::seed_from_u64(9), &mut a);
        augment_into(&src, size, &cfg, &mut ChaCha8Rng::seed_from_u64(9), &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn shift_moves_content() {
        // A single bright column moves with a pure shift.
        let size = 16;
        let mut src = vec![0.0f32; size * size];
        for y in 0..size {
            src[y * size + 8] = 1.0;
        }
        let cfg = AugmentConfig {
            max_shift_frac: 0.25,
            ..identity()
        };
        let mut dst = vec![0.0; size * size];
        let mut moved = false;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..5 {
            augment_into(&src, size, &cfg, &mut rng, &mut dst);
            let col = (0..size)
                .max_by(|&a, &b| dst[4 * size + a].total_cmp(&dst[4 * size + b]))
                .unwrap();
            moved |= col != 8;
        }
        assert!(moved);
        assert!(AugmentConfig::default().validate().is_ok());
        assert!(
            AugmentConfig {
                zoom: (1.2, 1.1),
                ..identity()
            }
            .validate()
            .is_err()
        );
    }
}

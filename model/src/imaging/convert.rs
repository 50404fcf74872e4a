//! From decoded values to the network's input: grey, `[0, 1]`, `size` x `size`.
//!
//! The steps, in the order the DICOM display pipeline applies them
//! (PS3.4 N.2):
//! 1. one grey value a pixel: the sample itself, ITU-R BT.601 luma
//!    (0.299 R + 0.587 G + 0.114 B) for RGB, Y for stored YCbCr (which is
//!    that luma already);
//! 2. the modality LUT (Rescale Slope / Intercept) for monochrome DICOM;
//! 3. to `[0, 1]`: the first VOI window (Window Center / Width with its VOI
//!    LUT function) where the file has one; otherwise the image's own
//!    min..max for monochrome DICOM (whose stored range says nothing about
//!    display: 12 bits in 16, Hounsfield units), and the full scale of the
//!    bit depth for PNG, JPEG and colour DICOM, which are display-ready
//!    already; a constant image maps to 0;
//! 4. MONOCHROME1 inverted (1 - v), so that bright always means dense;
//! 5. resampled to `size` x `size`, each axis on its own: area averaging
//!    (every source pixel weighted by how much of the output pixel it
//!    covers) when shrinking, which is what keeps thin structures from
//!    aliasing away, and bilinear interpolation (pixel centres aligned)
//!    when enlarging. A non-square image is stretched, not cropped: nothing
//!    at the borders of a film is dropped.

use super::{ColourModel, DecodedImage, ImageFormat, VoiFunction, Window};

pub(crate) fn to_model_input(image: &DecodedImage, size: usize) -> Vec<f32> {
    let grey = normalised_grey(image);
    resize(&grey, image.rows, image.columns, size, size)
}

/// Steps 1 to 4: one value in `[0, 1]` a pixel. Two passes over the
/// samples (the first only where the range is needed), no intermediate
/// buffer: a 2048x2048 film is 4 M pixels.
pub(crate) fn normalised_grey(image: &DecodedImage) -> Vec<f32> {
    let n = image.rows * image.columns;
    let spp = image.samples_per_pixel.max(1);
    let monochrome = matches!(
        image.colour,
        ColourModel::Monochrome1 | ColourModel::Monochrome2
    );
    let (slope, intercept) = match image.rescale {
        Some(r) if monochrome => (r.slope, r.intercept),
        _ => (1.0, 0.0),
    };
    let rgb = image.colour == ColourModel::Rgb && spp >= 3;
    // Step 1 and 2 for one pixel's samples.
    let grey = |p: &[f32]| -> f64 {
        if rgb {
            0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])
        } else {
            // Monochrome: the sample; YBR_FULL: Y, which is the BT.601 luma.
            f64::from(p[0]) * slope + intercept
        }
    };
    let pixels = image.pixels.chunks_exact(spp).take(n);

    enum Norm {
        Window(Window),
        Range { lo: f64, span: f64 },
        Scale(f64),
    }
    let norm = match (monochrome, image.window, image.format) {
        (true, Some(window), _) => Norm::Window(window),
        (true, None, ImageFormat::Dicom) => {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for p in pixels.clone() {
                let v = grey(p);
                if v < lo {
                    lo = v;
                }
                if v > hi {
                    hi = v;
                }
            }
            Norm::Range { lo, span: hi - lo }
        }
        _ => Norm::Scale(if (1..=32).contains(&image.bits_stored) {
            1.0 / ((1u64 << image.bits_stored) - 1) as f64
        } else {
            1.0
        }),
    };

    let invert = image.colour == ColourModel::Monochrome1;
    let mut out: Vec<f32> = pixels
        .map(|p| {
            let v = grey(p);
            let v = match &norm {
                Norm::Window(w) => voi(v, *w),
                Norm::Range { lo, span } if *span > 0.0 => (v - lo) / span,
                Norm::Range { .. } => 0.0,
                Norm::Scale(k) => v * k,
            };
            let v = if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                0.0
            };
            (if invert { 1.0 - v } else { v }) as f32
        })
        .collect();
    // A short pixel buffer (never produced by the decoders) reads as black.
    out.resize(n, 0.0);
    out
}

/// The VOI LUT functions of PS3.3 C.11.2.1.2 and C.11.2.1.3, with output
/// range `[0, 1]`.
fn voi(x: f64, w: Window) -> f64 {
    let (c, width) = (w.center, w.width);
    match w.function {
        VoiFunction::Linear => {
            if x <= c - 0.5 - (width - 1.0) / 2.0 {
                0.0
            } else if x > c - 0.5 + (width - 1.0) / 2.0 {
                1.0
            } else if width > 1.0 {
                (x - (c - 0.5)) / (width - 1.0) + 0.5
            } else {
                // Width 1: a step at the centre.
                1.0
            }
        }
        VoiFunction::LinearExact => ((x - c) / width + 0.5).clamp(0.0, 1.0),
        VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / width).exp()),
    }
}

/// Contributions of source indices to one output index along an axis.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

fn axis_taps(n_in: usize, n_out: usize) -> Vec<Taps> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            if n_out <= n_in {
                // Area: the output pixel covers [o*scale, (o+1)*scale).
                let start = o as f64 * scale;
                let end = ((o + 1) as f64 * scale).min(n_in as f64);
                let first = start.floor() as usize;
                let last = (end.ceil() as usize).clamp(first + 1, n_in);
                let weights = (first..last)
                    .map(|i| {
                        let cover = end.min(i as f64 + 1.0) - start.max(i as f64);
                        (cover.max(0.0) / scale) as f32
                    })
                    .collect();
                Taps { first, weights }
            } else {
                // Bilinear with pixel centres aligned, clamped at the edges.
                let x = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f64);
                let first = x.floor() as usize;
                let t = (x - first as f64) as f32;
                if first + 1 < n_in {
                    Taps {
                        first,
                        weights: vec![1.0 - t, t],
                    }
                } else {
                    Taps {
                        first,
                        weights: vec![1.0],
                    }
                }
            }
        })
        .collect()
}

/// Separable resampling of a `rows` x `columns` grey image (step 5).
pub(crate) fn resize(
    src: &[f32],
    rows: usize,
    columns: usize,
    out_rows: usize,
    out_columns: usize,
) -> Vec<f32> {
    if out_rows == 0 || out_columns == 0 || rows == 0 || columns == 0 {
        return vec![0.0; out_rows * out_columns];
    }
    if src.len() < rows * columns {
        return vec![0.0; out_rows * out_columns];
    }
    let h_taps = axis_taps(columns, out_columns);
    let v_taps = axis_taps(rows, out_rows);

    // Horizontal pass: rows x out_columns.
    let mut horizontal = vec![0.0f32; rows * out_columns];
    for r in 0..rows {
        let line = &src[r * columns..(r + 1) * columns];
        let out = &mut horizontal[r * out_columns..(r + 1) * out_columns];
        for (o, taps) in out.iter_mut().zip(&h_taps) {
            *o = taps
                .weights
                .iter()
                .zip(&line[taps.first..])
                .map(|(w, v)| w * v)
                .sum();
        }
    }
    // Vertical pass: out_rows x out_columns.
    let mut out = vec![0.0f32; out_rows * out_columns];
    for (o_r, taps) in v_taps.iter().enumerate() {
        let target = &mut out[o_r * out_columns..(o_r + 1) * out_columns];
        for (k, w) in taps.weights.iter().enumerate() {
            let line =
                &horizontal[(taps.first + k) * out_columns..(taps.first + k + 1) * out_columns];
            for (t, v) in target.iter_mut().zip(line) {
                *t += w * v;
            }
        }
    }
    // Rounding can leave a hair outside [0, 1].
    for v in &mut out {
        *v = v.clamp(0.0, 1.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_average_of_blocks() {
        // 4x4 with 2x2 blocks of 0, 0.25, 0.5, 1 -> 2x2 exact block means.
        let src = [
            0.0, 0.0, 0.25, 0.25, //
            0.0, 0.0, 0.25, 0.25, //
            0.5, 0.5, 1.0, 1.0, //
            0.5, 0.5, 1.0, 1.0,
        ];
        assert_eq!(resize(&src, 4, 4, 2, 2), vec![0.0, 0.25, 0.5, 1.0]);
    }

    #[test]
    fn area_with_fractional_cover_preserves_the_mean() {
        let src: Vec<f32> = (0..25).map(|i| i as f32 / 24.0).collect();
        let out = resize(&src, 5, 5, 3, 3);
        let mean_in: f32 = src.iter().sum::<f32>() / 25.0;
        let mean_out: f32 = out.iter().sum::<f32>() / 9.0;
        assert!((mean_in - mean_out).abs() < 1e-6, "{mean_in} vs {mean_out}");
    }

    #[test]
    fn identity_and_bilinear_enlarge() {
        let src = [0.0, 1.0, 0.5, 0.25];
        assert_eq!(resize(&src, 2, 2, 2, 2), src.to_vec());
        // 1x2 -> 1x4: centres at -0.25, 0.25, 0.75, 1.25 -> clamp, lerp.
        let out = resize(&[0.0, 1.0], 1, 2, 1, 4);
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn linear_window_matches_the_standard() {
        let w = Window {
            center: 100.0,
            width: 201.0,
            function: VoiFunction::Linear,
        };
        assert_eq!(voi(-1.0, w), 0.0);
        assert_eq!(voi(300.0, w), 1.0);
        assert!((voi(99.5, w) - 0.5).abs() < 1e-12);
    }
}

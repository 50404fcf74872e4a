//! Resizing grey-level images to the model's input: area averaging to shrink, bilinear to enlarge.
//!
//! Area averaging when shrinking avoids the aliasing that point sampling
//! would add to fine structure such as rib edges; both are separable, so
//! rows and columns are resampled one after the other.

/// For each output index, the input indices and weights that make it up.
fn weights_1d(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            if n_out <= n_in {
                // Area: output pixel o covers [o*scale, (o+1)*scale) of the input.
                let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
                let mut w = Vec::new();
                let mut i = lo.floor() as usize;
                while (i as f64) < hi && i < n_in {
                    let overlap = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                    if overlap > 0.0 {
                        w.push((i, (overlap / scale) as f32));
                    }
                    i += 1;
                }
                w
            } else {
                // Bilinear with pixel centres at i + 0.5 (no corner alignment).
                let x = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f64);
                let i0 = x.floor() as usize;
                let i1 = (i0 + 1).min(n_in - 1);
                let t = (x - i0 as f64) as f32;
                if i1 == i0 {
                    vec![(i0, 1.0)]
                } else {
                    vec![(i0, 1.0 - t), (i1, t)]
                }
            }
        })
        .collect()
}

/// Resizes one row-major `h` x `w` image to `nh` x `nw`. All sizes must be non-zero.
pub fn resize(img: &[f32], h: usize, w: usize, nh: usize, nw: usize) -> Vec<f32> {
    assert_eq!(
        img.len(),
        h * w,
        "image has {} values, not {h}x{w}",
        img.len()
    );
    if h == nh && w == nw {
        return img.to_vec();
    }
    let wx = weights_1d(w, nw);
    let wy = weights_1d(h, nh);
    let mut rows = vec![0.0f32; h * nw];
    for y in 0..h {
        let src = &img[y * w..(y + 1) * w];
        for (x, ws) in wx.iter().enumerate() {
            rows[y * nw + x] = ws.iter().map(|&(i, k)| src[i] * k).sum();
        }
    }
    let mut out = vec![0.0f32; nh * nw];
    for (y, ws) in wy.iter().enumerate() {
        for x in 0..nw {
            out[y * nw + x] = ws.iter().map(|&(i, k)| rows[i * nw + x] * k).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_averages_blocks() {
        let img = [
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
        ];
        let out = resize(&img, 4, 4, 2, 2);
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn constant_stays_constant_both_ways() {
        let img = vec![0.3f32; 28 * 28];
        for n in [7, 13, 28, 64, 224] {
            assert!(
                resize(&img, 28, 28, n, n)
                    .iter()
                    .all(|v| (v - 0.3).abs() < 1e-5)
            );
        }
    }

    #[test]
    fn enlarging_interpolates() {
        let out = resize(&[0.0, 1.0], 1, 2, 1, 4);
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
    }
}

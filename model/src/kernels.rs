//! Fast CPU training kernels as candle custom ops: 2-D convolution, group normalisation fused with ReLU, and 2x2 max-pooling.
//!
//! candle's stock CPU convolution computes its backward pass through a
//! naive transposed convolution, and its group normalisation and
//! max-pooling are chains of elementwise tensor ops that each allocate and
//! sweep the whole activation. These ops do the same arithmetic in a few
//! passes:
//!
//! - convolution forward is im2col followed by a matrix product on the
//!   `gemm` crate (the kernels candle's own `matmul` uses), one per image,
//!   or per block of images side by side when the feature map is small
//!   (so packing the weights is paid once per block); the weight gradient
//!   is a second product per block, the blocks' partial sums added in a
//!   fixed order; the input gradient of a stride-1 convolution is the
//!   forward kernel run on the output gradient with the flipped,
//!   transposed weights (so no scatter), and of a strided one a product
//!   followed by col2im;
//! - group normalisation computes each group's statistics once, writes the
//!   normalised, scaled, shifted and rectified output in one sweep, and
//!   its backward pass yields the input, scale and shift gradients in two
//!   sweeps;
//! - [`conv_norm_relu`] fuses the two, so the convolution's output never
//!   becomes a tensor of candle's graph (whose gradient candle would
//!   allocate, zero and sum);
//! - 2x2 max-pooling sends each window's gradient to its first maximum,
//!   as PyTorch does.
//!
//! Tensors are float32, NCHW, on the CPU. Work is split across images (or
//! groups) on as many threads as candle uses (`RAYON_NUM_THREADS`, else
//! the physical cores); see `for_each_chunked`.
//! The tests in `model/tests/kernels.rs` check outputs and gradients
//! against candle's stock implementations.

use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor,
    bail,
};
use gemm::{Parallelism, gemm};

type CResult<T> = candle_core::Result<T>;

/// A contiguous float32 view of a storage, or an error naming the op.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{op}: float32 tensors only"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: input is not contiguous"),
    }
}

/// A contiguous version of `t` (itself when it already is): backward
/// passes get output gradients of any layout, e.g. through a broadcast.
fn contiguous(t: &Tensor) -> CResult<Tensor> {
    if t.dtype() != DType::F32 {
        bail!("float32 tensors only, got {:?}", t.dtype());
    }
    t.contiguous()
}

/// The float32 data behind a contiguous CPU tensor's storage guard.
fn data<'a>(storage: &'a Storage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    match storage {
        Storage::Cpu(s) => slice(s, l, op),
        _ => bail!("{op}: CPU tensors only"),
    }
}

/// Runs `f` with a scratch buffer of `len` floats.
///
/// im2col matrices are a few hundred kilobytes per image; buffers are
/// kept in a small shared stock between calls, so a training step does
/// not allocate (and page-fault) one per image.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    static STOCK: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
    let taken = STOCK.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut buf = taken.unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    let mut stock = STOCK.lock().unwrap_or_else(|e| e.into_inner());
    if stock.len() < MAX_SCRATCH_BUFFERS {
        stock.push(buf);
    }
    r
}

/// Buffers kept in the scratch stock: one per worker thread is enough.
const MAX_SCRATCH_BUFFERS: usize = 16;

/// A buffer's base pointer, handed to the pool's workers, each of which
/// writes its own disjoint part (see [`par_chunks`]).
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

// SAFETY: only used to give workers disjoint chunks of one buffer that is
// mutably borrowed for the whole parallel call.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// A method rather than a field access, so closures capture the
    /// whole (Sync) wrapper, not the raw pointer inside it.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f(i, a_i, b_i)` for every `i` in `0..n` in parallel,
/// where `a_i` and `b_i` are the i-th chunks of `a` (length `ca`) and `b`
/// (length `cb`, possibly 0), the last ones cut short at the buffers' ends.
fn par_chunks2(
    n: usize,
    a: &mut [f32],
    ca: usize,
    b: &mut [f32],
    cb: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    assert!(a.len() >= n.saturating_sub(1) * ca && b.len() >= n.saturating_sub(1) * cb);
    let (la, lb) = (a.len(), b.len());
    let (pa, pb) = (SharedMut(a.as_mut_ptr()), SharedMut(b.as_mut_ptr()));
    for_each_chunked(n, |range| {
        for i in range {
            // The last chunks may be shorter.
            let (na, nb) = (ca.min(la - i * ca), cb.min(lb - i * cb));
            // SAFETY: i < n, so both chunks start inside their buffers
            // (asserted above) and end at most at their ends; each i goes to
            // exactly one worker, so no two live chunks overlap; `a` and `b`
            // stay mutably borrowed until every worker is done.
            let (ai, bi) = unsafe {
                (
                    std::slice::from_raw_parts_mut(pa.get().add(i * ca), na),
                    std::slice::from_raw_parts_mut(pb.get().add(i * cb), nb),
                )
            };
            f(i, ai, bi);
        }
    });
}

thread_local! {
    /// Threads this thread's kernels may use, when set by [`with_threads`].
    static THREADS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Threads a kernel called from this thread uses: what [`with_threads`]
/// set, else `candle_core::utils::get_num_threads()` (`RAYON_NUM_THREADS`,
/// else the physical cores).
pub fn threads() -> usize {
    THREADS
        .get()
        .unwrap_or_else(candle_core::utils::get_num_threads)
        .max(1)
}

/// Runs `f` with the kernels it calls on this thread limited to `threads`
/// threads: for callers that already run several kernels side by side
/// (training on parts of a batch at once). The results do not depend on
/// the number of threads.
pub fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let before = THREADS.replace(Some(threads.max(1)));
    // Restored on the way out, also by a panic.
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREADS.set(self.0);
        }
    }
    let _restore = Restore(before);
    f()
}

/// Runs `f` on ranges that together cover `0..n` once, in parallel.
///
/// On [`threads`] threads, scoped for the call: starting them costs
/// tens of microseconds against the milliseconds each call computes, and
/// threads that block rather than spin when they run out of work keep a
/// busy machine's cores for work (candle's own spinning worker pool lost
/// a fifth of the throughput when other processes were running).
fn for_each_chunked(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let threads = threads().clamp(1, n.max(1));
    if threads <= 1 {
        return f(0..n);
    }
    let chunk = n.div_ceil(threads * 4).max(1);
    let cursor = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        loop {
            let start = cursor.fetch_add(chunk, std::sync::atomic::Ordering::Relaxed);
            if start >= n {
                break;
            }
            f(start..(start + chunk).min(n));
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
}

/// Runs `f(i, chunk_i)` in parallel for the consecutive chunks of `out`
/// (the last one shorter if `chunk` does not divide its length).
fn par_chunks(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if chunk == 0 {
        return;
    }
    par_chunks2(
        out.len().div_ceil(chunk),
        out,
        chunk,
        &mut [],
        0,
        |i, c, _| f(i, c),
    );
}

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)`: dst row-major with
/// row stride `dst_rs`, the operands with any row and column strides.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    if k > 0 {
        assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
        assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    }
    // SAFETY: the asserts above keep every access the described matrices
    // make inside the slices; dst does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConvGeom {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    h_out: usize,
    w_out: usize,
}

impl ConvGeom {
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> CResult<Self> {
        let (&[n, c_in, h, wd], &[c_out, c_in_w, kh, kw]) = (x, w) else {
            bail!("conv2d: input {x:?} and weight {w:?} must both be 4-D");
        };
        if c_in != c_in_w {
            bail!("conv2d: input has {c_in} channels, weight expects {c_in_w}");
        }
        if stride == 0 || kh == 0 || kw == 0 {
            bail!("conv2d: stride {stride} and kernel {kh}x{kw} must be positive");
        }
        if h + 2 * pad < kh || wd + 2 * pad < kw {
            bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd} (padding {pad})");
        }
        Ok(ConvGeom {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride,
            pad,
            h_out: (h + 2 * pad - kh) / stride + 1,
            w_out: (wd + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output pixels per channel.
    fn p(&self) -> usize {
        self.h_out * self.w_out
    }

    fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn out_len(&self) -> usize {
        self.c_out * self.p()
    }

    /// A 1x1 stride-1 convolution without padding reads its input as is.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// For each output column `ox` in `0..w_out`, the input column it reads
    /// at kernel column `kj`, as the range of `ox` that land inside the
    /// image (stride 1 only): `ix = ox + kj - pad`.
    fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(kj).min(self.w_out);
        let hi = (self.w + self.pad)
            .saturating_sub(kj)
            .min(self.w_out)
            .max(lo);
        (lo, hi)
    }
}

/// Unfolds one image (`c_in x h x w`) into `cols` (`k x p`, row-major
/// with row stride `ld`, so that several images can sit side by side).
fn im2col(g: &ConvGeom, x: &[f32], cols: &mut [f32], ld: usize) {
    if g.stride == 1 && g.w_out == g.w && g.h_out == g.h {
        return im2col_same(g, x, cols, ld);
    }
    for c in 0..g.c_in {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = ((c * g.kh + ki) * g.kw + kj) * ld;
                let (lo, hi) = g.valid_cols(kj);
                for oy in 0..g.h_out {
                    let dst = &mut cols[row + oy * g.w_out..row + (oy + 1) * g.w_out];
                    let iy = (oy * g.stride + ki) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if g.stride == 1 {
                        dst[..lo].fill(0.0);
                        dst[lo..hi].copy_from_slice(&src[lo + kj - g.pad..hi + kj - g.pad]);
                        dst[hi..].fill(0.0);
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * g.stride + kj) as isize - g.pad as isize;
                            *d = if ix >= 0 && ix < g.w as isize {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] for stride-1 convolutions whose output has the input's size
/// (3x3 with padding 1, ...): each row of `cols` is the input plane
/// shifted by a fixed offset, so it is one block copy followed by zeroing
/// the rows and columns that fall in the padding.
fn im2col_same(g: &ConvGeom, x: &[f32], cols: &mut [f32], ld: usize) {
    let (h, w, pad) = (g.h, g.w, g.pad as isize);
    let hw = h * w;
    for c in 0..g.c_in {
        let plane = &x[c * hw..(c + 1) * hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = ((c * g.kh + ki) * g.kw + kj) * ld;
                let dst = &mut cols[row..row + hw];
                let shift = (ki as isize - pad) * w as isize + (kj as isize - pad);
                // dst[j] = plane[j + shift] where that index exists.
                let lo = (-shift).clamp(0, hw as isize) as usize;
                let hi = (hw as isize - shift).clamp(lo as isize, hw as isize) as usize;
                dst[..lo].fill(0.0);
                if lo < hi {
                    dst[lo..hi].copy_from_slice(
                        &plane[(lo as isize + shift) as usize..(hi as isize + shift) as usize],
                    );
                }
                dst[hi..].fill(0.0);
                // Rows whose source row lies in the padding.
                let dy = ki as isize - pad;
                if dy < 0 {
                    dst[..((-dy) as usize * w).min(hw)].fill(0.0);
                } else if dy > 0 {
                    dst[h.saturating_sub(dy as usize) * w..].fill(0.0);
                }
                // Columns that wrapped around from the neighbouring row.
                // (One column for a 3x3 kernel: stored directly, since a
                // call to memset per row would cost more than the copy.)
                let dx = kj as isize - pad;
                if dx == -1 {
                    for r in dst.chunks_exact_mut(w) {
                        r[0] = 0.0;
                    }
                } else if dx == 1 {
                    for r in dst.chunks_exact_mut(w) {
                        r[w - 1] = 0.0;
                    }
                } else if dx < 0 {
                    for r in dst.chunks_exact_mut(w) {
                        r[..((-dx) as usize).min(w)].fill(0.0);
                    }
                } else if dx > 0 {
                    for r in dst.chunks_exact_mut(w) {
                        r[w.saturating_sub(dx as usize)..].fill(0.0);
                    }
                }
            }
        }
    }
}

/// Folds `cols` (`k x p`, row stride `ld`) back onto one image, adding
/// overlapping entries: the adjoint of [`im2col`].
fn col2im_add(g: &ConvGeom, cols: &[f32], ld: usize, x: &mut [f32]) {
    for c in 0..g.c_in {
        let plane = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = ((c * g.kh + ki) * g.kw + kj) * ld;
                for oy in 0..g.h_out {
                    let iy = (oy * g.stride + ki) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let src = &cols[row + oy * g.w_out..row + (oy + 1) * g.w_out];
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for (ox, &v) in src.iter().enumerate() {
                        let ix = (ox * g.stride + kj) as isize - g.pad as isize;
                        if ix >= 0 && ix < g.w as isize {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Columns (images times output pixels) per matrix product: enough to
/// amortise packing the weights, which for the small late feature maps
/// (7x7, 4x4) would otherwise cost as much as the product itself.
const BLOCK_COLUMNS: usize = 512;
/// At most this many images per block, so batches still split among threads.
const MAX_BLOCK_IMAGES: usize = 16;

/// Images per block for a convolution: a function of its shape only, so the
/// order of floating-point sums (and so the result) does not depend on the
/// number of threads.
fn block_images(g: &ConvGeom) -> usize {
    if g.p() >= BLOCK_COLUMNS / 2 {
        // A large map is a wide enough product on its own; blocking would
        // only add copies of big activations.
        return 1;
    }
    BLOCK_COLUMNS
        .div_ceil(g.p().max(1))
        .clamp(1, MAX_BLOCK_IMAGES)
        .min(g.n.max(1))
}

/// Lets the matrix product use all threads itself when there are fewer
/// blocks than threads (a small batch on large late layers).
fn inner_parallelism(blocks: usize) -> Parallelism {
    let threads = threads();
    if blocks < threads {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// Copies `nb` images of `src` (`nb x rows x p`) side by side into `dst` (`rows x (nb * p)`).
fn to_block(src: &[f32], dst: &mut [f32], rows: usize, p: usize, nb: usize) {
    let ld = nb * p;
    for b in 0..nb {
        for r in 0..rows {
            dst[r * ld + b * p..r * ld + (b + 1) * p]
                .copy_from_slice(&src[(b * rows + r) * p..(b * rows + r + 1) * p]);
        }
    }
}

/// The inverse of [`to_block`].
fn from_block(src: &[f32], dst: &mut [f32], rows: usize, p: usize, nb: usize) {
    let ld = nb * p;
    for b in 0..nb {
        for r in 0..rows {
            dst[(b * rows + r) * p..(b * rows + r + 1) * p]
                .copy_from_slice(&src[r * ld + b * p..r * ld + (b + 1) * p]);
        }
    }
}

/// Convolution forward on raw buffers: per block of images,
/// `y = w * [im2col(x[b0]) .. im2col(x[b0 + nb - 1])]`, one matrix product.
fn conv_forward_raw(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; g.n * g.out_len()];
    if g.out_len() == 0 || g.n == 0 {
        return y;
    }
    let (k, p) = (g.k(), g.p());
    let bi = block_images(g);
    let par = inner_parallelism(g.n.div_ceil(bi));
    par_chunks(&mut y, bi * g.out_len(), |blk, yb| {
        let b0 = blk * bi;
        let nb = yb.len() / g.out_len();
        let ld = nb * p;
        if nb == 1 && g.is_pointwise() {
            let xi = &x[b0 * g.in_len()..(b0 + 1) * g.in_len()];
            matmul(g.c_out, p, k, yb, p, false, w, k, 1, xi, p, 1, par);
            return;
        }
        with_scratch(k * ld, |cols| {
            for b in 0..nb {
                let xi = &x[(b0 + b) * g.in_len()..(b0 + b + 1) * g.in_len()];
                im2col(g, xi, &mut cols[b * p..], ld);
            }
            if nb == 1 {
                matmul(g.c_out, p, k, yb, p, false, w, k, 1, cols, p, 1, par);
            } else {
                with_scratch(g.c_out * ld, |out| {
                    matmul(g.c_out, ld, k, out, ld, false, w, k, 1, cols, ld, 1, par);
                    from_block(out, yb, g.c_out, p, nb);
                });
            }
        });
    });
    y
}

/// Weight gradient: `dw = sum_n dy[n] * im2col(x[n])^T`, one product per
/// block of images into the block's own partial sum; the partials are
/// added in block order, so the result does not depend on which thread
/// ran which block and training stays bit-for-bit reproducible.
fn conv_grad_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let wlen = g.c_out * k;
    if g.n == 0 || p == 0 {
        return vec![0.0; wlen];
    }
    let bi = block_images(g);
    let blocks = g.n.div_ceil(bi);
    let par = inner_parallelism(blocks);
    let mut partials = vec![0.0f32; blocks * wlen];
    par_chunks(&mut partials, wlen, |blk, acc| {
        let b0 = blk * bi;
        let nb = bi.min(g.n - b0);
        let ld = nb * p;
        with_scratch(k * ld, |cols| {
            for b in 0..nb {
                let xi = &x[(b0 + b) * g.in_len()..(b0 + b + 1) * g.in_len()];
                im2col(g, xi, &mut cols[b * p..], ld);
            }
            let dyb = &dy[b0 * g.out_len()..(b0 + nb) * g.out_len()];
            if nb == 1 {
                matmul(g.c_out, k, p, acc, k, false, dyb, p, 1, cols, 1, p, par);
            } else {
                with_scratch(g.c_out * ld, |dyt| {
                    to_block(dyb, dyt, g.c_out, p, nb);
                    matmul(g.c_out, k, ld, acc, k, false, dyt, ld, 1, cols, 1, ld, par);
                });
            }
        });
    });
    let (first, rest) = partials.split_at_mut(wlen);
    for part in rest.chunks(wlen) {
        first.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    partials.truncate(wlen);
    partials
}

/// Input gradient.
///
/// Stride 1 with padding below the kernel size: a forward convolution of
/// `dy` (padded by `kernel - 1 - pad`) with the weights flipped in space
/// and with input and output channels swapped. Otherwise
/// `col2im(w^T * dy[n])` per image.
fn conv_grad_input(g: &ConvGeom, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    if g.stride == 1 && g.pad < g.kh && g.pad < g.kw && g.kh == g.kw {
        let (kh, kw) = (g.kh, g.kw);
        let mut wt = vec![0.0f32; w.len()];
        for co in 0..g.c_out {
            for ci in 0..g.c_in {
                for a in 0..kh {
                    for b in 0..kw {
                        wt[((ci * g.c_out + co) * kh + a) * kw + b] =
                            w[((co * g.c_in + ci) * kh + (kh - 1 - a)) * kw + (kw - 1 - b)];
                    }
                }
            }
        }
        let gt = ConvGeom {
            n: g.n,
            c_in: g.c_out,
            h: g.h_out,
            w: g.w_out,
            c_out: g.c_in,
            kh,
            kw,
            stride: 1,
            pad: kh - 1 - g.pad,
            h_out: g.h,
            w_out: g.w,
        };
        debug_assert_eq!(gt.h_out, gt.h + 2 * gt.pad + 1 - kh);
        return conv_forward_raw(&gt, dy, &wt);
    }
    let mut dx = vec![0.0f32; g.n * g.in_len()];
    if g.in_len() == 0 || g.n == 0 {
        return dx;
    }
    let bi = block_images(g);
    let par = inner_parallelism(g.n.div_ceil(bi));
    par_chunks(&mut dx, bi * g.in_len(), |blk, dxb| {
        let b0 = blk * bi;
        let nb = dxb.len() / g.in_len();
        let ld = nb * p;
        let dyb = &dy[b0 * g.out_len()..(b0 + nb) * g.out_len()];
        with_scratch(g.c_out * ld, |dyt| {
            to_block(dyb, dyt, g.c_out, p, nb);
            with_scratch(k * ld, |cols| {
                // cols (k x nb*p) = w^T (k x c_out) * dy (c_out x nb*p)
                matmul(k, ld, g.c_out, cols, ld, false, w, 1, k, dyt, ld, 1, par);
                for b in 0..nb {
                    col2im_add(
                        g,
                        &cols[b * p..],
                        ld,
                        &mut dxb[b * g.in_len()..(b + 1) * g.in_len()],
                    );
                }
            });
        });
    });
    dx
}

/// 2-D convolution without bias: NCHW input, (out, in, kh, kw) weights, square stride and zero padding.
#[derive(Debug, Clone, Copy)]
struct Conv2dOp {
    stride: usize,
    pad: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "primia-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let y = conv_forward_raw(&g, x, w);
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.n, g.c_out, g.h_out, g.w_out)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g = ConvGeom::new(x.dims(), w.dims(), self.stride, self.pad)?;
        let name = self.name();
        let (dyc, wc) = (contiguous(grad)?, contiguous(w)?);
        let (dyg, dyl) = dyc.storage_and_layout();
        let (wg, wl) = wc.storage_and_layout();
        let (dy, wv) = (data(&dyg, dyl, name)?, data(&wg, wl, name)?);
        // The first layer's input is the image batch: no gradient needed.
        let dx = if x.track_op() {
            let dx = conv_grad_input(&g, wv, dy);
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let xc = contiguous(x)?;
            let (xg, xl) = xc.storage_and_layout();
            let dw = conv_grad_weight(&g, data(&xg, xl, name)?, dy);
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

fn check_cpu_f32(t: &Tensor, what: &str) -> CResult<()> {
    if !matches!(t.device(), Device::Cpu) || t.dtype() != DType::F32 {
        bail!(
            "{what}: the fast kernels take float32 tensors on the CPU, got {:?} on {:?}",
            t.dtype(),
            t.device().location()
        );
    }
    Ok(())
}

/// 2-D convolution (no bias) of NCHW `x` with `(c_out, c_in, k, k)` weights.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> CResult<Tensor> {
    check_cpu_f32(x, "conv2d")?;
    check_cpu_f32(weight, "conv2d")?;
    x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        Conv2dOp {
            stride,
            pad: padding,
        },
    )
}

/// Mean and reciprocal standard deviation of a group, two-pass in float32 as candle's reference.
fn group_stats(xs: &[f32], eps: f32) -> (f32, f32) {
    let m = xs.len() as f32;
    let mean = sum8(xs, xs, |v, _| v) / m;
    let var = sum8(xs, xs, |v, _| (v - mean) * (v - mean)) / m;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `sum(f(a[i], b[i]))` in float32 over eight interleaved accumulators:
/// vectorised, and more accurate than one running sum.
#[inline(always)]
fn sum8(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += f(x[j], y[j]);
        }
    }
    for (j, (&x, &y)) in ar.iter().zip(br).enumerate() {
        acc[j] += f(x, y);
    }
    acc.iter().sum()
}

/// The gradient arriving at a normalisation's output.
#[derive(Clone, Copy)]
enum Upstream<'a> {
    /// Of the output itself (same shape).
    Same(&'a [f32]),
    /// Of the output's 2x2 max-pooling: `(h / 2) x (w / 2)` per plane of
    /// the `h x w` output.
    Pooled { dy: &'a [f32], h: usize, w: usize },
}

/// 2x2 max-pooling of one `h x w` plane into `(h / 2) x (w / 2)` (odd
/// trailing rows and columns dropped, as candle's).
fn pool_plane(xp: &[f32], h: usize, w: usize, yp: &mut [f32]) {
    let (ho, wo) = (h / 2, w / 2);
    for oy in 0..ho {
        let r0 = &xp[2 * oy * w..2 * oy * w + w];
        let r1 = &xp[(2 * oy + 1) * w..(2 * oy + 1) * w + w];
        for (ox, o) in yp[oy * wo..(oy + 1) * wo].iter_mut().enumerate() {
            *o = r0[2 * ox]
                .max(r0[2 * ox + 1])
                .max(r1[2 * ox].max(r1[2 * ox + 1]));
        }
    }
}

/// The gradient of [`pool_plane`]: writes every element of `dxp` (`h x w`),
/// giving each window's `dyp` to the window's first maximum in row-major
/// order, as PyTorch does, and zero to the rest. With `relu`, `xp` is a
/// ReLU's output and a window whose maximum is not positive gets nothing
/// either (the ReLU's own gradient mask, applied in the same sweep).
fn unpool_plane(xp: &[f32], dyp: &[f32], h: usize, w: usize, relu: bool, dxp: &mut [f32]) {
    let (ho, wo) = (h / 2, w / 2);
    for oy in 0..ho {
        let (top, rest) = dxp[2 * oy * w..].split_at_mut(w);
        let bottom = &mut rest[..w];
        let r0 = &xp[2 * oy * w..2 * oy * w + w];
        let r1 = &xp[(2 * oy + 1) * w..(2 * oy + 1) * w + w];
        let dy = &dyp[oy * wo..(oy + 1) * wo];
        // Exact lengths, so the loop below needs no bounds checks.
        let (t, b) = (&mut top[..2 * wo], &mut bottom[..2 * wo]);
        let (r0, r1) = (&r0[..2 * wo], &r1[..2 * wo]);
        for ox in 0..wo {
            let (xa, xb, xc, xd) = (r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]);
            let m = xa.max(xb).max(xc.max(xd));
            // The gradient, as bits; zero where the ReLU blocks it.
            let pass = !relu | (m > 0.0);
            let g = dy[ox].to_bits() & 0u32.wrapping_sub(pass as u32);
            // First maximum: a, then b, then c, then d. `max` returns one of
            // its arguments, so comparing bit patterns finds it; the choice
            // is made with masks rather than branches (which element wins
            // is a coin toss per window), which also lets the loop vectorise.
            let mbits = m.to_bits();
            let hit = |v: f32| 0u32.wrapping_sub((v.to_bits() == mbits) as u32);
            let ma = hit(xa);
            let mb = hit(xb) & !ma;
            let mc = hit(xc) & !(ma | mb);
            let md = !(ma | mb | mc);
            t[2 * ox] = f32::from_bits(g & ma);
            t[2 * ox + 1] = f32::from_bits(g & mb);
            b[2 * ox] = f32::from_bits(g & mc);
            b[2 * ox + 1] = f32::from_bits(g & md);
        }
        if w % 2 == 1 {
            top[w - 1] = 0.0;
            bottom[w - 1] = 0.0;
        }
    }
    if h % 2 == 1 {
        dxp[(h - 1) * w..h * w].fill(0.0);
    }
}

/// Group normalisation over NCHW with per-channel scale and shift, optionally followed by ReLU.
#[derive(Debug, Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f32,
    relu: bool,
}

impl GroupNormOp {
    /// (n, c, hw) of an NCHW shape, checked against the groups.
    fn dims(&self, dims: &[usize]) -> CResult<(usize, usize, usize)> {
        let &[n, c, h, w] = dims else {
            bail!("group_norm: input {dims:?} must be 4-D");
        };
        if self.groups == 0 || !c.is_multiple_of(self.groups) {
            bail!("group_norm: {c} channels in {} groups", self.groups);
        }
        Ok((n, c, h * w))
    }

    /// Normalises, scales, shifts and (if `relu`) rectifies `x` (n, c, hw).
    /// Also returns each group's mean and reciprocal standard deviation
    /// (pairs, example-major), which the backward pass can reuse.
    fn forward_raw(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let mut y = vec![0.0f32; n * c * hw];
        let mut stats = vec![0.0f32; n * self.groups * 2];
        let cpg = c / self.groups;
        let glen = cpg * hw;
        if glen > 0 {
            par_chunks2(
                n * self.groups,
                &mut y,
                glen,
                &mut stats,
                2,
                |ng, yg, st| {
                    let xg = &x[ng * glen..(ng + 1) * glen];
                    let (mean, rstd) = group_stats(xg, self.eps);
                    st[0] = mean;
                    st[1] = rstd;
                    let c0 = (ng % self.groups) * cpg;
                    for j in 0..cpg {
                        let a = gamma[c0 + j] * rstd;
                        let b = beta[c0 + j] - mean * a;
                        let (xs, ys) = (&xg[j * hw..(j + 1) * hw], &mut yg[j * hw..(j + 1) * hw]);
                        if self.relu {
                            ys.iter_mut()
                                .zip(xs)
                                .for_each(|(o, &v)| *o = (v * a + b).max(0.0));
                        } else {
                            ys.iter_mut().zip(xs).for_each(|(o, &v)| *o = v * a + b);
                        }
                    }
                },
            );
        }
        (y, stats)
    }

    /// The input, scale and shift gradients, given the input `xv`, the
    /// scales `gv`, the output `yv` (for the ReLU mask) and its gradient `dy`,
    /// and the group statistics of [`Self::forward_raw`] if kept (else
    /// they are computed again).
    #[allow(clippy::too_many_arguments)]
    fn backward_raw(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        xv: &[f32],
        gv: &[f32],
        yv: &[f32],
        dy: Upstream<'_>,
        stats: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let cpg = c / self.groups;
        let glen = cpg * hw;
        let mut dx = vec![0.0f32; n * c * hw];
        // Per group: the scale and shift gradients of its channels.
        let mut dgb = vec![0.0f32; n * self.groups * 2 * cpg];
        if glen > 0 {
            par_chunks2(
                n * self.groups,
                &mut dx,
                glen,
                &mut dgb,
                2 * cpg,
                |ng, dxg, dgbg| {
                    let off = ng * glen;
                    let xg = &xv[off..off + glen];
                    let (mean, rstd) = match stats {
                        Some(st) => (st[2 * ng], st[2 * ng + 1]),
                        None => group_stats(xg, self.eps),
                    };
                    let c0 = (ng % self.groups) * cpg;
                    // Gradient after the ReLU mask (and through the pooling),
                    // kept in dxg for the second sweep.
                    let yg = &yv[off..off + glen];
                    match dy {
                        Upstream::Same(dy) => {
                            let dyg = &dy[off..off + glen];
                            if self.relu {
                                for ((d, &g), &y) in dxg.iter_mut().zip(dyg).zip(yg) {
                                    *d = if y > 0.0 { g } else { 0.0 };
                                }
                            } else {
                                dxg.copy_from_slice(dyg);
                            }
                        }
                        Upstream::Pooled { dy, h, w } => {
                            let phw = (h / 2) * (w / 2);
                            for j in 0..cpg {
                                let plane = ng * cpg + j;
                                unpool_plane(
                                    &yg[j * hw..(j + 1) * hw],
                                    &dy[plane * phw..(plane + 1) * phw],
                                    h,
                                    w,
                                    self.relu,
                                    &mut dxg[j * hw..(j + 1) * hw],
                                );
                            }
                        }
                    }
                    // sum(dxhat) and sum(dxhat * xhat) over the group.
                    let (mut s1, mut s2) = (0.0f32, 0.0f32);
                    for j in 0..cpg {
                        let ds = &dxg[j * hw..(j + 1) * hw];
                        let xs = &xg[j * hw..(j + 1) * hw];
                        let sd = sum8(ds, ds, |d, _| d);
                        let sdx = sum8(ds, xs, |d, v| d * (v - mean)) * rstd;
                        dgbg[j] = sdx;
                        dgbg[cpg + j] = sd;
                        s1 += gv[c0 + j] * sd;
                        s2 += gv[c0 + j] * sdx;
                    }
                    let m = glen as f32;
                    let (k1, k2) = (s1 / m, s2 / m);
                    for j in 0..cpg {
                        let a = gv[c0 + j] * rstd;
                        let xs = &xg[j * hw..(j + 1) * hw];
                        for (d, &v) in dxg[j * hw..(j + 1) * hw].iter_mut().zip(xs) {
                            let xhat = (v - mean) * rstd;
                            *d = a * *d - rstd * (k1 + xhat * k2);
                        }
                    }
                },
            );
        }
        let mut dgamma = vec![0.0f32; c];
        let mut dbeta = vec![0.0f32; c];
        for (ng, part) in dgb.chunks(2 * cpg.max(1)).enumerate() {
            let c0 = (ng % self.groups) * cpg;
            for j in 0..cpg {
                dgamma[c0 + j] += part[j];
                dbeta[c0 + j] += part[cpg + j];
            }
        }
        (dx, dgamma, dbeta)
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "primia-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (n, c, hw) = self.dims(l1.dims())?;
        let x = slice(s1, l1, self.name())?;
        let gamma = slice(s2, l2, self.name())?;
        let beta = slice(s3, l3, self.name())?;
        if gamma.len() != c || beta.len() != c {
            bail!(
                "group_norm: {c} channels but {} scales and {} shifts",
                gamma.len(),
                beta.len()
            );
        }
        let (y, _) = self.forward_raw(n, c, hw, x, gamma, beta);
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, hw) = self.dims(x.dims())?;
        let name = self.name();
        let (xc, gc, dyc, yc) = (
            contiguous(x)?,
            contiguous(gamma)?,
            contiguous(grad)?,
            contiguous(res)?,
        );
        let (xg, xl) = xc.storage_and_layout();
        let (gg, gl) = gc.storage_and_layout();
        let (dyg, dyl) = dyc.storage_and_layout();
        let (yg, yl) = yc.storage_and_layout();
        let xv = data(&xg, xl, name)?;
        let gv = data(&gg, gl, name)?;
        let dy = data(&dyg, dyl, name)?;
        let yv = data(&yg, yl, name)?;
        let (dx, dgamma, dbeta) = self.backward_raw(n, c, hw, xv, gv, yv, Upstream::Same(dy), None);
        let dx = x
            .track_op()
            .then(|| Tensor::from_vec(dx, x.shape(), x.device()))
            .transpose()?;
        let dgamma = gamma
            .track_op()
            .then(|| Tensor::from_vec(dgamma, gamma.shape(), gamma.device()))
            .transpose()?;
        let dbeta = beta
            .track_op()
            .then(|| Tensor::from_vec(dbeta, beta.shape(), beta.device()))
            .transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}

/// Group normalisation of NCHW `x` with per-channel `weight` and `bias`, then ReLU if `relu`.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    relu: bool,
) -> CResult<Tensor> {
    for t in [x, weight, bias] {
        check_cpu_f32(t, "group_norm")?;
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        GroupNormOp {
            groups,
            eps: eps as f32,
            relu,
        },
    )
}

/// Convolution (no bias), group normalisation and ReLU as one op: the
/// convolution's output stays inside the op (kept for the backward pass)
/// instead of becoming a tensor of the graph, which saves candle's
/// allocation, zero-filling and summing of that tensor's gradient.
///
/// With `pool`, the op also max-pools its output 2x2 ([`conv_norm_relu_pool`]):
/// the full-size activation stays inside the op as well, and the pooling's
/// gradient is taken in the normalisation's first backward sweep, so that
/// neither the full-size activation nor its gradient is ever a tensor of
/// the graph (candle zero-fills and sums a gradient buffer for every such
/// tensor).
#[derive(Debug)]
struct ConvNormReluOp {
    conv: Conv2dOp,
    norm: GroupNormOp,
    pool: bool,
    /// The convolution's output, from the forward pass.
    conv_out: Mutex<Option<Vec<f32>>>,
    /// With `pool`: the activation before pooling, from the forward pass.
    act: Mutex<Option<Vec<f32>>>,
    /// The normalisation's group statistics, from the forward pass.
    stats: Mutex<Option<Vec<f32>>>,
}

impl ConvNormReluOp {
    fn new(stride: usize, pad: usize, groups: usize, eps: f64, pool: bool) -> Self {
        ConvNormReluOp {
            conv: Conv2dOp { stride, pad },
            norm: GroupNormOp {
                groups,
                eps: eps as f32,
                relu: true,
            },
            pool,
            conv_out: Mutex::new(None),
            act: Mutex::new(None),
            stats: Mutex::new(None),
        }
    }
}

/// Takes what a mutex holds, even from a poisoned one.
fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Stores `v` in a mutex, even a poisoned one.
fn put<T>(m: &Mutex<Option<T>>, v: T) {
    *m.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
}

impl CustomOp3 for ConvNormReluOp {
    fn name(&self) -> &'static str {
        "primia-conv-norm-relu"
    }

    /// Arguments: input, convolution weights, and scales followed by shifts (2c).
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.conv.stride, self.conv.pad)?;
        let (x, w, gb) = (
            slice(s1, l1, name)?,
            slice(s2, l2, name)?,
            slice(s3, l3, name)?,
        );
        let shape = [g.n, g.c_out, g.h_out, g.w_out];
        let (n, c, hw) = self.norm.dims(&shape)?;
        if gb.len() != 2 * c {
            bail!(
                "conv_norm_relu: {c} channels but {} scales and shifts",
                gb.len()
            );
        }
        let z = conv_forward_raw(&g, x, w);
        let (y, stats) = self.norm.forward_raw(n, c, hw, &z, &gb[..c], &gb[c..]);
        put(&self.conv_out, z);
        put(&self.stats, stats);
        if !self.pool {
            return Ok((CpuStorage::F32(y), Shape::from(&shape[..])));
        }
        let (h, w) = (g.h_out, g.w_out);
        let (ho, wo) = (h / 2, w / 2);
        let mut pooled = vec![0.0f32; n * c * ho * wo];
        if ho * wo > 0 {
            par_chunks(&mut pooled, ho * wo, |i, yp| {
                pool_plane(&y[i * hw..(i + 1) * hw], h, w, yp);
            });
        }
        put(&self.act, y);
        Ok((CpuStorage::F32(pooled), Shape::from((n, c, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let g = ConvGeom::new(x.dims(), w.dims(), self.conv.stride, self.conv.pad)?;
        let (n, c, hw) = self.norm.dims(&[g.n, g.c_out, g.h_out, g.w_out])?;
        let (xc, wc, gbc, yc, dyc) = (
            contiguous(x)?,
            contiguous(w)?,
            contiguous(gb)?,
            contiguous(res)?,
            contiguous(grad)?,
        );
        let (xg, xl) = xc.storage_and_layout();
        let (wg, wl) = wc.storage_and_layout();
        let (gbg, gbl) = gbc.storage_and_layout();
        let (yg, yl) = yc.storage_and_layout();
        let (dyg, dyl) = dyc.storage_and_layout();
        let xv = data(&xg, xl, name)?;
        let wv = data(&wg, wl, name)?;
        let gbv = data(&gbg, gbl, name)?;
        let dy = data(&dyg, dyl, name)?;
        // What the forward pass kept; recomputed if a second backward pass
        // through the same graph finds it already taken.
        let (z, stats) = match (take(&self.conv_out), take(&self.stats)) {
            (Some(z), stats) => (z, stats),
            (None, _) => (conv_forward_raw(&g, xv, wv), None),
        };
        let act = self.pool.then(|| {
            take(&self.act)
                .unwrap_or_else(|| self.norm.forward_raw(n, c, hw, &z, &gbv[..c], &gbv[c..]).0)
        });
        let (yv, up) = match &act {
            Some(a) => {
                let up = Upstream::Pooled {
                    dy,
                    h: g.h_out,
                    w: g.w_out,
                };
                (&a[..], up)
            }
            None => (data(&yg, yl, name)?, Upstream::Same(dy)),
        };
        let (dz, dgamma, dbeta) =
            self.norm
                .backward_raw(n, c, hw, &z, &gbv[..c], yv, up, stats.as_deref());
        put(&self.conv_out, z);
        if let Some(st) = stats {
            put(&self.stats, st);
        }
        if let Some(a) = act {
            put(&self.act, a);
        }
        let dx = if x.track_op() {
            let dx = conv_grad_input(&g, wv, &dz);
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let dw = conv_grad_weight(&g, xv, &dz);
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        let dgb = if gb.track_op() {
            let mut v = dgamma;
            v.extend_from_slice(&dbeta);
            Some(Tensor::from_vec(v, gb.shape(), gb.device())?)
        } else {
            None
        };
        Ok((dx, dw, dgb))
    }
}

/// `relu(group_norm(conv2d(x, weight)))` in one op: NCHW `x`,
/// `(c_out, c_in, k, k)` weights without bias, per-channel `scale` and
/// `shift`; the same result as [`conv2d`] followed by [`group_norm`] with ReLU.
#[allow(clippy::too_many_arguments)]
pub fn conv_norm_relu(
    x: &Tensor,
    weight: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    eps: f64,
) -> CResult<Tensor> {
    let op = ConvNormReluOp::new(stride, padding, groups, eps, false);
    apply_conv_norm_relu(x, weight, scale, shift, op)
}

/// [`conv_norm_relu`] followed by [`max_pool2x2`], in one op.
#[allow(clippy::too_many_arguments)]
pub fn conv_norm_relu_pool(
    x: &Tensor,
    weight: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    eps: f64,
) -> CResult<Tensor> {
    let op = ConvNormReluOp::new(stride, padding, groups, eps, true);
    apply_conv_norm_relu(x, weight, scale, shift, op)
}

fn apply_conv_norm_relu(
    x: &Tensor,
    weight: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    op: ConvNormReluOp,
) -> CResult<Tensor> {
    for t in [x, weight, scale, shift] {
        check_cpu_f32(t, "conv_norm_relu")?;
    }
    let gb = Tensor::cat(&[scale, shift], 0)?;
    x.contiguous()?.apply_op3(&weight.contiguous()?, &gb, op)
}

/// 2x2 max-pooling with stride 2 (odd trailing rows and columns dropped, as candle's).
#[derive(Debug, Clone, Copy)]
struct MaxPool2x2Op;

impl CustomOp1 for MaxPool2x2Op {
    fn name(&self) -> &'static str {
        "primia-max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l.dims() else {
            bail!("max_pool2x2: input {:?} must be 4-D", l.dims());
        };
        let x = slice(s, l, self.name())?;
        let (ho, wo) = (h / 2, w / 2);
        let mut y = vec![0.0f32; n * c * ho * wo];
        if ho * wo > 0 {
            par_chunks(&mut y, ho * wo, |i, yp| {
                pool_plane(&x[i * h * w..(i + 1) * h * w], h, w, yp);
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, c, h, w) = x.dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let name = self.name();
        let (xc, dyc) = (contiguous(x)?, contiguous(grad)?);
        let (xg, xl) = xc.storage_and_layout();
        let (dyg, dyl) = dyc.storage_and_layout();
        let (xv, dy) = (data(&xg, xl, name)?, data(&dyg, dyl, name)?);
        let mut dx = vec![0.0f32; n * c * h * w];
        if ho * wo > 0 {
            par_chunks(&mut dx, h * w, |i, dxp| {
                let xp = &xv[i * h * w..(i + 1) * h * w];
                unpool_plane(xp, &dy[i * ho * wo..(i + 1) * ho * wo], h, w, false, dxp);
            });
        }
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// 2x2 max-pooling, stride 2, of NCHW `x`.
pub fn max_pool2x2(x: &Tensor) -> CResult<Tensor> {
    check_cpu_f32(x, "max_pool2x2")?;
    x.contiguous()?.apply_op1(MaxPool2x2Op)
}

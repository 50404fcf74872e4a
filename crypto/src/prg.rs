//! The mask PRG: expands a 32-byte seed into a stream of ring elements.
//!
//! # Specification (pinned; a change here is a wire-incompatible change)
//!
//! For a seed `s` (32 bytes: a self-mask seed b_u or a pairwise seed s_uv):
//!
//! 1. `k = blake3::derive_key(kdf::MASK_PRG_KEY, s)` with
//!    `MASK_PRG_KEY = "primia 2026-11 secagg mask prg key v1"` (the seed
//!    bytes are the key material, unprefixed).
//! 2. The keyed blake3 hash with key `k` over the empty input, read as an
//!    extendable output (XOF) stream from offset 0:
//!    `blake3::Hasher::new_keyed(&k).finalize_xof()`.
//! 3. Ring element `i` (i = 0, 1, ...) is the little-endian `u64` in stream
//!    bytes `8 i .. 8 i + 8`.
//!
//! The mask of a vector of length m is elements `0..m`. Step 1 makes the PRG
//! key a purpose-bound derivative of the seed, so a seed is never used as a
//! key for anything else by accident.
//!
//! # Why blake3
//!
//! Masking is the floor of a round's cost: each member expands N masks of the
//! model's size and the leader expands more for dropouts. The blake3 XOF
//! computes many output blocks in parallel with SIMD (AVX-512 here), ahead of
//! AES-CTR and far ahead of ChaCha20 on this class of machine.
//!
//! # How it runs
//!
//! [`add_mask`] and [`sub_mask`] are fused: the XOF fills a fixed
//! [`CHUNK_BYTES`] stack buffer, which is added into the output and then
//! reused, so nothing is allocated and the buffer stays in L1 cache. The
//! buffer and the XOF state are wiped before returning. [`apply_masks`]
//! applies many seeds in one pass over the output, and [`Masker`] does the
//! same piece by piece, so a caller can mask a vector while writing it
//! somewhere else (the protocol writes a masked input straight into its
//! message).

use zeroize::Zeroize;

use crate::{Ring, Secret32, kdf};

/// Bytes of XOF output produced per step.
///
/// Measured on this project's machine (AMD EPYC Zen 4, AVX-512, 32 KiB L1d
/// per core), best of 40 runs of `add_mask` over 10^6 elements: 2, 4 and
/// 8 KiB all gave 5.8-6.0 GB/s, 12-24 KiB 10-35 % less, as buffer plus output
/// chunk outgrow L1. The XOF alone, filling one 8 MB buffer, gave 6.9 GB/s,
/// so the fused add costs about 15 %. blake3 computes up to 16 blocks
/// (1 KiB) per SIMD call, so every size here keeps it at full width; 8 KiB is
/// the largest size that stays in L1 with its output chunk.
pub const CHUNK_BYTES: usize = 8 * 1024;

const CHUNK_WORDS: usize = CHUNK_BYTES / 8;

/// The XOF reader for `seed`, steps 1 and 2 of the specification.
fn reader(seed: &Secret32) -> blake3::OutputReader {
    let mut key = blake3::derive_key(kdf::MASK_PRG_KEY, seed.expose());
    let mut hasher = blake3::Hasher::new_keyed(&key);
    let reader = hasher.finalize_xof();
    key.zeroize();
    hasher.zeroize();
    reader
}

/// Runs `combine(out[i], PRG(seed)[i])` over `out`, chunk by chunk.
#[inline(always)]
fn apply(seed: &Secret32, out: &mut [Ring], combine: impl Fn(Ring, Ring) -> Ring) {
    let mut xof = reader(seed);
    let mut buf = [0u8; CHUNK_BYTES];
    for chunk in out.chunks_mut(CHUNK_WORDS) {
        let bytes = &mut buf[..chunk.len() * 8];
        xof.fill(bytes);
        for (o, w) in chunk.iter_mut().zip(bytes.chunks_exact(8)) {
            let word = u64::from_le_bytes(w.try_into().expect("chunks of 8 bytes"));
            *o = combine(*o, word);
        }
    }
    buf.zeroize();
    xof.zeroize();
}

/// `out[i] += PRG(seed)[i]` (wrapping), fused: no temporary vector.
pub fn add_mask(seed: &Secret32, out: &mut [Ring]) {
    apply(seed, out, Ring::wrapping_add);
}

/// `out[i] -= PRG(seed)[i]` (wrapping), fused.
pub fn sub_mask(seed: &Secret32, out: &mut [Ring]) {
    apply(seed, out, Ring::wrapping_sub);
}

/// `out[i] = PRG(seed)[i]`.
pub fn expand(seed: &Secret32, out: &mut [Ring]) {
    apply(seed, out, |_, m| m);
}

/// `out[i] += sum_{s in add} PRG(s)[i] - sum_{s in sub} PRG(s)[i]` (wrapping):
/// many masks in one pass over `out`.
///
/// The same result as calling [`add_mask`] and [`sub_mask`] per seed, but
/// each [`CHUNK_BYTES`] piece of `out` is loaded once and receives every
/// mask while it sits in L1, instead of streaming the whole vector through
/// memory once per seed. On an idle core the two are equally fast (best of
/// 15: ten masks over 10^6 elements in 17.6 ms fused, 17.8 ms one pass per
/// seed), since the XOF, not memory, is the bottleneck; the single pass
/// helps when other cores compete for memory bandwidth. A member applies its
/// self mask and all pairwise masks this way; the aggregator removes the self
/// masks of the survivors and the pairwise masks of the dropped members.
/// Allocates one XOF state per seed, nothing per element.
pub fn apply_masks(add: &[&Secret32], sub: &[&Secret32], out: &mut [Ring]) {
    Masker::new(add, sub).apply(out);
}

/// Work below this many elements times seeds is done on the calling thread
/// alone by [`apply_masks_parallel`]: 8 MB of stream, about a millisecond.
/// A scoped thread costs tens of microseconds to start, and on a busy
/// machine it may wait longer than that for a core.
pub const PARALLEL_MIN_WORK: usize = 1 << 20;

/// [`apply_masks`] on up to `threads` threads: `out` is cut into that many
/// contiguous ranges, each masked by its own [`Masker`] positioned at the
/// range's first element (the calling thread takes the first range; the
/// others run on scoped threads). The result is exactly that of
/// [`apply_masks`]: every element still receives every mask once, and
/// wrapping addition does not depend on the order.
///
/// For the leader's unmasking, which expands one stream per survivor over
/// the whole model while the members wait (round bench, 10 members and
/// 10^6 parameters on two cores: the unmask phase went from 18-20 ms to
/// 15-17 ms).
/// `threads` of 0 or 1, or less work than [`PARALLEL_MIN_WORK`], runs
/// [`apply_masks`] on the calling thread.
pub fn apply_masks_parallel(
    add: &[&Secret32],
    sub: &[&Secret32],
    out: &mut [Ring],
    threads: usize,
) {
    let work = out.len().saturating_mul(add.len() + sub.len());
    if threads <= 1 || work < PARALLEL_MIN_WORK {
        apply_masks(add, sub, out);
        return;
    }
    // Ranges of whole XOF chunks, so each thread fills full buffers.
    let per = out.len().div_ceil(threads).next_multiple_of(CHUNK_WORDS);
    std::thread::scope(|scope| {
        let mut ranges = out.chunks_mut(per).enumerate();
        let first = ranges.next();
        for (i, range) in ranges {
            scope.spawn(move || Masker::at(add, sub, i * per).apply(range));
        }
        if let Some((_, range)) = first {
            Masker::new(add, sub).apply(range);
        }
    });
}

/// How many threads [`apply_masks_parallel`] should use on this machine:
/// its available parallelism, at least 1 and at most 8. The cap is a
/// guess, not a measurement (this project's machines have two cores):
/// beyond a few threads memory bandwidth, not cores, is likely the limit.
pub fn mask_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// [`apply_masks`] as a stream: the masks of many seeds applied to
/// consecutive pieces of one vector, each [`Masker::apply`] continuing where
/// the last stopped.
///
/// This lets a caller produce a masked vector piece by piece straight into
/// its destination (the protocol writes a member's masked input directly
/// into the message envelope) with every piece still in L1 cache, instead of
/// masking a whole vector and copying it afterwards. Feeding pieces of
/// lengths `a`, `b`, ... gives exactly what one [`apply_masks`] over the
/// concatenation gives. The XOF states and the buffer are wiped on drop.
pub struct Masker {
    /// One XOF stream per seed; `true` adds it, `false` subtracts it.
    readers: Vec<(blake3::OutputReader, bool)>,
}

impl Masker {
    /// Streams for `add` (added) and `sub` (subtracted), positioned at
    /// element 0.
    pub fn new(add: &[&Secret32], sub: &[&Secret32]) -> Self {
        Self::at(add, sub, 0)
    }

    /// Streams for `add` and `sub` positioned at element `start`: what
    /// [`Masker::new`] would reach after `start` elements.
    pub fn at(add: &[&Secret32], sub: &[&Secret32], start: usize) -> Self {
        let positioned = |s: &Secret32| {
            let mut r = reader(s);
            r.set_position(start as u64 * 8);
            r
        };
        let readers = add
            .iter()
            .map(|s| (positioned(s), true))
            .chain(sub.iter().map(|s| (positioned(s), false)))
            .collect();
        Self { readers }
    }

    /// `out[i] += sum of the next out.len() elements of the added masks,
    /// minus those of the subtracted ones` (wrapping).
    pub fn apply(&mut self, out: &mut [Ring]) {
        let mut buf = [0u8; CHUNK_BYTES];
        for chunk in out.chunks_mut(CHUNK_WORDS) {
            let bytes = &mut buf[..chunk.len() * 8];
            for (xof, plus) in &mut self.readers {
                xof.fill(bytes);
                let words = bytes
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().expect("chunks of 8 bytes")));
                if *plus {
                    chunk
                        .iter_mut()
                        .zip(words)
                        .for_each(|(o, m)| *o = o.wrapping_add(m));
                } else {
                    chunk
                        .iter_mut()
                        .zip(words)
                        .for_each(|(o, m)| *o = o.wrapping_sub(m));
                }
            }
        }
        buf.zeroize();
    }
}

impl Drop for Masker {
    fn drop(&mut self) {
        for (xof, _) in &mut self.readers {
            xof.zeroize();
        }
    }
}

impl core::fmt::Debug for Masker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Masker(seeds = {})", self.readers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(b: u8) -> Secret32 {
        Secret32::from_bytes([b; 32])
    }

    /// Pins the PRG: if this changes, masks of different versions no longer
    /// cancel. Seed = bytes 0, 1, ..., 31.
    #[test]
    fn test_vector() {
        let s = Secret32::from_bytes(core::array::from_fn(|i| i as u8));
        let mut out = [0u64; 4];
        expand(&s, &mut out);
        assert_eq!(out, TEST_VECTOR);
    }

    /// Also reproduced with the Python `blake3` package:
    /// `k = blake3(bytes(range(32)), derive_key_context=MASK_PRG_KEY).digest()`,
    /// `struct.unpack("<4Q", blake3(b"", key=k).digest(32))`.
    const TEST_VECTOR: [u64; 4] = [
        14_844_437_757_217_772,
        17_946_846_180_803_001_950,
        11_360_618_375_037_578_653,
        5_029_194_616_493_982_025,
    ];

    #[test]
    fn matches_specification() {
        let s = seed(9);
        let n = CHUNK_WORDS * 2 + 3;
        let mut out = vec![0u64; n];
        expand(&s, &mut out);
        let key = blake3::derive_key(kdf::MASK_PRG_KEY, s.expose());
        let mut stream = vec![0u8; n * 8];
        blake3::Hasher::new_keyed(&key)
            .finalize_xof()
            .fill(&mut stream);
        let expect: Vec<u64> = stream
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(out, expect);
    }

    #[test]
    fn parallel_masks_equal_serial_masks() {
        let seeds: Vec<Secret32> = (0..5).map(seed).collect();
        let refs: Vec<&Secret32> = seeds.iter().collect();
        // Five seeds: the threshold in elements.
        let min = PARALLEL_MIN_WORK / 5;
        for len in [
            0,
            1,
            CHUNK_WORDS + 3,
            min - 1,
            min + 1,
            min * 3 + CHUNK_WORDS / 2 + 7,
        ] {
            let orig: Vec<u64> = (0..len as u64)
                .map(|i| i.wrapping_mul(0x2545_f491))
                .collect();
            let mut serial = orig.clone();
            apply_masks(&refs[..2], &refs[2..], &mut serial);
            for threads in [0, 1, 2, 3, 7] {
                let mut parallel = orig.clone();
                apply_masks_parallel(&refs[..2], &refs[2..], &mut parallel, threads);
                assert!(parallel == serial, "len {len}, {threads} threads");
            }
        }
        // A stream positioned mid-way continues the one from the start.
        let mut whole = vec![0u64; 3 * CHUNK_WORDS];
        Masker::new(&refs[..1], &[]).apply(&mut whole);
        let mut tail = vec![0u64; CHUNK_WORDS + 5];
        Masker::at(&refs[..1], &[], 2 * CHUNK_WORDS - 5).apply(&mut tail);
        assert_eq!(tail, whole[2 * CHUNK_WORDS - 5..]);
    }

    #[test]
    fn prefix_consistent_across_lengths() {
        let s = seed(3);
        let mut long = vec![0u64; CHUNK_WORDS + 100];
        expand(&s, &mut long);
        for len in [0usize, 1, 7, CHUNK_WORDS - 1, CHUNK_WORDS, CHUNK_WORDS + 1] {
            let mut short = vec![0u64; len];
            expand(&s, &mut short);
            assert_eq!(short, long[..len]);
        }
    }

    #[test]
    fn add_then_sub_cancels_and_add_matches_expand() {
        let n = CHUNK_WORDS * 3 + 17;
        let orig: Vec<u64> = (0..n as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let mut v = orig.clone();
        add_mask(&seed(1), &mut v);
        let mut mask = vec![0u64; n];
        expand(&seed(1), &mut mask);
        let expect: Vec<u64> = orig
            .iter()
            .zip(&mask)
            .map(|(a, b)| a.wrapping_add(*b))
            .collect();
        assert_eq!(v, expect);
        sub_mask(&seed(1), &mut v);
        assert_eq!(v, orig);
    }

    #[test]
    fn apply_masks_equals_one_pass_per_seed() {
        let n = CHUNK_WORDS * 2 + 5;
        let orig: Vec<u64> = (0..n as u64).map(|i| i * 3).collect();
        let seeds: Vec<Secret32> = (1..=5).map(seed).collect();
        let mut fused = orig.clone();
        apply_masks(
            &[&seeds[0], &seeds[1], &seeds[2]],
            &[&seeds[3], &seeds[4]],
            &mut fused,
        );
        let mut single = orig.clone();
        for s in &seeds[..3] {
            add_mask(s, &mut single);
        }
        for s in &seeds[3..] {
            sub_mask(s, &mut single);
        }
        assert_eq!(fused, single);
        // Removing them again in one call restores the input.
        apply_masks(
            &[&seeds[3], &seeds[4]],
            &[&seeds[0], &seeds[1], &seeds[2]],
            &mut fused,
        );
        assert_eq!(fused, orig);
        apply_masks(&[], &[], &mut fused);
        assert_eq!(fused, orig);
    }

    #[test]
    fn masker_pieces_equal_one_pass() {
        let n = CHUNK_WORDS * 3 + 11;
        let orig: Vec<u64> = (0..n as u64).map(|i| i ^ 0x55).collect();
        let seeds: Vec<Secret32> = (1..=4).map(seed).collect();
        let (add, sub) = ([&seeds[0], &seeds[1]], [&seeds[2], &seeds[3]]);
        let mut whole = orig.clone();
        apply_masks(&add, &sub, &mut whole);
        // Odd piece lengths, across chunk boundaries, and an empty piece.
        for cuts in [
            vec![1, 7, CHUNK_WORDS, 0, 5],
            vec![CHUNK_WORDS + 3],
            vec![n],
        ] {
            let mut pieces = orig.clone();
            let mut masker = Masker::new(&add, &sub);
            let mut rest = &mut pieces[..];
            for c in cuts {
                let c = c.min(rest.len());
                let (head, tail) = rest.split_at_mut(c);
                masker.apply(head);
                rest = tail;
            }
            masker.apply(rest);
            assert_eq!(pieces, whole);
        }
    }

    #[test]
    fn different_seeds_give_different_masks() {
        let mut a = vec![0u64; 64];
        let mut b = vec![0u64; 64];
        expand(&seed(1), &mut a);
        expand(&seed(2), &mut b);
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
    }
}

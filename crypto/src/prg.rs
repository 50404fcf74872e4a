//! The mask PRG: expands a 32-byte seed into a stream of ring elements.
//!
//! # Specification (pinned; a change here is a wire-incompatible change)
//!
//! For a seed `s` (32 bytes: a self-mask seed b_u or a pairwise seed s_uv):
//!
//! 1. `k` = the first 16 bytes of `blake3::derive_key(kdf::MASK_PRG_KEY, s)`
//!    with `MASK_PRG_KEY = "primia 2026-12 secagg mask prg aes-128 key v2"`
//!    (the seed bytes are the key material, unprefixed).
//! 2. The AES-128 counter-mode stream under `k` from counter 0: block `j`
//!    (j = 0, 1, ...) is `AES-128_k(LE128(j))`, the 16-byte little-endian
//!    encoding of `j` encrypted.
//! 3. Ring element `i` (i = 0, 1, ...) is the little-endian `u64` in stream
//!    bytes `8 i .. 8 i + 8`.
//!
//! The mask of a vector of length m is elements `0..m`. Step 1 makes the PRG
//! key a purpose-bound derivative of the seed, so a seed is never used as a
//! key for anything else by accident. The protocol's wire version changes
//! with this specification, so members of different versions never mix
//! masks.
//!
//! # Why AES-128 in counter mode
//!
//! Masking is the floor of a round's cost: each member expands N masks of the
//! model's size and the leader expands more for dropouts. On CPUs with VAES
//! (AVX-512 AES, four blocks per instruction) counter mode is embarrassingly
//! parallel and runs at the rate of the AES units: the kernel in
//! `aes_ctr` adds masks into a vector at three to four times the rate of the
//! blake3 XOF that version 1 of this PRG used (`cargo bench -p primia-crypto
//! --bench prg` prints both). On x86-64 with AES-NI only, a 128-bit kernel
//! runs it at about twice the rate of the `aes` crate; elsewhere that crate
//! runs it (ARMv8 AES or constant-time software).
//!
//! Security: AES-128 is used as a pseudorandom function under a fresh key
//! per seed; a mask of m elements takes m/2 blocks, and the PRP/PRF
//! switching term `q^2 / 2^129` is below 2^-69 for any vector under 2^30
//! elements. The 128-bit key matches the ~128-bit security of the x25519
//! agreement the pairwise seeds come from.
//!
//! # How it runs
//!
//! [`add_mask`] and [`sub_mask`] are fused: the keystream is added into the
//! output as it is produced, with nothing allocated. [`apply_masks`] applies
//! many seeds in one pass over the output, [`CHUNK_BYTES`] at a time so each
//! piece stays in L1 while it receives every mask, and [`Masker`] does the
//! same piece by piece, so a caller can mask a vector while writing it
//! somewhere else (the protocol writes a masked input straight into its
//! message). AES round keys are wiped when a stream is dropped.

use zeroize::Zeroizing;

use crate::aes_ctr::Keystream;
use crate::{Ring, Secret32, kdf};

/// Bytes of the output that receive every mask of a [`Masker`] before it
/// moves on: small enough to stay in L1 while each seed's keystream is added.
pub const CHUNK_BYTES: usize = 8 * 1024;

const CHUNK_WORDS: usize = CHUNK_BYTES / 8;

/// The keystream for `seed`, steps 1 and 2 of the specification.
fn stream(seed: &Secret32) -> Keystream {
    Keystream::new(&key(seed))
}

/// The AES key for `seed`, step 1 of the specification.
fn key(seed: &Secret32) -> Zeroizing<[u8; 16]> {
    let derived = Zeroizing::new(blake3::derive_key(kdf::MASK_PRG_KEY, seed.expose()));
    Zeroizing::new(derived[..16].try_into().expect("16 of 32 bytes"))
}

/// Which implementation of the keystream this CPU runs ("vaes-avx512",
/// "aes-ni" or "aes crate"), for benchmark tables and diagnostics.
pub fn implementation() -> &'static str {
    Keystream::new(&[0; 16]).implementation()
}

/// [`add_mask`] through a named implementation ("vaes-avx512", "aes-ni" or
/// "aes crate"), for benchmarks that compare them; `false`, with `out`
/// untouched, where this CPU does not run it.
#[doc(hidden)]
pub fn add_mask_with(implementation: &str, seed: &Secret32, out: &mut [Ring]) -> bool {
    let key = key(seed);
    let stream = match implementation {
        "aes crate" => Some(Keystream::portable(&key)),
        #[cfg(target_arch = "x86_64")]
        "aes-ni" => Keystream::aesni(&key),
        #[cfg(target_arch = "x86_64")]
        "vaes-avx512" => Keystream::vaes(&key),
        _ => None,
    };
    stream.map(|s| s.add(0, out)).is_some()
}

/// `out[i] += PRG(seed)[i]` (wrapping), fused: no temporary vector.
pub fn add_mask(seed: &Secret32, out: &mut [Ring]) {
    stream(seed).add(0, out);
}

/// `out[i] -= PRG(seed)[i]` (wrapping), fused.
pub fn sub_mask(seed: &Secret32, out: &mut [Ring]) {
    stream(seed).sub(0, out);
}

/// `out[i] = PRG(seed)[i]`.
pub fn expand(seed: &Secret32, out: &mut [Ring]) {
    out.fill(0);
    stream(seed).add(0, out);
}

/// `out[i] += sum_{s in add} PRG(s)[i] - sum_{s in sub} PRG(s)[i]` (wrapping):
/// many masks in one pass over `out`.
///
/// The same result as calling [`add_mask`] and [`sub_mask`] per seed, but
/// each [`CHUNK_BYTES`] piece of `out` is loaded once and receives every
/// mask while it sits in L1, instead of streaming the whole vector through
/// memory once per seed; that matters when other cores compete for memory
/// bandwidth. A member applies its self mask and all pairwise masks this
/// way; the aggregator removes the self masks of the survivors and the
/// pairwise masks of the dropped members. Sets up one AES key per seed and
/// allocates nothing per element.
pub fn apply_masks(add: &[&Secret32], sub: &[&Secret32], out: &mut [Ring]) {
    Masker::new(add, sub).apply(out);
}

/// Work below this many elements times seeds is done on the calling thread
/// alone by [`apply_masks_parallel`]: 8 MB of stream, under a millisecond.
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
    // Ranges of whole chunks, so each thread starts on whole AES blocks.
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
/// concatenation gives. The AES round keys are wiped on drop.
pub struct Masker {
    /// One keystream per seed; `true` adds it, `false` subtracts it.
    streams: Vec<(Keystream, bool)>,
    /// The element of the streams that the next piece starts at.
    position: u64,
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
        let streams = add
            .iter()
            .map(|s| (stream(s), true))
            .chain(sub.iter().map(|s| (stream(s), false)))
            .collect();
        Self {
            streams,
            position: start as u64,
        }
    }

    /// `out[i] += sum of the next out.len() elements of the added masks,
    /// minus those of the subtracted ones` (wrapping).
    pub fn apply(&mut self, mut out: &mut [Ring]) {
        while !out.is_empty() {
            // Pieces end on the grid of CHUNK_WORDS, so after a first short
            // one they start on whole AES blocks and fill the kernel.
            let to_grid = CHUNK_WORDS - (self.position % CHUNK_WORDS as u64) as usize;
            let len = to_grid.min(out.len());
            let (chunk, rest) = std::mem::take(&mut out).split_at_mut(len);
            for (stream, plus) in &self.streams {
                if *plus {
                    stream.add(self.position, chunk);
                } else {
                    stream.sub(self.position, chunk);
                }
            }
            self.position += chunk.len() as u64;
            out = rest;
        }
    }
}

impl core::fmt::Debug for Masker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Masker(seeds = {})", self.streams.len())
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

    /// Also reproduced with the Python `blake3` and `cryptography` packages:
    /// `k = blake3(bytes(range(32)), derive_key_context=MASK_PRG_KEY).digest()[:16]`,
    /// `e = Cipher(algorithms.AES(k), modes.ECB()).encryptor()`,
    /// `struct.unpack("<4Q", e.update(b"".join(j.to_bytes(16, "little") for j in range(2))))`.
    const TEST_VECTOR: [u64; 4] = [
        18_363_747_420_336_369_038,
        16_952_141_592_154_682_765,
        15_798_998_371_772_207_801,
        2_855_805_234_826_132_809,
    ];

    /// The whole pipeline against the specification computed from scratch:
    /// the key derivation, then the `aes` crate's single-block encryption of
    /// each little-endian counter.
    #[test]
    fn matches_specification() {
        use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
        let s = seed(9);
        let n = CHUNK_WORDS * 2 + 3;
        let mut out = vec![0u64; n];
        expand(&s, &mut out);
        let derived = blake3::derive_key(kdf::MASK_PRG_KEY, s.expose());
        let cipher = aes::Aes128::new(GenericArray::from_slice(&derived[..16]));
        let mut stream = Vec::new();
        for j in 0..n.div_ceil(2) as u128 {
            let mut block = GenericArray::clone_from_slice(&j.to_le_bytes());
            cipher.encrypt_block(&mut block);
            stream.extend_from_slice(&block);
        }
        let expect: Vec<u64> = stream
            .chunks_exact(8)
            .take(n)
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
    fn every_named_implementation_gives_the_same_mask() {
        let mut expect = vec![0u64; 300];
        add_mask(&seed(4), &mut expect);
        assert!(add_mask_with(implementation(), &seed(4), &mut vec![0; 300]));
        for name in ["vaes-avx512", "aes-ni", "aes crate"] {
            let mut v = vec![0u64; 300];
            if add_mask_with(name, &seed(4), &mut v) {
                assert_eq!(v, expect, "{name}");
            } else {
                assert!(v.iter().all(|&x| x == 0), "{name}");
            }
        }
        assert!(add_mask_with("aes crate", &seed(4), &mut [0; 1]));
        assert!(!add_mask_with("rot13", &seed(4), &mut [0; 1]));
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

//! AES-128 in counter mode, added straight into ring vectors: the keystream
//! under the mask PRG ([`crate::prg`], which pins the specification).
//!
//! Block `j` of the stream is `AES-128_k(LE128(j))`, `j = 0, 1, ...`; element
//! `i` is the little-endian `u64` in stream bytes `8 i .. 8 i + 8`, so the low
//! half of block `i / 2` for even `i` and its high half for odd `i`.
//!
//! # Two implementations, one stream
//!
//! - On x86-64 with AVX-512 and VAES, `x86::apply_vaes` encrypts four
//!   counter blocks per instruction, 32 in flight, and adds the keystream
//!   into the vector from the same registers: no buffer, and the AES rounds,
//!   not memory, set the pace.
//! - On x86-64 with AES-NI but without VAES (most servers before 2021),
//!   `x86::apply_aesni` does the same one block per instruction, 8 in
//!   flight: about twice the rate of the `aes` crate's AES-NI path, which
//!   goes through a buffer.
//!
//!   The two kernels are the only `unsafe` code of the crate: unaligned
//!   vector loads and stores within a bounds-checked chunk, and calls on a
//!   CPU that was checked for their features when the key was set.
//! - Everywhere else the `aes` crate (AES-NI where present, its constant-time
//!   bitsliced software otherwise) encrypts 32 counter blocks at a time into
//!   a small buffer that is added into the vector and then wiped.
//!
//! The tests run every implementation the CPU supports on the same keys,
//! positions and lengths and require identical output, and check the
//! kernels' key schedule against FIPS-197.

use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use zeroize::{Zeroize, Zeroizing};

/// Elements per step of the buffered path and per iteration of the kernel:
/// 32 blocks.
const WORDS: usize = 64;

/// An AES-128 key set up for the fastest implementation this CPU runs.
pub(crate) struct Keystream {
    imp: Imp,
}

enum Imp {
    /// Round keys for the VAES kernel; only built where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    Vaes(Zeroizing<[[u64; 2]; 11]>),
    /// Round keys for the AES-NI kernel; only built where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    AesNi(Zeroizing<[[u64; 2]; 11]>),
    /// The `aes` crate, built with `zeroize`: its round keys are wiped on
    /// drop.
    Portable(Box<aes::Aes128>),
}

impl Keystream {
    /// Sets up `key` for the fastest implementation this CPU supports.
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = Self::vaes(key).or_else(|| Self::aesni(key)) {
            return k;
        }
        Self::portable(key)
    }

    /// Sets up `key` for the VAES kernel, if this CPU has AVX-512 and VAES.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn vaes(key: &[u8; 16]) -> Option<Self> {
        if !x86::has_vaes() {
            return None;
        }
        // SAFETY: `has_vaes` includes the features `expand_key` enables.
        let keys = Zeroizing::new(unsafe { x86::expand_key(key) });
        Some(Self {
            imp: Imp::Vaes(keys),
        })
    }

    /// Sets up `key` for the AES-NI kernel, if this CPU has AES-NI.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn aesni(key: &[u8; 16]) -> Option<Self> {
        if !x86::has_aesni() {
            return None;
        }
        // SAFETY: `has_aesni` checked the features `expand_key` enables.
        let keys = Zeroizing::new(unsafe { x86::expand_key(key) });
        Some(Self {
            imp: Imp::AesNi(keys),
        })
    }

    /// Sets up `key` for the `aes` crate, whatever the CPU.
    pub(crate) fn portable(key: &[u8; 16]) -> Self {
        Self {
            imp: Imp::Portable(Box::new(aes::Aes128::new(GenericArray::from_slice(key)))),
        }
    }

    /// Which implementation runs, for benchmarks and diagnostics.
    pub(crate) fn implementation(&self) -> &'static str {
        match self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Vaes(_) => "vaes-avx512",
            #[cfg(target_arch = "x86_64")]
            Imp::AesNi(_) => "aes-ni",
            Imp::Portable(_) => "aes crate",
        }
    }

    /// `out[i] += element(start + i)` (wrapping).
    pub(crate) fn add(&self, start: u64, out: &mut [u64]) {
        self.apply::<true>(start, out);
    }

    /// `out[i] -= element(start + i)` (wrapping).
    pub(crate) fn sub(&self, start: u64, out: &mut [u64]) {
        self.apply::<false>(start, out);
    }

    fn apply<const PLUS: bool>(&self, mut start: u64, mut out: &mut [u64]) {
        // An odd start begins in the high half of block start / 2.
        if start % 2 == 1
            && let Some((first, rest)) = std::mem::take(&mut out).split_first_mut()
        {
            let buf = self.fill(start / 2);
            combine::<PLUS>(std::slice::from_mut(first), &buf[1..2]);
            start += 1;
            out = rest;
        }
        let even = out.len() & !1;
        let (body, tail) = out.split_at_mut(even);
        self.apply_blocks::<PLUS>(start / 2, body);
        if let [last] = tail {
            let buf = self.fill(start / 2 + even as u64 / 2);
            combine::<PLUS>(std::slice::from_mut(last), &buf[..1]);
        }
    }

    /// The whole blocks from `first_block` on, over `out` of even length.
    fn apply_blocks<const PLUS: bool>(&self, mut first_block: u64, mut out: &mut [u64]) {
        #[cfg(target_arch = "x86_64")]
        if !matches!(self.imp, Imp::Portable(_)) {
            let bulk = out.len() - out.len() % WORDS;
            let (head, rest) = out.split_at_mut(bulk);
            self.kernel::<PLUS>(first_block, head);
            first_block += bulk as u64 / 2;
            out = rest;
        }
        for chunk in out.chunks_mut(WORDS) {
            let buf = self.fill(first_block);
            combine::<PLUS>(chunk, &buf[..chunk.len()]);
            first_block += WORDS as u64 / 2;
        }
    }

    /// The 32 blocks from `first_block` on, as elements; wiped on drop.
    fn fill(&self, first_block: u64) -> Zeroizing<[u64; WORDS]> {
        let mut buf = Zeroizing::new([0u64; WORDS]);
        match &self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Vaes(_) | Imp::AesNi(_) => self.kernel::<true>(first_block, &mut buf[..]),
            Imp::Portable(cipher) => {
                let mut blocks = [GenericArray::default(); WORDS / 2];
                for (j, block) in blocks.iter_mut().enumerate() {
                    block[..8].copy_from_slice(&(first_block + j as u64).to_le_bytes());
                }
                cipher.encrypt_blocks(&mut blocks);
                for (pair, block) in buf.chunks_exact_mut(2).zip(&mut blocks) {
                    pair[0] = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
                    pair[1] = u64::from_le_bytes(block[8..].try_into().expect("8 bytes"));
                    block.as_mut_slice().zeroize();
                }
            }
        }
        buf
    }

    /// Runs this key's kernel over `out`, whose length is a multiple of
    /// `WORDS`; the portable path has no kernel and leaves `out` alone.
    #[cfg(target_arch = "x86_64")]
    fn kernel<const PLUS: bool>(&self, first_block: u64, out: &mut [u64]) {
        assert_eq!(out.len() % WORDS, 0, "kernels take whole steps");
        match &self.imp {
            // SAFETY: `Imp::Vaes` is only built where `has_vaes()` held.
            Imp::Vaes(keys) => unsafe { x86::apply_vaes::<PLUS>(keys, first_block, out) },
            // SAFETY: `Imp::AesNi` is only built where `has_aesni()` held.
            Imp::AesNi(keys) => unsafe { x86::apply_aesni::<PLUS>(keys, first_block, out) },
            Imp::Portable(_) => {}
        }
    }
}

fn combine<const PLUS: bool>(out: &mut [u64], stream: &[u64]) {
    for (o, s) in out.iter_mut().zip(stream) {
        *o = if PLUS {
            o.wrapping_add(*s)
        } else {
            o.wrapping_sub(*s)
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::WORDS;

    /// Whether this CPU runs [`expand_key`] and [`apply_aesni`].
    pub(super) fn has_aesni() -> bool {
        std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("sse4.1")
    }

    /// Whether this CPU runs [`expand_key`] and [`apply_vaes`].
    pub(super) fn has_vaes() -> bool {
        has_aesni()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("vaes")
    }

    /// The AES-128 key schedule (FIPS-197 section 5.2) with AESKEYGENASSIST,
    /// as eleven round keys of two little-endian words each.
    #[target_feature(enable = "aes,sse4.1")]
    pub(super) fn expand_key(key: &[u8; 16]) -> [[u64; 2]; 11] {
        let lo = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(key[8..].try_into().expect("8 bytes"));
        let mut k = _mm_set_epi64x(hi as i64, lo as i64);
        let mut keys = [[0u64; 2]; 11];
        keys[0] = words(k);
        macro_rules! next {
            ($($i:literal: $rcon:literal),*) => {$(
                k = step(k, _mm_aeskeygenassist_si128::<$rcon>(k));
                keys[$i] = words(k);
            )*};
        }
        next!(1: 0x01, 2: 0x02, 3: 0x04, 4: 0x08, 5: 0x10, 6: 0x20, 7: 0x40, 8: 0x80, 9: 0x1b, 10: 0x36);
        keys
    }

    /// One round of the schedule: `assist` is AESKEYGENASSIST of `k`.
    #[target_feature(enable = "sse4.1")]
    fn step(k: __m128i, assist: __m128i) -> __m128i {
        let t = _mm_shuffle_epi32::<0xff>(assist);
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        _mm_xor_si128(k, t)
    }

    #[target_feature(enable = "sse4.1")]
    fn words(k: __m128i) -> [u64; 2] {
        [
            _mm_extract_epi64::<0>(k) as u64,
            _mm_extract_epi64::<1>(k) as u64,
        ]
    }

    /// `out[i] (+|-)= element(2 first_block + i)` for `out.len()` a multiple
    /// of [`WORDS`]: 32 blocks per iteration, four per 512-bit register.
    ///
    /// A register's 128-bit lanes hold consecutive blocks, and a block's
    /// bytes in memory order are its two elements in little-endian order, so
    /// the encrypted register, read as eight `u64` lanes, is exactly the next
    /// eight elements of the stream.
    #[target_feature(enable = "avx512f,vaes")]
    pub(super) fn apply_vaes<const PLUS: bool>(
        keys: &[[u64; 2]; 11],
        first_block: u64,
        out: &mut [u64],
    ) {
        debug_assert_eq!(out.len() % WORDS, 0);
        let mut k = [_mm512_setzero_si512(); 11];
        for (rk, words) in k.iter_mut().zip(keys) {
            *rk = _mm512_broadcast_i32x4(_mm_set_epi64x(words[1] as i64, words[0] as i64));
        }
        // Counter blocks b, b+1, b+2, b+3 in the four lanes: the low word is
        // the block number, the high word stays 0 (elements are counted in
        // u64, so a block number never reaches 2^63).
        let b = first_block as i64;
        let mut counter = _mm512_set_epi64(0, b + 3, 0, b + 2, 0, b + 1, 0, b);
        let step = _mm512_set_epi64(0, 4, 0, 4, 0, 4, 0, 4);
        for chunk in out.chunks_exact_mut(WORDS) {
            let mut x = [_mm512_setzero_si512(); 8];
            for xj in &mut x {
                *xj = _mm512_xor_si512(counter, k[0]);
                counter = _mm512_add_epi64(counter, step);
            }
            for rk in &k[1..10] {
                for xj in &mut x {
                    *xj = _mm512_aesenc_epi128(*xj, *rk);
                }
            }
            for (j, xj) in x.iter().enumerate() {
                let stream = _mm512_aesenclast_epi128(*xj, k[10]);
                let p = chunk[8 * j..8 * j + 8].as_mut_ptr().cast::<__m512i>();
                // SAFETY: `p` points at 8 in-bounds u64 (64 bytes) of `chunk`,
                // and loadu/storeu accept any alignment.
                unsafe {
                    let v = _mm512_loadu_si512(p);
                    let v = if PLUS {
                        _mm512_add_epi64(v, stream)
                    } else {
                        _mm512_sub_epi64(v, stream)
                    };
                    _mm512_storeu_si512(p, v);
                }
            }
        }
    }

    /// `apply_vaes` one block per instruction: 8 blocks (16 elements) per
    /// step, for CPUs with AES-NI but without VAES. `out.len()` must be a
    /// multiple of 16 (callers pass whole multiples of [`WORDS`]).
    #[target_feature(enable = "aes,sse4.1")]
    pub(super) fn apply_aesni<const PLUS: bool>(
        keys: &[[u64; 2]; 11],
        first_block: u64,
        out: &mut [u64],
    ) {
        debug_assert_eq!(out.len() % 16, 0);
        let mut k = [_mm_setzero_si128(); 11];
        for (rk, words) in k.iter_mut().zip(keys) {
            *rk = _mm_set_epi64x(words[1] as i64, words[0] as i64);
        }
        // The block number in the low word; the high word stays 0.
        let mut counter = _mm_set_epi64x(0, first_block as i64);
        let one = _mm_set_epi64x(0, 1);
        for chunk in out.chunks_exact_mut(16) {
            let mut x = [_mm_setzero_si128(); 8];
            for xj in &mut x {
                *xj = _mm_xor_si128(counter, k[0]);
                counter = _mm_add_epi64(counter, one);
            }
            for rk in &k[1..10] {
                for xj in &mut x {
                    *xj = _mm_aesenc_si128(*xj, *rk);
                }
            }
            for (j, xj) in x.iter().enumerate() {
                let stream = _mm_aesenclast_si128(*xj, k[10]);
                let p = chunk[2 * j..2 * j + 2].as_mut_ptr().cast::<__m128i>();
                // SAFETY: `p` points at 2 in-bounds u64 (16 bytes) of `chunk`,
                // and loadu/storeu accept any alignment.
                unsafe {
                    let v = _mm_loadu_si128(p);
                    let v = if PLUS {
                        _mm_add_epi64(v, stream)
                    } else {
                        _mm_sub_epi64(v, stream)
                    };
                    _mm_storeu_si128(p, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> [u8; 16] {
        core::array::from_fn(|i| b.wrapping_mul(31).wrapping_add(i as u8))
    }

    /// The stream as the specification states it, one block at a time
    /// through the `aes` crate's single-block API.
    fn reference(key: &[u8; 16], start: u64, len: usize) -> Vec<u64> {
        let cipher = aes::Aes128::new(GenericArray::from_slice(key));
        (start..start + len as u64)
            .map(|i| {
                let mut block = GenericArray::default();
                block[..8].copy_from_slice(&(i / 2).to_le_bytes());
                cipher.encrypt_block(&mut block);
                let half = (i % 2) as usize * 8;
                u64::from_le_bytes(block[half..half + 8].try_into().unwrap())
            })
            .collect()
    }

    /// Every implementation this CPU runs.
    fn streams(key: &[u8; 16]) -> Vec<Keystream> {
        let mut all = vec![Keystream::portable(key)];
        #[cfg(target_arch = "x86_64")]
        {
            let kernels = [Keystream::vaes(key), Keystream::aesni(key)];
            if kernels.iter().any(Option::is_none) {
                eprintln!("this CPU lacks VAES or AES-NI: its kernel is not tested");
            }
            all.extend(kernels.into_iter().flatten());
        }
        all
    }

    #[test]
    fn every_implementation_follows_the_specification() {
        let k = key(7);
        for ks in streams(&k) {
            for start in [0u64, 1, 2, 63, 64, 65, 1000, 1 << 40] {
                for len in [0usize, 1, 2, 3, 63, 64, 65, 127, 128, 129, 300] {
                    let orig: Vec<u64> = (0..len as u64).map(|i| i.wrapping_mul(0x9e37)).collect();
                    let expect: Vec<u64> = orig
                        .iter()
                        .zip(reference(&k, start, len))
                        .map(|(a, m)| a.wrapping_add(m))
                        .collect();
                    let mut v = orig.clone();
                    ks.add(start, &mut v);
                    assert!(
                        v == expect,
                        "{} start {start} len {len}",
                        ks.implementation()
                    );
                    ks.sub(start, &mut v);
                    assert!(v == orig, "{} start {start} len {len}", ks.implementation());
                }
            }
        }
    }

    /// FIPS-197 appendix A.1 (key expansion) and C.1 (AES-128 encryption)
    /// through the kernel's own key schedule.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn key_schedule_matches_fips_197() {
        if !x86::has_aesni() {
            eprintln!("this CPU lacks AES-NI: the kernels' key schedule is not tested");
            return;
        }
        let key = [
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ];
        // SAFETY: features checked above.
        let keys = unsafe { x86::expand_key(&key) };
        let last: Vec<u8> = keys[10].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(
            last,
            [
                0xd0, 0x14, 0xf9, 0xa8, 0xc9, 0xee, 0x25, 0x89, 0xe1, 0x3f, 0x0c, 0xc8, 0xb6, 0x63,
                0x0c, 0xa6
            ]
        );
        // C.1: key 00..0f; the kernel encrypts counters, so compare its
        // block 0 with the reference cipher on the same key.
        let k: [u8; 16] = core::array::from_fn(|i| i as u8);
        let mut out = vec![0u64; 2];
        Keystream::new(&k).add(0, &mut out);
        assert_eq!(out, reference(&k, 0, 2));
    }

    #[test]
    fn different_keys_give_unrelated_streams() {
        let mut a = vec![0u64; 64];
        let mut b = vec![0u64; 64];
        Keystream::new(&key(1)).add(0, &mut a);
        Keystream::new(&key(2)).add(0, &mut b);
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
    }
}

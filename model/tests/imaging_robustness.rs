//! Hostile input: truncated, bit-flipped and random files must give an
//! error or an image, never a panic, and any image must convert cleanly.
//!
//! A panic anywhere in decoding fails these tests (there is no catch here);
//! the only unwinding guard is inside the decoder, around the third-party
//! JPEG and JPEG 2000 codecs, and the tally printed at the end shows how
//! often it fired.

mod imaging_support;

use std::collections::BTreeMap;
use std::path::Path;

use primia_model::imaging::{self, Limits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Small bounds, so that a mutation that inflates a size cannot make a
/// test allocate much even where a check were missing.
const LIMITS: Limits = Limits {
    max_file_bytes: 4 << 20,
    max_samples: 4 << 20,
};

#[derive(Default)]
struct Tally {
    decoded: usize,
    refused: BTreeMap<String, usize>,
}

impl Tally {
    fn feed(&mut self, name: &str, bytes: &[u8]) {
        match imaging::decode_bytes(bytes, Path::new(name), &LIMITS) {
            Ok(image) => {
                self.decoded += 1;
                let n = image.rows * image.columns * image.samples_per_pixel;
                assert_eq!(image.pixels.len(), n, "{name}: sample count");
                let input = image.to_model_input(8);
                assert_eq!(input.len(), 64, "{name}");
                assert!(
                    input.iter().all(|v| (0.0..=1.0).contains(v)),
                    "{name}: model input out of range"
                );
                let _ = image.stats();
                let _ = image.rescaled_stats();
            }
            Err(err) => {
                let message = err.to_string();
                assert!(
                    message.starts_with(name),
                    "error does not name the file: {message}"
                );
                // Group by kind: the reason up to its first number or colon.
                let kind: String = err
                    .reason()
                    .split([':', '('])
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take_while(|c| !c.is_ascii_digit())
                    .collect();
                *self.refused.entry(kind.trim().to_owned()).or_default() += 1;
            }
        }
    }

    fn report(&self, what: &str) {
        eprintln!("{what}: {} decoded, refused by kind:", self.decoded);
        for (kind, n) in &self.refused {
            eprintln!("  {n:6}  {kind}");
        }
    }
}

/// Truncations, single bit flips (dense over the header, where lengths and
/// attributes live), runs of 0xFF bytes (undefined and huge lengths) and
/// random byte overwrites of one file.
fn mutate_all(name: &str, original: &[u8], seed: u64, tally: &mut Tally) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let len = original.len();

    let step = (len / 97).max(1);
    for cut in (0..len).step_by(step).chain(len.saturating_sub(16)..len) {
        tally.feed(name, &original[..cut]);
    }

    let header = len.min(2048);
    for i in 0..300 {
        let mut bytes = original.to_vec();
        let at = if i % 2 == 0 {
            rng.random_range(0..header)
        } else {
            rng.random_range(0..len)
        };
        bytes[at] ^= 1 << rng.random_range(0..8);
        tally.feed(name, &bytes);
    }

    for _ in 0..80 {
        let mut bytes = original.to_vec();
        let at = rng.random_range(0..header);
        let run = rng.random_range(1..=4).min(len - at);
        bytes[at..at + run].fill(0xFF);
        tally.feed(name, &bytes);
    }

    for _ in 0..80 {
        let mut bytes = original.to_vec();
        for _ in 0..rng.random_range(1..=8) {
            let at = rng.random_range(0..len);
            bytes[at] = rng.random();
        }
        tally.feed(name, &bytes);
    }
}

#[test]
fn mutated_corpus_files_never_panic() {
    let Some(dir) = imaging_support::dicom_corpus("mutated_corpus_files_never_panic") else {
        return;
    };
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    let mut tally = Tally::default();
    for (i, path) in names.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        mutate_all(&name, &bytes, 1000 + i as u64, &mut tally);
    }
    tally.report("mutated corpus");
    assert!(
        tally.decoded > 0,
        "some mutations (in pixel values) must still decode"
    );
}

#[test]
fn mutated_png_and_jpeg_files_never_panic() {
    let mut tally = Tally::default();
    for (i, (name, bytes)) in sample_rasters().into_iter().enumerate() {
        tally.feed(&name, &bytes);
        mutate_all(&name, &bytes, 2000 + i as u64, &mut tally);
    }
    tally.report("mutated PNG and JPEG");
    assert!(tally.decoded > 0);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut tally = Tally::default();
    // Bare random bytes, and random bytes behind each signature the sniffer
    // knows, so that every decoder sees garbage.
    let prefixes: [&[u8]; 6] = [
        b"",
        b"\x89PNG\r\n\x1a\n",
        &[0xFF, 0xD8, 0xFF],
        b"DICM\x02\x00\x10\x00UI",
        &[0x08, 0x00, 0x05, 0x00, b'C', b'S'],
        &[0x08, 0x00, 0x05, 0x00, 0x0A, 0x00, 0x00, 0x00],
    ];
    for round in 0..300 {
        let len = rng.random_range(0..3000);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let prefix = prefixes[round % prefixes.len()];
        bytes.splice(0..0, prefix.iter().copied());
        tally.feed("random.bin", &bytes);
        // And behind a real preamble.
        let mut with_preamble = vec![0u8; 128];
        with_preamble.extend_from_slice(b"DICM");
        with_preamble.extend_from_slice(&bytes);
        tally.feed("random.dcm", &with_preamble);
    }
    tally.report("random bytes");
    assert_eq!(tally.decoded, 0, "random bytes must not decode as an image");
}

/// A few small PNG and JPEG files made here (grey, RGB, 16-bit, alpha).
fn sample_rasters() -> Vec<(String, Vec<u8>)> {
    use image::{ImageFormat, Luma, Rgb, Rgba};
    let encode = |image: image::DynamicImage, format: ImageFormat| {
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let grey = image::ImageBuffer::from_fn(24, 16, |x, y| Luma([(x * 10 + y) as u8]));
    let grey16 = image::ImageBuffer::from_fn(16, 16, |x, y| Luma([(x * 4000 + y) as u16]));
    let rgb = image::ImageBuffer::from_fn(20, 12, |x, y| Rgb([x as u8 * 12, y as u8 * 20, 77]));
    let rgba = image::ImageBuffer::from_fn(8, 8, |x, y| Rgba([x as u8, y as u8, 9, 255]));
    vec![
        (
            "grey.png".into(),
            encode(grey.clone().into(), ImageFormat::Png),
        ),
        ("grey16.png".into(), encode(grey16.into(), ImageFormat::Png)),
        (
            "rgb.png".into(),
            encode(rgb.clone().into(), ImageFormat::Png),
        ),
        ("rgba.png".into(), encode(rgba.into(), ImageFormat::Png)),
        ("grey.jpg".into(), encode(grey.into(), ImageFormat::Jpeg)),
        ("rgb.jpg".into(), encode(rgb.into(), ImageFormat::Jpeg)),
    ]
}

//! Image decoding and model-input conversion speed (images per second).
//!
//! `cargo bench -p primia-model --bench imaging`. The inputs are written by
//! the bench (a 2048x2048 12-bit DICOM, the size of a digitised chest film,
//! and a 1024x1024 PNG), plus the shared corpus' JPEG 2000 file when present.

use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use primia_model::imaging::{self, Limits};

/// An explicit VR little endian MONOCHROME2 file with 16-bit allocated,
/// 12-bit stored pixels and a window.
fn chest_dicom(rows: u16, columns: u16) -> Vec<u8> {
    fn element(out: &mut Vec<u8>, tag: (u16, u16), vr: &[u8; 2], value: &[u8]) {
        let mut value = value.to_vec();
        if value.len() % 2 == 1 {
            value.push(if vr == b"UI" { 0 } else { b' ' });
        }
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        if matches!(vr, b"OB" | b"OW") {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(&value);
    }
    let mut meta = Vec::new();
    element(&mut meta, (0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2.1");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    element(
        &mut out,
        (0x0002, 0x0000),
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    );
    out.extend(meta);
    element(&mut out, (0x0028, 0x0002), b"US", &1u16.to_le_bytes());
    element(&mut out, (0x0028, 0x0004), b"CS", b"MONOCHROME2");
    element(&mut out, (0x0028, 0x0010), b"US", &rows.to_le_bytes());
    element(&mut out, (0x0028, 0x0011), b"US", &columns.to_le_bytes());
    element(&mut out, (0x0028, 0x0100), b"US", &16u16.to_le_bytes());
    element(&mut out, (0x0028, 0x0101), b"US", &12u16.to_le_bytes());
    element(&mut out, (0x0028, 0x0103), b"US", &0u16.to_le_bytes());
    element(&mut out, (0x0028, 0x1050), b"DS", b"2048");
    element(&mut out, (0x0028, 0x1051), b"DS", b"4096");
    let pixels: Vec<u8> = (0..u32::from(rows) * u32::from(columns))
        .flat_map(|i| (((i * 7 + i / 2048) % 4096) as u16).to_le_bytes())
        .collect();
    element(&mut out, (0x7FE0, 0x0010), b"OW", &pixels);
    out
}

fn png(size: u32) -> Vec<u8> {
    let image =
        image::ImageBuffer::from_fn(size, size, |x, y| image::Luma([((x * 3 + y) % 256) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::from(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn corpus_file(name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("PRIMIA_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    let path = base.join("dicom").join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping the {name} bench: {} not found", path.display());
        None
    }
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut inputs: Vec<(&str, Vec<u8>)> = vec![
        ("dicom_2048x2048_u16", chest_dicom(2048, 2048)),
        ("png_1024x1024_u8", png(1024)),
    ];
    if let Some(path) = corpus_file("JPEG2000.dcm") {
        inputs.push(("dicom_j2k_1024x256", std::fs::read(path).unwrap()));
    }

    let mut g = c.benchmark_group("imaging/decode");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    for (name, bytes) in &inputs {
        g.bench_function(*name, |b| {
            b.iter(|| imaging::decode_bytes(bytes, Path::new(name), &limits).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("imaging/to_model_input");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    for (name, bytes) in &inputs {
        let image = imaging::decode_bytes(bytes, Path::new(name), &limits).unwrap();
        for size in [28, 224] {
            g.bench_function(format!("{name}/{size}"), |b| {
                b.iter(|| image.to_model_input(size))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

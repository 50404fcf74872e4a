//! Shared helpers of the imaging tests: finding the shared data corpus.

#![allow(dead_code)]

use std::path::PathBuf;

/// The shared DICOM corpus folder, or `None` (after saying so on stderr)
/// when it is missing; with `PRIMIA_REQUIRE_DATA=1` a missing corpus fails.
pub fn dicom_corpus(test: &str) -> Option<PathBuf> {
    let base = std::env::var_os("PRIMIA_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    let dir = base.join("dicom");
    if dir.join("EXPECTED.json").is_file() {
        return Some(dir);
    }
    if std::env::var("PRIMIA_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!(
            "{test}: PRIMIA_REQUIRE_DATA=1 but the DICOM corpus {} is missing",
            dir.display()
        );
    }
    eprintln!(
        "skipping {test}: DICOM corpus {} not found (set PRIMIA_DATA_DIR)",
        dir.display()
    );
    None
}

/// Writes small explicit VR little endian DICOM files, so the tests can make
/// the cases the corpus lacks (MONOCHROME1, windows, planar RGB, no pixel
/// data, a transfer syntax we refuse).
#[derive(Debug, Clone)]
pub struct DicomWriter {
    ts: String,
    elements: Vec<Element>,
}

/// Tag, VR and value of one data element.
type Element = ((u16, u16), [u8; 2], Vec<u8>);

pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

impl DicomWriter {
    pub fn new(ts: &str) -> Self {
        Self {
            ts: ts.to_owned(),
            elements: Vec::new(),
        }
        .text((0x0008, 0x0016), b"UI", "1.2.840.10008.5.1.4.1.1.7")
        .text((0x0008, 0x0018), b"UI", "1.2.3.4.5")
    }

    /// A monochrome image header: rows, columns, bits allocated and stored,
    /// signedness and photometric interpretation.
    pub fn mono(rows: u16, columns: u16, bits: u16, stored: u16, signed: bool, pi: &str) -> Self {
        Self::new(EXPLICIT_VR_LE)
            .us((0x0028, 0x0002), 1)
            .text((0x0028, 0x0004), b"CS", pi)
            .us((0x0028, 0x0010), rows)
            .us((0x0028, 0x0011), columns)
            .us((0x0028, 0x0100), bits)
            .us((0x0028, 0x0101), stored)
            .us((0x0028, 0x0102), stored - 1)
            .us((0x0028, 0x0103), u16::from(signed))
    }

    pub fn set(mut self, tag: (u16, u16), vr: &[u8; 2], value: Vec<u8>) -> Self {
        self.elements.retain(|(t, ..)| *t != tag);
        self.elements.push((tag, *vr, value));
        self
    }

    pub fn with_ts(mut self, ts: &str) -> Self {
        self.ts = ts.to_owned();
        self
    }

    pub fn remove(mut self, tag: (u16, u16)) -> Self {
        self.elements.retain(|(t, ..)| *t != tag);
        self
    }

    pub fn us(self, tag: (u16, u16), v: u16) -> Self {
        self.set(tag, b"US", v.to_le_bytes().to_vec())
    }

    pub fn text(self, tag: (u16, u16), vr: &[u8; 2], v: &str) -> Self {
        self.set(tag, vr, v.as_bytes().to_vec())
    }

    /// 16-bit pixel data (OW), little endian.
    pub fn pixels_u16(self, values: &[u16]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.set((0x7FE0, 0x0010), b"OW", bytes)
    }

    /// 8-bit pixel data (OB).
    pub fn pixels_u8(self, values: &[u8]) -> Self {
        self.set((0x7FE0, 0x0010), b"OB", values.to_vec())
    }

    fn element(out: &mut Vec<u8>, tag: (u16, u16), vr: &[u8; 2], value: &[u8]) {
        let mut value = value.to_vec();
        if value.len() % 2 == 1 {
            value.push(if matches!(vr, b"UI" | b"OB") { 0 } else { b' ' });
        }
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        if matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN") {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(&value);
    }

    /// The data set alone (no preamble, no meta group).
    pub fn dataset(&self) -> Vec<u8> {
        let mut elements = self.elements.clone();
        elements.sort_by_key(|(t, ..)| *t);
        let mut out = Vec::new();
        for (tag, vr, value) in &elements {
            Self::element(&mut out, *tag, vr, value);
        }
        out
    }

    /// The file meta group, with its group length.
    pub fn meta(&self) -> Vec<u8> {
        let mut body = Vec::new();
        Self::element(&mut body, (0x0002, 0x0001), b"OB", &[0, 1]);
        Self::element(
            &mut body,
            (0x0002, 0x0002),
            b"UI",
            b"1.2.840.10008.5.1.4.1.1.7",
        );
        Self::element(&mut body, (0x0002, 0x0003), b"UI", b"1.2.3.4.5");
        Self::element(&mut body, (0x0002, 0x0010), b"UI", self.ts.as_bytes());
        Self::element(&mut body, (0x0002, 0x0012), b"UI", b"1.2.3.4");
        let mut out = Vec::new();
        Self::element(
            &mut out,
            (0x0002, 0x0000),
            b"UL",
            &(body.len() as u32).to_le_bytes(),
        );
        out.extend(body);
        out
    }

    /// A standard file: preamble, `DICM`, meta group, data set.
    pub fn file(&self) -> Vec<u8> {
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        out.extend(self.meta());
        out.extend(self.dataset());
        out
    }
}

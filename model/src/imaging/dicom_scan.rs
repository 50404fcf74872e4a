//! Structural check of DICOM bytes before dicom-rs parses them.
//!
//! dicom-rs allocates (and zero-fills) a value's buffer from the length in
//! its header before it reads the bytes, so one flipped bit in a length field
//! of a 2 KiB file makes it allocate up to 4 GiB. This walk visits every
//! element header the parser will visit, with the same rules (explicit or
//! implicit VR from the dictionary, undefined lengths as sequences,
//! encapsulated pixel data as fragments), and refuses any defined length that
//! runs past the end of its container. After it passes, no allocation in the
//! parser can exceed the size of the (inflated) data set. It also finds the
//! transfer syntax, so unsupported ones are refused before any parsing.

use std::borrow::Cow;
use std::io::Read;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

pub(crate) const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub(crate) const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub(crate) const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
pub(crate) const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";

/// Deeper nesting than this is refused: real files nest a handful of levels,
/// and the walk is recursive.
const MAX_DEPTH: u32 = 64;

const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// How the data set's element headers are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    ImplicitLe,
    ExplicitLe,
    ExplicitBe,
}

/// How the file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// 128-byte preamble, `DICM`, file meta group: the standard file.
    Preamble,
    /// `DICM` and the file meta group with no preamble.
    MagicOnly,
    /// The file meta group with neither preamble nor `DICM`.
    MetaOnly,
    /// A bare data set (old ACR-NEMA style, or a stripped export): no meta
    /// group, so the transfer syntax is inferred from the first element.
    Bare,
}

/// What the file meta group says, and where the data set starts.
#[derive(Debug)]
pub(crate) struct Meta {
    pub framing: Framing,
    /// From (0002,0010), trimmed; for a bare data set, the inferred one.
    pub ts_uid: String,
    pub dataset_start: usize,
}

/// True when the bytes start like a DICOM file: `DICM` after a preamble or
/// at the start, a file meta group, or a bare data set opening with a group
/// 0008 element.
pub(crate) fn looks_like_dicom(bytes: &[u8]) -> bool {
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        return true;
    }
    if bytes.len() >= 4 && &bytes[0..4] == b"DICM" {
        return true;
    }
    bare_encoding(bytes).is_some() || starts_with_meta_group(bytes)
}

fn starts_with_meta_group(bytes: &[u8]) -> bool {
    // (0002,xxxx) in explicit VR little endian with a VR from the table.
    bytes.len() >= 8
        && u16::from_le_bytes([bytes[0], bytes[1]]) == 0x0002
        && VR::from_binary([bytes[4], bytes[5]]).is_some()
}

/// For a bare data set: explicit or implicit VR little endian, judged from
/// the first element, which must be in group 0008 (Identifying) with a small
/// element number, as every image file's first non-meta group is.
fn bare_encoding(bytes: &[u8]) -> Option<Encoding> {
    if bytes.len() < 8 {
        return None;
    }
    let group = u16::from_le_bytes([bytes[0], bytes[1]]);
    let element = u16::from_le_bytes([bytes[2], bytes[3]]);
    if group != 0x0008 || element > 0x00FF {
        return None;
    }
    if VR::from_binary([bytes[4], bytes[5]]).is_some() {
        return Some(Encoding::ExplicitLe);
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    (len <= bytes.len() - 8).then_some(Encoding::ImplicitLe)
}

/// Reads the preamble, magic and file meta group.
pub(crate) fn read_meta(bytes: &[u8]) -> Result<Meta, String> {
    let (framing, start) = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        (Framing::Preamble, 132)
    } else if bytes.len() >= 4 && &bytes[0..4] == b"DICM" {
        (Framing::MagicOnly, 4)
    } else if starts_with_meta_group(bytes) {
        (Framing::MetaOnly, 0)
    } else {
        return match bare_encoding(bytes) {
            Some(Encoding::ExplicitLe) => Ok(Meta {
                framing: Framing::Bare,
                ts_uid: EXPLICIT_VR_LE.to_owned(),
                dataset_start: 0,
            }),
            Some(_) => Ok(Meta {
                framing: Framing::Bare,
                ts_uid: IMPLICIT_VR_LE.to_owned(),
                dataset_start: 0,
            }),
            None => Err("no DICM signature and no recognisable data set".to_owned()),
        };
    };

    // The meta group is always explicit VR little endian. It ends where
    // group 0002 ends (rather than where (0002,0000) says), which reads the
    // files that omit or misstate the group length.
    let cursor = Cursor {
        bytes,
        encoding: Encoding::ExplicitLe,
    };
    let mut pos = start;
    let mut ts_uid = None;
    while pos + 4 <= bytes.len() && cursor.u16_at(pos) == 0x0002 {
        let header = cursor.element_header(pos, bytes.len())?;
        if header.len == UNDEFINED {
            return Err(format!(
                "file meta element {} has an undefined length",
                tag_str(header.tag)
            ));
        }
        let value_start = pos + header.header_len;
        let value_end = fit(value_start, header.len, bytes.len(), header.tag)?;
        if header.tag == (0x0002, 0x0010) {
            let raw = &bytes[value_start..value_end];
            let uid = String::from_utf8_lossy(raw)
                .trim_end_matches(['\0', ' '])
                .to_owned();
            if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(format!(
                    "invalid transfer syntax UID {uid:?} in (0002,0010)"
                ));
            }
            ts_uid = Some(uid);
        }
        pos = value_end;
    }
    if pos == start {
        return Err("no file meta group after the DICM signature".to_owned());
    }
    let ts_uid = ts_uid.ok_or("file meta group has no transfer syntax UID (0002,0010)")?;
    Ok(Meta {
        framing,
        ts_uid,
        dataset_start: pos,
    })
}

/// Inflates a deflated data set, refusing to produce more than `max_bytes`
/// (a deflate stream can expand a thousandfold).
pub(crate) fn inflate(deflated: &[u8], max_bytes: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let limit = max_bytes as u64 + 1;
    flate2::read::DeflateDecoder::new(deflated)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| format!("deflated data set cannot be inflated: {e}"))?;
    if out.len() > max_bytes {
        return Err(format!(
            "deflated data set inflates to more than {max_bytes} bytes"
        ));
    }
    Ok(out)
}

/// Checks the structure of the data set that fills `bytes[start..]` (see
/// the module docs). Errors give offsets into `bytes`, so a caller passing
/// the whole file gets file offsets.
pub(crate) fn check_dataset(bytes: &[u8], start: usize, encoding: Encoding) -> Result<(), String> {
    let cursor = Cursor { bytes, encoding };
    cursor
        .walk_dataset(start.min(bytes.len()), bytes.len(), 0, false)
        .map(|_| ())
}

/// The data set bytes for a transfer syntax's encoding: inflated for the
/// deflated syntax, borrowed otherwise.
pub(crate) fn dataset_bytes<'a>(
    bytes: &'a [u8],
    meta: &Meta,
    max_inflated: usize,
) -> Result<Cow<'a, [u8]>, String> {
    let raw = bytes.get(meta.dataset_start..).unwrap_or(&[]);
    if meta.ts_uid == DEFLATED_EXPLICIT_VR_LE {
        Ok(Cow::Owned(inflate(raw, max_inflated)?))
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// The header encoding of a transfer syntax's data set. Every transfer
/// syntax other than implicit VR and explicit big endian uses explicit VR
/// little endian (the deflated one after inflation).
pub(crate) fn encoding_of(ts_uid: &str) -> Encoding {
    match ts_uid {
        IMPLICIT_VR_LE => Encoding::ImplicitLe,
        EXPLICIT_VR_BE => Encoding::ExplicitBe,
        _ => Encoding::ExplicitLe,
    }
}

struct Header {
    tag: (u16, u16),
    vr: VR,
    len: u32,
    header_len: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    encoding: Encoding,
}

fn tag_str(tag: (u16, u16)) -> String {
    format!("({:04X},{:04X})", tag.0, tag.1)
}

/// End of a value of `len` bytes starting at `start`, if it fits before `end`.
fn fit(start: usize, len: u32, end: usize, tag: (u16, u16)) -> Result<usize, String> {
    let left = end.saturating_sub(start);
    if len as usize > left {
        return Err(format!(
            "element {} claims {len} bytes from byte {start} but only {left} remain (truncated or corrupt)",
            tag_str(tag)
        ));
    }
    Ok(start + len as usize)
}

/// VRs whose explicit header has two reserved bytes and a 32-bit length
/// (PS3.5 7.1.2); the rest have a 16-bit length.
fn has_long_length(vr: VR) -> bool {
    !matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::AT
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::FL
            | VR::FD
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::SL
            | VR::SS
            | VR::ST
            | VR::TM
            | VR::UI
            | VR::UL
            | VR::US
    )
}

impl Cursor<'_> {
    fn u16_at(&self, pos: usize) -> u16 {
        let b = [self.bytes[pos], self.bytes[pos + 1]];
        match self.encoding {
            Encoding::ExplicitBe => u16::from_be_bytes(b),
            _ => u16::from_le_bytes(b),
        }
    }

    fn u32_at(&self, pos: usize) -> u32 {
        let b = [
            self.bytes[pos],
            self.bytes[pos + 1],
            self.bytes[pos + 2],
            self.bytes[pos + 3],
        ];
        match self.encoding {
            Encoding::ExplicitBe => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        }
    }

    /// Reads the element header at `pos`, which must lie before `end`.
    fn element_header(&self, pos: usize, end: usize) -> Result<Header, String> {
        if end.saturating_sub(pos) < 8 {
            return Err(format!("truncated element header at byte {pos}"));
        }
        let tag = (self.u16_at(pos), self.u16_at(pos + 2));
        if tag.0 == 0xFFFE {
            // Items and delimiters carry no VR in any encoding.
            return Ok(Header {
                tag,
                vr: VR::UN,
                len: self.u32_at(pos + 4),
                header_len: 8,
            });
        }
        match self.encoding {
            Encoding::ImplicitLe => {
                // As dicom-rs does: Pixel Data and overlay data are OW, the
                // rest comes from the dictionary, unknown tags are UN.
                let vr = if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
                    VR::OW
                } else {
                    StandardDataDictionary
                        .by_tag(Tag(tag.0, tag.1))
                        .map(|entry| entry.vr().relaxed())
                        .unwrap_or(VR::UN)
                };
                Ok(Header {
                    tag,
                    vr,
                    len: self.u32_at(pos + 4),
                    header_len: 8,
                })
            }
            Encoding::ExplicitLe | Encoding::ExplicitBe => {
                let vr = VR::from_binary([self.bytes[pos + 4], self.bytes[pos + 5]]).ok_or_else(
                    || {
                        format!(
                            "invalid value representation {:?} for element {} at byte {pos}",
                            String::from_utf8_lossy(&self.bytes[pos + 4..pos + 6]),
                            tag_str(tag)
                        )
                    },
                )?;
                if has_long_length(vr) {
                    if end - pos < 12 {
                        return Err(format!("truncated element header at byte {pos}"));
                    }
                    Ok(Header {
                        tag,
                        vr,
                        len: self.u32_at(pos + 8),
                        header_len: 12,
                    })
                } else {
                    Ok(Header {
                        tag,
                        vr,
                        len: u32::from(self.u16_at(pos + 6)),
                        header_len: 8,
                    })
                }
            }
        }
    }

    /// Walks the elements in `pos..end`. With `until_item_end`, the data set
    /// is an undefined-length item that must close with an item delimiter;
    /// returns the position after it (or `end` otherwise).
    fn walk_dataset(
        &self,
        mut pos: usize,
        end: usize,
        depth: u32,
        until_item_end: bool,
    ) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH} levels"));
        }
        loop {
            if pos == end {
                if until_item_end {
                    return Err(format!(
                        "item ends at byte {end} without its delimiter (truncated)"
                    ));
                }
                return Ok(end);
            }
            if depth == 0 && end - pos < 4 {
                // dicom-rs ends the data set quietly when no full tag is
                // left; a few trailing bytes are padding.
                return Ok(end);
            }
            let header = self.element_header(pos, end)?;
            let value_start = pos + header.header_len;
            match header.tag {
                ITEM_END if until_item_end => return Ok(value_start),
                // dicom-rs skips a stray item delimiter outside any item.
                ITEM_END if depth == 0 => {
                    pos = value_start;
                    continue;
                }
                (0xFFFE, _) => {
                    return Err(format!("unexpected {} at byte {pos}", tag_str(header.tag)));
                }
                _ => {}
            }
            if header.len == UNDEFINED {
                pos = if header.tag == PIXEL_DATA {
                    self.walk_fragments(value_start, end)?
                } else {
                    // dicom-rs reads any other undefined length as a sequence.
                    self.walk_sequence(value_start, end, depth, None)?
                };
                continue;
            }
            let value_end = fit(value_start, header.len, end, header.tag)?;
            if header.vr == VR::SQ {
                self.walk_sequence(value_start, value_end, depth, Some(value_end))?;
            }
            pos = value_end;
        }
    }

    /// Walks the items of a sequence; `defined_end` is its end for a
    /// defined length, `None` for one closed by a sequence delimiter.
    fn walk_sequence(
        &self,
        mut pos: usize,
        end: usize,
        depth: u32,
        defined_end: Option<usize>,
    ) -> Result<usize, String> {
        loop {
            if defined_end == Some(pos) {
                return Ok(pos);
            }
            if end.saturating_sub(pos) < 8 {
                return Err(format!(
                    "sequence runs past the end of its container at byte {pos} (truncated)"
                ));
            }
            let tag = (self.u16_at(pos), self.u16_at(pos + 2));
            let len = self.u32_at(pos + 4);
            let value_start = pos + 8;
            match tag {
                SEQUENCE_END if defined_end.is_none() => return Ok(value_start),
                ITEM if len == UNDEFINED => {
                    pos = self.walk_dataset(value_start, end, depth + 1, true)?;
                }
                ITEM => {
                    let item_end = fit(value_start, len, end, tag)?;
                    self.walk_dataset(value_start, item_end, depth + 1, false)?;
                    pos = item_end;
                }
                other => {
                    return Err(format!(
                        "expected a sequence item at byte {pos}, found {}",
                        tag_str(other)
                    ));
                }
            }
        }
    }

    /// Walks encapsulated pixel data: defined-length items (the offset table
    /// and the fragments) closed by a sequence delimiter.
    fn walk_fragments(&self, mut pos: usize, end: usize) -> Result<usize, String> {
        loop {
            if end.saturating_sub(pos) < 8 {
                return Err(format!(
                    "encapsulated pixel data ends at byte {pos} without its delimiter (truncated)"
                ));
            }
            let tag = (self.u16_at(pos), self.u16_at(pos + 2));
            let len = self.u32_at(pos + 4);
            let value_start = pos + 8;
            match tag {
                SEQUENCE_END => return Ok(value_start),
                ITEM if len == UNDEFINED => {
                    return Err(format!(
                        "pixel data fragment at byte {pos} has an undefined length"
                    ));
                }
                ITEM => pos = fit(value_start, len, end, tag)?,
                other => {
                    return Err(format!(
                        "expected a pixel data fragment at byte {pos}, found {}",
                        tag_str(other)
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit_le(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn length_past_the_end_is_refused_before_any_allocation() {
        // (0010,0010) PN claiming 0xFFF0 bytes in a 12-byte data set.
        let mut data = explicit_le((0x0010, 0x0010), b"PN", b"AB");
        data[6] = 0xF0;
        data[7] = 0xFF;
        let err = check_dataset(&data, 0, Encoding::ExplicitLe).unwrap_err();
        assert!(err.contains("claims 65520 bytes"), "{err}");
    }

    #[test]
    fn nested_undefined_sequences_are_walked() {
        let mut data = Vec::new();
        // (0008,1140) SQ, undefined length, one undefined-length item.
        data.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0]);
        data.extend_from_slice(&UNDEFINED.to_le_bytes());
        data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        data.extend_from_slice(&UNDEFINED.to_le_bytes());
        data.extend(explicit_le((0x0008, 0x1150), b"UI", b"1.2\0"));
        data.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        data.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        data.extend(explicit_le((0x0010, 0x0010), b"PN", b"AB"));
        check_dataset(&data, 0, Encoding::ExplicitLe).unwrap();
        // Cut before the sequence delimiter: truncated.
        let cut = data.len() - 10 - 8;
        assert!(check_dataset(&data[..cut], 0, Encoding::ExplicitLe).is_err());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut data = Vec::new();
        for _ in 0..(MAX_DEPTH + 2) {
            data.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0]);
            data.extend_from_slice(&UNDEFINED.to_le_bytes());
            data.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            data.extend_from_slice(&UNDEFINED.to_le_bytes());
        }
        let err = check_dataset(&data, 0, Encoding::ExplicitLe).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn inflate_is_bounded() {
        use std::io::Write;
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        let deflated = enc.finish().unwrap();
        assert!(inflate(&deflated, 1 << 20).is_ok());
        let err = inflate(&deflated, 1000).unwrap_err();
        assert!(err.contains("more than 1000 bytes"), "{err}");
    }
}

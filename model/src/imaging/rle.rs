//! RLE Lossless (DICOM PS3.5 Annex G) decoding of one frame, every offset
//! and run checked against the fragment.

use super::dicom::Layout;

/// Decodes one RLE frame (one fragment) into stored sample values, pixels
/// in order with their samples adjacent.
pub(crate) fn decode_frame(fragment: &[u8], layout: &Layout) -> Result<Vec<f32>, String> {
    let bytes_per_sample = match layout.bits_allocated {
        8 => 1,
        16 => 2,
        32 => 4,
        other => return Err(format!("RLE with Bits Allocated {other}")),
    };
    let spp = layout.samples_per_pixel;
    let expected_segments = bytes_per_sample * spp;
    if fragment.len() < 64 {
        return Err(format!(
            "RLE header needs 64 bytes, the fragment holds {}",
            fragment.len()
        ));
    }
    let word = |i: usize| {
        u32::from_le_bytes([
            fragment[4 * i],
            fragment[4 * i + 1],
            fragment[4 * i + 2],
            fragment[4 * i + 3],
        ]) as usize
    };
    let segments = word(0);
    if segments != expected_segments {
        return Err(format!(
            "RLE header declares {segments} segments, {expected_segments} expected for {spp} samples of {} bits",
            layout.bits_allocated
        ));
    }
    // Segment offsets (at most 15 fit the header, and expected_segments is at
    // most 12), each within the fragment and not before the previous one.
    let mut bounds = Vec::with_capacity(segments + 1);
    for i in 0..segments {
        bounds.push(word(i + 1));
    }
    bounds.push(fragment.len());
    if bounds[0] != 64 {
        return Err(format!(
            "first RLE segment starts at byte {}, not 64",
            bounds[0]
        ));
    }
    if bounds.windows(2).any(|w| w[0] > w[1]) || bounds[segments - 1] > fragment.len() {
        return Err("RLE segment offsets out of order or past the fragment".to_owned());
    }

    let pixels = layout.pixels();
    let mut values = vec![0u64; pixels * spp];
    let mut segment = Vec::with_capacity(pixels + 128);
    for s in 0..spp {
        // Segments run from the most significant byte of a sample down.
        for b in 0..bytes_per_sample {
            let index = s * bytes_per_sample + b;
            let data = &fragment[bounds[index]..bounds[index + 1]];
            unpack_bits(data, pixels, &mut segment)
                .map_err(|reason| format!("RLE segment {index}: {reason}"))?;
            let shift = 8 * (bytes_per_sample - 1 - b);
            for (p, &byte) in segment.iter().take(pixels).enumerate() {
                values[p * spp + s] |= u64::from(byte) << shift;
            }
        }
    }
    Ok(values.into_iter().map(|v| layout.stored_value(v)).collect())
}

/// PackBits: a header byte n in 0..=127 copies the next n+1 bytes, -1..=-127
/// repeats the next byte 1-n times, -128 does nothing. Decodes until `len`
/// bytes are out; a segment that ends short is an error, extra output (a
/// trailing padding run) is dropped.
fn unpack_bits(data: &[u8], len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    let mut i = 0;
    while out.len() < len && i < data.len() {
        let header = data[i] as i8;
        i += 1;
        if header >= 0 {
            let count = header as usize + 1;
            let literal = data
                .get(i..i + count)
                .ok_or("literal run past the end of the segment")?;
            out.extend_from_slice(literal);
            i += count;
        } else if header != -128 {
            let count = (1 - isize::from(header)) as usize;
            let byte = *data
                .get(i)
                .ok_or("repeat run past the end of the segment")?;
            i += 1;
            out.extend(std::iter::repeat_n(byte, count));
        }
    }
    if out.len() < len {
        return Err(format!("decodes to {} bytes, {len} expected", out.len()));
    }
    out.truncate(len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(rows: usize, columns: usize, spp: usize, bits: u16) -> Layout {
        Layout {
            rows,
            columns,
            samples_per_pixel: spp,
            bits_allocated: bits,
            bits_stored: bits,
            signed: false,
            planar: false,
            photometric: "MONOCHROME2".to_owned(),
            number_of_frames: 1,
        }
    }

    fn frame(segments: &[&[u8]]) -> Vec<u8> {
        let mut header = vec![0u8; 64];
        header[0..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        let mut offset = 64u32;
        let mut body = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            header[4 + 4 * i..8 + 4 * i].copy_from_slice(&offset.to_le_bytes());
            offset += s.len() as u32;
            body.extend_from_slice(s);
        }
        header.extend(body);
        header
    }

    #[test]
    fn packbits_runs_and_literals() {
        let mut out = Vec::new();
        // repeat 0xAA three times, literal 1 2, no-op, repeat 7 twice
        unpack_bits(&[0xFE, 0xAA, 0x01, 1, 2, 0x80, 0xFF, 7], 7, &mut out).unwrap();
        assert_eq!(out, vec![0xAA, 0xAA, 0xAA, 1, 2, 7, 7]);
        assert!(unpack_bits(&[0x05, 1, 2], 6, &mut out).is_err());
        assert!(unpack_bits(&[0xFE], 3, &mut out).is_err());
        assert!(unpack_bits(&[0xFE, 1], 4, &mut out).is_err());
    }

    #[test]
    fn sixteen_bit_segments_are_most_significant_first() {
        // Two pixels: 0x0102 and 0x0304.
        let f = frame(&[&[0x01, 0x01, 0x03], &[0x01, 0x02, 0x04]]);
        let v = decode_frame(&f, &layout(1, 2, 1, 16)).unwrap();
        assert_eq!(v, vec![258.0, 772.0]);
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = frame(&[&[0x01, 5, 6]]);
        let l = layout(1, 2, 1, 8);
        assert_eq!(decode_frame(&good, &l).unwrap(), vec![5.0, 6.0]);
        assert!(decode_frame(&good[..40], &l).is_err());
        let mut wrong_count = good.clone();
        wrong_count[0] = 3;
        assert!(decode_frame(&wrong_count, &l).is_err());
        let mut past_end = good.clone();
        past_end[4] = 0xFF;
        assert!(decode_frame(&past_end, &l).is_err());
        // Too few pixels for a 2x2 image.
        assert!(decode_frame(&good, &layout(2, 2, 1, 8)).is_err());
    }
}

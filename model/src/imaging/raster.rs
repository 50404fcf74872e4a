//! PNG and JPEG files through the `image` crate, with its size limits set.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageReader};

use super::{ColourModel, DecodedImage, ImageFormat, ImagingError, Limits};

pub(crate) fn decode(
    bytes: &[u8],
    format: ImageFormat,
    path: &Path,
    limits: &Limits,
) -> Result<DecodedImage, ImagingError> {
    let (codec, image_format) = match format {
        ImageFormat::Png => ("PNG", image::ImageFormat::Png),
        _ => ("JPEG", image::ImageFormat::Jpeg),
    };
    let decode_err = |reason: String| ImagingError::Decode {
        path: path.to_owned(),
        codec,
        reason,
    };
    let reader = || {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
        let mut image_limits = image::Limits::default();
        // Decoders may hold a few buffers of the image; 16 bytes a sample
        // (RGBA 16-bit and the f32 we keep) is ample for a legitimate file.
        image_limits.max_alloc = Some((limits.max_samples as u64).saturating_mul(16));
        reader.limits(image_limits);
        reader
    };

    // The header alone first, so an oversized image is refused by size.
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| decode_err(e.to_string()))?;
    let (columns, rows) = (width as usize, height as usize);
    if columns == 0 || rows == 0 {
        return Err(decode_err(format!("empty image {columns}x{rows}")));
    }
    // Colour images hold three samples a pixel; grey ones one.
    if rows.saturating_mul(columns).saturating_mul(3) > limits.max_samples {
        return Err(ImagingError::ImageTooLarge {
            path: path.to_owned(),
            rows,
            columns,
            samples_per_pixel: 3,
            max_samples: limits.max_samples,
        });
    }
    let image = reader().decode().map_err(|e| match e {
        image::ImageError::Unsupported(u) => ImagingError::Unsupported {
            path: path.to_owned(),
            reason: u.to_string(),
        },
        other => decode_err(other.to_string()),
    })?;

    // Alpha is dropped: X-ray exports that carry it carry it opaque.
    let (samples_per_pixel, bits, pixels): (usize, u16, Vec<f32>) = match image {
        DynamicImage::ImageLuma8(i) => (1, 8, i.into_raw().into_iter().map(f32::from).collect()),
        DynamicImage::ImageLumaA8(i) => (1, 8, i.pixels().map(|p| f32::from(p.0[0])).collect()),
        DynamicImage::ImageLuma16(i) => (1, 16, i.into_raw().into_iter().map(f32::from).collect()),
        DynamicImage::ImageLumaA16(i) => (1, 16, i.pixels().map(|p| f32::from(p.0[0])).collect()),
        DynamicImage::ImageRgb8(i) => (3, 8, i.into_raw().into_iter().map(f32::from).collect()),
        DynamicImage::ImageRgba8(i) => (
            3,
            8,
            i.pixels()
                .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
                .map(f32::from)
                .collect(),
        ),
        DynamicImage::ImageRgb16(i) => (3, 16, i.into_raw().into_iter().map(f32::from).collect()),
        DynamicImage::ImageRgba16(i) => (
            3,
            16,
            i.pixels()
                .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
                .map(f32::from)
                .collect(),
        ),
        other => {
            return Err(ImagingError::Unsupported {
                path: path.to_owned(),
                reason: format!("{:?} pixels", other.color()),
            });
        }
    };
    if pixels.len() != rows * columns * samples_per_pixel {
        return Err(decode_err(format!(
            "decoder produced {} samples for a {columns}x{rows} image",
            pixels.len()
        )));
    }
    let (photometric, colour) = if samples_per_pixel == 3 {
        ("RGB", ColourModel::Rgb)
    } else {
        ("MONOCHROME2", ColourModel::Monochrome2)
    };
    Ok(DecodedImage {
        format,
        transfer_syntax: None,
        rows,
        columns,
        samples_per_pixel,
        photometric: photometric.to_owned(),
        colour,
        bits_allocated: bits,
        bits_stored: bits,
        signed: false,
        number_of_frames: 1,
        pixels,
        rescale: None,
        window: None,
    })
}

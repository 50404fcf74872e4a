//! The error type of image decoding and folder loading.

use std::path::{Path, PathBuf};

/// Why a file or folder could not be turned into model input.
///
/// Every variant about one file names it first (`"{path}: {reason}"`), so a
/// message is useful on its own in a log or a skipped-file report;
/// [`ImagingError::reason`] gives the part after the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagingError {
    /// The file or directory could not be read.
    #[error("{}: cannot read: {cause}", .path.display())]
    Io {
        path: PathBuf,
        // Not a `#[source]`: the message already carries it, and a reader of
        // a skipped-file list needs it on the same line.
        cause: std::io::Error,
    },

    /// The file is larger than the loader will hold in memory.
    #[error("{}: file is {bytes} bytes, more than the limit of {max_bytes}", .path.display())]
    FileTooLarge {
        path: PathBuf,
        bytes: u64,
        max_bytes: u64,
    },

    /// The content is neither DICOM nor PNG nor JPEG (decided by content,
    /// not by file name).
    #[error("{}: not an image file (no DICOM, PNG or JPEG signature)", .path.display())]
    UnknownFormat { path: PathBuf },

    /// The DICOM structure is broken: truncated, a length that runs past the
    /// end of its container, an invalid header.
    #[error("{}: malformed DICOM: {reason}", .path.display())]
    MalformedDicom { path: PathBuf, reason: String },

    /// A DICOM file without a Pixel Data element (a structured report, an
    /// RT plan, a presentation state...).
    #[error("{}: DICOM file has no pixel data (7FE0,0010)", .path.display())]
    NoPixelData { path: PathBuf },

    /// A transfer syntax this build cannot decode (JPEG-LS, MPEG, ...).
    #[error("{}: unsupported transfer syntax {name} ({uid})", .path.display())]
    UnsupportedTransferSyntax {
        path: PathBuf,
        uid: String,
        name: String,
    },

    /// A well-formed image of a kind the loader does not handle (palette
    /// colour, float pixel data, an odd bit depth...).
    #[error("{}: unsupported image: {reason}", .path.display())]
    Unsupported { path: PathBuf, reason: String },

    /// A required attribute is missing or holds an impossible value.
    #[error("{}: invalid {attribute}: {reason}", .path.display())]
    InvalidAttribute {
        path: PathBuf,
        attribute: &'static str,
        reason: String,
    },

    /// The pixel data is shorter than the image it describes.
    #[error(
        "{}: pixel data truncated: the first frame needs {needed} bytes, the file holds {found}",
        .path.display()
    )]
    PixelDataTruncated {
        path: PathBuf,
        needed: usize,
        found: usize,
    },

    /// The image is larger than the loader's bound on decoded samples.
    #[error(
        "{}: image of {rows}x{columns} pixels with {samples_per_pixel} samples each exceeds the limit of {max_samples} samples",
        .path.display()
    )]
    ImageTooLarge {
        path: PathBuf,
        rows: usize,
        columns: usize,
        samples_per_pixel: usize,
        max_samples: usize,
    },

    /// The compressed pixel data could not be decoded.
    #[error("{}: {codec} decoding failed: {reason}", .path.display())]
    Decode {
        path: PathBuf,
        codec: &'static str,
        reason: String,
    },

    /// `load_folder` was given something that is not a directory.
    #[error("{}: not a directory", .path.display())]
    NotADirectory { path: PathBuf },

    /// `load_folder` found no class subfolders.
    #[error("{}: no class subfolders (expected one subfolder per class)", .path.display())]
    NoClasses { path: PathBuf },

    /// The folder holds more images than the loader's memory bound allows.
    #[error(
        "{}: {files} candidate files at {size}x{size} would need {needed_bytes} bytes, more than the limit of {max_bytes}",
        .path.display()
    )]
    TooManyImages {
        path: PathBuf,
        files: usize,
        size: usize,
        needed_bytes: u64,
        max_bytes: u64,
    },

    /// The requested model input size is out of range.
    #[error("image size {size} is out of range (1 to {max})")]
    InvalidSize { size: usize, max: usize },
}

impl ImagingError {
    /// The file or folder the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Io { path, .. }
            | Self::FileTooLarge { path, .. }
            | Self::UnknownFormat { path }
            | Self::MalformedDicom { path, .. }
            | Self::NoPixelData { path }
            | Self::UnsupportedTransferSyntax { path, .. }
            | Self::Unsupported { path, .. }
            | Self::InvalidAttribute { path, .. }
            | Self::PixelDataTruncated { path, .. }
            | Self::ImageTooLarge { path, .. }
            | Self::Decode { path, .. }
            | Self::NotADirectory { path }
            | Self::NoClasses { path }
            | Self::TooManyImages { path, .. } => Some(path),
            Self::InvalidSize { .. } => None,
        }
    }

    /// The message without the leading path: what a skipped-file report
    /// prints next to the path it already shows.
    pub fn reason(&self) -> String {
        let full = self.to_string();
        match self.path() {
            Some(path) => {
                let prefix = format!("{}: ", path.display());
                match full.strip_prefix(&prefix) {
                    Some(rest) => rest.to_owned(),
                    None => full,
                }
            }
            None => full,
        }
    }
}

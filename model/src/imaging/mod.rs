//! Decoding of real medical image files (DICOM, PNG, JPEG) and folders of them.

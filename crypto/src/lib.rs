//! Pure cryptographic primitives of primia: no IO, no clock, no OS randomness.
#![forbid(unsafe_code)]

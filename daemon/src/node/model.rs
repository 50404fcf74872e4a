//! The global model as the daemon stores and spreads it: a blob holding the
//! round that made it and its parameters, named by its blake3 hash, and the
//! step that makes the next model from a round's outcome.
//!
//! # Blob layout (version 1)
//!
//! `b"PRIMIAM1" | round u64 LE | parameters u64 LE | parameters x f32 LE`
//!
//! The round is inside the blob so that two rounds never share a hash, even
//! if their parameters happened to be equal: a hash names one model of one
//! round, which is what members agree on before a round.

use primia_crypto::fixed;

use crate::store::ModelHash;

/// First bytes of every model blob.
pub const MAGIC: &[u8; 8] = b"PRIMIAM1";

const HEADER_BYTES: usize = 8 + 8 + 8;

/// What is wrong with a model blob or an outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Not a model blob of this version.
    #[error("model blob does not start with the primia model header")]
    Magic,
    /// The blob's length does not match its parameter count.
    #[error("model blob of {len} bytes does not hold {parameters} parameters")]
    Length {
        /// The blob's length.
        len: usize,
        /// The count in its header.
        parameters: u64,
    },
    /// The blob holds another number of parameters than this consortium's
    /// model.
    #[error("model has {got} parameters, this consortium's model has {expected}")]
    Parameters {
        /// In the blob.
        got: u64,
        /// Expected.
        expected: usize,
    },
    /// The blob belongs to another round than announced.
    #[error("model blob is of round {got}, it was announced as round {expected}")]
    Round {
        /// In the blob.
        got: u64,
        /// Announced.
        expected: u64,
    },
    /// A parameter is NaN or infinite.
    #[error("model parameter {index} is not a finite number")]
    NonFinite {
        /// Its index.
        index: usize,
    },
    /// The outcome's sum does not decode (a leftover mask or a bad count).
    #[error("the round's sum does not decode: {0}")]
    Sum(String),
    /// The outcome's length does not match the model.
    #[error("the round's sum has {got} entries, the model needs {expected}")]
    SumLength {
        /// Entries in the sum (parameters plus the count).
        got: usize,
        /// Parameters plus one.
        expected: usize,
    },
}

/// A global model in memory.
#[derive(Clone, PartialEq)]
pub struct GlobalModel {
    /// The round that made it (0 for the initial model).
    pub round: u64,
    /// Its parameters.
    pub params: Vec<f32>,
}

impl std::fmt::Debug for GlobalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalModel")
            .field("round", &self.round)
            .field("parameters", &self.params.len())
            .finish()
    }
}

impl GlobalModel {
    /// The blob.
    pub fn encode(&self) -> Vec<u8> {
        let body = self.body();
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        out.extend_from_slice(&self.header());
        out.extend_from_slice(&body);
        out
    }

    /// The blob and its hash.
    pub fn encode_hashed(&self) -> (Vec<u8>, ModelHash) {
        let blob = self.encode();
        let hash = ModelHash::of(&blob);
        (blob, hash)
    }

    /// The blob's header: magic, round and parameter count.
    pub fn header(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.round.to_le_bytes());
        out[16..].copy_from_slice(&(self.params.len() as u64).to_le_bytes());
        out
    }

    /// The blob's body, the parameters as little-endian `f32`: on a
    /// little-endian machine the parameters' own memory, not a copy (a
    /// model is stored each round: at 10^6 parameters the copy was 4 MB
    /// of fresh memory per member and round).
    pub fn body(&self) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(&self.params))
        } else {
            std::borrow::Cow::Owned(self.params.iter().flat_map(|p| p.to_le_bytes()).collect())
        }
    }

    /// Reads a blob, checking its header, length and that every parameter
    /// is finite; `parameters` is the count this consortium's model has.
    pub fn decode(blob: &[u8], parameters: usize) -> Result<Self, ModelError> {
        if blob.len() < HEADER_BYTES || &blob[..8] != MAGIC {
            return Err(ModelError::Magic);
        }
        let round = u64::from_le_bytes(blob[8..16].try_into().expect("8 bytes"));
        let count = u64::from_le_bytes(blob[16..24].try_into().expect("8 bytes"));
        let body = &blob[HEADER_BYTES..];
        if (body.len() as u64) != count.saturating_mul(4) {
            return Err(ModelError::Length {
                len: blob.len(),
                parameters: count,
            });
        }
        if count != parameters as u64 {
            return Err(ModelError::Parameters {
                got: count,
                expected: parameters,
            });
        }
        let mut params = Vec::with_capacity(parameters);
        for (index, c) in body.chunks_exact(4).enumerate() {
            let p = f32::from_le_bytes(c.try_into().expect("4 bytes"));
            if !p.is_finite() {
                return Err(ModelError::NonFinite { index });
            }
            params.push(p);
        }
        Ok(Self { round, params })
    }

    /// The model of `round`: this model plus the weighted mean of the
    /// members' updates in `sum` (the round's unmasked fixed-point sum,
    /// count last).
    pub fn apply(&self, round: u64, sum: &[primia_crypto::Ring]) -> Result<Self, ModelError> {
        if sum.len() != self.params.len() + 1 {
            return Err(ModelError::SumLength {
                got: sum.len(),
                expected: self.params.len() + 1,
            });
        }
        // One pass: no decoded sum or mean vector of the model's size.
        let (_, mean) = fixed::mean_of(sum).map_err(|e| ModelError::Sum(e.to_string()))?;
        let params = self.params.iter().zip(mean).map(|(p, d)| p + d).collect();
        Ok(Self { round, params })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_roundtrips_and_pins_its_layout() {
        let m = GlobalModel {
            round: 3,
            params: vec![1.0, -0.5],
        };
        let blob = m.encode();
        let mut expected = b"PRIMIAM1".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&1.0f32.to_le_bytes());
        expected.extend_from_slice(&(-0.5f32).to_le_bytes());
        assert_eq!(blob, expected);
        assert_eq!(GlobalModel::decode(&blob, 2).unwrap(), m);
        let other_round = GlobalModel {
            round: 4,
            ..m.clone()
        };
        assert_ne!(m.encode_hashed().1, other_round.encode_hashed().1);
        // The parts the store writes are the blob, and hash alike.
        assert_eq!([&m.header()[..], &m.body()].concat(), blob);
        assert_eq!(
            ModelHash::of_parts(&[&m.header(), &m.body()]),
            ModelHash::of(&blob)
        );
    }

    #[test]
    fn bad_blobs_are_refused() {
        let blob = GlobalModel {
            round: 1,
            params: vec![0.0; 3],
        }
        .encode();
        assert_eq!(GlobalModel::decode(&blob[..10], 3), Err(ModelError::Magic));
        assert!(matches!(
            GlobalModel::decode(&blob[..blob.len() - 1], 3),
            Err(ModelError::Length { .. })
        ));
        assert!(matches!(
            GlobalModel::decode(&blob, 4),
            Err(ModelError::Parameters { .. })
        ));
        let mut nan = blob.clone();
        nan[24..28].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(
            GlobalModel::decode(&nan, 3),
            Err(ModelError::NonFinite { index: 0 })
        );
        let mut huge = blob;
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            GlobalModel::decode(&huge, 3),
            Err(ModelError::Length { .. })
        ));
    }

    #[test]
    fn apply_adds_the_weighted_mean() {
        let mut a = Vec::new();
        fixed::encode_update(1, &[1.0, 0.0], &mut a).unwrap();
        let mut b = Vec::new();
        fixed::encode_update(3, &[-1.0, 2.0], &mut b).unwrap();
        let sum: Vec<u64> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
        let base = GlobalModel {
            round: 0,
            params: vec![10.0, 1.0],
        };
        let next = base.apply(1, &sum).unwrap();
        assert_eq!(next.round, 1);
        assert_eq!(next.params, vec![10.0 - 0.5, 1.0 + 1.5]);
        assert!(matches!(
            base.apply(1, &sum[..2]),
            Err(ModelError::SumLength { .. })
        ));
    }
}

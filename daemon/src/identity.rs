//! The member's identity key file, and the one-to-one map between the
//! protocol's ed25519 identity and the libp2p peer id.
//!
//! # Key file format
//!
//! A text file of exactly two lines, written with mode 0600:
//!
//! ```text
//! primia-identity-v1
//! <64 lower-case hex digits: the 32-byte ed25519 seed>
//! ```
//!
//! The first line makes a wrong file (a roster, a config, a truncated copy)
//! fail loudly instead of being taken for 32 random bytes. The seed is the
//! ed25519 secret from which both [`IdentityKey`] (signing protocol messages)
//! and the libp2p [`Keypair`] (Noise handshakes, gossipsub signatures) are
//! derived, so the peer id that the network sees and the identity in the
//! roster are the same key.
//!
//! Loading refuses a file that anyone but its owner may read or write, the
//! way ssh refuses a private key with loose permissions: a key that other
//! local users could have copied is not a secret any more.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use primia_crypto::{IdentityKey, PublicIdentity, Secret32};
use zeroize::{Zeroize, Zeroizing};

/// First line of every key file.
pub const KEY_FILE_MAGIC: &str = "primia-identity-v1";

/// The key file's exact size: magic, newline, 64 hex digits, newline.
const KEY_FILE_BYTES: usize = KEY_FILE_MAGIC.len() + 1 + 64 + 1;

/// Multihash code of the identity hash: a peer id that embeds its key.
const MULTIHASH_IDENTITY: u64 = 0x00;

/// What went wrong with a key file or a peer id.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("key file {}: {action}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file exists and overwriting was not asked for.
    #[error("key file {} already exists (refusing to overwrite it)", path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is readable or writable by others.
    #[error(
        "key file {} has mode {mode:04o}: it must not be accessible to group or others (run chmod 600 on it)",
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file's content is not a key.
    #[error("key file {} is malformed: {reason}", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the content).
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("no randomness for a new key: {0}")]
    Randomness(String),
    /// A peer id does not embed an ed25519 key.
    #[error("peer id {peer}: {reason}")]
    PeerId {
        /// The peer id (base58).
        peer: String,
        /// What is wrong.
        reason: String,
    },
}

/// A member's identity: the protocol key and the libp2p keypair derived from
/// one seed. `Debug` shows only the peer id; the secrets zeroize on drop.
pub struct NodeIdentity {
    key: IdentityKey,
    keypair: Keypair,
    peer_id: PeerId,
}

impl NodeIdentity {
    /// The identity whose ed25519 secret is `seed`.
    pub fn from_seed(seed: &Secret32) -> Self {
        let key = IdentityKey::from_seed(seed);
        // `ed25519_from_bytes` wipes the buffer it is given.
        let mut bytes = Zeroizing::new(*seed.expose());
        let keypair = Keypair::ed25519_from_bytes(&mut *bytes)
            .expect("every 32-byte string is an ed25519 secret key");
        let peer_id = keypair.public().to_peer_id();
        Self {
            key,
            keypair,
            peer_id,
        }
    }

    /// A fresh identity from the operating system's random number generator.
    pub fn generate() -> Result<Self, IdentityError> {
        use rand::TryRngCore as _;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| IdentityError::Randomness(e.to_string()))?;
        let seed = Secret32::from_bytes(seed);
        Ok(Self::from_seed(&seed))
    }

    /// Reads a key file, refusing loose permissions and malformed content.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io = |action| {
            let path = path.to_owned();
            move |source| IdentityError::Io {
                path,
                action,
                source,
            }
        };
        let malformed = |reason: String| IdentityError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(io("cannot open"))?;
        let meta = file.metadata().map_err(io("cannot stat"))?;
        if !meta.is_file() {
            return Err(malformed("not a regular file".into()));
        }
        check_permissions(path, &meta)?;
        if meta.len() != KEY_FILE_BYTES as u64 {
            return Err(malformed(format!(
                "{} bytes, a key file has exactly {KEY_FILE_BYTES}",
                meta.len()
            )));
        }
        // Read one byte more than allowed, in case the file grew since stat.
        let mut text = Zeroizing::new(Vec::with_capacity(KEY_FILE_BYTES + 1));
        file.take(KEY_FILE_BYTES as u64 + 1)
            .read_to_end(&mut text)
            .map_err(io("cannot read"))?;
        let seed = parse_key_file(&text).map_err(|r| malformed(r.into()))?;
        Ok(Self::from_seed(&seed))
    }

    /// Writes the key file atomically with mode 0600: a temporary file in
    /// the same directory is written and synced, then moved into place, and
    /// the directory is synced, so a crash leaves either no key file or a
    /// whole one. Refuses to replace an existing file unless `overwrite`.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), IdentityError> {
        let io = |action| {
            let path = path.to_owned();
            move |source| IdentityError::Io {
                path,
                action,
                source,
            }
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| IdentityError::Malformed {
                path: path.to_owned(),
                reason: "the path names no file".into(),
            })?
            .to_string_lossy()
            .into_owned();
        if !overwrite && fs::symlink_metadata(path).is_ok() {
            return Err(IdentityError::Exists {
                path: path.to_owned(),
            });
        }
        let mut nonce = [0u8; 8];
        {
            use rand::TryRngCore as _;
            rand::rngs::OsRng
                .try_fill_bytes(&mut nonce)
                .map_err(|e| IdentityError::Randomness(e.to_string()))?;
        }
        let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(nonce)));
        let result = (|| {
            let mut file = create_private(&tmp).map_err(io("cannot create a temporary file"))?;
            // Built in place so that no copy of the seed's hex outlives
            // this function unwiped.
            let mut text = Zeroizing::new([0u8; KEY_FILE_BYTES]);
            let (magic, rest) = text.split_at_mut(KEY_FILE_MAGIC.len());
            magic.copy_from_slice(KEY_FILE_MAGIC.as_bytes());
            rest[0] = b'\n';
            hex::encode_to_slice(self.key.seed().expose(), &mut rest[1..65])
                .expect("64 hex digits fit");
            rest[65] = b'\n';
            file.write_all(&*text).map_err(io("cannot write"))?;
            file.sync_all().map_err(io("cannot sync"))?;
            drop(file);
            if overwrite {
                fs::rename(&tmp, path).map_err(io("cannot move the new key into place"))?;
            } else {
                // A hard link fails if the target appeared in the meantime,
                // where a rename would silently replace it.
                fs::hard_link(&tmp, path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        IdentityError::Exists {
                            path: path.to_owned(),
                        }
                    } else {
                        io("cannot move the new key into place")(e)
                    }
                })?;
                fs::remove_file(&tmp).map_err(io("cannot remove the temporary file"))?;
            }
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io("cannot sync the directory"))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The protocol's signing key.
    pub fn key(&self) -> &IdentityKey {
        &self.key
    }

    /// The public identity, as the roster lists it.
    pub fn public(&self) -> PublicIdentity {
        self.key.public()
    }

    /// The libp2p keypair (the swarm takes a clone).
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(unix)]
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    // Anything beyond owner read and write: group or other bits, the
    // owner's execute bit, setuid, setgid or sticky.
    if mode & !0o600 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _meta: &fs::Metadata) -> Result<(), IdentityError> {
    Ok(())
}

/// The seed in a key file's bytes, or what is wrong (never quoting them).
fn parse_key_file(text: &[u8]) -> Result<Secret32, &'static str> {
    let rest = text
        .strip_prefix(KEY_FILE_MAGIC.as_bytes())
        .and_then(|r| r.strip_prefix(b"\n"))
        .ok_or("the first line is not \"primia-identity-v1\"")?;
    let hex_digits = rest
        .strip_suffix(b"\n")
        .ok_or("the key line does not end with a newline")?;
    if hex_digits.len() != 64 {
        return Err("the key line is not 64 hex digits");
    }
    let mut seed = [0u8; 32];
    for (out, pair) in seed.iter_mut().zip(hex_digits.chunks_exact(2)) {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(hi), Some(lo)) => *out = hi << 4 | lo,
            _ => {
                seed.zeroize();
                return Err("the key line holds a character that is not a hex digit");
            }
        }
    }
    Ok(Secret32::from_bytes(seed))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The libp2p peer id of a member's identity: the identity multihash of the
/// protobuf-encoded ed25519 public key, as libp2p derives it.
pub fn peer_id_of(identity: &PublicIdentity) -> PeerId {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(identity.as_bytes())
        .expect("a PublicIdentity is a valid ed25519 point");
    PublicKey::from(key).to_peer_id()
}

/// The identity embedded in a peer id. Fails for peer ids that hash their
/// key (RSA and other long keys) or embed a key that is not ed25519, and
/// for ed25519 keys that [`PublicIdentity::from_bytes`] rejects (weak
/// points): none of those can be a roster member.
pub fn identity_of(peer: &PeerId) -> Result<PublicIdentity, IdentityError> {
    let bad = |reason: String| IdentityError::PeerId {
        peer: peer.to_base58(),
        reason,
    };
    let multihash = peer.as_ref();
    if multihash.code() != MULTIHASH_IDENTITY {
        return Err(bad(
            "it does not embed its public key (hashed peer ids are not ed25519)".into(),
        ));
    }
    let public = PublicKey::try_decode_protobuf(multihash.digest())
        .map_err(|e| bad(format!("embedded public key does not decode: {e}")))?;
    let ed = public
        .try_into_ed25519()
        .map_err(|_| bad("its key is not ed25519".into()))?;
    PublicIdentity::from_bytes(&ed.to_bytes())
        .map_err(|e| bad(format!("unusable ed25519 key: {e}")))
}

/// Parses a base58 peer id as printed by `primiad keygen` and listed in a
/// roster, and returns the identity it embeds.
pub fn parse_peer_id(text: &str) -> Result<(PeerId, PublicIdentity), IdentityError> {
    let peer: PeerId = text.parse().map_err(|e| IdentityError::PeerId {
        peer: text.chars().take(80).collect(),
        reason: format!("not a peer id: {e}"),
    })?;
    let identity = identity_of(&peer)?;
    Ok((peer, identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(b: u8) -> NodeIdentity {
        NodeIdentity::from_seed(&Secret32::from_bytes([b; 32]))
    }

    #[test]
    fn peer_id_and_identity_agree_both_ways() {
        for b in 0..20u8 {
            let node = seeded(b);
            assert_eq!(peer_id_of(&node.public()), node.peer_id());
            assert_eq!(identity_of(&node.peer_id()).unwrap(), node.public());
            // The libp2p keypair and the protocol key are the same ed25519 key.
            let ed = node.keypair().public().try_into_ed25519().unwrap();
            assert_eq!(&ed.to_bytes(), node.public().as_bytes());
            // Both sign with the same secret: a libp2p signature over a
            // message verifies under the libp2p view of the protocol key.
            let sig = node.keypair().sign(b"m").unwrap();
            assert!(PublicKey::from(ed).verify(b"m", &sig));
        }
    }

    #[test]
    fn peer_id_roundtrips_through_text() {
        let node = seeded(7);
        let text = node.peer_id().to_base58();
        assert!(text.starts_with("12D3KooW"), "{text}");
        let (peer, identity) = parse_peer_id(&text).unwrap();
        assert_eq!(peer, node.peer_id());
        assert_eq!(identity, node.public());
    }

    #[test]
    fn foreign_peer_ids_are_refused() {
        // A hashed (sha2-256) peer id, as RSA keys get.
        let sha = libp2p::multihash::Multihash::<64>::wrap(0x12, &[7u8; 32]).unwrap();
        let peer = PeerId::from_multihash(sha).unwrap();
        let err = identity_of(&peer).unwrap_err().to_string();
        assert!(err.contains("does not embed its public key"), "{err}");
        // An identity multihash that holds garbage instead of a key.
        let junk = libp2p::multihash::Multihash::<64>::wrap(0x00, &[1, 2, 3]).unwrap();
        let peer = PeerId::from_multihash(junk).unwrap();
        let err = identity_of(&peer).unwrap_err().to_string();
        assert!(err.contains("does not decode"), "{err}");
        assert!(parse_peer_id("not-a-peer").is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let node = seeded(9);
        let dbg = format!("{node:?}");
        assert!(dbg.contains(&node.peer_id().to_base58()));
        assert!(!dbg.contains(&hex::encode([9u8; 32])));
    }

    #[test]
    fn parse_key_file_checks_every_part() {
        let good = format!("{KEY_FILE_MAGIC}\n{}\n", "ab".repeat(32));
        assert_eq!(
            parse_key_file(good.as_bytes()).unwrap().expose(),
            &[0xab; 32]
        );
        for (text, why) in [
            (
                format!("primia-identity-v2\n{}\n", "ab".repeat(32)),
                "first line",
            ),
            (format!("{KEY_FILE_MAGIC}\n{}", "ab".repeat(32)), "newline"),
            (format!("{KEY_FILE_MAGIC}\n{}\n", "ab".repeat(31)), "64 hex"),
            (
                format!("{KEY_FILE_MAGIC}\n{}zz\n", "ab".repeat(31)),
                "not a hex",
            ),
        ] {
            let err = parse_key_file(text.as_bytes()).map(|_| ()).unwrap_err();
            assert!(err.contains(why), "{err} should mention {why}");
        }
    }
}

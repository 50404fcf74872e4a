//! Secret types must not print their secrets through `Debug`.

use primia_crypto::{AgreementSecret, IdentityKey, Secret32, kdf, split};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fails if `printed` contains any 4-byte window of `secret` as hex (either
/// case) or the `Debug` form of its first bytes as decimal array elements.
fn check_hides(what: &str, printed: &str, secret: &[u8]) {
    let lower = printed.to_lowercase();
    for w in secret.windows(4) {
        assert!(
            !lower.contains(&hex(w)),
            "{what} debug {printed:?} leaks secret hex"
        );
    }
    let decimal = format!("{:?}", &secret[..4]);
    let decimal = decimal.trim_start_matches('[').trim_end_matches(']');
    assert!(
        !printed.contains(decimal),
        "{what} debug {printed:?} leaks secret bytes"
    );
    let alt = format!("{printed:#?}");
    assert!(
        !alt.to_lowercase().contains(&hex(&secret[..4])),
        "{what} alternate debug leaks"
    );
}

#[test]
fn secret_types_do_not_print_secrets() {
    let mut rng = ChaCha20Rng::seed_from_u64(99);

    let s = Secret32::random(&mut rng);
    check_hides("Secret32", &format!("{s:?}"), s.expose());

    let id = IdentityKey::generate(&mut rng);
    check_hides("IdentityKey", &format!("{id:?}"), id.seed().expose());
    assert!(format!("{id:?}").contains(&id.public().to_string()));

    let a = AgreementSecret::generate(&mut rng);
    let a_bytes = a.to_secret32();
    check_hides("AgreementSecret", &format!("{a:?}"), a_bytes.expose());

    let b = AgreementSecret::generate(&mut rng);
    let shared = a.agree(&b.public()).unwrap();
    let key = shared.derive(kdf::SHARE_ENCRYPTION_KEY, &[b"x"]);
    // The raw shared secret is not exposed; check the derived key and that
    // the Debug output is the fixed redaction.
    assert_eq!(format!("{shared:?}"), "SharedSecret(<redacted>)");
    check_hides("Secret32 (derived)", &format!("{key:?}"), key.expose());

    let shares = split(&s, 2, 3, &mut rng).unwrap();
    for share in &shares {
        let printed = format!("{share:?}");
        let bytes = share.to_bytes();
        check_hides("Share", &printed, &bytes[2..]);
        assert!(printed.contains(&format!("index: {}", share.index())));
    }
}

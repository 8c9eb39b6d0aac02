//! Golden byte fixtures: the snapshot envelope and the session cookie, pinned byte for byte.
//!
//! Encoding the deterministic fixture values must give exactly the committed bytes, and
//! decoding the committed bytes must give the values. A deliberate format change regenerates
//! them with `ATTUNE_BLESS=1 cargo test -p attune-core --test golden` (and a schema bump).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::path::PathBuf;

use attune_core::model::Manifest;
use attune_core::profile::Profile;
use attune_core::session::{Session, encode_cookie, verify_cookie};
use attune_core::wire::{self, Envelope, SCHEMA, SCHEMA_MAJOR, WireError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use common::*;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn bless() -> bool {
    std::env::var_os("ATTUNE_BLESS").is_some_and(|v| v == "1")
}

/// Compares `bytes` with the committed fixture, or rewrites it under `ATTUNE_BLESS=1`.
fn check_bytes(name: &str, bytes: &[u8]) -> Vec<u8> {
    let path = fixture_path(name);
    if bless() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with ATTUNE_BLESS=1 to create it)",
            path.display()
        )
    });
    assert!(
        committed == bytes,
        "{name}: encoding changed ({} committed bytes vs {} now); \
         a deliberate format change needs a schema bump and ATTUNE_BLESS=1",
        committed.len(),
        bytes.len()
    );
    committed
}

fn golden<T>(name: &str, value: T)
where
    T: Serialize + DeserializeOwned + wire::read::Read + PartialEq + std::fmt::Debug + Clone,
{
    let envelope = Envelope::new(7, T0, value);
    let committed = check_bytes(name, &wire::encode(&envelope));
    let decoded: Envelope<T> = wire::decode(&committed).expect("committed bytes decode");
    assert_eq!(decoded, envelope, "{name}: decoding the committed bytes");
    // `rmp-serde` and the serde derives, which wrote them, read the same.
    let serde: Envelope<T> = rmp_serde::from_slice(&committed).expect("rmp-serde decodes them");
    assert_eq!(serde, envelope, "{name}: rmp-serde");
}

#[test]
fn profile_envelope() {
    let profile = typical_profile();
    assert!(!profile.items.is_empty() && !profile.purchased.is_empty());
    golden("profile.bin", profile);
}

#[test]
fn catalog_shard_envelope() {
    golden("catalog_shard.bin", catalog(12));
}

#[test]
fn neighbour_shard_envelope() {
    golden("neighbour_shard.bin", neighbours(12, 4));
}

#[test]
fn trending_envelope() {
    golden("trending.bin", trending(40, 10, 3));
}

#[test]
fn config_envelope() {
    golden("config.bin", config());
}

#[test]
fn manifest_envelope() {
    golden("manifest.bin", manifest());
}

#[test]
fn the_profile_fixture_is_a_typical_snapshot() {
    let bytes = std::fs::read(fixture_path("profile.bin")).unwrap();
    assert!(
        bytes.len() <= wire::PROFILE_CAP_BYTES,
        "typical profile is {} bytes",
        bytes.len()
    );
}

/// A newer writer (same major, minor + 1) that added fields, at the envelope level and in
/// the body. An older reader must still decode it and simply not see the new fields.
#[derive(Serialize)]
struct MinorPlusOne<'a> {
    schema: u16,
    version: u64,
    updated_at: u64,
    body: ProfileWithExtra<'a>,
    /// New envelope field.
    content_hash: &'a str,
}

#[derive(Serialize)]
struct ProfileWithExtra<'a> {
    #[serde(flatten)]
    profile: &'a Profile,
    /// New body field.
    loyalty_tier: &'a str,
}

#[test]
fn additive_minor_change_still_decodes() {
    let profile = typical_profile();
    let newer = MinorPlusOne {
        schema: SCHEMA + 1,
        version: 8,
        updated_at: T0 + 1_000,
        body: ProfileWithExtra {
            profile: &profile,
            loyalty_tier: "gold",
        },
        content_hash: "xxh3:0123456789abcdef",
    };
    let bytes = rmp_serde::to_vec_named(&newer).unwrap();
    let committed = check_bytes("profile_minor_plus_one.bin", &bytes);
    let decoded: Envelope<Profile> = wire::decode(&committed).expect("minor + 1 decodes");
    assert_eq!(decoded.schema, SCHEMA + 1);
    assert_eq!((decoded.version, decoded.updated_at), (8, T0 + 1_000));
    assert_eq!(decoded.body, profile);
    let serde: Envelope<Profile> = rmp_serde::from_slice(&committed).expect("rmp-serde too");
    assert_eq!(serde, decoded);
}

#[test]
fn unknown_major_is_refused() {
    let mut envelope = Envelope::new(9, T0, manifest());
    envelope.schema = u16::from(SCHEMA_MAJOR + 1) << 8;
    let committed = check_bytes("manifest_major_plus_one.bin", &wire::encode(&envelope));
    assert_eq!(
        wire::decode::<Manifest>(&committed),
        Err(WireError::UnknownMajor {
            found: SCHEMA_MAJOR + 1
        })
    );
}

/// The key the cookie fixture is signed with (test only, never a real secret).
const COOKIE_KEY: &[u8] = b"attune-golden-cookie-key-0123456";

fn cookie_session() -> Session {
    session(T0, &[3, 1, 4, 15, 9, 2, 6])
}

#[test]
fn session_cookie() {
    let s = cookie_session();
    let cookie = encode_cookie(&s, COOKIE_KEY);
    assert_eq!(cookie, encode_cookie(&s, COOKIE_KEY), "deterministic");
    let committed = check_bytes("session_cookie.txt", cookie.as_bytes());
    let committed = String::from_utf8(committed).unwrap();
    assert!(committed.len() <= 1024);
    // The cookie keeps seconds; the fixture session is on whole seconds, so it is exact.
    assert_eq!(verify_cookie(&committed, COOKIE_KEY), Ok(s));
}

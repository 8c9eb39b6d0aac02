//! Wire round trips: every published type decodes to what was encoded, by the hand-written
//! reader and by `rmp-serde`, and re-encodes to the same bytes.

use attune_core::HOUR_MS;
use attune_core::profile::{Profile, ProfileConfig};
use attune_core::wire::{self, Envelope, SCHEMA};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::generators::{catalog_shard, config, manifest, neighbour_shard, profile, trending};
use crate::profile::{event_set, profiles, to_events};

fn envelope<T: std::fmt::Debug>(
    body: impl Strategy<Value = T>,
) -> impl Strategy<Value = Envelope<T>> {
    (any::<u8>(), any::<u64>(), any::<u64>(), body).prop_map(
        |(minor, version, updated_at, body)| {
            let mut e = Envelope::new(version, updated_at, body);
            e.schema = (SCHEMA & 0xff00) | u16::from(minor);
            e
        },
    )
}

fn round_trip<T>(e: &Envelope<T>) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + wire::read::Read + PartialEq + std::fmt::Debug,
{
    let bytes = wire::encode(e);
    let decoded: Envelope<T> =
        wire::decode(&bytes).map_err(|err| TestCaseError::fail(err.to_string()))?;
    prop_assert_eq!(&decoded, e);
    // `rmp-serde` and the serde derives, which wrote them, read the same.
    let serde: Envelope<T> =
        rmp_serde::from_slice(&bytes).map_err(|err| TestCaseError::fail(err.to_string()))?;
    prop_assert_eq!(&serde, e);
    // Re-encoding what was decoded gives the same bytes: decoding is idempotent.
    prop_assert_eq!(wire::encode(&decoded), bytes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn profile_round_trips(e in envelope(profile())) { round_trip(&e)?; }

    #[test]
    fn catalog_shard_round_trips(e in envelope(catalog_shard())) { round_trip(&e)?; }

    #[test]
    fn neighbour_shard_round_trips(e in envelope(neighbour_shard())) { round_trip(&e)?; }

    #[test]
    fn trending_round_trips(e in envelope(trending())) { round_trip(&e)?; }

    #[test]
    fn config_round_trips(e in envelope(config())) { round_trip(&e)?; }

    #[test]
    fn manifest_round_trips(e in envelope(manifest())) { round_trip(&e)?; }

    /// Profiles built by `apply` survive the capped encoder too: the capped bytes decode.
    #[test]
    fn capped_profiles_decode((start, raw) in event_set(48 * HOUR_MS, 40), cap in 64usize..4096) {
        let events = to_events(start, &raw);
        let order: Vec<usize> = (0..events.len()).collect();
        for (_, p) in profiles(&events, &order, &ProfileConfig::default()) {
            let env = Envelope::new(p.version, p.last_seen, p);
            let bytes = wire::encode_profile(&env, cap);
            let decoded: Envelope<Profile> = wire::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.version, env.version);
        }
    }
}

//! Criterion benchmarks of the core's hot paths:
//! `cargo bench -p attune-core -- --warm-up-time 1 --measurement-time 3`.
//!
//! - `apply`: profile updates (target ≥ 5M events/s on one core);
//! - `rank`: top-10 `for-you` over a 10,000-item catalog with ~500 candidates (target < 20 µs);
//! - `snapshot`: encode/decode of a ~2 KiB profile envelope;
//! - `cookie`: session cookie sign and verify.

#[cfg(not(target_arch = "wasm32"))]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(not(target_arch = "wasm32"))]
mod benches {
    use std::hint::black_box;

    use attune_core::MINUTE_MS;
    use attune_core::event::EventKind;
    use attune_core::profile::{Profile, ProfileConfig};
    use attune_core::session::{encode_cookie, verify_cookie};
    use attune_core::wire::{self, Envelope};
    use criterion::{BatchSize, Criterion, Throughput};

    use super::common::{self, RankScenario, T0, category_of, event, item_id};

    pub fn apply(c: &mut Criterion) {
        let cfg = ProfileConfig::default();
        // A realistic stream for one user: mostly views over a small working set, some
        // cart changes and purchases, a few minutes apart, crossing an epoch boundary.
        let kinds = [
            EventKind::View,
            EventKind::View,
            EventKind::Click,
            EventKind::View,
            EventKind::AddToCart,
            EventKind::View,
            EventKind::Impression,
            EventKind::View,
            EventKind::Purchase,
            EventKind::RemoveFromCart,
        ];
        let events: Vec<_> = (0..1_000u64)
            .map(|i| {
                let it = ((i * 13) % 30) as u32;
                let e = event(
                    i,
                    T0 + i * 3 * MINUTE_MS,
                    kinds[(i % 10) as usize],
                    &item_id(it),
                );
                (e, category_of(it))
            })
            .collect();
        let mut g = c.benchmark_group("apply");
        g.throughput(Throughput::Elements(events.len() as u64));
        g.bench_function("1000 events, one profile", |b| {
            b.iter_batched_ref(
                Profile::default,
                |p| {
                    for (e, cat) in &events {
                        p.apply(e, Some(cat), &cfg);
                    }
                },
                BatchSize::SmallInput,
            )
        });
        // Steady state: a warm profile (lists at their budget) taking more events.
        let mut warm = Profile::default();
        for (e, cat) in &events {
            warm.apply(e, Some(cat), &cfg);
        }
        let later: Vec<_> = events
            .iter()
            .map(|(e, cat)| {
                let mut e = e.clone();
                e.ts += 3_000 * MINUTE_MS;
                (e, *cat)
            })
            .collect();
        g.bench_function("1000 events, warm profile", |b| {
            b.iter_batched_ref(
                || warm.clone(),
                |p| {
                    for (e, cat) in &later {
                        p.apply(e, Some(cat), &cfg);
                    }
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }

    pub fn ranking(c: &mut Criterion) {
        let s = RankScenario::new();
        let input = s.input(10);
        let picks = attune_core::rank(&input);
        assert_eq!(picks.len(), 10);
        eprintln!("rank scenario: {} candidates gathered", s.candidate_count());
        let mut g = c.benchmark_group("rank");
        // The catalog and neighbour shards indexed once (`CatalogIndex`, `NeighbourIndex`), as
        // the edge and the origin keep them.
        g.bench_function("for-you top-10, 10k catalog", |b| {
            b.iter(|| attune_core::rank(black_box(&input)))
        });
        // The same against the bare shards (a binary search per lookup).
        let mut bare = s.input(10);
        bare.catalog = &s.catalog;
        bare.neighbours = &s.neighbours;
        assert_eq!(attune_core::rank(&bare), picks);
        g.bench_function("for-you top-10, 10k catalog, unindexed shards", |b| {
            b.iter(|| attune_core::rank(black_box(&bare)))
        });
        g.finish();
    }

    pub fn snapshot(c: &mut Criterion) {
        let p = common::typical_profile();
        let env = Envelope::new(p.version, p.last_seen, p);
        let bytes = wire::encode(&env);
        eprintln!("snapshot: {} bytes", bytes.len());
        let mut g = c.benchmark_group("snapshot");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function("encode profile", |b| {
            b.iter(|| wire::encode(black_box(&env)))
        });
        g.bench_function("decode profile", |b| {
            b.iter(|| wire::decode::<Profile>(black_box(&bytes)).unwrap())
        });
        g.bench_function("encode_profile capped", |b| {
            b.iter(|| wire::encode_profile(black_box(&env), wire::PROFILE_CAP_BYTES))
        });
        g.finish();
    }

    pub fn cookie(c: &mut Criterion) {
        let key = b"bench-session-key-0123456789abcdef";
        let session = common::session(T0, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let cookie = encode_cookie(&session, key);
        let mut g = c.benchmark_group("cookie");
        g.bench_function("sign", |b| {
            b.iter(|| encode_cookie(black_box(&session), key))
        });
        g.bench_function("verify", |b| {
            b.iter(|| verify_cookie(black_box(&cookie), key).unwrap())
        });
        g.finish();
    }
}

#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_group!(
    core_benches,
    benches::apply,
    benches::ranking,
    benches::snapshot,
    benches::cookie
);
#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_main!(core_benches);

#[cfg(target_arch = "wasm32")]
fn main() {}

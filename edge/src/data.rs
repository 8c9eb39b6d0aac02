//! The shared model the edge ranks with (config, trending, catalog and neighbour shards), its
//! isolate-memory cache revalidated by the manifest's versions, and snapshot decoding with the
//! fallback reason each failure maps to.

use std::collections::BTreeMap;
use std::rc::Rc;

use attune_core::model::{
    CatalogIndex, CatalogView, IdHash, IdKey, NeighbourIndex, NeighbourList, NeighbourView, keys,
};
use attune_core::wire::read::Read;
use attune_core::wire::{self, WireError};
use attune_core::{
    CatalogItem, CatalogShard, Config, Manifest, Neighbour, NeighbourShard, Trending,
};

/// Why a response got default content (`x-attune: default;reason=<code>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    KvTimeout,
    KvError,
    BadSnapshot,
    UnknownSchema,
    NoData,
    Rewrite,
}

impl Fallback {
    pub fn code(self) -> &'static str {
        match self {
            Fallback::KvTimeout => "kv-timeout",
            Fallback::KvError => "kv-error",
            Fallback::BadSnapshot => "bad-snapshot",
            Fallback::UnknownSchema => "unknown-schema",
            Fallback::NoData => "no-data",
            Fallback::Rewrite => "rewrite",
        }
    }
}

impl From<WireError> for Fallback {
    fn from(e: WireError) -> Self {
        match e {
            WireError::UnknownMajor { .. } => Fallback::UnknownSchema,
            WireError::Malformed(_) => Fallback::BadSnapshot,
        }
    }
}

/// Decodes a snapshot envelope: `(version, body)`, with the core's hand-written reader
/// ([`wire::read`]): another major schema is refused, unknown fields are ignored. It keeps
/// rmp-serde and the serde derives out of the Worker's wasm. Tests pin it to the core's serde
/// decoder.
pub fn decode<T: Read>(bytes: &[u8]) -> Result<(u64, T), Fallback> {
    let env = wire::read::decode::<T>(bytes)?;
    Ok((env.version, env.body))
}

/// Everything shared by all visitors that ranking needs. The catalog and neighbour shards are
/// hash-indexed ([`CatalogIndex`], [`NeighbourIndex`]) once, when the shard is decoded, and
/// shared by every request of the isolate.
#[derive(Debug)]
pub struct Model {
    pub manifest: Manifest,
    pub config: Rc<Config>,
    pub trending: Rc<Trending>,
    pub catalog: Vec<Rc<CatalogIndex>>,
    pub neighbours: Vec<Rc<NeighbourIndex>>,
}

impl Model {
    /// The shard of an item whose id hashes to `hash`: `shard_of`, without hashing again.
    fn shard(&self, hash: IdHash) -> usize {
        (hash.get() % u64::from(self.manifest.shards.max(1))) as usize
    }
}

impl CatalogView for Model {
    fn item(&self, id: &str) -> Option<&CatalogItem> {
        self.item_hashed(id, IdHash::of(id))
    }

    fn item_hashed(&self, id: &str, hash: IdHash) -> Option<&CatalogItem> {
        self.catalog
            .get(self.shard(hash))
            .and_then(|s| s.item_hashed(id, hash))
    }

    fn category_keyed(&self, id: &str, key: &IdKey) -> Option<&str> {
        self.catalog
            .get(self.shard(key.hash()))
            .and_then(|s| s.category_keyed(id, key))
    }
}

impl NeighbourView for Model {
    fn neighbours(&self, id: &str) -> &[Neighbour] {
        self.neighbour_list(id).as_slice()
    }

    fn neighbour_list(&self, id: &str) -> NeighbourList<'_> {
        self.neighbours
            .get(self.shard(IdHash::of(id)))
            .map_or(NeighbourList::new(&[]), |s| s.neighbour_list(id))
    }
}

/// Most shards the edge accepts in a manifest (each is one KV read when it changes).
pub const MAX_SHARDS: u32 = 256;

/// The isolate-memory copies of the shared keys, each with the version it was read at.
#[derive(Debug, Default)]
pub struct ModelCache {
    config: Option<(u64, Rc<Config>)>,
    trending: Option<(u64, Rc<Trending>)>,
    catalog: BTreeMap<u32, (u64, Rc<CatalogIndex>)>,
    neighbours: BTreeMap<u32, (u64, Rc<NeighbourIndex>)>,
}

fn pick<T>(m: &Manifest, key: &str, held: Option<&(u64, Rc<T>)>) -> Option<Rc<T>> {
    m.version_of(key).and(held.map(|x| x.1.clone()))
}

fn renderable(item: &CatalogItem) -> bool {
    crate::escape::safe_url(&item.url).is_some() && crate::escape::safe_url(&item.image).is_some()
}

/// Whether the held copy satisfies the manifest. A copy newer than the manifest names is
/// fine: KV only moves forward, and the publisher keeps changing hot keys such as `t` after
/// writing a manifest, so an exact match would turn every such race into default content.
fn fresh<T>(slot: Option<&(u64, T)>, want: Option<u64>) -> bool {
    match (slot, want) {
        (Some((have, _)), Some(want)) => *have >= want,
        // Not in the manifest: nothing to read, an empty default stands in.
        (_, None) => true,
        (None, Some(_)) => false,
    }
}

impl ModelCache {
    /// Keys the manifest names at a version this cache does not hold.
    pub fn stale_keys(&self, m: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        if !fresh(self.config.as_ref(), m.version_of(keys::CONFIG)) {
            out.push(keys::CONFIG.to_owned());
        }
        if !fresh(self.trending.as_ref(), m.version_of(keys::TRENDING)) {
            out.push(keys::TRENDING.to_owned());
        }
        for s in 0..m.shards.min(MAX_SHARDS) {
            let c = keys::catalog(s);
            if !fresh(self.catalog.get(&s), m.version_of(&c)) {
                out.push(c);
            }
            let n = keys::neighbours(s);
            if !fresh(self.neighbours.get(&s), m.version_of(&n)) {
                out.push(n);
            }
        }
        out
    }

    /// Stores a value read from KV under `key`. `None` (missing) is refused: the manifest named
    /// it, so it must exist.
    pub fn store(&mut self, key: &str, bytes: Option<&[u8]>) -> Result<(), Fallback> {
        let bytes = bytes.ok_or(Fallback::NoData)?;
        if key == keys::CONFIG {
            let (v, body) = decode::<Config>(bytes)?;
            self.config = Some((v, Rc::new(body)));
        } else if key == keys::TRENDING {
            let (v, body) = decode::<Trending>(bytes)?;
            self.trending = Some((v, Rc::new(body)));
        } else if let Some(s) = key.strip_prefix("c:").and_then(|s| s.parse().ok()) {
            let (v, mut body) = decode::<CatalogShard>(bytes)?;
            // Entries the page could not show safely (a link or image that is neither relative
            // nor http(s)) are left out of the catalog, so ranking picks the next best item
            // rather than pairing a title with the author's default link.
            body.items.retain(renderable);
            self.catalog
                .insert(s, (v, Rc::new(CatalogIndex::new(body))));
        } else if let Some(s) = key.strip_prefix("n:").and_then(|s| s.parse().ok()) {
            let (v, body) = decode::<NeighbourShard>(bytes)?;
            self.neighbours
                .insert(s, (v, Rc::new(NeighbourIndex::new(body))));
        }
        Ok(())
    }

    /// The model as of manifest `m`; keys the manifest does not name are empty defaults.
    /// Fails when a named key is not held at the named version.
    pub fn assemble(&self, m: &Manifest) -> Result<Model, Fallback> {
        if m.shards == 0 || m.shards > MAX_SHARDS {
            return Err(Fallback::BadSnapshot);
        }
        if !self.stale_keys(m).is_empty() {
            return Err(Fallback::NoData);
        }
        Ok(Model {
            manifest: m.clone(),
            config: pick(m, keys::CONFIG, self.config.as_ref()).unwrap_or_default(),
            trending: pick(m, keys::TRENDING, self.trending.as_ref()).unwrap_or_default(),
            catalog: (0..m.shards)
                .map(|s| pick(m, &keys::catalog(s), self.catalog.get(&s)).unwrap_or_default())
                .collect(),
            neighbours: (0..m.shards)
                .map(|s| pick(m, &keys::neighbours(s), self.neighbours.get(&s)).unwrap_or_default())
                .collect(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use attune_core::model::{TrendEntry, shard_of};
    use attune_core::wire::{Envelope, encode};

    pub(crate) fn item(id: &str, title: &str, category: &str) -> CatalogItem {
        CatalogItem {
            id: id.into(),
            title: title.into(),
            url: format!("/p/{id}.html"),
            image: format!("/img/{id}.svg"),
            price: "£1.00".into(),
            category: category.into(),
        }
    }

    /// A published model: `(key, bytes)` pairs including the manifest `m`.
    pub(crate) fn publish(
        items: Vec<CatalogItem>,
        shards: u32,
        version: u64,
    ) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut versions = Vec::new();
        let trending = Trending {
            items: items
                .iter()
                .enumerate()
                .map(|(i, c)| TrendEntry {
                    item: c.id.clone(),
                    score: 100.0 - i as f32,
                })
                .collect(),
            by_category: Vec::new(),
        };
        out.push(("t".to_owned(), encode(&Envelope::new(version, 0, trending))));
        versions.push(("t".to_owned(), version));
        for s in 0..shards {
            let shard = CatalogShard::from_items(
                items
                    .iter()
                    .filter(|c| shard_of(&c.id, shards) == s)
                    .cloned()
                    .collect(),
            );
            out.push((keys::catalog(s), encode(&Envelope::new(version, 0, shard))));
            versions.push((keys::catalog(s), version));
        }
        versions.sort();
        let m = Manifest { shards, versions };
        out.push(("m".to_owned(), encode(&Envelope::new(version, 0, m))));
        out
    }

    #[test]
    fn unsafe_catalog_entries_are_left_out() {
        let mut bad = item("bad", "Bad", "Mugs");
        bad.url = "javascript:alert(1)".into();
        let mut bad_image = item("img", "Bad image", "Mugs");
        bad_image.image = "data:text/html,x".into();
        let shard = CatalogShard::from_items(vec![item("ok", "Ok", "Mugs"), bad, bad_image]);
        let mut cache = ModelCache::default();
        cache
            .store("c:0", Some(&encode(&Envelope::new(1, 0, shard))))
            .unwrap();
        let held = &cache.catalog.get(&0).unwrap().1;
        assert!(held.item("ok").is_some());
        assert!(held.item("bad").is_none());
        assert!(held.item("img").is_none());
    }

    #[test]
    fn revalidates_by_manifest_version() {
        let items = vec![item("a", "A", "Mugs"), item("b", "B", "Bags")];
        let kv = publish(items.clone(), 2, 1);
        let get = |kv: &Vec<(String, Vec<u8>)>, k: &str| {
            kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        };
        let (_, m): (u64, Manifest) = decode(&get(&kv, "m").unwrap()).unwrap();
        let mut cache = ModelCache::default();
        let stale = cache.stale_keys(&m);
        assert_eq!(stale, vec!["t", "c:0", "c:1"]);
        assert_eq!(cache.assemble(&m).unwrap_err(), Fallback::NoData);
        for k in &stale {
            cache.store(k, get(&kv, k).as_deref()).unwrap();
        }
        assert!(cache.stale_keys(&m).is_empty());
        let model = cache.assemble(&m).unwrap();
        assert_eq!(model.item("b").unwrap().title, "B");
        // The keyed lookups ranking uses pick the same shard as `shard_of`.
        for (id, category) in [("a", "Mugs"), ("b", "Bags")] {
            let s = shard_of(id, m.shards) as usize;
            assert!(model.catalog[s].item(id).is_some());
            assert_eq!(model.category_keyed(id, &IdKey::of(id)), Some(category));
        }
        assert_eq!(model.category_keyed("zz", &IdKey::of("zz")), None);
        assert!(model.neighbours("a").is_empty());
        // A new version of one shard: only that key is read again.
        let mut m2 = m.clone();
        m2.versions.iter_mut().find(|v| v.0 == "c:1").unwrap().1 = 2;
        assert_eq!(cache.stale_keys(&m2), vec!["c:1"]);
    }

    #[test]
    fn maps_failures_to_reasons() {
        assert_eq!(
            decode::<Trending>(b"junk").unwrap_err(),
            Fallback::BadSnapshot
        );
        let mut env = Envelope::new(1, 0, Trending::default());
        env.schema = 9 << 8;
        assert_eq!(
            decode::<Trending>(&encode(&env)).unwrap_err(),
            Fallback::UnknownSchema
        );
        let mut cache = ModelCache::default();
        assert_eq!(cache.store("t", None), Err(Fallback::NoData));
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;
    use attune_core::event::{Event, EventKind, SCHEMA_VERSION};
    use attune_core::wire::{Envelope, encode, encode_profile};
    use attune_core::{Profile, ProfileConfig};

    fn same<
        T: serde::Serialize + serde::de::DeserializeOwned + Read + PartialEq + std::fmt::Debug,
    >(
        body: T,
    ) {
        let bytes = encode(&Envelope::new(42, 7, body));
        let core = wire::decode::<T>(&bytes).unwrap();
        let (v, ours) = decode::<T>(&bytes).unwrap();
        assert_eq!((v, &ours), (core.version, &core.body));
    }

    #[test]
    fn matches_the_core_decoder() {
        let mut p = Profile::default();
        let cfg = ProfileConfig::default();
        for (i, kind) in [EventKind::View, EventKind::AddToCart, EventKind::Purchase]
            .into_iter()
            .enumerate()
        {
            p.apply(
                &Event {
                    v: SCHEMA_VERSION,
                    event_id: format!("e{i}").into(),
                    user: "u".into(),
                    ts: 1_733_040_000_000 + i as u64 * 1000,
                    kind,
                    item: Some(format!("item{i}").into()),
                    props: Default::default(),
                },
                Some("Mugs"),
                &cfg,
            );
        }
        let bytes = encode_profile(&Envelope::new(3, 9, p.clone()), wire::PROFILE_CAP_BYTES);
        assert_eq!(decode::<Profile>(&bytes).unwrap(), (3, p));
        same(Config::default());
        same(Manifest {
            shards: 2,
            versions: vec![("c:0".into(), 1), ("t".into(), 2)],
        });
        same(CatalogShard::from_items(vec![tests::item(
            "a", "A & B", "Mugs",
        )]));
        same(NeighbourShard::from_lists(vec![(
            "a".into(),
            vec![Neighbour {
                item: "b".into(),
                sim: 0.3,
            }],
        )]));
        let json = r#"{"experiments":[{"id":"x","slot":"hero","traffic_bp":5000,"control":"a","arms":[{"name":"a","weight":1},{"name":"b","weight":1,"variant":"bold","strategy":"trending"}]}],
            "segments":[{"name":"s","all":[{"if":"category_affinity_at_least","category":"Mugs","score":0.5},{"if":"device","any_of":["mobile"]}]}]}"#;
        same(serde_json::from_str::<Config>(json).unwrap());
    }
}

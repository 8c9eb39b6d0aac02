//! The shared recommendation model the origin publishes and the edge reads: catalog entries,
//! item neighbours and trending. Shards are sorted by item id, so lookups are binary searches
//! and equal content serializes to equal bytes.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::table::{Key, Table, hash_str, same};

/// One product as the page renders it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogItem {
    pub id: String,
    pub title: String,
    pub url: String,
    pub image: String,
    /// Display price, already formatted with its currency (for example `£2.55`).
    pub price: String,
    pub category: String,
}

/// A similar item and how similar (0..=1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    #[serde(rename = "i")]
    pub item: String,
    #[serde(rename = "s")]
    pub sim: f32,
}

/// Read access to a catalog, however the caller stores it.
pub trait CatalogView {
    fn item(&self, id: &str) -> Option<&CatalogItem>;

    /// [`CatalogView::item`] for a caller that has already hashed the id (`hash` is
    /// `IdHash::of(id)`), so a view with a hash index need not hash it again. The default
    /// ignores the hash.
    #[inline]
    fn item_hashed(&self, id: &str, hash: IdHash) -> Option<&CatalogItem> {
        let _ = hash;
        self.item(id)
    }

    /// The category of `id` (`key` is `IdKey::of(id)`), when the item is in the catalog.
    /// Ranking needs nothing else of a candidate's entry; a view that keeps ids and
    /// categories compactly ([`CatalogIndex`]) answers without reading the item record, and
    /// returns the same `&str` for every item of a category. The default reads the item.
    #[inline]
    fn category_keyed(&self, id: &str, key: &IdKey) -> Option<&str> {
        self.item_hashed(id, key.hash())
            .map(|c| c.category.as_str())
    }
}

/// The stable hash of an item id: xxh3-64 of its bytes, the same natively and in wasm (and the
/// hash [`shard_of`] takes its remainder of). Ranking computes it once per candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdHash(u64);

impl IdHash {
    #[inline]
    pub fn of(id: &str) -> Self {
        IdHash(hash_str(id))
    }

    #[inline]
    pub fn get(self) -> u64 {
        self.0
    }
}

/// An item id in the compact form the indexes compare: its [`IdHash`] and, for short ids (up
/// to 16 bytes), the bytes themselves, so comparing two keys seldom reads either id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdKey(Key);

impl IdKey {
    #[inline]
    pub fn of(id: &str) -> Self {
        IdKey(Key::of(id))
    }

    #[inline]
    pub fn hash(&self) -> IdHash {
        IdHash(self.0.hash)
    }

    #[inline]
    pub(crate) fn key(&self) -> &Key {
        &self.0
    }
}

/// A neighbour list as ranking reads it: the neighbours, and the [`IdKey`] of each when the
/// view keeps them precomputed ([`NeighbourIndex`] does); otherwise they are computed as the
/// list is read.
#[derive(Clone, Copy, Debug)]
pub struct NeighbourList<'a> {
    list: &'a [Neighbour],
    /// Empty, or one key per neighbour.
    keys: &'a [IdKey],
}

impl<'a> NeighbourList<'a> {
    pub fn new(list: &'a [Neighbour]) -> Self {
        NeighbourList { list, keys: &[] }
    }

    pub fn as_slice(&self) -> &'a [Neighbour] {
        self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The neighbours with their keys, most similar first.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = (&'a Neighbour, IdKey)> + 'a {
        let (list, keys) = (self.list, self.keys);
        list.iter().enumerate().map(move |(i, n)| {
            let key = keys.get(i).copied().unwrap_or_else(|| IdKey::of(&n.item));
            (n, key)
        })
    }
}

/// Read access to neighbour lists, however the caller stores them.
pub trait NeighbourView {
    /// Neighbours of `id`, most similar first (empty when unknown).
    fn neighbours(&self, id: &str) -> &[Neighbour];

    /// [`NeighbourView::neighbours`] with the neighbours' keys, when the view keeps them (the
    /// default computes them as they are read).
    #[inline]
    fn neighbour_list(&self, id: &str) -> NeighbourList<'_> {
        NeighbourList::new(self.neighbours(id))
    }
}

/// One shard of the catalog (`c:<shard>`), sorted by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogShard {
    pub items: Vec<CatalogItem>,
}

impl CatalogShard {
    pub fn from_items(mut items: Vec<CatalogItem>) -> Self {
        items.sort_by(|a, b| a.id.cmp(&b.id));
        items.dedup_by(|a, b| a.id == b.id);
        CatalogShard { items }
    }
}

impl CatalogView for CatalogShard {
    fn item(&self, id: &str) -> Option<&CatalogItem> {
        self.items
            .binary_search_by(|c| c.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.items[i])
    }
}

/// A catalog shard with a hash index over its ids: the same [`CatalogView`] as the shard,
/// with lookups in (amortised) constant time instead of a binary search over the id strings.
/// Build it once per shard and keep it next to the data (the edge in isolate memory, the
/// origin's evaluation for its whole run); ranking looks up every candidate in the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogIndex {
    shard: CatalogShard,
    table: Table,
    /// The key and category of every item, in item order.
    entries: Vec<Entry>,
    /// The distinct category names, in first-seen order.
    categories: Vec<String>,
}

impl CatalogIndex {
    /// Indexes `shard`. When an id occurs more than once (shards from
    /// [`CatalogShard::from_items`] never do), the first entry wins.
    pub fn new(shard: CatalogShard) -> Self {
        let items = &shard.items;
        let mut table = Table::with_capacity(items.len());
        let mut entries: Vec<Entry> = Vec::with_capacity(items.len());
        let mut categories: Vec<String> = Vec::new();
        let mut category_table = Table::with_capacity(16);
        for (i, item) in items.iter().enumerate() {
            let key = IdKey::of(&item.id);
            let hash = key.hash().get();
            if table.find(hash, |j| items[j].id == item.id).is_none() {
                table.insert(hash, i, |j| entries[j].key.hash);
            }
            let cat_hash = hash_str(&item.category);
            let c = match category_table.find(cat_hash, |c| categories[c] == item.category) {
                Some(c) => c,
                None => {
                    categories.push(item.category.clone());
                    let c = categories.len() - 1;
                    category_table.insert(cat_hash, c, |j| hash_str(&categories[j]));
                    c
                }
            };
            entries.push(Entry {
                key: key.0,
                category: u32::try_from(c).unwrap_or(u32::MAX),
            });
        }
        CatalogIndex {
            shard,
            table,
            entries,
            categories,
        }
    }

    /// The position of `id` (whose key is `key`) in the shard.
    #[inline]
    fn position(&self, id: &str, key: &Key) -> Option<usize> {
        let items = &self.shard.items;
        self.table.find(key.hash, |i| {
            self.entries[i]
                .key
                .matches(key, id, || items[i].id.as_str())
        })
    }

    pub fn shard(&self) -> &CatalogShard {
        &self.shard
    }

    pub fn into_shard(self) -> CatalogShard {
        self.shard
    }
}

impl From<CatalogShard> for CatalogIndex {
    fn from(shard: CatalogShard) -> Self {
        CatalogIndex::new(shard)
    }
}

impl CatalogView for CatalogIndex {
    #[inline]
    fn item(&self, id: &str) -> Option<&CatalogItem> {
        self.item_hashed(id, IdHash::of(id))
    }

    #[inline]
    fn item_hashed(&self, id: &str, hash: IdHash) -> Option<&CatalogItem> {
        let items = &self.shard.items;
        self.table
            .find(hash.get(), |i| same(&items[i].id, id))
            .map(|i| &items[i])
    }

    #[inline]
    fn category_keyed(&self, id: &str, key: &IdKey) -> Option<&str> {
        let i = self.position(id, &key.0)?;
        let c = self.entries[i].category as usize;
        self.categories.get(c).map(String::as_str)
    }
}

/// What [`CatalogIndex`] keeps of an item for ranking, next to each other.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    key: Key,
    /// Index into the interned category names.
    category: u32,
}

/// Neighbour lists of one shard of items (`n:<shard>`), sorted by item id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NeighbourShard {
    pub lists: Vec<(String, Vec<Neighbour>)>,
}

impl NeighbourShard {
    pub fn from_lists(mut lists: Vec<(String, Vec<Neighbour>)>) -> Self {
        lists.sort_by(|a, b| a.0.cmp(&b.0));
        lists.dedup_by(|a, b| a.0 == b.0);
        NeighbourShard { lists }
    }
}

impl NeighbourView for NeighbourShard {
    fn neighbours(&self, id: &str) -> &[Neighbour] {
        self.lists
            .binary_search_by(|(k, _)| k.as_str().cmp(id))
            .map_or(&[], |i| &self.lists[i].1)
    }
}

/// A neighbour shard with a hash index over its item ids: the same [`NeighbourView`] as the
/// shard, without the binary search over the id strings. Like [`CatalogIndex`], build it once
/// per shard and keep it next to the data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NeighbourIndex {
    shard: NeighbourShard,
    table: Table,
    /// The key of every neighbour of every list, lists in shard order.
    keys: Vec<IdKey>,
    /// Where each list's keys start in `keys` (one more entry than lists).
    starts: Vec<u32>,
}

impl NeighbourIndex {
    /// Indexes `shard`. When an id occurs more than once (shards from
    /// [`NeighbourShard::from_lists`] never do), the first list wins.
    pub fn new(shard: NeighbourShard) -> Self {
        let lists = &shard.lists;
        let mut table = Table::with_capacity(lists.len());
        let mut keys = Vec::with_capacity(lists.iter().map(|l| l.1.len()).sum());
        let mut starts = Vec::with_capacity(lists.len() + 1);
        starts.push(0);
        for (i, (id, list)) in lists.iter().enumerate() {
            let hash = hash_str(id);
            if table.find(hash, |j| lists[j].0 == *id).is_none() {
                table.insert(hash, i, |j| hash_str(&lists[j].0));
            }
            keys.extend(list.iter().map(|n| IdKey::of(&n.item)));
            starts.push(u32::try_from(keys.len()).unwrap_or(u32::MAX));
        }
        NeighbourIndex {
            shard,
            table,
            keys,
            starts,
        }
    }

    pub fn shard(&self) -> &NeighbourShard {
        &self.shard
    }

    pub fn into_shard(self) -> NeighbourShard {
        self.shard
    }
}

impl From<NeighbourShard> for NeighbourIndex {
    fn from(shard: NeighbourShard) -> Self {
        NeighbourIndex::new(shard)
    }
}

impl NeighbourIndex {
    fn position(&self, id: &str) -> Option<usize> {
        let lists = &self.shard.lists;
        self.table.find(hash_str(id), |i| same(&lists[i].0, id))
    }
}

impl NeighbourView for NeighbourIndex {
    fn neighbours(&self, id: &str) -> &[Neighbour] {
        self.position(id).map_or(&[], |i| &self.shard.lists[i].1)
    }

    #[inline]
    fn neighbour_list(&self, id: &str) -> NeighbourList<'_> {
        let Some(i) = self.position(id) else {
            return NeighbourList::new(&[]);
        };
        let list = &self.shard.lists[i].1;
        let (start, end) = (self.starts[i] as usize, self.starts[i + 1] as usize);
        let keys = self.keys.get(start..end).unwrap_or(&[]);
        NeighbourList {
            list,
            keys: if keys.len() == list.len() { keys } else { &[] },
        }
    }
}

/// Several shards seen as one (the edge holds the few it needed for a request).
impl<T: CatalogView> CatalogView for [T] {
    fn item(&self, id: &str) -> Option<&CatalogItem> {
        self.iter().find_map(|s| s.item(id))
    }

    fn item_hashed(&self, id: &str, hash: IdHash) -> Option<&CatalogItem> {
        self.iter().find_map(|s| s.item_hashed(id, hash))
    }

    fn category_keyed(&self, id: &str, key: &IdKey) -> Option<&str> {
        self.iter().find_map(|s| s.category_keyed(id, key))
    }
}

impl<T: NeighbourView> NeighbourView for [T] {
    fn neighbours(&self, id: &str) -> &[Neighbour] {
        self.iter()
            .map(|s| s.neighbours(id))
            .find(|n| !n.is_empty())
            .unwrap_or(&[])
    }

    fn neighbour_list(&self, id: &str) -> NeighbourList<'_> {
        self.iter()
            .map(|s| s.neighbour_list(id))
            .find(|n| !n.is_empty())
            .unwrap_or(NeighbourList::new(&[]))
    }
}

/// A trending item with its decayed popularity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrendEntry {
    #[serde(rename = "i")]
    pub item: String,
    #[serde(rename = "s")]
    pub score: f32,
}

/// The trending list (`t`): overall, and the top items of each category.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trending {
    /// Most popular first.
    pub items: Vec<TrendEntry>,
    /// Category name to its most popular items, sorted by category name.
    pub by_category: Vec<(String, Vec<String>)>,
}

impl Trending {
    pub fn category(&self, name: &str) -> &[String] {
        self.by_category
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .map_or(&[], |i| &self.by_category[i].1)
    }

    /// Trend prior of an item: its score relative to the top item, in 0..=1.
    pub fn prior(&self, item: &str) -> f64 {
        let top = self.items.first().map_or(0.0, |e| f64::from(e.score));
        if top <= 0.0 {
            return 0.0;
        }
        self.items
            .iter()
            .find(|e| e.item == item)
            .map_or(0.0, |e| f64::from(e.score) / top)
    }
}

/// The manifest (`m`): how the shared model is sharded and the version of every shared key.
/// The publisher writes it last, after the keys it names, so an edge that sees a version here
/// can find it; the edge reads this small value to revalidate its isolate-memory copies
/// instead of re-reading every shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Number of `c:<shard>` and `n:<shard>` shards.
    pub shards: u32,
    /// `(key, version)` for `cfg`, `t`, and every `c:`/`n:` shard, sorted by key.
    pub versions: Vec<(String, u64)>,
}

impl Manifest {
    pub fn version_of(&self, key: &str) -> Option<u64> {
        self.versions
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.versions[i].1)
    }
}

/// KV keys of the shared model.
pub mod keys {
    use alloc::format;
    use alloc::string::String;

    pub const MANIFEST: &str = "m";
    pub const CONFIG: &str = "cfg";
    pub const TRENDING: &str = "t";

    pub fn catalog(shard: u32) -> String {
        format!("c:{shard}")
    }

    pub fn neighbours(shard: u32) -> String {
        format!("n:{shard}")
    }
}

/// The shard an item's catalog entry and neighbour list live in. A stable hash (xxh3), the
/// same natively and in wasm, so the origin and the edge agree.
pub fn shard_of(item: &str, shards: u32) -> u32 {
    (IdHash::of(item).get() % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn shards_are_stable_and_in_range() {
        // Pinned: changing the hash would orphan every published shard.
        assert_eq!(shard_of("85123A", 16), shard_of("85123A", 16));
        for id in ["85123A", "71053", "22632", ""] {
            assert!(shard_of(id, 8) < 8);
        }
        assert_eq!(shard_of("x", 0), 0);
    }

    #[test]
    fn lookups_find_sorted_entries() {
        let shard = NeighbourShard::from_lists(vec![
            (
                "b".into(),
                vec![Neighbour {
                    item: "a".into(),
                    sim: 0.5,
                }],
            ),
            (
                "a".into(),
                vec![Neighbour {
                    item: "b".into(),
                    sim: 0.5,
                }],
            ),
        ]);
        assert_eq!(shard.neighbours("b")[0].item, "a");
        assert!(shard.neighbours("zz").is_empty());
        let t = Trending {
            items: vec![
                TrendEntry {
                    item: "x".into(),
                    score: 4.0,
                },
                TrendEntry {
                    item: "y".into(),
                    score: 1.0,
                },
            ],
            by_category: vec![("Mugs".into(), vec!["x".into()])],
        };
        assert_eq!(t.prior("y"), 0.25);
        assert_eq!(t.category("Mugs"), ["x"]);
        assert!(t.category("Bags").is_empty());
    }
}

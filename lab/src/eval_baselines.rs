//! The baselines `eval` scores Attune against, learnt from the training baskets only:
//!
//! - **popularity**: the items in the most training baskets;
//! - **item-kNN** (item-based top-N, Deshpande & Karypis 2004): the conditional-probability
//!   similarity of basket co-occurrence, `|B(i) ∩ B(j)| / (|B(i)| · |B(j)|^β)` over the baskets
//!   `B(·)` holding each item, summed over the session's items. The cosine (`√` of both
//!   counts) is the textbook choice but on a sample this small it ranks items seen in a single
//!   basket first (one shared basket gives them the top score), below popularity: a baseline
//!   that weak would flatter every method compared with it;
//! - **session-kNN** (SKNN, Ludewig & Jannach 2018): the `k` training baskets most similar to
//!   the session (cosine over binary item sets) vote for their items with their similarity.
//!
//! Each fills what it cannot rank from popularity, so every method always shows 10 items.
//! Ties break by item id (by basket age, newest first, for SKNN's neighbours): deterministic.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::eval::Basket;

/// The training baskets with items numbered (by id order).
#[derive(Debug)]
pub struct Baskets {
    names: Vec<String>,
    ids: HashMap<String, u32>,
    /// Each basket's distinct items, in time order of the baskets.
    sets: Vec<Vec<u32>>,
}

impl Baskets {
    pub fn new(baskets: &[Basket]) -> Self {
        let names: Vec<String> = baskets
            .iter()
            .flat_map(|b| b.items.iter().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let ids: HashMap<String, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let sets = baskets
            .iter()
            .map(|b| {
                let mut s: Vec<u32> = b.items.iter().map(|i| ids[i]).collect();
                s.sort_unstable();
                s.dedup();
                s
            })
            .collect();
        Baskets { names, ids, sets }
    }

    fn id(&self, item: &str) -> Option<u32> {
        self.ids.get(item).copied()
    }
}

/// The best `n` of `scores` (item id → score) not excluded, best first, ties by name.
fn best(
    baskets: &Baskets,
    scores: impl IntoIterator<Item = (u32, f64)>,
    n: usize,
    exclude: &HashSet<&str>,
) -> Vec<String> {
    let mut all: Vec<(f64, &str)> = scores
        .into_iter()
        .map(|(i, s)| (s, baskets.names[i as usize].as_str()))
        .filter(|(s, name)| *s > 0.0 && !exclude.contains(name))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    all.into_iter()
        .take(n)
        .map(|(_, name)| name.to_string())
        .collect()
}

#[derive(Debug)]
pub struct Popularity {
    /// Items by basket count, most popular first, ties by id.
    order: Vec<String>,
}

impl Popularity {
    pub fn new(baskets: &Baskets) -> Self {
        let mut counts = vec![0u32; baskets.names.len()];
        for s in &baskets.sets {
            for &i in s {
                counts[i as usize] += 1;
            }
        }
        let order = best(
            baskets,
            counts
                .iter()
                .enumerate()
                .map(|(i, c)| (i as u32, f64::from(*c))),
            usize::MAX,
            &HashSet::new(),
        );
        Popularity { order }
    }

    pub fn top(&self, n: usize, exclude: &HashSet<&str>) -> Vec<String> {
        self.fill(Vec::new(), n, exclude)
    }

    /// `picks` topped up to `n` with the most popular items not excluded and not picked.
    pub fn fill(&self, mut picks: Vec<String>, n: usize, exclude: &HashSet<&str>) -> Vec<String> {
        for item in &self.order {
            if picks.len() >= n {
                break;
            }
            if !exclude.contains(item.as_str()) && !picks.contains(item) {
                picks.push(item.clone());
            }
        }
        picks
    }
}

/// Item-kNN's `β`, the penalty on a neighbour's own popularity (chosen on the validation split
/// of the sample, `attune-lab eval --validation`, as Deshpande & Karypis tune it).
pub const ITEM_KNN_BETA: f64 = 0.0;

#[derive(Debug)]
pub struct ItemKnn<'a> {
    baskets: &'a Baskets,
    /// Per item: (other item, similarity), by other item.
    sims: Vec<Vec<(u32, f64)>>,
}

impl<'a> ItemKnn<'a> {
    pub fn new(baskets: &'a Baskets) -> Self {
        Self::with_beta(baskets, ITEM_KNN_BETA)
    }

    pub fn with_beta(baskets: &'a Baskets, beta: f64) -> Self {
        let n = baskets.names.len();
        let mut counts = vec![0u32; n];
        let mut pairs: Vec<BTreeMap<u32, u32>> = vec![BTreeMap::new(); n];
        for s in &baskets.sets {
            for &i in s {
                counts[i as usize] += 1;
                for &j in s {
                    if i != j {
                        *pairs[i as usize].entry(j).or_default() += 1;
                    }
                }
            }
        }
        let sims = pairs
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                row.into_iter()
                    .map(|(j, c)| {
                        let norm = f64::from(counts[i]) * f64::from(counts[j as usize]).powf(beta);
                        (j, f64::from(c) / norm)
                    })
                    .collect()
            })
            .collect();
        ItemKnn { baskets, sims }
    }

    pub fn top(
        &self,
        context: &[&str],
        n: usize,
        exclude: &HashSet<&str>,
        popularity: &Popularity,
    ) -> Vec<String> {
        let mut scores: BTreeMap<u32, f64> = BTreeMap::new();
        for item in context {
            let Some(i) = self.baskets.id(item) else {
                continue;
            };
            for &(j, s) in &self.sims[i as usize] {
                *scores.entry(j).or_default() += s;
            }
        }
        let picks = best(self.baskets, scores, n, exclude);
        popularity.fill(picks, n, exclude)
    }
}

/// Neighbour baskets SKNN lets vote (Ludewig & Jannach's usual `k`).
pub const SKNN_K: usize = 100;

#[derive(Debug)]
pub struct SessionKnn<'a> {
    baskets: &'a Baskets,
    /// Per item: the baskets holding it.
    holding: Vec<Vec<u32>>,
    pub k: usize,
}

impl<'a> SessionKnn<'a> {
    pub fn new(baskets: &'a Baskets) -> Self {
        let mut holding = vec![Vec::new(); baskets.names.len()];
        for (b, s) in baskets.sets.iter().enumerate() {
            for &i in s {
                holding[i as usize].push(b as u32);
            }
        }
        SessionKnn {
            baskets,
            holding,
            k: SKNN_K,
        }
    }

    pub fn top(
        &self,
        context: &[&str],
        n: usize,
        exclude: &HashSet<&str>,
        popularity: &Popularity,
    ) -> Vec<String> {
        let known: Vec<u32> = context.iter().filter_map(|i| self.baskets.id(i)).collect();
        let mut overlap: BTreeMap<u32, u32> = BTreeMap::new();
        for &i in &known {
            for &b in &self.holding[i as usize] {
                *overlap.entry(b).or_default() += 1;
            }
        }
        let len = context.len().max(1) as f64;
        let mut near: Vec<(f64, u32)> = overlap
            .into_iter()
            .map(|(b, o)| {
                let size = self.baskets.sets[b as usize].len() as f64;
                (f64::from(o) / (len * size).sqrt(), b)
            })
            .collect();
        // Most similar first; among equals the newer basket.
        near.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        near.truncate(self.k);
        let mut scores: BTreeMap<u32, f64> = BTreeMap::new();
        for (sim, b) in near {
            for &i in &self.baskets.sets[b as usize] {
                *scores.entry(i).or_default() += sim;
            }
        }
        let picks = best(self.baskets, scores, n, exclude);
        popularity.fill(picks, n, exclude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basket(n: u32, items: &[&str]) -> Basket {
        Basket {
            invoice: n.to_string(),
            user: "u".into(),
            ts: u64::from(n),
            items: items.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    #[test]
    fn baselines_rank_what_they_should() {
        let b = Baskets::new(&[
            basket(0, &["a", "b", "c"]),
            basket(1, &["a", "b"]),
            basket(2, &["c", "d"]),
            basket(3, &["c", "e"]),
        ]);
        let pop = Popularity::new(&b);
        let none = HashSet::new();
        assert_eq!(pop.top(3, &none), ["c", "a", "b"]);
        let exclude: HashSet<&str> = ["a"].into_iter().collect();
        // b co-occurs with a twice: first by both neighbourhoods; popularity fills the rest.
        let knn = ItemKnn::new(&b).top(&["a"], 3, &exclude, &pop);
        assert_eq!(knn, ["b", "c", "d"]);
        let sknn = SessionKnn::new(&b).top(&["a"], 3, &exclude, &pop);
        assert_eq!(sknn, ["b", "c", "d"]);
        // A session of c and d: the basket {c, d} is the nearest, e comes from {c, e}.
        let exclude: HashSet<&str> = ["c", "d"].into_iter().collect();
        let sknn = SessionKnn::new(&b).top(&["c", "d"], 2, &exclude, &pop);
        assert_eq!(sknn[0], "e");
    }

    /// Item-kNN ranks what was bought with the session's item more often first, however
    /// popular it is elsewhere: the cosine would put `once` (its only basket holds `a`) above
    /// `twice` (bought with `a` twice, but in six baskets).
    #[test]
    fn item_knn_prefers_the_more_frequent_companion_to_a_one_off() {
        let mut all = vec![
            basket(0, &["a", "twice"]),
            basket(1, &["a", "twice"]),
            basket(2, &["a", "once"]),
            basket(3, &["a"]),
        ];
        for n in 4..8 {
            all.push(basket(n, &["twice", "z"]));
        }
        let b = Baskets::new(&all);
        let pop = Popularity::new(&b);
        let exclude: HashSet<&str> = ["a"].into_iter().collect();
        let knn = ItemKnn::new(&b).top(&["a"], 2, &exclude, &pop);
        assert_eq!(knn, ["twice", "once"]);
    }
}

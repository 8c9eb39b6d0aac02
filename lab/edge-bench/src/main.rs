//! `attune-edge-bench prepare --out DIR --profile-key KEY`: writes what `cargo xtask bench edge`
//! serves and seeds, from the demo shop's own pages so the numbers are about realistic markup:
//!
//! - `DIR/site/home.html`: the shop's home page as it is (`examples/shop/public/index.html`);
//! - `DIR/site/product-long.html`: a long (~100 KB) product page with three slots, built from a
//!   shop product page plus a long description, a specification table and customer reviews;
//! - `DIR/kv.json`: the Worker's dev bulk KV body (catalog, neighbours, trending, rules, the
//!   manifest last, and the profile of [`BENCH_USER`]), encoded by `attune-core`, so the Worker
//!   personalizes both pages for that user;
//! - `DIR/profile-key`: the KV key of that profile;
//! - `DIR/catalog.json`: the catalog by id, from which the JS HTMLRewriter worker fills the
//!   slots with the picks the Worker made.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use attune_core::event::{Event, EventKind, SCHEMA_VERSION};
use attune_core::model::{
    CatalogItem, CatalogShard, Manifest, Neighbour, NeighbourShard, TrendEntry, Trending, keys,
    shard_of,
};
use attune_core::wire::{Envelope, PROFILE_CAP_BYTES, encode, encode_profile};
use attune_core::{Config, Profile, ProfileConfig};
use base64::Engine;

/// The user the load generator acts as (the demo login cookie), a buyer with a history.
const BENCH_USER: &str = "bench-buyer";
const SHARDS: u32 = 8;
/// The shop product page the long page is built around.
const LONG_PAGE_ITEM: &str = "22086";
/// Reviews on the long page: enough to make it about 100 KB.
const REVIEWS: usize = 140;

fn main() {
    if let Err(e) = run() {
        eprintln!("attune-edge-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = None;
    let mut profile_key = None;
    let mut shop = repo_root().join("examples/shop/public");
    let mut rules = repo_root().join("examples/shop/rules.json");
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("prepare") => {}
        _ => bail!(
            "usage: attune-edge-bench prepare --out DIR --profile-key KEY [--shop DIR] [--rules FILE]"
        ),
    }
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--profile-key" => profile_key = Some(value()?.clone()),
            "--shop" => shop = PathBuf::from(value()?),
            "--rules" => rules = PathBuf::from(value()?),
            other => bail!("unknown option `{other}`"),
        }
    }
    let out = out.context("--out is required")?;
    let profile_key = profile_key.context("--profile-key is required")?;
    prepare(&shop, &rules, &out, &profile_key)
}

fn repo_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.ancestors().nth(2).unwrap_or(dir).to_path_buf()
}

fn prepare(shop: &Path, rules: &Path, out: &Path, profile_key: &str) -> Result<()> {
    let items = read_catalog(shop)?;
    if items.len() < 50 {
        bail!("only {} products under {}", items.len(), shop.display());
    }
    let config: Config = serde_json::from_str(
        &fs::read_to_string(rules).with_context(|| format!("reading {}", rules.display()))?,
    )
    .with_context(|| format!("parsing {}", rules.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_millis() as u64;

    fs::create_dir_all(out.join("site"))?;
    let home = fs::read(shop.join("index.html")).context("reading the shop's index.html")?;
    fs::write(out.join("site/home.html"), home)?;
    let product = fs::read_to_string(shop.join(format!("p/{LONG_PAGE_ITEM}.html")))
        .context("reading the long page's product page")?;
    fs::write(
        out.join("site/product-long.html"),
        long_page(&product, &items)?,
    )?;

    let mut pairs = model_pairs(&items, &config)?;
    let buyer_key = attune_core::hash::profile_key(profile_key.as_bytes(), BENCH_USER);
    fs::write(out.join("profile-key"), &buyer_key)?;
    pairs.push(pair(
        &buyer_key,
        &encode_profile(
            &Envelope::new(3, now, buyer_profile(&items, &config.profile, now)),
            PROFILE_CAP_BYTES,
        ),
        3,
    ));
    fs::write(out.join("kv.json"), serde_json::to_vec(&pairs)?)?;

    let catalog: BTreeMap<&str, serde_json::Value> = items
        .iter()
        .map(|c| {
            (
                c.id.as_str(),
                serde_json::json!({
                    "id": c.id, "title": c.title, "url": c.url, "image": c.image,
                    "price": c.price, "category": c.category,
                }),
            )
        })
        .collect();
    fs::write(out.join("catalog.json"), serde_json::to_vec(&catalog)?)?;
    println!(
        "attune-edge-bench: {} products, {} KV pairs, pages in {}",
        items.len(),
        pairs.len(),
        out.join("site").display()
    );
    Ok(())
}

/// Every product page of the shop as a catalog entry, with how many order lines it had (the
/// trending order).
fn read_catalog(shop: &Path) -> Result<Vec<CatalogItem>> {
    let mut items = Vec::new();
    let dir = shop.join("p");
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "html"))
        .collect();
    paths.sort();
    for path in paths {
        let html = fs::read_to_string(&path)?;
        let field = |start: &str, end: &str| -> Option<String> {
            let from = html.find(start)? + start.len();
            let len = html[from..].find(end)?;
            Some(unescape(&html[from..from + len]))
        };
        let (Some(id), Some(title), Some(price), Some(category), Some(image)) = (
            field(r#"<meta name="attune:item" content=""#, "\""),
            field("<h1>", "</h1>"),
            field(r#"<p class="price big">"#, "</p>"),
            field(
                r#"<nav class="crumbs"><a href="/">Home</a> › <a href=""#,
                "</a>",
            )
            .and_then(|s| s.split_once("\">").map(|(_, name)| name.to_owned())),
            field("<div class=\"product\">\n<img src=\"", "\""),
        ) else {
            continue;
        };
        items.push(CatalogItem {
            url: format!("/p/{id}.html"),
            id,
            title,
            image,
            price,
            category,
        });
    }
    Ok(items)
}

fn unescape(s: &str) -> String {
    s.replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn pair(key: &str, value: &[u8], version: u64) -> serde_json::Value {
    serde_json::json!({
        "key": key,
        "value": base64::engine::general_purpose::STANDARD.encode(value),
        "base64": true,
        "metadata": {"v": version},
    })
}

/// Catalog and neighbour shards, trending and the rules, then the manifest naming them.
/// Neighbours are the other items of the same category (nearer ids more similar), which is
/// the shape the origin's co-occurrence model gives a shop like this one.
fn model_pairs(items: &[CatalogItem], config: &Config) -> Result<Vec<serde_json::Value>> {
    let mut by_category: BTreeMap<&str, Vec<&CatalogItem>> = BTreeMap::new();
    for item in items {
        by_category.entry(&item.category).or_default().push(item);
    }
    let mut lists = Vec::new();
    for members in by_category.values() {
        for (i, item) in members.iter().enumerate() {
            let near: Vec<Neighbour> = members
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, other)| (i.abs_diff(j), other))
                .filter(|(distance, _)| *distance <= 10)
                .map(|(distance, other)| Neighbour {
                    item: other.id.clone(),
                    sim: 0.95 - 0.05 * distance as f32,
                })
                .collect();
            lists.push((item.id.clone(), near));
        }
    }
    let mut pairs = Vec::new();
    let mut versions = Vec::new();
    for s in 0..SHARDS {
        let shard = CatalogShard::from_items(
            items
                .iter()
                .filter(|c| shard_of(&c.id, SHARDS) == s)
                .cloned()
                .collect(),
        );
        pairs.push(pair(
            &keys::catalog(s),
            &encode(&Envelope::new(1, 0, shard)),
            1,
        ));
        versions.push((keys::catalog(s), 1));
        let n = NeighbourShard::from_lists(
            lists
                .iter()
                .filter(|(id, _)| shard_of(id, SHARDS) == s)
                .cloned()
                .collect(),
        );
        pairs.push(pair(
            &keys::neighbours(s),
            &encode(&Envelope::new(1, 0, n)),
            1,
        ));
        versions.push((keys::neighbours(s), 1));
    }
    // Every third product, in page order, is "trending"; the top ten of each category too.
    let trending = Trending {
        items: items
            .iter()
            .step_by(3)
            .take(60)
            .enumerate()
            .map(|(i, c)| TrendEntry {
                item: c.id.clone(),
                score: 100.0 - i as f32,
            })
            .collect(),
        by_category: by_category
            .iter()
            .map(|(cat, members)| {
                (
                    (*cat).to_owned(),
                    members.iter().take(10).map(|c| c.id.clone()).collect(),
                )
            })
            .collect(),
    };
    pairs.push(pair(
        keys::TRENDING,
        &encode(&Envelope::new(1, 0, trending)),
        1,
    ));
    versions.push((keys::TRENDING.into(), 1));
    pairs.push(pair(
        keys::CONFIG,
        &encode(&Envelope::new(1, 0, config.clone())),
        1,
    ));
    versions.push((keys::CONFIG.into(), 1));
    versions.sort();
    let manifest = Manifest {
        shards: SHARDS,
        versions,
    };
    pairs.push(pair(
        keys::MANIFEST,
        &encode(&Envelope::new(1, 0, manifest)),
        1,
    ));
    Ok(pairs)
}

/// A buyer who looked at a dozen products across a few categories in the last hour and bought
/// two of them: the hero's `returning-buyer` variant and profile-driven picks.
fn buyer_profile(items: &[CatalogItem], cfg: &ProfileConfig, now: u64) -> Profile {
    let mut profile = Profile::default();
    let mut n = 0u64;
    for (i, item) in items.iter().step_by(17).take(12).enumerate() {
        let mut kinds = vec![EventKind::View];
        if i % 5 == 0 {
            kinds.push(EventKind::Purchase);
        }
        for kind in kinds {
            n += 1;
            profile.apply(
                &Event {
                    v: SCHEMA_VERSION,
                    event_id: format!("bench{n}").into(),
                    user: BENCH_USER.into(),
                    ts: now - 3_600_000 + n * 60_000,
                    kind,
                    item: Some(item.id.as_str().into()),
                    props: Default::default(),
                },
                Some(item.category.as_str()),
                cfg,
            );
        }
    }
    profile.version = 3;
    profile
}

/// Deterministic filler text (a small linear congruential generator over a word list), so the
/// page is the same on every run.
struct Words(u64);

impl Words {
    const LIST: &'static [&'static str] = &[
        "lovely",
        "gift",
        "quality",
        "arrived",
        "quickly",
        "packaging",
        "colour",
        "vintage",
        "christmas",
        "paper",
        "chain",
        "kit",
        "children",
        "decorate",
        "tree",
        "classroom",
        "bright",
        "sturdy",
        "easy",
        "assemble",
        "glue",
        "strips",
        "festive",
        "family",
        "value",
        "would",
        "recommend",
        "again",
        "perfect",
        "size",
        "retro",
        "design",
        "pattern",
        "the",
        "and",
        "with",
        "for",
        "our",
        "was",
        "very",
        "this",
        "of",
        "a",
        "to",
        "it",
        "in",
        "is",
    ];

    fn next(&mut self) -> &'static str {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Self::LIST[(self.0 >> 33) as usize % Self::LIST.len()]
    }

    fn sentence(&mut self, words: usize) -> String {
        let mut s = String::new();
        for i in 0..words {
            let w = self.next();
            if i == 0 {
                let mut c = w.chars();
                if let Some(first) = c.next() {
                    s.extend(first.to_uppercase());
                    s.push_str(c.as_str());
                }
            } else {
                s.push(' ');
                s.push_str(w);
            }
        }
        s.push('.');
        s
    }
}

fn slot(name: &str, strategy: &str, count: usize, defaults: &[CatalogItem]) -> String {
    let mut s = format!(
        "<section class=\"grid\" data-attune-slot=\"{name}\" data-attune-strategy=\"{strategy}\" data-attune-count=\"{count}\">\n"
    );
    for item in defaults.iter().take(count) {
        let _ = write!(
            s,
            "<article class=\"card\" data-attune-item>\n<a data-attune-attr=\"href:url\" href=\"{url}\"><img data-attune-attr=\"src:image\" src=\"{img}\" alt=\"\" width=\"160\" height=\"160\"><span class=\"title\" data-attune-field=\"title\">{title}</span></a>\n<span class=\"price\" data-attune-field=\"price\">{price}</span>\n</article>\n",
            url = item.url,
            img = item.image,
            title = html_text(&item.title),
            price = html_text(&item.price),
        );
    }
    s.push_str("</section>\n");
    s
}

fn html_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

/// The shop's product page with a long description, a specification table, [`REVIEWS`] customer
/// reviews and three slots (similar items after the product, "for you" after the description,
/// trending before the footer): about 100 KB, most of it text the rewriter only streams past.
fn long_page(product: &str, items: &[CatalogItem]) -> Result<String> {
    let main_end = product
        .find("<h2>You may also like</h2>")
        .context("the product page has no similar-items section")?;
    let footer = product
        .find("</main>")
        .context("the product page has no </main>")?;
    let mut words = Words(0x5eed);
    let mut page = product[..main_end].to_owned();
    page.push_str("<h2>You may also like</h2>\n");
    page.push_str(&slot("similar", "similar", 8, &items[..8]));
    page.push_str("<section class=\"description\">\n<h2>Description</h2>\n");
    for _ in 0..12 {
        let _ = writeln!(
            page,
            "<p>{} {} {}</p>",
            words.sentence(14),
            words.sentence(18),
            words.sentence(11)
        );
    }
    page.push_str("</section>\n<h2>Picked for you</h2>\n");
    page.push_str(&slot("for-you", "for-you", 8, &items[8..16]));
    page.push_str("<table class=\"specs\">\n<caption>Specifications</caption>\n");
    for i in 0..40 {
        let _ = writeln!(
            page,
            "<tr><th scope=\"row\">{} {i}</th><td>{}</td></tr>",
            words.next(),
            words.sentence(6)
        );
    }
    page.push_str("</table>\n<section class=\"reviews\">\n<h2>Customer reviews</h2>\n");
    for i in 0..REVIEWS {
        let _ = writeln!(
            page,
            "<article class=\"review\" id=\"review-{i}\">\n<h3>{}</h3>\n<p class=\"stars\" aria-label=\"{} out of 5 stars\">{}</p>\n<p>{} {} {} {}</p>\n<p class=\"meta\">Reviewed by <a href=\"/u/{i}\">customer {i}</a> · <button type=\"button\" class=\"helpful\" data-review=\"{i}\">Helpful</button></p>\n</article>",
            words.sentence(4),
            1 + i % 5,
            "★".repeat(1 + i % 5),
            words.sentence(16),
            words.sentence(12),
            words.sentence(20),
            words.sentence(9),
        );
    }
    page.push_str("</section>\n<h2>Trending now</h2>\n");
    page.push_str(&slot("trending", "trending", 4, &items[16..20]));
    page.push_str(&product[footer..]);
    Ok(page)
}

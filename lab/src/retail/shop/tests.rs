//! Generator tests, among them: the committed `examples/shop/public/` is what it generates.
use super::*;
use crate::retail::tests::sample;
use std::path::PathBuf;

fn public_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/public")
}

fn read_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            // Dotfiles (.gitkeep, .DS_Store) are not the generator's business.
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let bytes = std::fs::read(&path).unwrap();
                out.insert(rel, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The committed `examples/shop/public/` is exactly what the generator produces.
/// `ATTUNE_REGENERATE_SHOP=1` rewrites it first.
#[test]
fn committed_shop_is_up_to_date() {
    let ds = sample();
    let dir = public_dir();
    let want = files(ds);
    if std::env::var_os("ATTUNE_REGENERATE_SHOP").is_some() {
        render(ds, &dir).unwrap();
        for stale in read_tree(&dir).keys().filter(|k| !want.contains_key(*k)) {
            std::fs::remove_file(dir.join(stale)).unwrap();
        }
    }
    let have = read_tree(&dir);
    let first = |v: Vec<&String>| v.into_iter().take(5).cloned().collect::<Vec<_>>();
    let missing = first(want.keys().filter(|k| !have.contains_key(*k)).collect());
    let extra = first(have.keys().filter(|k| !want.contains_key(*k)).collect());
    let differ = first(
        want.iter()
            .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
            .map(|(k, _)| k)
            .collect(),
    );
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "examples/shop/public is stale (first few missing {missing:?}, extra {extra:?}, differ \
         {differ:?}); regenerate with `ATTUNE_REGENERATE_SHOP=1 cargo test -p \
         attune-lab --lib retail::shop`"
    );
}

#[test]
fn shop_is_small_and_complete() {
    let ds = sample();
    let files = files(ds);
    let bytes: usize = files.values().map(String::len).sum();
    assert!(bytes < 2_000_000, "{bytes} bytes");
    let pages = page_items(ds);
    assert!(pages.len() >= TOP_PRODUCT_PAGES && pages.len() < 400);
    for category in CATEGORIES {
        let n = pages.iter().filter(|i| i.category == *category).count();
        assert!(n >= PAGES_PER_CATEGORY.min(4), "{category}: {n}");
    }
    // Every local link and image resolves to a generated file or an edge route.
    for (path, html) in files.iter().filter(|(p, _)| p.ends_with(".html")) {
        for attr in ["href=\"", "src=\""] {
            for part in html.split(attr).skip(1) {
                let target = &part[..part.find('"').unwrap()];
                if target.starts_with("https://") || target.starts_with('#') {
                    continue;
                }
                let target = target.strip_prefix('/').unwrap_or_else(|| {
                    panic!("{path}: relative link {target}");
                });
                let ok = target.is_empty()
                    || target.starts_with("__attune/")
                    || files.contains_key(target);
                assert!(ok, "{path}: broken link /{target}");
            }
        }
        assert!(
            html.contains("<script src=\"/__attune/beacon.js\" defer></script>"),
            "{path}"
        );
        assert!(html.contains("doi:10.24432/C5BW33"), "{path}");
        assert!(html.contains("CC BY 4.0"), "{path}");
        assert_eq!(
            html.matches("<article").count(),
            html.matches("</article>").count(),
            "{path}"
        );
    }
}

#[test]
fn home_page_slots() {
    let ds = sample();
    let files = files(ds);
    let home = &files["index.html"];
    assert!(home.contains("<div class=\"hero\" data-attune-slot=\"hero\">"));
    assert!(home.contains("<div data-attune-variant=\"default\">"));
    assert!(home.contains("<div data-attune-variant=\"returning-buyer\" hidden>"));
    assert!(home.contains(
        "data-attune-slot=\"for-you\" data-attune-strategy=\"for-you\" data-attune-count=\"8\""
    ));
    assert!(home.contains("data-attune-strategy=\"trending\" data-attune-count=\"4\""));
    // 8 for-you + 4 trending defaults, all distinct.
    assert_eq!(
        home.matches("<article class=\"card\" data-attune-item>")
            .count(),
        12
    );
    // The most purchased item leads the for-you defaults.
    let top = ds.top_items()[0];
    let first = home.split("data-attune-item>").nth(1).unwrap();
    assert!(first.contains(&format!("href=\"{}\"", top.url)), "{first}");
    assert!(first.contains(&price(top.price)));
    assert!(home.contains(concat!(
        "<a data-attune-attr=\"href:url\" href=\"/p/85123A.html\">",
        "<img data-attune-attr=\"src:image\" src=\"/img/hearts-love.svg\" alt=\"\" width=\"160\" height=\"160\">",
        "<span class=\"title\" data-attune-field=\"title\">WHITE HANGING HEART T-LIGHT HOLDER</span></a>\n",
        "<span class=\"price\" data-attune-field=\"price\">£2.55</span>"
    )));
}

#[test]
fn product_and_category_pages() {
    let ds = sample();
    let files = files(ds);
    let page = &files["p/85123A.html"];
    assert!(page.contains("<meta name=\"attune:item\" content=\"85123A\">"));
    assert!(page.contains("<h1>WHITE HANGING HEART T-LIGHT HOLDER</h1>"));
    assert!(page.contains("<p class=\"price big\">£2.55</p>"));
    assert!(page.contains("data-attune-add-to-cart=\"85123A\""));
    assert!(page.contains("href=\"/c/hearts-love.html\">Hearts &amp; Love</a>"));
    assert!(page.contains(
        "data-attune-slot=\"similar\" data-attune-strategy=\"similar\" data-attune-count=\"4\""
    ));
    let similar = page
        .split("data-attune-strategy=\"similar\"")
        .nth(1)
        .unwrap();
    assert_eq!(similar.matches("data-attune-item").count(), SIMILAR_COUNT);
    assert!(!similar.contains("/p/85123A.html"));
    assert_eq!(
        similar.matches("/img/hearts-love.svg").count(),
        SIMILAR_COUNT
    );

    let cat = &files["c/hearts-love.html"];
    assert!(cat.contains(concat!(
        "data-attune-slot=\"category\" data-attune-strategy=\"category\" ",
        "data-attune-category=\"Hearts &amp; Love\" data-attune-count=\"4\""
    )));
    assert!(cat.contains("<a href=\"/c/hearts-love.html\" aria-current=\"page\">"));
    assert!(cat.contains("/p/85123A.html"));
}

#[test]
fn titles_are_escaped() {
    let ds = sample();
    let files = files(ds);
    let tricky = page_items(ds)
        .into_iter()
        .find(|i| i.title.contains('\''))
        .expect("a bestseller with an apostrophe");
    let page = &files[&format!("p/{}.html", tricky.id)];
    assert!(page.contains(&esc(&tricky.title)));
    assert!(!page.contains(&format!(">{}<", tricky.title)));
    assert_eq!(
        esc("A & B <script>'x'\"y\""),
        "A &amp; B &lt;script&gt;&#39;x&#39;&quot;y&quot;"
    );
    assert_eq!(price(2.55), "£2.55");
    assert_eq!(price(10.0), "£10.00");
}

#[test]
fn login_offers_real_heavy_buyers() {
    let ds = sample();
    let customers = demo_customers(ds);
    assert_eq!(customers.len(), DEMO_CUSTOMER_COUNT);
    assert_eq!(customers[0].id, "17850");
    let login = &files(ds)["login.html"];
    for c in &customers {
        assert!(ds.customers().contains(&c.id.as_str()));
        assert!(c.lines >= 50, "{c:?}");
        assert!(login.contains(&format!("href=\"/__attune/demo/login?user={}\"", c.id)));
    }
    assert!(login.contains("href=\"/__attune/demo/logout\""));
}

//! The demo storefront (`examples/shop/public/`), generated from the Online Retail sample.
//!
//! Plain HTML and one CSS file, no client framework. The pages carry Attune's slot markup (see
//! the slot contract in `ARCHITECTURE.md`) and the author's default content, which is sensible
//! on its own: bestsellers, trending items, same-category items. The generated files are
//! committed so `wrangler dev` serves them without a build step; a test fails when they drift
//! from what [`files`] produces (regenerate with `ATTUNE_REGENERATE_SHOP=1 cargo test -p
//! attune-lab --lib retail::shop`).
//!
//! Only the most purchased items get a product page (see [`page_items`]) to keep the
//! repository small; the catalog the edge ranks from should be restricted to those items, or
//! recommendations will link to pages that do not exist.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use super::{CATEGORIES, RetailDataset, RetailItem, category_slug};

/// Product pages for the most purchased items overall …
pub const TOP_PRODUCT_PAGES: usize = 300;
/// … plus the most purchased of every category, so no category page is empty.
pub const PAGES_PER_CATEGORY: usize = 12;
/// Default items of the home page's `for-you` slot.
pub const FOR_YOU_COUNT: usize = 8;
/// Default items of the home page's `trending` slot.
pub const TRENDING_COUNT: usize = 4;
/// Default items of a product page's `similar` slot.
pub const SIMILAR_COUNT: usize = 4;
/// Default items of a category page's `category` slot.
pub const CATEGORY_SLOT_COUNT: usize = 4;
/// Static items of a category page's grid.
pub const CATEGORY_GRID_COUNT: usize = 24;
/// Customers offered on the demo login page.
pub const DEMO_CUSTOMER_COUNT: usize = 3;

const SITE: &str = "Attune Gift Shop";
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// What [`render`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub files: usize,
    pub bytes: u64,
    pub product_pages: usize,
    pub category_pages: usize,
}

/// A real customer of the sample, offered on the demo login page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoCustomer {
    /// The customer id, e.g. `17850`.
    pub id: String,
    pub country: String,
    /// Non-cancelled invoices.
    pub orders: usize,
    /// Lines of those invoices.
    pub lines: usize,
    /// The category most of those lines fall in.
    pub favourite_category: String,
}

/// Items that get a product page, most purchased first: the top [`TOP_PRODUCT_PAGES`] overall
/// and the top [`PAGES_PER_CATEGORY`] of every category.
pub fn page_items(ds: &RetailDataset) -> Vec<&RetailItem> {
    let top = ds.top_items();
    let mut chosen: BTreeSet<&str> = top
        .iter()
        .take(TOP_PRODUCT_PAGES)
        .map(|i| i.id.as_str())
        .collect();
    let mut per_category: HashMap<&str, usize> = HashMap::new();
    for item in &top {
        let n = per_category.entry(item.category.as_str()).or_default();
        if *n < PAGES_PER_CATEGORY {
            *n += 1;
            chosen.insert(item.id.as_str());
        }
    }
    top.into_iter()
        .filter(|i| chosen.contains(i.id.as_str()))
        .collect()
}

/// The customers with the most order lines (ties by id): the demo login page's choices.
pub fn demo_customers(ds: &RetailDataset) -> Vec<DemoCustomer> {
    struct Acc<'a> {
        country: &'a str,
        orders: usize,
        lines: usize,
        categories: HashMap<&'a str, usize>,
    }
    let mut by_customer: BTreeMap<&str, Acc> = BTreeMap::new();
    for inv in ds.invoices.iter().filter(|i| !i.cancelled) {
        let Some(customer) = inv.customer.as_deref() else {
            continue;
        };
        let acc = by_customer.entry(customer).or_insert_with(|| Acc {
            country: &inv.country,
            orders: 0,
            lines: 0,
            categories: HashMap::new(),
        });
        acc.orders += 1;
        acc.lines += inv.lines.len();
        for (id, _, _) in &inv.lines {
            if let Some(item) = ds.item(id) {
                *acc.categories.entry(item.category.as_str()).or_default() += 1;
            }
        }
    }
    let mut ranked: Vec<(&str, Acc)> = by_customer.into_iter().collect();
    ranked.sort_by(|(ida, a), (idb, b)| b.lines.cmp(&a.lines).then_with(|| ida.cmp(idb)));
    ranked
        .into_iter()
        .take(DEMO_CUSTOMER_COUNT)
        .map(|(id, acc)| {
            let favourite = CATEGORIES
                .iter()
                .copied()
                .max_by_key(|c| {
                    let rank = CATEGORIES.len() - CATEGORIES.iter().position(|x| x == c).unwrap();
                    (acc.categories.get(c).copied().unwrap_or(0), rank)
                })
                .unwrap_or(super::FALLBACK_CATEGORY);
            DemoCustomer {
                id: id.to_owned(),
                country: acc.country.to_owned(),
                orders: acc.orders,
                lines: acc.lines,
                favourite_category: favourite.to_owned(),
            }
        })
        .collect()
}

/// Every file of the shop: path relative to the output directory (with `/`) -> contents.
pub fn files(ds: &RetailDataset) -> BTreeMap<String, String> {
    let shop = Shop::new(ds);
    let mut out = BTreeMap::new();
    out.insert("style.css".to_owned(), STYLE.to_owned());
    out.insert("index.html".to_owned(), shop.index());
    out.insert("login.html".to_owned(), shop.login());
    out.insert("404.html".to_owned(), shop.not_found());
    for (i, category) in CATEGORIES.iter().enumerate() {
        let slug = category_slug(category);
        out.insert(format!("img/{slug}.svg"), tile_svg(category, i));
        out.insert(format!("c/{slug}.html"), shop.category(category));
    }
    for item in &shop.pages {
        out.insert(format!("p/{}.html", item.id), shop.product(item));
    }
    out
}

/// Write the shop into `out` (created if missing). Files [`files`] does not produce are left
/// alone.
pub fn render(ds: &RetailDataset, out: &Path) -> io::Result<Stats> {
    let files = files(ds);
    let mut stats = Stats::default();
    for (rel, contents) in &files {
        let path = out.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)?;
        stats.files += 1;
        stats.bytes += contents.len() as u64;
        if rel.starts_with("p/") {
            stats.product_pages += 1;
        } else if rel.starts_with("c/") {
            stats.category_pages += 1;
        }
    }
    Ok(stats)
}

struct Shop<'a> {
    /// Items with a product page, most purchased first.
    pages: Vec<&'a RetailItem>,
    /// Category -> its items with a page, most purchased first.
    by_category: HashMap<&'a str, Vec<&'a RetailItem>>,
    /// Category -> number of items in the whole catalog.
    catalog_counts: HashMap<&'a str, usize>,
    trending: Vec<&'a RetailItem>,
    customers: Vec<DemoCustomer>,
}

impl<'a> Shop<'a> {
    fn new(ds: &'a RetailDataset) -> Self {
        let pages = page_items(ds);
        let mut by_category: HashMap<&str, Vec<&RetailItem>> = HashMap::new();
        for item in &pages {
            by_category
                .entry(item.category.as_str())
                .or_default()
                .push(item);
        }
        let mut catalog_counts: HashMap<&str, usize> = HashMap::new();
        for item in &ds.items {
            *catalog_counts.entry(item.category.as_str()).or_default() += 1;
        }

        // Trending: most order lines in the last day of the data, among items with a page,
        // not already among the for-you defaults.
        let last = ds
            .invoices
            .iter()
            .filter(|i| !i.cancelled)
            .map(|i| i.ts_ms)
            .max()
            .unwrap_or(0);
        let mut recent: HashMap<&str, usize> = HashMap::new();
        for inv in ds
            .invoices
            .iter()
            .filter(|i| !i.cancelled && i.ts_ms > last - DAY_MS)
        {
            for (id, _, _) in &inv.lines {
                *recent.entry(id.as_str()).or_default() += 1;
            }
        }
        let for_you: BTreeSet<&str> = pages
            .iter()
            .take(FOR_YOU_COUNT)
            .map(|i| i.id.as_str())
            .collect();
        let mut trending: Vec<&RetailItem> = pages
            .iter()
            .copied()
            .filter(|i| !for_you.contains(i.id.as_str()) && recent.contains_key(i.id.as_str()))
            .collect();
        trending.sort_by(|a, b| {
            recent[b.id.as_str()]
                .cmp(&recent[a.id.as_str()])
                .then_with(|| a.id.cmp(&b.id))
        });
        trending.truncate(TRENDING_COUNT);

        Shop {
            pages,
            by_category,
            catalog_counts,
            trending,
            customers: demo_customers(ds),
        }
    }

    fn category_items(&self, category: &str) -> &[&'a RetailItem] {
        self.by_category.get(category).map_or(&[], |v| v.as_slice())
    }

    fn index(&self) -> String {
        let mut main = String::new();
        main.push_str(concat!(
            "<div class=\"hero\" data-attune-slot=\"hero\">\n",
            "<div data-attune-variant=\"default\">\n",
            "<h1>Welcome to the Attune Gift Shop</h1>\n",
            "<p>Hanging hearts, hot water bottles, cake stands and paper chains: the bestsellers ",
            "of a UK gift wholesaler, December 2010.</p>\n",
            "<a class=\"button\" href=\"/c/christmas.html\">Shop Christmas</a>\n",
            "</div>\n",
            "<div data-attune-variant=\"returning-buyer\" hidden>\n",
            "<h1>Welcome back</h1>\n",
            "<p>Good to see you again. We picked these with your last orders in mind.</p>\n",
            "<a class=\"button\" href=\"#for-you\">See your picks</a>\n",
            "</div>\n",
            "</div>\n",
        ));
        let for_you: Vec<&RetailItem> = self.pages.iter().copied().take(FOR_YOU_COUNT).collect();
        main.push_str("<h2 id=\"for-you\">Picked for you</h2>\n");
        slot(
            &mut main,
            &format!(
                "data-attune-strategy=\"for-you\" data-attune-count=\"{}\"",
                for_you.len()
            ),
            &for_you,
        );
        main.push_str("<h2>Trending now</h2>\n");
        slot(
            &mut main,
            &format!(
                "data-attune-strategy=\"trending\" data-attune-count=\"{}\"",
                self.trending.len()
            ),
            &self.trending,
        );
        main.push_str("<h2>Shop by category</h2>\n<div class=\"grid tiles\">\n");
        for category in CATEGORIES {
            let slug = category_slug(category);
            let _ = writeln!(
                main,
                "<a class=\"tile\" href=\"/c/{slug}.html\"><img src=\"/img/{slug}.svg\" alt=\"\" \
                 width=\"160\" height=\"160\"><span>{}</span></a>",
                esc(category)
            );
        }
        main.push_str("</div>\n");
        layout(SITE, "", &main, None)
    }

    fn product(&self, item: &RetailItem) -> String {
        let slug = category_slug(&item.category);
        let mut main = String::new();
        let _ = write!(
            main,
            concat!(
                "<nav class=\"crumbs\"><a href=\"/\">Home</a> › <a href=\"/c/{slug}.html\">{cat}</a></nav>\n",
                "<div class=\"product\">\n",
                "<img src=\"{image}\" alt=\"\" width=\"320\" height=\"320\">\n",
                "<div>\n<h1>{title}</h1>\n<p class=\"price big\">{price}</p>\n",
                "<p class=\"meta\">Item {id} · <a href=\"/c/{slug}.html\">{cat}</a> · ",
                "in {n} order lines of the sample</p>\n",
                "<button type=\"button\" class=\"button\" data-attune-add-to-cart=\"{id}\">Add to cart</button>\n",
                "</div>\n</div>\n",
            ),
            slug = slug,
            cat = esc(&item.category),
            image = esc(&item.image),
            title = esc(&item.title),
            price = price(item.price),
            id = esc(&item.id),
            n = item.purchases,
        );
        let mut similar: Vec<&RetailItem> = self
            .category_items(&item.category)
            .iter()
            .copied()
            .filter(|i| i.id != item.id)
            .take(SIMILAR_COUNT)
            .collect();
        for other in &self.pages {
            if similar.len() >= SIMILAR_COUNT {
                break;
            }
            if other.id != item.id && !similar.iter().any(|s| s.id == other.id) {
                similar.push(other);
            }
        }
        main.push_str("<h2>You may also like</h2>\n");
        slot(
            &mut main,
            &format!(
                "data-attune-strategy=\"similar\" data-attune-count=\"{}\"",
                similar.len()
            ),
            &similar,
        );
        let head = format!(
            "<meta name=\"attune:item\" content=\"{}\">\n",
            esc(&item.id)
        );
        layout(&item.title, &head, &main, Some(&slug))
    }

    fn category(&self, category: &str) -> String {
        let slug = category_slug(category);
        let items = self.category_items(category);
        let mut main = String::new();
        let total = self.catalog_counts.get(category).copied().unwrap_or(0);
        let _ = writeln!(
            main,
            "<h1>{}</h1>\n<p class=\"meta\">{} products in the catalog; the bestsellers below.</p>",
            esc(category),
            total
        );
        let picks: Vec<&RetailItem> = items.iter().copied().take(CATEGORY_SLOT_COUNT).collect();
        let _ = writeln!(main, "<h2>Picked for you in {}</h2>", esc(category));
        slot(
            &mut main,
            &format!(
                "data-attune-strategy=\"category\" data-attune-category=\"{}\" data-attune-count=\"{}\"",
                esc(category),
                picks.len()
            ),
            &picks,
        );
        main.push_str("<h2>Bestsellers</h2>\n<div class=\"grid\">\n");
        for item in items.iter().take(CATEGORY_GRID_COUNT) {
            card(&mut main, item, false);
        }
        main.push_str("</div>\n");
        layout(category, "", &main, Some(&slug))
    }

    fn login(&self) -> String {
        let mut main = String::new();
        main.push_str(concat!(
            "<h1>Act as a customer</h1>\n",
            "<p>Attune personalizes each page for whoever is visiting. Anonymous visitors are ",
            "known by a random visitor id; logged-in customers by their customer id, which the ",
            "shop passes to the edge. This demo has no real accounts: the links below log you in ",
            "as a real customer of the Online Retail sample, so the pages reflect that ",
            "customer's order history.</p>\n",
            "<ul class=\"customers\">\n",
        ));
        for c in &self.customers {
            let _ = writeln!(
                main,
                "<li><a class=\"button\" rel=\"nofollow\" href=\"/__attune/demo/login?user={id}\">Customer {id}</a> \
                 {country} · {orders} {order_word} · {lines} order lines · mostly {fav}</li>",
                id = esc(&c.id),
                country = esc(&c.country),
                orders = c.orders,
                order_word = if c.orders == 1 { "order" } else { "orders" },
                lines = c.lines,
                fav = esc(&c.favourite_category),
            );
        }
        main.push_str(concat!(
            "</ul>\n",
            "<p><a rel=\"nofollow\" href=\"/__attune/demo/logout\">Log out</a> to be an anonymous ",
            "visitor again.</p>\n",
        ));
        layout("Act as a customer", "", &main, None)
    }

    fn not_found(&self) -> String {
        let main = concat!(
            "<h1>Page not found</h1>\n",
            "<p>This product is not in the demo shop. Only the bestsellers of the sample have a ",
            "page. <a href=\"/\">Back to the home page</a>.</p>\n",
        );
        layout("Page not found", "", main, None)
    }
}

/// A recommendation slot: the items are direct children of the slot element. The slot is
/// named after its strategy, so every slot of a page has its own name (the edge ranks, reports
/// and records impressions per slot name).
fn slot(out: &mut String, attrs: &str, items: &[&RetailItem]) {
    let name = attrs
        .split("data-attune-strategy=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("recs");
    let _ = writeln!(
        out,
        "<section class=\"grid\" data-attune-slot=\"{name}\" {attrs}>"
    );
    for item in items {
        card(out, item, true);
    }
    out.push_str("</section>\n");
}

fn card(out: &mut String, item: &RetailItem, slot_item: bool) {
    let (article, href, src, title, price_attr) = if slot_item {
        (
            " data-attune-item",
            " data-attune-attr=\"href:url\"",
            " data-attune-attr=\"src:image\"",
            " data-attune-field=\"title\"",
            " data-attune-field=\"price\"",
        )
    } else {
        ("", "", "", "", "")
    };
    let _ = write!(
        out,
        concat!(
            "<article class=\"card\"{article}>\n",
            "<a{href_attr} href=\"{url}\"><img{src_attr} src=\"{image}\" alt=\"\" width=\"160\" height=\"160\">",
            "<span class=\"title\"{title_attr}>{title}</span></a>\n",
            "<span class=\"price\"{price_attr}>{price}</span>\n",
            "</article>\n",
        ),
        article = article,
        href_attr = href,
        url = esc(&item.url),
        src_attr = src,
        image = esc(&item.image),
        title_attr = title,
        title = esc(&item.title),
        price_attr = price_attr,
        price = price(item.price),
    );
}

fn layout(title: &str, head: &str, main: &str, active_slug: Option<&str>) -> String {
    let mut nav = String::new();
    for category in CATEGORIES {
        let slug = category_slug(category);
        let current = if active_slug == Some(slug.as_str()) {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(
            nav,
            "<a href=\"/c/{slug}.html\"{current}>{}</a>",
            esc(category)
        );
    }
    let full_title = if title == SITE {
        SITE.to_owned()
    } else {
        format!("{} · {SITE}", esc(title))
    };
    format!(
        concat!(
            "<!doctype html>\n<html lang=\"en-GB\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
            "<title>{full_title}</title>\n",
            "<link rel=\"stylesheet\" href=\"/style.css\">\n",
            // An icon that exists, so browsers do not log a 404 for /favicon.ico.
            "<link rel=\"icon\" href=\"/img/gifts.svg\" type=\"image/svg+xml\">\n",
            "{head}",
            "<script src=\"/__attune/beacon.js\" defer></script>\n",
            "</head>\n<body>\n",
            "<header class=\"site-header\">\n",
            "<div class=\"bar\"><a class=\"brand\" href=\"/\">{site}</a>",
            "<a href=\"/login.html\">Act as a customer</a></div>\n",
            "<nav class=\"cats\" aria-label=\"Categories\">{nav}</nav>\n",
            "</header>\n<main>\n{main}</main>\n",
            "{footer}",
            "</body>\n</html>\n",
        ),
        full_title = full_title,
        head = head,
        site = SITE,
        nav = nav,
        main = main,
        footer = FOOTER,
    )
}

const FOOTER: &str = concat!(
    "<footer class=\"site-footer\">\n",
    "<p>A demo storefront for Attune. Nothing here is for sale.</p>\n",
    "<p>Products, prices and orders: Daqing Chen, Sai Liang Sain, Kun Guo (2012), ",
    "“Online Retail”, UCI Machine Learning Repository, ",
    "<a href=\"https://doi.org/10.24432/C5BW33\">doi:10.24432/C5BW33</a>, licensed ",
    "<a href=\"https://creativecommons.org/licenses/by/4.0/\">CC BY 4.0</a>. ",
    "Changes: a 10,000-row sample, cleaned; categories, images and pages are made for this demo.</p>\n",
    "</footer>\n",
);

/// Tile colours, one per entry of [`CATEGORIES`] (cycled if there are more).
const PALETTE: &[&str] = &[
    "#b3261e", "#c2185b", "#d08a1f", "#6d597a", "#c8553d", "#2a9d8f", "#8d6e63", "#3d5a80",
    "#4f772d", "#e76f51", "#5e60ce", "#8e24aa", "#546e7a",
];

fn tile_svg(category: &str, index: usize) -> String {
    let initials: String = category
        .split_whitespace()
        .filter_map(|w| w.chars().next())
        .filter(char::is_ascii_alphabetic)
        .take(2)
        .collect();
    let size = if initials.len() > 1 { 56 } else { 72 };
    format!(
        concat!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 160 160\" width=\"160\" height=\"160\">",
            "<rect width=\"160\" height=\"160\" fill=\"{color}\"/>",
            "<circle cx=\"136\" cy=\"24\" r=\"64\" fill=\"#fff\" fill-opacity=\".14\"/>",
            "<text x=\"80\" y=\"100\" text-anchor=\"middle\" font-family=\"Georgia,serif\" ",
            "font-size=\"{size}\" fill=\"#fff\">{initials}</text></svg>\n",
        ),
        color = PALETTE[index % PALETTE.len()],
        size = size,
        initials = esc(&initials),
    )
}

/// HTML-escape text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `£2.55`
fn price(gbp: f64) -> String {
    format!("£{gbp:.2}")
}

/// The shop's one style sheet, maintained in place (the generator writes it back unchanged).
const STYLE: &str = include_str!("../../../examples/shop/public/style.css");

#[cfg(test)]
mod tests;

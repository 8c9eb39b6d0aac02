//! Reader for the shipped UCI "Online Retail" sample.
//!
//! The data set is Daqing Chen, Sai Liang Sain, Kun Guo (2012), "Online Retail", UCI Machine
//! Learning Repository, doi:10.24432/C5BW33, licensed CC BY 4.0. Everything derived from it
//! (the demo shop, imported events, fixtures) carries that attribution.
//!
//! [`parse`] turns the CSV (`InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,
//! CustomerID,Country`) into a [`RetailDataset`]: a product catalog and the invoices in file
//! order. The module is pure: it reads from any [`std::io::Read`] and does no other I/O.
//!
//! Cleaning rules, all counted in [`ParseStats`] so nothing disappears silently:
//! - Rows whose stock code is not a product (five digits optionally followed by letters, e.g.
//!   `POST`, `DOT`, `M`, `C2`, `BANK CHARGES`) are skipped.
//! - Rows with a unit price of zero or less are skipped: in this data they are stock adjustments
//!   (no customer, usually no description, sometimes negative quantities), not sales.
//! - Stock codes are upper-cased: `85123a` and `85123A` are the same product in the data.
//! - Invoices left without any product line are dropped.
//! - `InvoiceDate` is local UK time; the sample covers December 2010, when UK time is UTC, so
//!   it is read as UTC.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

pub mod shop;

/// One product of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetailItem {
    /// The stock code, upper-cased (e.g. `85123A`).
    pub id: String,
    /// The most common description, whitespace-normalized.
    pub title: String,
    /// The most recent positive unit price, in GBP.
    pub price: f64,
    /// One of [`CATEGORIES`], from [`categorize`].
    pub category: String,
    /// `/p/<id>.html`
    pub url: String,
    /// `/img/<category-slug>.svg`
    pub image: String,
    /// Number of invoice lines of non-cancelled invoices that contain this item.
    pub purchases: u32,
}

/// One invoice (an order or a cancellation) with its product lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invoice {
    /// The invoice number, e.g. `536365` or `C536379`.
    pub no: String,
    /// The customer id without the `.0` suffix (e.g. `17850`); `None` for guest checkouts.
    pub customer: Option<String>,
    pub country: String,
    /// `InvoiceDate` read as UTC, in epoch milliseconds.
    pub ts_ms: i64,
    /// `(item id, quantity, unit price)` in file order; quantities are negative for
    /// cancellations.
    pub lines: Vec<(String, i64, f64)>,
    /// The invoice number starts with `C`.
    pub cancelled: bool,
}

/// What the parser read and what it left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ParseStats {
    /// Data rows read (without the header).
    pub rows: usize,
    /// Rows skipped because the stock code is not a product (postage, fees, manual entries).
    pub non_product_rows: usize,
    /// Product rows skipped because the unit price is zero or negative (stock adjustments).
    pub unpriced_rows: usize,
    /// Distinct invoice numbers in the input.
    pub raw_invoices: usize,
    /// Invoices dropped because none of their rows was a priced product line.
    pub dropped_invoices: usize,
}

/// The parsed sample: items sorted by id, invoices in file order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetailDataset {
    pub items: Vec<RetailItem>,
    pub invoices: Vec<Invoice>,
    pub stats: ParseStats,
}

impl RetailDataset {
    /// The item with this id (ids are upper-case stock codes).
    pub fn item(&self, id: &str) -> Option<&RetailItem> {
        self.items
            .binary_search_by(|item| item.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.items[i])
    }

    /// Distinct customer ids, sorted.
    pub fn customers(&self) -> Vec<&str> {
        let set: BTreeSet<&str> = self
            .invoices
            .iter()
            .filter_map(|inv| inv.customer.as_deref())
            .collect();
        set.into_iter().collect()
    }

    /// All items, most purchased first; ties broken by id.
    pub fn top_items(&self) -> Vec<&RetailItem> {
        let mut items: Vec<&RetailItem> = self.items.iter().collect();
        items.sort_by(|a, b| b.purchases.cmp(&a.purchases).then_with(|| a.id.cmp(&b.id)));
        items
    }
}

/// Why the CSV could not be read.
#[derive(Debug)]
pub enum RetailError {
    /// The CSV itself is malformed, or a field has the wrong type (e.g. a non-numeric price).
    Csv(csv::Error),
    /// `InvoiceDate` is not `YYYY-MM-DD HH:MM[:SS]`.
    Timestamp { line: u64, value: String },
}

impl fmt::Display for RetailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetailError::Csv(e) => write!(f, "online retail CSV: {e}"),
            RetailError::Timestamp { line, value } => {
                write!(
                    f,
                    "online retail CSV line {line}: bad InvoiceDate {value:?}"
                )
            }
        }
    }
}

impl std::error::Error for RetailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RetailError::Csv(e) => Some(e),
            RetailError::Timestamp { .. } => None,
        }
    }
}

impl From<csv::Error> for RetailError {
    fn from(e: csv::Error) -> Self {
        RetailError::Csv(e)
    }
}

#[derive(Debug, Deserialize)]
struct Row {
    #[serde(rename = "InvoiceNo")]
    invoice_no: String,
    #[serde(rename = "StockCode")]
    stock_code: String,
    #[serde(rename = "Description")]
    description: String,
    #[serde(rename = "Quantity")]
    quantity: i64,
    #[serde(rename = "InvoiceDate")]
    invoice_date: String,
    #[serde(rename = "UnitPrice")]
    unit_price: f64,
    #[serde(rename = "CustomerID")]
    customer_id: String,
    #[serde(rename = "Country")]
    country: String,
}

#[derive(Debug, Default)]
struct ItemAcc {
    /// description -> (count, first row index)
    titles: HashMap<String, (u32, usize)>,
    /// (ts, row, price) of the latest sale and of the latest row of any kind.
    latest_sale: Option<(i64, usize, f64)>,
    latest_any: Option<(i64, usize, f64)>,
    purchases: u32,
}

/// Parse the Online Retail CSV.
pub fn parse<R: io::Read>(reader: R) -> Result<RetailDataset, RetailError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(reader);
    let headers = rdr.headers()?.clone();

    let mut stats = ParseStats::default();
    let mut invoices: Vec<Invoice> = Vec::new();
    let mut invoice_index: HashMap<String, usize> = HashMap::new();
    let mut raw_invoices: BTreeSet<String> = BTreeSet::new();
    let mut acc: BTreeMap<String, ItemAcc> = BTreeMap::new();

    let mut record = csv::StringRecord::new();
    while rdr.read_record(&mut record)? {
        let row_idx = stats.rows;
        stats.rows += 1;
        let row: Row = record.deserialize(Some(&headers))?;
        let line = record.position().map_or(0, |p| p.line());
        let no = row.invoice_no.trim();
        raw_invoices.insert(no.to_owned());

        let code = row.stock_code.trim().to_ascii_uppercase();
        if !is_product_code(&code) {
            stats.non_product_rows += 1;
            continue;
        }
        if row.unit_price.is_nan() || row.unit_price <= 0.0 {
            stats.unpriced_rows += 1;
            continue;
        }
        let ts_ms = parse_timestamp(&row.invoice_date).ok_or_else(|| RetailError::Timestamp {
            line,
            value: row.invoice_date.clone(),
        })?;
        let cancelled = no.starts_with('C') || no.starts_with('c');

        let inv = match invoice_index.get(no) {
            Some(&i) => &mut invoices[i],
            None => {
                invoice_index.insert(no.to_owned(), invoices.len());
                invoices.push(Invoice {
                    no: no.to_owned(),
                    customer: normalize_customer(&row.customer_id),
                    country: row.country.trim().to_owned(),
                    ts_ms,
                    lines: Vec::new(),
                    cancelled,
                });
                invoices.last_mut().expect("just pushed")
            }
        };
        inv.lines.push((code.clone(), row.quantity, row.unit_price));

        let item = acc.entry(code).or_default();
        let title = normalize_title(&row.description);
        if !title.is_empty() {
            item.titles.entry(title).or_insert((0, row_idx)).0 += 1;
        }
        let candidate = (ts_ms, row_idx, row.unit_price);
        let newer = |cur: &Option<(i64, usize, f64)>| {
            cur.is_none_or(|(ts, idx, _)| (ts_ms, row_idx) >= (ts, idx))
        };
        if newer(&item.latest_any) {
            item.latest_any = Some(candidate);
        }
        if !cancelled {
            item.purchases += 1;
            if newer(&item.latest_sale) {
                item.latest_sale = Some(candidate);
            }
        }
    }
    stats.raw_invoices = raw_invoices.len();
    stats.dropped_invoices = raw_invoices.len() - invoices.len();

    let items = acc
        .into_iter()
        .map(|(id, acc)| {
            let title = acc
                .titles
                .into_iter()
                // Most common; on a tie the description seen first.
                .max_by(|(_, (na, fa)), (_, (nb, fb))| na.cmp(nb).then_with(|| fb.cmp(fa)))
                .map(|(title, _)| title)
                .unwrap_or_else(|| id.clone());
            let price = acc
                .latest_sale
                .or(acc.latest_any)
                .map_or(0.0, |(_, _, price)| price);
            let category = categorize(&title);
            RetailItem {
                url: format!("/p/{id}.html"),
                image: format!("/img/{}.svg", category_slug(category)),
                category: category.to_owned(),
                id,
                title,
                price,
                purchases: acc.purchases,
            }
        })
        .collect();

    Ok(RetailDataset {
        items,
        invoices,
        stats,
    })
}

/// A product stock code: five ASCII digits optionally followed by ASCII letters.
pub fn is_product_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() >= 5
        && b[..5].iter().all(u8::is_ascii_digit)
        && b[5..].iter().all(u8::is_ascii_alphabetic)
}

/// `"17850.0"` -> `Some("17850")`; empty -> `None`.
pub fn normalize_customer(raw: &str) -> Option<String> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    let s = s.strip_suffix(".0").unwrap_or(s);
    Some(s.to_owned())
}

/// Collapse runs of whitespace and drop stray trailing commas (`"KEY FOB , BACK DOOR "`).
fn normalize_title(raw: &str) -> String {
    let joined = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.trim_end_matches([',', ' ']).to_owned()
}

/// `YYYY-MM-DD HH:MM[:SS]` read as UTC, in epoch milliseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if d.next().is_some() {
        return None;
    }
    let mut t = time.split(':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: i64 = match t.next() {
        Some(sec) => sec.parse().ok()?,
        None => 0,
    };
    if t.next().is_some()
        || !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..60).contains(&second)
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The categories, in navigation order. [`categorize`] returns one of these.
pub const CATEGORIES: &[&str] = &[
    "Christmas",
    "Hearts & Love",
    "Candles & Lights",
    "Home & Textiles",
    "Kitchen & Baking",
    "Mugs & Cups",
    "Bags & Storage",
    "Signs & Decor",
    "Garden & Outdoor",
    "Kids & Toys",
    "Stationery & Gift Wrap",
    "Jewellery & Accessories",
    FALLBACK_CATEGORY,
];

/// The category of descriptions no rule matches.
pub const FALLBACK_CATEGORY: &str = "Gifts";

/// One keyword rule of `lab/categories.toml`.
#[derive(Debug, Deserialize)]
struct Rule {
    category: String,
    keywords: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Rules {
    rule: Vec<Rule>,
}

/// The keyword rules, in order (`lab/categories.toml` documents how they match).
fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        // Embedded at build time and parsed by a test: a syntax error cannot ship.
        toml::from_str::<Rules>(include_str!("../categories.toml"))
            .map(|r| r.rule)
            .unwrap_or_else(|e| panic!("lab/categories.toml: {e}"))
    })
}

/// A deterministic keyword classifier: one of [`CATEGORIES`] for a product description.
pub fn categorize(description: &str) -> &'static str {
    // " WORD WORD WORD ": upper-case ASCII alphanumerics, everything else one space.
    let mut hay = String::with_capacity(description.len() + 2);
    hay.push(' ');
    for c in description.chars() {
        if c.is_ascii_alphanumeric() {
            hay.push(c.to_ascii_uppercase());
        } else if !hay.ends_with(' ') {
            hay.push(' ');
        }
    }
    if !hay.ends_with(' ') {
        hay.push(' ');
    }
    for rule in rules() {
        if rule.keywords.iter().any(|kw| matches_keyword(&hay, kw)) {
            return &rule.category;
        }
    }
    FALLBACK_CATEGORY
}

fn matches_keyword(hay: &str, keyword: &str) -> bool {
    let (word, prefix) = match keyword.strip_suffix('*') {
        Some(w) => (w, true),
        None => (keyword, false),
    };
    hay.match_indices(word).any(|(at, _)| {
        let before = at > 0 && hay.as_bytes()[at - 1] == b' ';
        let after = prefix || hay.as_bytes().get(at + word.len()) == Some(&b' ');
        before && after
    })
}

/// `"Hearts & Love"` -> `"hearts-love"`: lower-case ASCII alphanumerics joined by `-`.
pub fn category_slug(category: &str) -> String {
    let mut slug = String::with_capacity(category.len());
    for c in category.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    while slug.ends_with('-') {
        slug.pop();
    }
    slug
}

#[cfg(test)]
pub(crate) mod tests;

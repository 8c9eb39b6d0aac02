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
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    pub(crate) fn sample_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data/online-retail/online_retail_sample.csv")
    }

    /// The shipped sample, parsed once per test binary.
    pub(crate) fn sample() -> &'static RetailDataset {
        static DATA: OnceLock<RetailDataset> = OnceLock::new();
        DATA.get_or_init(|| {
            let file = std::fs::File::open(sample_path()).expect("open the shipped sample");
            parse(io::BufReader::new(file)).expect("parse the shipped sample")
        })
    }

    const SMALL: &str = "\
InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536365,POST,POSTAGE,1,2010-12-01 08:26:00,18.0,17850.0,United Kingdom
536366,85123a,\"WHITE HANGING  HEART T-LIGHT HOLDER \",2,2010-12-02 09:00:00,2.95,,United Kingdom
536367,22139,,56,2010-12-02 10:00:00,0.0,,United Kingdom
C536368,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-1,2010-12-03 10:00:00,3.10,12583.0,France
536369,21754,\"KEY FOB , BACK DOOR \",1,2010-12-03 11:00:00,0.65,12583.0,France
";

    #[test]
    fn small_input_is_cleaned_and_counted() {
        let ds = parse(SMALL.as_bytes()).unwrap();
        assert_eq!(
            ds.stats,
            ParseStats {
                rows: 6,
                non_product_rows: 1,
                unpriced_rows: 1,
                raw_invoices: 5,
                dropped_invoices: 1,
            }
        );
        let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["21754", "85123A"]);
        let heart = ds.item("85123A").unwrap();
        assert_eq!(heart.title, "WHITE HANGING HEART T-LIGHT HOLDER");
        // The newest sale wins over an even newer cancellation's price.
        assert_eq!(heart.price, 2.95);
        assert_eq!(heart.purchases, 2);
        assert_eq!(heart.url, "/p/85123A.html");
        assert_eq!(heart.image, "/img/hearts-love.svg");
        assert_eq!(ds.item("21754").unwrap().title, "KEY FOB , BACK DOOR");

        let nos: Vec<&str> = ds.invoices.iter().map(|i| i.no.as_str()).collect();
        assert_eq!(nos, ["536365", "536366", "C536368", "536369"]);
        assert_eq!(ds.invoices[0].customer.as_deref(), Some("17850"));
        assert_eq!(ds.invoices[0].lines, [("85123A".to_owned(), 6, 2.55)]);
        assert_eq!(ds.invoices[1].customer, None);
        assert!(ds.invoices[2].cancelled);
        assert_eq!(ds.invoices[2].lines, [("85123A".to_owned(), -1, 3.10)]);
        assert_eq!(ds.customers(), ["12583", "17850"]);
    }

    #[test]
    fn bad_rows_are_errors_with_a_line() {
        let bad_price = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n\
                         1,12345,X,1,2010-12-01 08:26:00,abc,,UK\n";
        assert!(matches!(
            parse(bad_price.as_bytes()),
            Err(RetailError::Csv(_))
        ));
        let bad_date = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n\
                        1,12345,X,1,2010-12-01 08:26:00,1.0,,UK\n\
                        2,12345,X,1,12/1/2010 8:26,1.0,,UK\n";
        match parse(bad_date.as_bytes()) {
            Err(e @ RetailError::Timestamp { line: 3, .. }) => {
                assert!(e.to_string().contains("line 3"), "{e}")
            }
            other => panic!("expected a timestamp error on line 3, got {other:?}"),
        }
    }

    #[test]
    fn timestamps_are_utc_epoch_ms() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp("2010-12-01 08:26:00"),
            Some(1_291_191_960_000)
        );
        assert_eq!(parse_timestamp("2010-12-01 08:26"), Some(1_291_191_960_000));
        assert_eq!(
            parse_timestamp("2000-02-29 23:59:59"),
            Some(951_868_799_000)
        );
        assert_eq!(parse_timestamp("2010-02-29 00:00:00"), None);
        assert_eq!(parse_timestamp("2010-12-01"), None);
        assert_eq!(parse_timestamp("2010-13-01 00:00:00"), None);
        assert_eq!(parse_timestamp("2010-12-01 24:00:00"), None);
    }

    #[test]
    fn product_codes_and_customers() {
        for code in ["85123A", "71053", "15056BL", "85123a"] {
            assert!(is_product_code(code), "{code}");
        }
        for code in [
            "POST",
            "DOT",
            "M",
            "D",
            "C2",
            "BANK CHARGES",
            "PADS",
            "AMAZONFEE",
            "CRUK",
        ] {
            assert!(!is_product_code(code), "{code}");
        }
        assert!(!is_product_code("1234A"));
        assert!(!is_product_code("12345-A"));
        assert_eq!(normalize_customer("17850.0").as_deref(), Some("17850"));
        assert_eq!(normalize_customer(" 12583 ").as_deref(), Some("12583"));
        assert_eq!(normalize_customer(""), None);
    }

    #[test]
    fn categories_of_known_items() {
        let cases = [
            ("WHITE HANGING HEART T-LIGHT HOLDER", "Hearts & Love"),
            ("PAPER CHAIN KIT 50'S CHRISTMAS", "Christmas"),
            ("WHITE METAL LANTERN", "Candles & Lights"),
            ("HOMEMADE JAM SCENTED CANDLES", "Candles & Lights"),
            ("KNITTED UNION FLAG HOT WATER BOTTLE", "Home & Textiles"),
            ("HAND WARMER UNION JACK", "Home & Textiles"),
            ("REGENCY CAKESTAND 3 TIER", "Kitchen & Baking"),
            ("ALARM CLOCK BAKELIKE RED", "Signs & Decor"),
            ("STRAWBERRY CERAMIC TRINKET BOX", "Bags & Storage"),
            ("JUMBO BAG RED RETROSPOT", "Bags & Storage"),
            ("RETRO COFFEE MUGS ASSORTED", "Mugs & Cups"),
            ("CHILDREN'S SPACEBOY MUG", "Kids & Toys"),
            ("POPPY'S PLAYHOUSE BEDROOM", "Kids & Toys"),
            ("PACK OF 6 BIRDY GIFT TAGS", "Stationery & Gift Wrap"),
            ("IVORY GIANT GARDEN THERMOMETER", "Garden & Outdoor"),
            ("EDWARDIAN PARASOL RED", "Garden & Outdoor"),
            ("DIAMANTE BOW BROOCH RED COLOUR", "Jewellery & Accessories"),
            ("SILK PURSE BABUSHKA RED", "Jewellery & Accessories"),
            ("PLEASE ONE PERSON METAL SIGN", "Signs & Decor"),
            ("WOODEN PICTURE FRAME WHITE FINISH", "Signs & Decor"),
            ("TRAVEL SEWING KIT", "Home & Textiles"),
            ("SOMBRERO", "Gifts"),
            ("", "Gifts"),
        ];
        for (description, category) in cases {
            assert_eq!(categorize(description), category, "{description}");
        }
        // Word boundaries: STRAW must not match STRAWBERRY, RING must not match STRING.
        assert!(!matches_keyword(" STRAWBERRY JAM ", "STRAW"));
        assert!(matches_keyword(" STRAWBERRY JAM ", "STRAW*"));
        assert!(!matches_keyword(" STRING OF 8 ", "RING"));
        assert!(matches_keyword(" WHITE T LIGHT HOLDER ", "T LIGHT*"));
    }

    #[test]
    fn every_rule_category_is_listed_and_slugs_are_distinct() {
        for rule in rules() {
            assert!(
                CATEGORIES.contains(&rule.category.as_str()),
                "{}",
                rule.category
            );
        }
        let slugs: BTreeSet<String> = CATEGORIES.iter().map(|c| category_slug(c)).collect();
        assert_eq!(slugs.len(), CATEGORIES.len());
        assert_eq!(category_slug("Hearts & Love"), "hearts-love");
        assert_eq!(
            category_slug("Stationery & Gift Wrap"),
            "stationery-gift-wrap"
        );
        assert_eq!(category_slug("Gifts"), "gifts");
    }

    #[test]
    fn shipped_sample_counts() {
        let ds = sample();
        // SOURCE.md: 10,000 rows, 512 invoices, 323 customers. After cleaning: the 46
        // zero-price adjustments and 38 postage/fee rows go; invoices that only had those go.
        assert_eq!(
            ds.stats,
            ParseStats {
                rows: 10_000,
                non_product_rows: 38,
                unpriced_rows: 46,
                raw_invoices: 512,
                dropped_invoices: 48,
            }
        );
        assert_eq!(ds.invoices.len(), 464);
        assert_eq!(ds.invoices.iter().filter(|i| i.cancelled).count(), 41);
        // One customer only ever bought postage.
        assert_eq!(ds.customers().len(), 322);
        assert_eq!(ds.items.len(), 1967);
        assert!(ds.items.windows(2).all(|w| w[0].id < w[1].id));
        let lines: usize = ds.invoices.iter().map(|i| i.lines.len()).sum();
        assert_eq!(lines, 10_000 - 38 - 46);
    }

    #[test]
    fn shipped_sample_known_rows() {
        let ds = sample();
        let heart = ds.item("85123A").unwrap();
        assert_eq!(heart.title, "WHITE HANGING HEART T-LIGHT HOLDER");
        assert_eq!(heart.price, 2.55);
        assert_eq!(heart.category, "Hearts & Love");
        assert_eq!(heart.purchases, 56);

        let first = &ds.invoices[0];
        assert_eq!(first.no, "536365");
        assert_eq!(first.customer.as_deref(), Some("17850"));
        assert_eq!(first.country, "United Kingdom");
        assert_eq!(first.ts_ms, 1_291_191_960_000);
        assert!(!first.cancelled);
        assert_eq!(first.lines.len(), 7);
        assert_eq!(first.lines[0], ("85123A".to_owned(), 6, 2.55));
        assert_eq!(first.lines[1], ("71053".to_owned(), 6, 3.39));

        // Cancellations: flagged, negative quantities; orders: positive quantities.
        for inv in &ds.invoices {
            assert_eq!(inv.cancelled, inv.no.starts_with('C'), "{}", inv.no);
            for (_, qty, price) in &inv.lines {
                assert!(*price > 0.0);
                assert_eq!(*qty < 0, inv.cancelled, "{}", inv.no);
            }
        }
        assert!(ds.invoices.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));

        // Titles with characters that need escaping survive intact.
        assert!(ds.items.iter().any(|i| i.title.contains('&')));
        assert!(ds.items.iter().any(|i| i.title.contains('\'')));
        assert!(
            ds.items
                .iter()
                .all(|i| !i.title.is_empty() && i.price > 0.0)
        );
        assert!(
            ds.items
                .iter()
                .all(|i| CATEGORIES.contains(&i.category.as_str()))
        );
    }
}

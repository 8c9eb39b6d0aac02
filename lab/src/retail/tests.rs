//! Reader tests, and the shipped sample parsed once for every test of the crate.
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

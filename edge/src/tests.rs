//! Rewrite tests over realistic pages: the shipped shop's HTML, adversarial catalog values,
//! chunked streaming and a large page.

use std::rc::Rc;

use attune_core::rules::DeviceClass;
use attune_core::{CatalogItem, Manifest, Session};

use crate::data::tests::{item, publish};
use crate::data::{Model, ModelCache, decode};
use crate::escape::Charset;
use crate::rewrite::{Inputs, PageRewriter, SlotKind, rewrite_all};

const NOW: u64 = 1_733_040_000_000;

pub(crate) fn model(items: Vec<CatalogItem>) -> Rc<Model> {
    let kv = publish(items, 4, 1);
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let (_, m): (u64, Manifest) = decode(&get("m").unwrap()).unwrap();
    let mut cache = ModelCache::default();
    for k in cache.stale_keys(&m) {
        cache.store(&k, get(&k).as_deref()).unwrap();
    }
    Rc::new(cache.assemble(&m).unwrap())
}

fn inputs(model: Option<Rc<Model>>) -> Inputs {
    Inputs {
        now: NOW,
        visitor: "v1".into(),
        profile: None,
        session: Some(Session::fresh(NOW)),
        model,
        country: None,
        device: DeviceClass::Desktop,
        charset: Charset::Utf8,
    }
}

fn inputs_in(model: Option<Rc<Model>>, charset: Charset) -> Inputs {
    Inputs {
        charset,
        ..inputs(model)
    }
}

fn s(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

const PAGE: &str = r#"<!doctype html><html><head><meta name="attune:item" content="P1"><title>t</title></head><body>
<div data-attune-slot="hero"><div data-attune-variant="default">D</div><div data-attune-variant="returning-buyer" hidden>R</div></div>
<section data-attune-slot="recs" data-attune-strategy="trending" data-attune-count="2">
<article data-attune-item><a data-attune-attr="href:url" href="/d1"><img data-attune-attr="src:image alt:title" src="/d1.svg" alt=""><span data-attune-field="title">Default one</span></a><span data-attune-field="price">£9</span></article>
<article data-attune-item><a data-attune-attr="href:url" href="/d2"><span data-attune-field="title">Default two</span></a></article>
<article data-attune-item><a data-attune-attr="href:url" href="/d3"><span data-attune-field="title">Default three</span></a></article>
</section>
<p data-attune-field="title">outside any item</p>
</body></html>"#;

#[test]
fn fills_picks_and_keeps_defaults_beyond_them() {
    let m = model(vec![
        item("A1", "Alpha mug", "Mugs"),
        item("B2", "Beta bag", "Bags"),
        item("P1", "Page item", "Mugs"),
    ]);
    let (out, report) = rewrite_all(inputs(Some(m)), PAGE.as_bytes(), 1 << 20);
    let out = s(&out);
    assert_eq!(report.page_item.as_deref(), Some("P1"));
    // Trending order: A1, B2 (P1 is the page's own item: excluded).
    assert!(out.contains(r#"<article data-attune-item="A1"><a data-attune-attr="href:url" href="/p/A1.html"><img data-attune-attr="src:image alt:title" src="/img/A1.svg" alt="Alpha mug"><span data-attune-field="title">Alpha mug</span></a><span data-attune-field="price">£1.00</span>"#), "{out}");
    assert!(out.contains(r#"href="/p/B2.html"><span data-attune-field="title">Beta bag</span>"#));
    // Only two picks asked for: the third keeps the author's default.
    assert!(out.contains(r#"<article data-attune-item><a data-attune-attr="href:url" href="/d3"><span data-attune-field="title">Default three</span>"#));
    assert!(out.contains("outside any item"));
    // Variant slot: no buyer, so `default` stays and the other goes.
    assert!(
        out.contains(r#"<div data-attune-variant="default">D</div></div>"#),
        "{out}"
    );
    assert!(!out.contains("returning-buyer"));
    let recs = &report.slots[1];
    match &recs.kind {
        SlotKind::Recs {
            rendered, picks, ..
        } => {
            assert_eq!(rendered, &["A1", "B2"]);
            assert_eq!(picks.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn default_content_without_data() {
    let (out, report) = rewrite_all(inputs(None), PAGE.as_bytes(), 7);
    let out = s(&out);
    assert!(out.contains("Default one") && out.contains("Default two"));
    assert!(!out.contains("returning-buyer"), "non-default variants go");
    assert_eq!(report.page_item.as_deref(), Some("P1"));
    assert!(matches!(
        report.slots[1].kind,
        SlotKind::Default { reason: "no-data" }
    ));
}

#[test]
fn escapes_adversarial_catalog_values() {
    let evil = CatalogItem {
        id: "E1".into(),
        title: r#"Tom & Jerry's <script>alert(1)</script> "mug""#.into(),
        url: "/p/E1?x=\"><script>alert(3)</script>".into(),
        image: "/img/e1.svg".into(),
        price: "<b>£1</b>".into(),
        category: "Mugs".into(),
    };
    // Entries whose link or image is not relative or http(s) never reach the page.
    let refused = CatalogItem {
        url: "javascript:alert(1)".into(),
        ..item("J3", "Refused link", "Toys")
    };
    let refused_image = CatalogItem {
        image: "java\tscript:alert(2)".into(),
        ..item("J4", "Refused image", "Lamps")
    };
    let ok = CatalogItem {
        url: "https://shop.example/p?a=1&b=\"2\"".into(),
        ..item("F2", "Fine", "Bags")
    };
    let m = model(vec![evil, refused, refused_image, ok]);
    let (out, report) = rewrite_all(inputs(Some(m)), PAGE.as_bytes(), 1 << 20);
    let out = s(&out);
    assert!(!out.contains("<script>alert"), "{out}");
    assert!(
        !out.contains("javascript:") && !out.contains("script:alert"),
        "{out}"
    );
    assert!(!out.contains("<b>"));
    assert!(!out.contains("J3") && !out.contains("J4"), "{out}");
    let rendered: Vec<&str> = report
        .slots
        .iter()
        .filter_map(|s| match &s.kind {
            SlotKind::Recs { rendered, .. } => Some(rendered.iter().map(String::as_str)),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        rendered.contains(&"E1") && rendered.contains(&"F2"),
        "{rendered:?}"
    );
    assert!(
        out.contains("Tom &amp; Jerry's &lt;script&gt;alert(1)&lt;/script&gt; \"mug\""),
        "{out}"
    );
    // A link that tries to close its attribute stays inside it.
    assert!(
        out.contains(r#"href="/p/E1?x=&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;""#),
        "{out}"
    );
    assert!(
        out.contains(
            r#"alt="Tom &amp; Jerry's &lt;script&gt;alert(1)&lt;/script&gt; &quot;mug&quot;""#
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"href="https://shop.example/p?a=1&amp;b=&quot;2&quot;""#),
        "{out}"
    );
}

#[test]
fn small_chunks_give_identical_output() {
    let m = model(vec![
        item("A1", "Alpha", "Mugs"),
        item("B2", "Beta", "Bags"),
    ]);
    let (whole, _) = rewrite_all(inputs(Some(m.clone())), PAGE.as_bytes(), 1 << 20);
    for chunk in [1, 2, 3, 5, 16, 64] {
        let (out, _) = rewrite_all(inputs(Some(m.clone())), PAGE.as_bytes(), chunk);
        assert_eq!(s(&out), s(&whole), "chunk {chunk}");
    }
}

#[test]
fn a_large_page_streams_with_output_before_the_end() {
    let m = model(vec![item("A1", "Alpha", "Mugs")]);
    let mut page = PAGE.replace("</body></html>", "");
    let filler = "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>\n";
    while page.len() < 5 * 1024 * 1024 {
        page.push_str(filler);
    }
    page.push_str("</body></html>");
    let mut rw = PageRewriter::new(inputs(Some(m)));
    let mut produced = 0usize;
    let mut first_output_at = None;
    let mut max_pending = 0usize;
    let mut fed = 0usize;
    for c in page.as_bytes().chunks(16 * 1024) {
        fed += c.len();
        let out = rw.write(c);
        produced += out.len();
        if first_output_at.is_none() && !out.is_empty() {
            first_output_at = Some(fed);
        }
        max_pending = max_pending.max(fed - produced);
    }
    let (rest, report) = rw.end();
    produced += rest.len();
    assert!(first_output_at.unwrap() <= 32 * 1024, "output starts early");
    assert!(max_pending < 64 * 1024, "bounded buffering: {max_pending}");
    assert!(produced + 1024 >= page.len(), "{produced}");
    assert!(report.error.is_none());
}

#[test]
fn rewrites_the_shop_pages() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/shop/public");
    let Ok(index) = std::fs::read_to_string(format!("{dir}/index.html")) else {
        eprintln!("examples/shop/public/index.html missing: skipping");
        return;
    };
    // Real titles from the sample, with the characters that need escaping.
    let m = model(vec![
        item("22086", "PAPER CHAIN KIT 50'S CHRISTMAS", "Christmas"),
        item(
            "85123A",
            "WHITE HANGING HEART T-LIGHT HOLDER",
            "Hearts & Love",
        ),
        item("47566", "PARTY BUNTING", "Signs & Decor"),
        item("X1", "SET/3 <RED> & \"WHITE\" JARS", "Kitchen & Baking"),
    ]);
    let (out, report) = rewrite_all(inputs(Some(m.clone())), index.as_bytes(), 1500);
    let out = s(&out);
    let (again, _) = rewrite_all(inputs(Some(m)), index.as_bytes(), 1 << 20);
    assert_eq!(out, s(&again));
    assert!(!report.slots.is_empty());
    assert!(out.contains("SET/3 &lt;RED&gt; &amp; \"WHITE\" JARS"));
    assert!(out.contains(r#"data-attune-item="85123A""#));
    assert!(report.error.is_none());
    // The hero keeps exactly one variant.
    assert_eq!(out.matches("data-attune-variant=").count(), 1);
}

/// Multi-byte UTF-8 in text, attributes, the slot's own attributes and catalog values, and
/// bytes that are not UTF-8 at all.
const MULTIBYTE_PAGE: &[u8] = b"<!doctype html><html><head><meta charset=\"utf-8\">\
<title>Caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x98\x80 \xE2\x80\x94 Attune</title></head><body>\n\
<h1 title=\"Cr\xC3\xA8me br\xC3\xBBl\xC3\xA9e \xE2\x9C\x93\">Stra\xC3\x9Fe f\xC3\xBCr \xF0\x9F\x8E\x81 \xC2\xB7 \xE6\x9C\xAB\xE5\xB0\xBE</h1>\n\
<section data-attune-slot=\"r\xC3\xA9cos \xE2\x9C\x93\" data-attune-strategy=\"trending\" data-attune-count=\"2\">\n\
<article data-attune-item><a data-attune-attr=\"href:url title:title\" href=\"/d1\"><span data-attune-field=\"title\">D\xC3\xA9faut \xF0\x9F\x98\x80</span></a></article>\n\
<article data-attune-item><span data-attune-field=\"title\">D\xC3\xA9faut 2</span></article>\n\
</section>\n\
<p>bad \xFF byte, cut \xE2\x9C sequence</p>\n\
</body></html>";

/// What the rewrite makes of the two items in `MULTIBYTE_PAGE`'s slot.
const MULTIBYTE_ITEMS: (&[u8], &str) = (
    b"<article data-attune-item><a data-attune-attr=\"href:url title:title\" href=\"/d1\"><span data-attune-field=\"title\">D\xC3\xA9faut \xF0\x9F\x98\x80</span></a></article>\n\
<article data-attune-item><span data-attune-field=\"title\">D\xC3\xA9faut 2</span></article>",
    "<article data-attune-item=\"T1\"><a data-attune-attr=\"href:url title:title\" href=\"/p/T1.html\" title=\"Th\u{e9} vert \u{2713} \u{1F375}\"><span data-attune-field=\"title\">Th\u{e9} vert \u{2713} \u{1F375}</span></a></article>\n\
<article data-attune-item=\"C2\"><span data-attune-field=\"title\">Cr\u{e8}me &lt;5\u{20AC}&gt; &amp; \u{1F600}</span></article>",
);

/// `haystack` with its one occurrence of `from` replaced by `to`.
fn replace_once(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at: Vec<usize> = haystack
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "{}", String::from_utf8_lossy(from));
    [&haystack[..at[0]], to, &haystack[at[0] + from.len()..]].concat()
}

fn multibyte_model() -> Rc<Model> {
    model(vec![
        item(
            "T1",
            "Th\u{e9} vert \u{2713} \u{1F375}",
            "Th\u{e9}s \u{2615}",
        ),
        item(
            "C2",
            "Cr\u{e8}me <5\u{20AC}> & \u{1F600}",
            "Desserts \u{2713}",
        ),
    ])
}

#[test]
fn multibyte_text_in_one_byte_chunks_is_byte_exact() {
    let (from, to) = MULTIBYTE_ITEMS;
    let expected = replace_once(MULTIBYTE_PAGE, from, to.as_bytes());
    let (whole, report) = rewrite_all(inputs(Some(multibyte_model())), MULTIBYTE_PAGE, 1 << 20);
    assert_eq!(
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(whole, expected);
    assert!(report.error.is_none());
    // The slot's name was read as the UTF-8 it is.
    assert_eq!(report.slots[0].slot, "r\u{e9}cos \u{2713}");
    match &report.slots[0].kind {
        SlotKind::Recs { rendered, .. } => assert_eq!(rendered, &["T1", "C2"]),
        other => panic!("{other:?}"),
    }
    // Every character (and the bytes that are not UTF-8) split across chunks: the same bytes.
    for chunk in [1, 2, 3] {
        let (out, _) = rewrite_all(inputs(Some(multibyte_model())), MULTIBYTE_PAGE, chunk);
        assert_eq!(out, expected, "chunk {chunk}");
    }
    // Without data the page passes through byte for byte.
    let (out, _) = rewrite_all(inputs(None), MULTIBYTE_PAGE, 1);
    assert_eq!(out, MULTIBYTE_PAGE);
}

/// The `Content-Type` says UTF-8, which wins over any `<meta>`: inserted text is UTF-8.
#[test]
fn a_legacy_meta_charset_under_a_utf8_content_type_rewrites_as_utf8() {
    let (from, to) = MULTIBYTE_ITEMS;
    for meta in [
        "<meta charset=\"windows-1252\">",
        "<meta http-equiv=\"Content-Type\" content=\"text/html; charset=windows-1252\">",
        "<meta charset=\"shift_jis\">",
    ] {
        let page = replace_once(MULTIBYTE_PAGE, b"<meta charset=\"utf-8\">", meta.as_bytes());
        let expected = replace_once(&page, from, to.as_bytes());
        for chunk in [1, 3, 1 << 20] {
            let (out, report) = rewrite_all(inputs(Some(multibyte_model())), &page, chunk);
            assert!(report.error.is_none(), "{meta}: {:?}", report.error);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "{meta}, chunk {chunk}"
            );
            assert_eq!(out, expected, "{meta}, chunk {chunk}");
        }
    }
}

/// Pins the `encoding_rs` stand-in (patches/encoding_rs_utf8): even with lol_html's
/// `adjust_charset_on_meta_tag` on (the Worker leaves it off), a `<meta charset>` naming a
/// legacy encoding resolves to nothing, so text handlers still decode UTF-8 and inserted text
/// is written as UTF-8. With the real encoding_rs, lol_html would switch to windows-1252 here:
/// "Café" would reach the handler as "CafÃ©" and "✓" would be written as `&#10003;`.
#[test]
fn lol_html_stays_on_utf8_after_a_legacy_meta_charset() {
    use lol_html::html_content::ContentType;
    use lol_html::{HtmlRewriter, Settings, element, text};

    let page = "<meta charset=\"windows-1252\"><p id=\"t\">Caf\u{e9} \u{2713} \u{1F600}</p><p id=\"w\">x</p>";
    let mut seen = String::new();
    let mut out = Vec::new();
    {
        let settings = Settings::new()
            .with_adjust_charset_on_meta_tag(true)
            .append_element_content_handler(text!("#t", |t| {
                seen.push_str(t.as_str());
                Ok(())
            }))
            .append_element_content_handler(element!("#w", |el| {
                el.set_inner_content("\u{e9} \u{2713}", ContentType::Text);
                Ok(())
            }));
        let mut rewriter = HtmlRewriter::new(settings, |c: &[u8]| out.extend_from_slice(c));
        for byte in page.as_bytes().chunks(1) {
            rewriter.write(byte).unwrap();
        }
        rewriter.end().unwrap();
    }
    assert_eq!(seen, "Caf\u{e9} \u{2713} \u{1F600}");
    assert_eq!(
        s(&out),
        "<meta charset=\"windows-1252\"><p id=\"t\">Caf\u{e9} \u{2713} \u{1F600}</p><p id=\"w\">\u{e9} \u{2713}</p>"
    );
}

/// `MULTIBYTE_ITEMS`' rewritten slot with every non-ASCII character as a character reference.
const MULTIBYTE_ITEMS_AS_REFERENCES: &str = "<article data-attune-item=\"T1\"><a data-attune-attr=\"href:url title:title\" href=\"/p/T1.html\" title=\"Th&#233; vert &#10003; &#127861;\"><span data-attune-field=\"title\">Th&#233; vert &#10003; &#127861;</span></a></article>\n\
<article data-attune-item=\"C2\"><span data-attune-field=\"title\">Cr&#232;me &lt;5&#8364;&gt; &amp; &#128512;</span></article>";

/// No charset in the `Content-Type` and a legacy one in the page: inserted text is ASCII with
/// character references, which every ASCII-compatible charset reads the same; the page's own
/// bytes are untouched.
#[test]
fn text_inserted_into_a_page_of_unknown_charset_is_ascii() {
    let (from, _) = MULTIBYTE_ITEMS;
    for meta in [
        "<meta charset=\"windows-1252\">",
        "<meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\">",
        "",
    ] {
        let page = replace_once(MULTIBYTE_PAGE, b"<meta charset=\"utf-8\">", meta.as_bytes());
        let expected = replace_once(&page, from, MULTIBYTE_ITEMS_AS_REFERENCES.as_bytes());
        for chunk in [1, 3, 1 << 20] {
            let m = multibyte_model();
            let (out, report) = rewrite_all(inputs_in(Some(m), Charset::Unknown), &page, chunk);
            assert!(report.error.is_none());
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "{meta:?}, chunk {chunk}"
            );
            assert_eq!(out, expected, "{meta:?}, chunk {chunk}");
        }
    }
}

/// Without a charset in the `Content-Type`, a UTF-8 `<meta>` in the first 1024 bytes makes
/// the page UTF-8 (as browsers decide); one further in does not.
#[test]
fn a_utf8_meta_in_the_prescan_window_makes_the_page_utf8() {
    let (from, to) = MULTIBYTE_ITEMS;
    for meta in [
        "<meta charset=\"utf-8\">",
        "<meta charset=UTF8>",
        "<meta http-equiv=\"content-type\" content=\"text/html; charset=utf-8\">",
    ] {
        let page = replace_once(MULTIBYTE_PAGE, b"<meta charset=\"utf-8\">", meta.as_bytes());
        let expected = replace_once(&page, from, to.as_bytes());
        let m = multibyte_model();
        let (out, _) = rewrite_all(inputs_in(Some(m), Charset::Unknown), &page, 2);
        assert_eq!(out, expected, "{meta}");
    }
    let late = replace_once(
        MULTIBYTE_PAGE,
        b"<meta charset=\"utf-8\">",
        format!("<!--{}--><meta charset=\"utf-8\">", "x".repeat(1100)).as_bytes(),
    );
    let expected = replace_once(&late, from, MULTIBYTE_ITEMS_AS_REFERENCES.as_bytes());
    let (out, _) = rewrite_all(
        inputs_in(Some(multibyte_model()), Charset::Unknown),
        &late,
        1 << 20,
    );
    assert_eq!(out, expected);
}

/// The case of issue 17: a Latin-1 page (its own "£" is the byte 0xA3) gets a catalog price
/// of "£2.55". Inserted as UTF-8 it would read "Â£2.55".
#[test]
fn a_latin1_page_gets_a_price_it_can_show() {
    let page: &[u8] = b"<html><head><meta charset=\"iso-8859-1\"></head><body><p>Ours: \xA31.00</p>\
<ul data-attune-slot=\"r\" data-attune-strategy=\"trending\" data-attune-count=\"1\">\
<li data-attune-item><b data-attune-field=\"price\">\xA39.99</b><i data-attune-field=\"title\">x</i></li></ul></body></html>";
    let m = model(vec![CatalogItem {
        price: "\u{a3}2.55".into(),
        ..item("L1", "Cr\u{e8}me br\u{fb}l\u{e9}e", "Desserts")
    }]);
    let (out, report) = rewrite_all(inputs_in(Some(m), Charset::Unknown), page, 7);
    assert!(report.error.is_none());
    let expected: &[u8] = b"<html><head><meta charset=\"iso-8859-1\"></head><body><p>Ours: \xA31.00</p>\
<ul data-attune-slot=\"r\" data-attune-strategy=\"trending\" data-attune-count=\"1\">\
<li data-attune-item=\"L1\"><b data-attune-field=\"price\">&#163;2.55</b><i data-attune-field=\"title\">Cr&#232;me br&#251;l&#233;e</i></li></ul></body></html>";
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(expected)
    );
    assert_eq!(out, expected);
}

/// Control characters and bidi overrides in catalog text reach neither text nor attributes.
#[test]
fn control_and_bidi_characters_in_catalog_text_are_removed() {
    let evil = CatalogItem {
        title: "Mug\u{0}\r\u{1b}[2J \u{202E}gpj.exe\u{202C} \u{2067}x\u{2069}\tok".into(),
        price: "\u{85}\u{a3}1".into(),
        ..item("E1", "", "Mugs")
    };
    let m = model(vec![evil]);
    for charset in [Charset::Utf8, Charset::Unknown] {
        let (out, _) = rewrite_all(inputs_in(Some(m.clone()), charset), PAGE.as_bytes(), 5);
        let out = s(&out);
        for bad in [
            '\u{0}', '\r', '\u{1b}', '\u{85}', '\u{202E}', '\u{202C}', '\u{2067}', '\u{2069}',
        ] {
            assert!(!out.contains(bad), "{charset:?}: {bad:?} in {out}");
        }
        assert!(out.contains("alt=\"Mug[2J gpj.exe x\tok\""), "{out}");
        assert!(
            out.contains("<span data-attune-field=\"title\">Mug[2J gpj.exe x\tok</span>"),
            "{out}"
        );
        let price = match charset {
            Charset::Utf8 => "\u{a3}1",
            Charset::Unknown => "&#163;1",
        };
        assert!(
            out.contains(&format!("<span data-attune-field=\"price\">{price}</span>")),
            "{out}"
        );
    }
}

/// Slots are ranked in page order and a later slot never repeats an earlier slot's picks; its
/// report carries the exclusion it was ranked with.
#[test]
fn a_page_never_shows_an_item_twice() {
    let m = model(vec![
        item("A1", "Alpha mug", "Mugs"),
        item("B2", "Beta bag", "Bags"),
        item("C3", "Gamma mug", "Mugs"),
        item("D4", "Delta bag", "Bags"),
        item("E5", "Epsilon mug", "Mugs"),
        item("F6", "Zeta bag", "Bags"),
    ]);
    let slot = |name: &str, strategy: &str| {
        format!(
            r#"<section data-attune-slot="{name}" data-attune-strategy="{strategy}" data-attune-count="2"><article data-attune-item><span data-attune-field="title">x</span></article><article data-attune-item><span data-attune-field="title">y</span></article></section>"#
        )
    };
    let page = format!(
        "<html><body>{}{}{}</body></html>",
        slot("first", "for-you"),
        slot("second", "trending"),
        slot("third", "trending")
    );
    let (_, report) = rewrite_all(inputs(Some(m)), page.as_bytes(), 64);
    let mut shown: Vec<String> = Vec::new();
    for r in &report.slots {
        let SlotKind::Recs {
            picks, excluded, ..
        } = &r.kind
        else {
            panic!("{r:?}");
        };
        assert_eq!(
            excluded, &shown,
            "slot {} ranked without the earlier picks",
            r.slot
        );
        assert_eq!(picks.len(), 2, "slot {}", r.slot);
        for p in picks {
            assert!(!shown.contains(&p.item), "{} shown twice", p.item);
            shown.push(p.item.clone());
        }
    }
    assert_eq!(shown.len(), 6);
}

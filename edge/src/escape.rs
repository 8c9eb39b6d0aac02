//! Output hygiene for values that come from KV and land in the page: URLs must be relative or
//! http(s), attribute names must be plain, catalog text loses control and bidi override
//! characters, text and attribute values have `&`, `<` and `>` escaped (lol_html escapes the
//! double quotes of attribute values), and in a page whose charset is not known to be UTF-8
//! every non-ASCII character is written as a numeric character reference, which reads the same
//! in any ASCII-compatible charset.

use std::borrow::Cow;

/// How inserted text is encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Charset {
    /// The page is UTF-8: characters are written as they are.
    Utf8,
    /// Not known to be UTF-8: non-ASCII is written as `&#N;`.
    #[default]
    Unknown,
}

impl Charset {
    /// From a `Content-Type` header: UTF-8 only when its `charset` parameter says so.
    pub fn of_content_type(content_type: Option<&str>) -> Self {
        let utf8 = content_type.is_some_and(|ct| {
            ct.split(';').skip(1).any(|p| {
                let Some((k, v)) = p.split_once('=') else {
                    return false;
                };
                k.trim().eq_ignore_ascii_case("charset") && is_utf8_label(v)
            })
        });
        if utf8 {
            Charset::Utf8
        } else {
            Charset::Unknown
        }
    }
}

/// `utf-8` or `utf8`, quoted or not, any case (the WHATWG labels of UTF-8 that pages use;
/// `unicode-1-1-utf-8` and friends are left to the safe side).
pub fn is_utf8_label(label: &str) -> bool {
    let l = label.trim().trim_matches(['"', '\'']).trim();
    l.eq_ignore_ascii_case("utf-8") || l.eq_ignore_ascii_case("utf8")
}

/// Characters catalog text must not carry into a page: C0 controls other than tab and
/// newline (NUL, CR, escape...), DEL and C1 controls, and the bidi embedding, override and
/// isolate characters that can make a title display as something else (U+202A–U+202E,
/// U+2066–U+2069).
fn unwanted(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` without [`unwanted`] characters.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unwanted) {
        return text.into();
    }
    text.chars()
        .filter(|&c| !unwanted(c))
        .collect::<String>()
        .into()
}

/// Catalog text as HTML for an element's content: cleaned, `&`, `<` and `>` escaped, and
/// non-ASCII as character references unless the page is UTF-8.
pub fn text_html(text: &str, charset: Charset) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    push_escaped(&mut out, &clean(text), charset);
    out
}

fn push_escaped(out: &mut String, text: &str, charset: Charset) {
    use std::fmt::Write;
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if !c.is_ascii() && charset == Charset::Unknown => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// `url` if it is safe to put in `href`/`src`: relative, or absolute with an `http`/`https`
/// scheme. Control characters, whitespace and backslashes are refused outright, because
/// browsers strip or reinterpret them (`java\tscript:`, `\\evil.example`).
pub fn safe_url(url: &str) -> Option<&str> {
    if url.is_empty()
        || url.len() > 2048
        || url
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\')
    {
        return None;
    }
    // A scheme is whatever precedes the first ':' when no '/', '?' or '#' comes before it.
    let scheme_end = url.find([':', '/', '?', '#']);
    match scheme_end {
        Some(i) if url.as_bytes()[i] == b':' => {
            let scheme = &url[..i];
            (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                .then_some(url)
        }
        _ => Some(url),
    }
}

/// Attribute names the edge may set from `data-attune-attr`: plain names, never event
/// handlers (`on*`), inline styles or document sources.
pub fn allowed_attr(name: &str) -> bool {
    let plain = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let lower = name.to_ascii_lowercase();
    plain && !lower.starts_with("on") && !matches!(lower.as_str(), "style" | "srcdoc" | "srcset")
}

/// Attributes whose value is a URL: their value must pass [`safe_url`] whatever field fills it.
pub fn is_url_attr(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "href" | "src" | "action" | "formaction" | "poster" | "data" | "cite" | "background"
    )
}

/// An attribute value: cleaned, `&` (and `<`, `>` for good measure) escaped, non-ASCII as
/// character references unless the page is UTF-8; lol_html escapes `"`.
pub fn attr_value(value: &str, charset: Charset) -> Cow<'_, str> {
    let plain = |c: char| {
        !matches!(c, '&' | '<' | '>') && !unwanted(c) && (c.is_ascii() || charset == Charset::Utf8)
    };
    if value.chars().all(plain) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 8);
    push_escaped(&mut out, &clean(value), charset);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "/p/85123A.html",
            "p/x.html",
            "?q=1",
            "#top",
            "https://shop.example/x",
            "HTTP://x",
            "//cdn.example/img.png",
            "/a:b",
        ] {
            assert_eq!(safe_url(ok), Some(ok), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "java\tscript:alert(1)",
            " javascript:alert(1)",
            "data:text/html,<script>",
            "vbscript:x",
            "\\\\evil.example",
            "",
            "mailto:x@y",
        ] {
            assert_eq!(safe_url(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn attrs() {
        assert!(allowed_attr("href") && allowed_attr("data-id") && allowed_attr("alt"));
        for bad in ["onclick", "OnLoad", "style", "srcdoc", "a b", "x\"y", ""] {
            assert!(!allowed_attr(bad), "{bad}");
        }
        assert_eq!(
            attr_value("a & b <c>", Charset::Utf8),
            "a &amp; b &lt;c&gt;"
        );
        assert!(matches!(
            attr_value("plain", Charset::Unknown),
            Cow::Borrowed("plain")
        ));
        assert!(matches!(
            attr_value("Caf\u{e9}", Charset::Utf8),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            attr_value("Caf\u{e9} \u{1F600}", Charset::Unknown),
            "Caf&#233; &#128512;"
        );
    }

    #[test]
    fn charsets() {
        for utf8 in [
            "text/html; charset=utf-8",
            "text/html;charset=UTF-8",
            "text/html; charset=\"utf8\"",
            "text/html; q=1; charset = utf-8 ",
        ] {
            assert_eq!(
                Charset::of_content_type(Some(utf8)),
                Charset::Utf8,
                "{utf8}"
            );
        }
        for unknown in [
            "text/html",
            "text/html; charset=iso-8859-1",
            "text/html; charset=windows-1252",
            "text/html; utf-8",
            "text/html; x-charset=utf-8",
        ] {
            assert_eq!(
                Charset::of_content_type(Some(unknown)),
                Charset::Unknown,
                "{unknown}"
            );
        }
        assert_eq!(Charset::of_content_type(None), Charset::Unknown);
    }

    #[test]
    fn text_in_any_charset() {
        // "£2.55" in a page of unknown charset reads the same in Latin-1, windows-1252 or UTF-8.
        assert_eq!(
            text_html("\u{a3}2.55 & <b>", Charset::Unknown),
            "&#163;2.55 &amp; &lt;b&gt;"
        );
        assert_eq!(
            text_html("\u{a3}2.55 & <b>", Charset::Utf8),
            "\u{a3}2.55 &amp; &lt;b&gt;"
        );
        assert_eq!(text_html("\u{1F375}", Charset::Unknown), "&#127861;");
        assert!(text_html("\u{e9}\u{2713}\u{1F375}", Charset::Unknown).is_ascii());
    }

    #[test]
    fn controls_and_bidi_overrides_are_removed() {
        let evil = "a\u{0}b\rc\u{1b}[31md\u{7f}e\u{85}f\u{202E}gnp.exe\u{202C}\u{2066}h\u{2069}\tkeep\nnewline";
        let want = "abc[31mdefgnp.exeh\tkeep\nnewline";
        assert_eq!(clean(evil), want);
        assert_eq!(text_html(evil, Charset::Utf8), want);
        assert_eq!(attr_value(evil, Charset::Utf8), want);
        assert_eq!(attr_value(evil, Charset::Unknown), want);
        for bidi in '\u{202A}'..='\u{202E}' {
            assert_eq!(clean(&format!("x{bidi}y")), "xy");
        }
        for bidi in '\u{2066}'..='\u{2069}' {
            assert_eq!(clean(&format!("x{bidi}y")), "xy");
        }
        // Marks that only nudge direction are not overrides: kept.
        assert_eq!(clean("a\u{200F}b"), "a\u{200F}b");
    }
}

//! Output hygiene for values that come from KV and land in the page: URLs must be relative or
//! http(s), attribute names must be plain, attribute values have `&` escaped (lol_html escapes
//! the double quotes). Text content is escaped by lol_html (`ContentType::Text`).

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

/// Escapes `&` (and `<`, `>` for good measure) for an attribute value; lol_html escapes `"`.
pub fn attr_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['&', '<', '>']) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
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
        assert_eq!(attr_value("a & b <c>"), "a &amp; b &lt;c&gt;");
        assert_eq!(attr_value("plain"), "plain");
    }
}

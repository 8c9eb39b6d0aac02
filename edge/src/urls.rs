//! The few URL operations the Worker needs, on the request URL string the runtime hands over.
//!
//! That string is already a parsed and serialized WHATWG URL (`scheme://authority/path?query`),
//! so splitting it is exact; and URLs built here go through the runtime's own parser again
//! (`new Request(url)`). This keeps the `url` crate (with `idna` and its Unicode tables, some
//! 50 KB of wasm) out of the Worker.

/// The parts of an absolute, serialized URL: everything before the path (`https://host:port`),
/// the path (at least `/`) and the query without its `?` (`None` when there is no `?`).
/// A fragment, which request URLs never carry, is dropped.
pub fn split(url: &str) -> (&str, &str, Option<&str>) {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    let path_start = url
        .find("://")
        .map(|i| i + 3)
        .and_then(|auth| url[auth..].find(['/', '?']).map(|i| auth + i))
        .unwrap_or(url.len());
    let (origin, rest) = url.split_at(path_start);
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    (origin, if path.is_empty() { "/" } else { path }, query)
}

/// `origin` + `path` (+ `?query`), with `#` percent-encoded so that all of `path` and `query`
/// stay path and query when the runtime parses the result (as `url::Url::set_path` and
/// `set_query` would encode it; the runtime encodes everything else the same way).
pub fn join(origin: &str, path: &str, query: Option<&str>) -> String {
    let mut out = String::with_capacity(origin.len() + path.len() + query.map_or(0, str::len) + 2);
    out.push_str(origin);
    if !path.starts_with('/') {
        out.push('/');
    }
    out.push_str(&path.replace('#', "%23"));
    if let Some(query) = query {
        out.push('?');
        out.push_str(&query.replace('#', "%23"));
    }
    out
}

/// The first value of `name` in an `application/x-www-form-urlencoded` query (`+` is a space,
/// `%XX` escapes are decoded, invalid UTF-8 becomes U+FFFD), like `url::Url::query_pairs`.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(key) == name).then(|| form_decode(value))
        })
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = match bytes[i] {
            b'+' => b' ',
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    i += 2;
                    hi << 4 | lo
                }
                _ => b'%',
            },
            b => b,
        };
        out.push(byte);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: Option<&u8>) -> Option<u8> {
    (*b? as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_serialized_urls() {
        assert_eq!(
            split("https://shop.example:8443/p/a.html?x=1&y=2"),
            ("https://shop.example:8443", "/p/a.html", Some("x=1&y=2"))
        );
        assert_eq!(split("http://h/"), ("http://h", "/", None));
        assert_eq!(split("http://h"), ("http://h", "/", None));
        assert_eq!(split("http://h?q"), ("http://h", "/", Some("q")));
        assert_eq!(split("http://h/d/?"), ("http://h", "/d/", Some("")));
        assert_eq!(split("http://h/a?b#c?d"), ("http://h", "/a", Some("b")));
    }

    #[test]
    fn joins_with_hash_escaped() {
        assert_eq!(join("http://h", "/a b", None), "http://h/a b");
        assert_eq!(
            join("http://h", "/a#b", Some("c#d")),
            "http://h/a%23b?c%23d"
        );
        assert_eq!(join("http://h", "x", Some("")), "http://h/x?");
    }

    #[test]
    fn decodes_query_params_like_form_urlencoded() {
        let q =
            Some("a=1&&path=%2Fp%2Fx.html%3Fv%3D2&path=second&sp=a+b%20c&bad=%zz%4&u=%C3%A9%FF");
        assert_eq!(query_param(q, "a").as_deref(), Some("1"));
        assert_eq!(query_param(q, "path").as_deref(), Some("/p/x.html?v=2"));
        assert_eq!(query_param(q, "sp").as_deref(), Some("a b c"));
        assert_eq!(query_param(q, "bad").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(q, "u").as_deref(), Some("é\u{FFFD}"));
        assert_eq!(query_param(Some("flag"), "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param(None, "a"), None);
    }
}

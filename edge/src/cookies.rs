//! Cookie parsing and `Set-Cookie` building.

pub const VISITOR: &str = "attune_vid";
pub const SESSION: &str = "attune_s";
pub const CONSENT: &str = "attune_consent";
pub const DEMO_USER: &str = "attune_demo_user";

/// Every cookie Attune sets: the site never sees them.
pub const ATTUNE_COOKIES: &[&str] = &[VISITOR, SESSION, CONSENT, DEMO_USER];

const YEAR_S: u64 = 365 * 24 * 3600;

/// The `Cookie` header the upstream gets: the site's own cookies, without Attune's
/// ([`ATTUNE_COOKIES`]); `None` when nothing is left.
pub fn site_cookies(header: Option<&str>) -> Option<String> {
    let mut kept = String::new();
    for pair in header?.split(';').map(str::trim) {
        let name = pair.split_once('=').map_or(pair, |(k, _)| k).trim();
        if pair.is_empty() || ATTUNE_COOKIES.contains(&name) {
            continue;
        }
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    }
    (!kept.is_empty()).then_some(kept)
}

/// The value of cookie `name` in a `Cookie` header (the first one, unquoted).
pub fn get<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// `Set-Cookie` for a first-party, script-invisible cookie.
pub fn set(name: &str, value: &str, max_age_s: u64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; Secure; SameSite=Lax")
}

pub fn set_visitor(id: &str) -> String {
    set(VISITOR, id, YEAR_S)
}

/// The session cookie lives as long as a session can (the core ends it after the gap).
pub fn set_session(value: &str) -> String {
    set(SESSION, value, 24 * 3600)
}

pub fn clear(name: &str) -> String {
    format!("{name}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let h = Some("a=1; attune_vid=abc ; attune_s=\"1.x.y\"; junk; attune_vid=second");
        assert_eq!(get(h, "attune_vid"), Some("abc"));
        assert_eq!(get(h, "attune_s"), Some("1.x.y"));
        assert_eq!(get(h, "missing"), None);
        assert_eq!(get(None, "a"), None);
        assert!(set_visitor("x").contains("HttpOnly; Secure; SameSite=Lax"));
    }

    #[test]
    fn the_site_gets_only_its_own_cookies() {
        assert_eq!(site_cookies(None), None);
        assert_eq!(site_cookies(Some("")), None);
        assert_eq!(
            site_cookies(Some(
                "attune_vid=abc; attune_s=1.x.y; attune_consent=yes; attune_demo_user=17850"
            )),
            None
        );
        assert_eq!(
            site_cookies(Some(
                "sessionid=s3cr3t; attune_vid=abc;csrftoken=t ; attune_s=1.x.y"
            )),
            Some("sessionid=s3cr3t; csrftoken=t".into())
        );
        // Only Attune's exact names: a site cookie that merely looks alike stays.
        assert_eq!(
            site_cookies(Some("attune_vidx=1; my_attune_s=2; flag")),
            Some("attune_vidx=1; my_attune_s=2; flag".into())
        );
    }
}

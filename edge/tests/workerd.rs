//! The built Worker in the real `workerd`, through `wrangler dev` on a free port with a
//! temporary `--persist-to` directory. Builds nothing: run `cargo xtask build-edge` first (the
//! test prints why it skips when `edge/build/` is missing). Local KV is seeded through the
//! Worker's own dev bulk route, with snapshots encoded by `attune-core`.

#![cfg(unix)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attune_core::event::{Event, EventKind, SCHEMA_VERSION};
use attune_core::model::{
    CatalogItem, CatalogShard, Manifest, Neighbour, NeighbourShard, TrendEntry, Trending, keys,
    shard_of,
};
use attune_core::wire::{Envelope, encode, encode_profile};
use attune_core::{Config, Profile};
use attune_harness::{Service, WranglerDev, free_port};
use base64::Engine;

const PROFILE_KEY: &str = "test-profile-key";
const DEV_TOKEN: &str = "test-dev-token";
const DEBUG_TOKEN: &str = "test-debug-token";
const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0";
const SHARDS: u32 = 4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `wrangler dev` (and the workerd it runs), killed with its process group on drop.
struct Wrangler {
    base: String,
    _service: Service,
    _dir: tempfile::TempDir,
}

fn start() -> Option<Wrangler> {
    let root = root();
    let built = root.join("edge/build/index.js");
    let wrangler = root.join("node_modules/.bin/wrangler");
    if !built.is_file() || !wrangler.is_file() {
        println!(
            "SKIPPED: {} or {} missing (run `cargo xtask bootstrap && cargo xtask build-edge`)",
            built.display(),
            wrangler.display()
        );
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Our own config: the repository's runs `cargo xtask build-edge` as its build command,
    // which would contend for the target directory this test runs from.
    let config = dir.path().join("wrangler.toml");
    let mut f = std::fs::File::create(&config).expect("config");
    write!(
        f,
        r#"name = "attune-test"
main = "{main}"
compatibility_date = "2026-04-01"
[[kv_namespaces]]
binding = "ATTUNE_KV"
id = "00000000000000000000000000000000"
[assets]
directory = "{assets}"
binding = "ASSETS"
run_worker_first = true
html_handling = "none"
not_found_handling = "404-page"
[vars]
ATTUNE_UPSTREAM = ""
ATTUNE_ORIGIN_INGEST_URL = ""
ATTUNE_BUDGET_MS = "2000"
ATTUNE_DEMO_LOGIN = "1"
"#,
        main = built.display(),
        assets = root.join("examples/shop/public").display()
    )
    .expect("write config");
    let port = free_port().expect("a free port");
    let dev = WranglerDev::new(port, dir.path().join("state"))
        .config(&config)
        // Not workerd's default 9229, which another wrangler dev may hold.
        .inspector_port(free_port().expect("a free port"))
        .var("ATTUNE_SESSION_KEY", "test-session-key")
        .var("ATTUNE_PROFILE_KEY", PROFILE_KEY)
        .var("ATTUNE_DEBUG_TOKEN", DEBUG_TOKEN)
        .var("ATTUNE_DEV_KV_TOKEN", DEV_TOKEN);
    let mut cmd = dev.command(&wrangler);
    cmd.current_dir(dir.path());
    let mut service = Service::spawn("wrangler dev", cmd).expect("spawn wrangler dev");
    if let Err(e) = service.wait_http(port, "/__attune/beacon.js", Duration::from_secs(90)) {
        panic!("wrangler dev did not come up on {}: {e}", dev.url());
    }
    Some(Wrangler {
        base: dev.url(),
        _service: service,
        _dir: dir,
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn convert(r: ureq::http::Response<ureq::Body>) -> Resp {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = r
        .into_body()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent().get(format!("{base}{path}"));
    let mut has_ua = false;
    for (k, v) in headers {
        has_ua |= k.eq_ignore_ascii_case("user-agent");
        req = req.header(*k, *v);
    }
    if !has_ua {
        req = req.header("user-agent", BROWSER);
    }
    convert(req.call().expect("GET"))
}

fn send(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let url = format!("{base}{path}");
    let a = agent();
    let mut req = match method {
        "PUT" => a.put(url),
        _ => a.post(url),
    };
    req = req.header("user-agent", BROWSER);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    convert(req.send(body).expect("send"))
}

fn item(id: &str, title: &str, category: &str) -> CatalogItem {
    CatalogItem {
        id: id.into(),
        title: title.into(),
        url: format!("/p/{id}.html"),
        image: "/img/hearts-love.svg".into(),
        price: "£1.25".into(),
        category: category.into(),
    }
}

fn profile_of_buyer(now: u64) -> Profile {
    let mut p = Profile::default();
    let cfg = attune_core::ProfileConfig::default();
    for (i, (kind, it)) in [
        (EventKind::View, "22086"),
        (EventKind::Purchase, "22086"),
        (EventKind::View, "21034"),
    ]
    .into_iter()
    .enumerate()
    {
        p.apply(
            &Event {
                v: SCHEMA_VERSION,
                event_id: format!("seed{i}").into(),
                user: "17850".into(),
                ts: now - 60_000 + i as u64 * 1000,
                kind,
                item: Some(it.into()),
                props: Default::default(),
            },
            Some("Christmas"),
            &cfg,
        );
    }
    p.version = 5;
    p
}

fn pair(key: &str, value: &[u8], version: u64) -> serde_json::Value {
    serde_json::json!({
        "key": key,
        "value": base64::engine::general_purpose::STANDARD.encode(value),
        "base64": true,
        "metadata": {"v": version},
    })
}

fn seed(base: &str, pairs: Vec<serde_json::Value>) {
    let body = serde_json::to_vec(&pairs).unwrap();
    let r = send(
        base,
        "PUT",
        "/__attune/kv/bulk",
        &[
            ("authorization", &format!("Bearer {DEV_TOKEN}")),
            ("content-type", "application/json"),
        ],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["success"], true);
    assert_eq!(v["result"]["successful_key_count"], pairs.len());
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn model_pairs() -> Vec<serde_json::Value> {
    let items = [
        item(
            "85123A",
            "WHITE HANGING HEART T-LIGHT HOLDER",
            "Hearts & Love",
        ),
        item("22086", "PAPER CHAIN KIT 50'S CHRISTMAS", "Christmas"),
        item("22910", "PAPER CHAIN KIT VINTAGE CHRISTMAS", "Christmas"),
        item("21034", "REX CASH+CARRY JUMBO SHOPPER", "Bags & Storage"),
        item("47566", "PARTY BUNTING", "Signs & Decor"),
        item(
            "ZZ1",
            "Tom & Jerry's <script>alert(1)</script>",
            "Signs & Decor",
        ),
        CatalogItem {
            url: "javascript:alert(1)".into(),
            ..item("ZZ2", "EVIL LINK", "Signs & Decor")
        },
    ];
    let mut pairs = Vec::new();
    let mut versions = Vec::new();
    for s in 0..SHARDS {
        let shard = CatalogShard::from_items(
            items
                .iter()
                .filter(|c| shard_of(&c.id, SHARDS) == s)
                .cloned()
                .collect(),
        );
        pairs.push(pair(
            &keys::catalog(s),
            &encode(&Envelope::new(1, 0, shard)),
            1,
        ));
        versions.push((keys::catalog(s), 1));
        let lists: Vec<(String, Vec<Neighbour>)> = [("22086", "22910"), ("22910", "22086")]
            .into_iter()
            .filter(|(a, _)| shard_of(a, SHARDS) == s)
            .map(|(a, b)| {
                (
                    a.to_owned(),
                    vec![Neighbour {
                        item: b.into(),
                        sim: 0.9,
                    }],
                )
            })
            .collect();
        let n = NeighbourShard::from_lists(lists);
        pairs.push(pair(
            &keys::neighbours(s),
            &encode(&Envelope::new(1, 0, n)),
            1,
        ));
        versions.push((keys::neighbours(s), 1));
    }
    let trending = Trending {
        items: ["ZZ1", "ZZ2", "47566", "85123A", "21034"]
            .iter()
            .enumerate()
            .map(|(i, id)| TrendEntry {
                item: (*id).into(),
                score: 50.0 - i as f32,
            })
            .collect(),
        by_category: Vec::new(),
    };
    pairs.push(pair(
        keys::TRENDING,
        &encode(&Envelope::new(1, 0, trending)),
        1,
    ));
    versions.push((keys::TRENDING.into(), 1));
    pairs.push(pair(
        keys::CONFIG,
        &encode(&Envelope::new(1, 0, Config::default())),
        1,
    ));
    versions.push((keys::CONFIG.into(), 1));
    versions.sort();
    let m = Manifest {
        shards: SHARDS,
        versions,
    };
    // The manifest goes last, as the publisher does.
    pairs.push(pair(keys::MANIFEST, &encode(&Envelope::new(1, 0, m)), 1));
    pairs
}

fn pkey(user: &str) -> String {
    attune_core::hash::profile_key(PROFILE_KEY.as_bytes(), user)
}

fn file(rel: &str) -> Vec<u8> {
    std::fs::read(root().join("examples/shop/public").join(rel)).expect("shop file")
}

#[test]
fn the_worker_in_workerd() {
    let Some(w) = start() else {
        return;
    };
    let b = w.base.as_str();

    // Before any data: default content, and the header says why.
    let r = get(b, "/index.html", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-attune"), Some("default;reason=no-data"));
    assert!(r.text().contains("HAND WARMER RED RETROSPOT"));

    // Dev route auth.
    let r = send(
        b,
        "PUT",
        "/__attune/kv/bulk",
        &[("authorization", "Bearer nope")],
        b"[]",
    );
    assert_eq!(r.status, 401);
    let r = send(b, "PUT", "/__attune/kv/bulk", &[], b"[]");
    assert_eq!(r.status, 401);

    let now = now_ms();
    let mut pairs = model_pairs();
    pairs.push(pair(
        &pkey("17850"),
        &encode_profile(
            &Envelope::new(5, now, profile_of_buyer(now)),
            attune_core::wire::PROFILE_CAP_BYTES,
        ),
        5,
    ));
    pairs.push(pair(&pkey("corrupt"), b"\xc1\xc1 not msgpack", 1));
    let mut future = Envelope::new(1, now, Profile::default());
    future.schema = 2 << 8;
    pairs.push(pair(&pkey("future"), &encode(&future), 1));
    seed(b, pairs);

    // Personalized slots for the seeded buyer (demo login cookie = logged-in user).
    let user = [
        ("cookie", "attune_demo_user=17850"),
        ("x-attune-debug", DEBUG_TOKEN),
    ];
    let r = get(b, "/index.html", &user);
    let html = r.text();
    assert_eq!(
        r.header("x-attune"),
        Some("personalized"),
        "{:?}",
        r.headers
    );
    assert!(r.header("cache-control").unwrap_or("").contains("private"));
    assert!(
        r.header("server-timing")
            .unwrap_or("")
            .contains("attune;dur=")
    );
    assert!(html.contains("Welcome back"), "returning-buyer hero");
    assert!(!html.contains("Welcome to the Attune Gift Shop"));
    assert!(
        html.contains(r#"data-attune-item="22910""#),
        "neighbour of a purchase"
    );
    assert!(
        !html.contains(r#"data-attune-item="22086""#),
        "purchased items are excluded"
    );
    assert!(html.contains("Tom &amp; Jerry's &lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<script>alert(1)"));
    assert!(!html.contains("javascript:"));
    let debug: serde_json::Value =
        serde_json::from_str(r.header("x-attune-debug").expect("debug header")).unwrap();
    assert_eq!(debug["identity"], "user");
    assert_eq!(debug["profile"]["version"], 5);
    assert!(
        debug["segments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "buyer")
    );
    // The same explanation from the debug route; without the token, 401.
    let r = get(b, "/__attune/debug?path=/index.html", &user);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("profile-neighbour") || r.text().contains("trending"));
    assert_eq!(get(b, "/__attune/debug?path=/", &[]).status, 401);

    // Fallbacks on bad profile snapshots.
    for (who, reason) in [("corrupt", "bad-snapshot"), ("future", "unknown-schema")] {
        let cookie = format!("attune_demo_user={who}");
        let r = get(b, "/index.html", &[("cookie", &cookie)]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-attune"),
            Some(format!("default;reason={reason}").as_str())
        );
        assert!(
            r.text().contains("HAND WARMER RED RETROSPOT"),
            "author defaults"
        );
    }

    // A product page joins the session; a tampered session cookie means a fresh session.
    let r = get(b, "/p/85123A.html", &[]);
    assert_eq!(r.header("x-attune"), Some("personalized"));
    let session = r
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("attune_s="))
        .expect("session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let r = get(
        b,
        "/index.html",
        &[("cookie", &session), ("x-attune-debug", DEBUG_TOKEN)],
    );
    let debug: serde_json::Value =
        serde_json::from_str(r.header("x-attune-debug").unwrap()).unwrap();
    assert_eq!(debug["session_items"][0], "85123A");
    let tampered = format!("{session}x");
    let r = get(
        b,
        "/index.html",
        &[("cookie", &tampered), ("x-attune-debug", DEBUG_TOKEN)],
    );
    assert_eq!(r.status, 200);
    let debug: serde_json::Value =
        serde_json::from_str(r.header("x-attune-debug").unwrap()).unwrap();
    assert_eq!(debug["session_items"].as_array().map(Vec::len), Some(0));
    assert!(r.cookies().iter().any(|c| c.starts_with("attune_s=1.")));

    // Pass-through, byte-identical.
    let css = get(b, "/style.css", &[]);
    assert_eq!(css.header("x-attune"), Some("bypass;reason=not-html"));
    assert_eq!(css.body, file("style.css"));
    let missing = get(b, "/no/such/page.html", &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-attune"), Some("bypass;reason=status"));
    assert_eq!(missing.body, file("404.html"));
    let bot = get(
        b,
        "/index.html",
        &[("user-agent", "Mozilla/5.0 (compatible; Googlebot/2.1)")],
    );
    assert_eq!(bot.header("x-attune"), Some("bypass;reason=bot"));
    assert_eq!(bot.body, file("index.html"));
    assert!(bot.cookies().is_empty(), "no cookies for bots");
    let range = get(b, "/index.html", &[("range", "bytes=0-99")]);
    assert_eq!(range.header("x-attune"), Some("bypass;reason=range"));
    assert_eq!(range.body, file("index.html")[..range.body.len()]);
    let head = convert(
        agent()
            .head(format!("{b}/index.html"))
            .header("user-agent", BROWSER)
            .call()
            .unwrap(),
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-attune"), Some("bypass;reason=method"));
    // GPC: default content (the page as the author wrote it), no cookies, no lookups.
    let gpc = get(
        b,
        "/index.html",
        &[("sec-gpc", "1"), ("cookie", "attune_demo_user=17850")],
    );
    assert_eq!(gpc.header("x-attune"), Some("bypass;reason=consent"));
    assert_eq!(gpc.body, file("index.html"));
    assert!(gpc.cookies().is_empty());

    // Beacon.
    let js = get(b, "/__attune/beacon.js", &[]);
    assert_eq!(js.status, 200);
    assert!(js.body.len() < 2048);
    let ev = |body: &[u8]| {
        send(
            b,
            "POST",
            "/__attune/events",
            &[("content-type", "application/json")],
            body,
        )
    };
    assert_eq!(ev(b"{not json").status, 400);
    assert_eq!(ev(br#"[{"kind":"hover","item":"x"}]"#).status, 400);
    assert_eq!(ev(&vec![b' '; 70 * 1024]).status, 400);
    let ok = ev(br#"[{"kind":"view","item":"85123A"},{"kind":"click","item":"22086"}]"#);
    assert_eq!(ok.status, 202, "{}", ok.text());
    assert!(ok.text().contains(r#""accepted":2"#));

    // Missing manifest: default content everywhere.
    let r = send(
        b,
        "POST",
        "/__attune/kv/bulk/delete",
        &[("authorization", &format!("Bearer {DEV_TOKEN}"))],
        br#"["m"]"#,
    );
    assert_eq!(r.status, 200);
    let r = get(b, "/index.html", &[("cookie", "attune_demo_user=17850")]);
    assert_eq!(r.header("x-attune"), Some("default;reason=no-data"));
    assert!(r.text().contains("HAND WARMER RED RETROSPOT"));
}

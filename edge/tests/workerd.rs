//! The built Worker in the real `workerd`, through `wrangler dev` on a free port with a
//! temporary `--persist-to` directory. Builds nothing: run `cargo xtask build-edge` first (the
//! test prints why it skips when `edge/build/` is missing). Local KV is seeded through the
//! Worker's own dev bulk route, with snapshots encoded by `attune-core`.

#![cfg(unix)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    start_with("", &[])
}

/// `wrangler dev` with `ATTUNE_UPSTREAM = upstream` (empty: the shop's assets) and more vars.
fn start_with(upstream: &str, vars: &[(&str, &str)]) -> Option<Wrangler> {
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
ATTUNE_UPSTREAM = "{upstream}"
ATTUNE_ORIGIN_INGEST_URL = ""
ATTUNE_BUDGET_MS = "2000"
ATTUNE_DEMO_LOGIN = "1"
"#,
        main = built.display(),
        assets = root.join("examples/shop/public").display()
    )
    .expect("write config");
    for (name, value) in vars {
        writeln!(f, "{name} = \"{value}\"").expect("write config");
    }
    drop(f);
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
    let refused = get(b, "/__attune/debug?path=/", &[]);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    // A page Attune leaves alone is explained as JSON too, never served as the page.
    let r = get(b, "/__attune/debug?path=/style.css", &user);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let debug: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(debug["outcome"], "bypass;reason=not-html");
    let r = get(b, "/__attune/debug?path=//evil.example/", &user);
    assert_eq!(r.status, 400);
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_ok());

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

/// An upstream of our own on 127.0.0.1: pages that say who is signed in (the `sessionid`
/// cookie or the `Authorization` header), with the cache headers a path asks for, and a count
/// of the requests it served. Every request's `Cookie` and `x-attune-debug` header is kept.
struct Site {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<SiteRequest>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Debug)]
struct SiteRequest {
    path: String,
    cookie: Option<String>,
    debug_token: bool,
}

impl Site {
    fn start() -> Site {
        use std::io::{BufRead, BufReader};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the site");
        let port = listener.local_addr().expect("addr").port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<SiteRequest>::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                let cookie = header("cookie");
                let served = {
                    let mut seen = seen2.lock().expect("lock");
                    seen.push(SiteRequest {
                        path: path.clone(),
                        cookie: cookie.clone(),
                        debug_token: header("x-attune-debug").is_some(),
                    });
                    seen.iter().filter(|r| r.path == path).count()
                };
                let who = cookie
                    .as_deref()
                    .and_then(|c| {
                        c.split(';')
                            .filter_map(|p| p.trim().strip_prefix("sessionid="))
                            .next()
                            .map(str::to_owned)
                    })
                    .or_else(|| header("authorization"))
                    .unwrap_or_else(|| "nobody".into());
                let (extra, content_type, body) = site_page(&path, &who, served);
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                )
                .into_bytes();
                for h in extra {
                    out.extend_from_slice(h.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&body);
                let _ = conn.write_all(&out);
            }
        });
        Site {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn served(&self, path: &str) -> usize {
        let seen = self.seen.lock().expect("lock");
        seen.iter().filter(|r| r.path == path).count()
    }

    fn requests(&self) -> Vec<SiteRequest> {
        self.seen.lock().expect("lock").clone()
    }

    /// Stops listening: the next request finds nobody there.
    fn shut_down(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// `(extra headers, content type, body)` of a site page: the path's first segment names its
/// cache headers.
fn site_page(path: &str, who: &str, served: usize) -> (Vec<&'static str>, &'static str, Vec<u8>) {
    let html = "text/html; charset=utf-8";
    let page =
        format!("<html><body><p>Signed in as {who}</p><p>request {served}</p></body></html>");
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "none" | "basic" => (vec![], html, page.into_bytes()),
        "no-cache" => (vec!["cache-control: no-cache"], html, page.into_bytes()),
        "vary-cookie" => (
            vec!["cache-control: max-age=60", "vary: Cookie"],
            html,
            page.into_bytes(),
        ),
        "private" => (vec!["cache-control: private, max-age=60"], html, page.into_bytes()),
        "public" => (vec!["cache-control: public, max-age=60"], html, page.into_bytes()),
        // A Latin-1 page that declares its charset only in a <meta>: its own "£" is 0xA3.
        "latin1" => (
            vec![],
            "text/html",
            b"<html><head><meta charset=\"iso-8859-1\"></head><body><p>Ours: \xA31.00</p>\
<ul data-attune-slot=\"r\" data-attune-strategy=\"trending\" data-attune-count=\"1\">\
<li data-attune-item><b data-attune-field=\"price\">\xA39.99</b></li></ul></body></html>"
                .to_vec(),
        ),
        // A slot whose name is not Latin-1, for the debug header.
        "slots" => (
            vec![],
            html,
            "<html><body><ul data-attune-slot=\"r\u{e9}cos \u{2713} \u{5e9}\u{5dc}\u{5d5}\u{5dd}\" data-attune-strategy=\"trending\" data-attune-count=\"1\"><li data-attune-item><b data-attune-field=\"title\">x</b></li></ul></body></html>"
                .as_bytes()
                .to_vec(),
        ),
        _ => (vec![], "text/plain", b"not found".to_vec()),
    }
}

/// The shared cache behind a real upstream (issue 17): a signed-in visitor's page never
/// reaches anyone else, with or without the operator's default TTL; Attune's cookies and its
/// debug token never reach the site; text in a Latin-1 page; an unreachable site is a `502`.
#[test]
fn a_real_upstream_and_the_shared_cache() {
    let mut site = Site::start();
    let Some(w) = start_with(&site.url(), &[("ATTUNE_HTML_TTL", "60")]) else {
        return;
    };
    let b = w.base.as_str();
    let vid = "0123456789abcdef0123456789abcdef";
    let alice = format!("sessionid=alice; attune_vid={vid}; attune_consent=yes");
    let alice_basic = "Basic YWxpY2U6c2VjcmV0";
    // A put into the cache runs after the response (waitUntil): give it time to land.
    let settle = || std::thread::sleep(Duration::from_millis(700));

    // The cache works here: a page the site says is public is served once, to anyone
    // without credentials.
    let first = get(b, "/public/a", &[]);
    assert!(first.text().contains("request 1"), "{}", first.text());
    settle();
    let second = get(b, "/public/a", &[("cookie", &format!("attune_vid={vid}"))]);
    assert!(
        second.text().contains("request 1"),
        "from the cache: {}",
        second.text()
    );
    assert_eq!(site.served("/public/a"), 1);
    // So does the operator's default TTL for an anonymous page without cache headers.
    assert!(
        get(b, "/none/anonymous", &[])
            .text()
            .contains("Signed in as nobody")
    );
    settle();
    assert!(get(b, "/none/anonymous", &[]).text().contains("request 1"));
    assert_eq!(site.served("/none/anonymous"), 1);

    // The four leak cases: Alice first, then Bob (signed in) and a visitor without
    // credentials. Neither ever sees Alice's page; every request reaches the site.
    for (path, credentials) in [
        ("/none/page", ("cookie", alice.as_str())),
        ("/no-cache/page", ("cookie", alice.as_str())),
        ("/vary-cookie/page", ("cookie", alice.as_str())),
        ("/private/page", ("cookie", alice.as_str())),
        ("/basic/page", ("authorization", alice_basic)),
    ] {
        let r = get(b, path, &[credentials]);
        assert_eq!(r.status, 200, "{path}");
        let text = r.text();
        assert!(
            text.contains("Signed in as alice") || text.contains(alice_basic),
            "{path}: {text}"
        );
        assert!(
            r.header("cache-control").unwrap_or("").contains("private"),
            "{path}"
        );
        settle();
        let bob = get(b, path, &[("cookie", "sessionid=bob")]).text();
        assert!(bob.contains("Signed in as bob"), "{path}: {bob}");
        let anonymous = get(b, path, &[]).text();
        assert!(
            anonymous.contains("Signed in as nobody"),
            "{path}: {anonymous}"
        );
        for seen in [&bob, &anonymous] {
            assert!(
                !seen.contains("alice") && !seen.contains(alice_basic),
                "{path}: {seen}"
            );
        }
        assert_eq!(
            site.served(path),
            3,
            "{path}: every request reached the site"
        );
    }

    // Nothing of Attune's went upstream.
    let requests = site.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(!r.debug_token, "{r:?}");
        if let Some(c) = &r.cookie {
            assert!(!c.contains("attune_"), "{r:?}");
        }
    }
    assert!(
        requests
            .iter()
            .any(|r| r.cookie.as_deref() == Some("sessionid=alice")),
        "the site's own cookie went through"
    );

    // A Latin-1 page: the inserted price is a character reference, the page's own bytes stay.
    seed(b, model_pairs());
    let r = get(b, "/latin1", &[]);
    assert_eq!(
        r.header("x-attune"),
        Some("personalized"),
        "{:?}",
        r.headers
    );
    assert!(
        r.body.windows(11).any(|w| w == b"Ours: \xA31.00"),
        "{:?}",
        r.text()
    );
    assert!(r.text().contains("&#163;1.25"), "{}", r.text());
    assert!(
        !r.body.windows(2).any(|w| w == "\u{a3}".as_bytes()),
        "no UTF-8 £ inserted"
    );

    // A slot name that is not Latin-1 reaches the debug header as visible ASCII.
    let r = get(b, "/slots", &[("x-attune-debug", DEBUG_TOKEN)]);
    let debug = r.header("x-attune-debug").expect("debug header");
    assert!(
        debug.bytes().all(|c| c == b' ' || c.is_ascii_graphic()),
        "{debug}"
    );
    let debug: serde_json::Value = serde_json::from_str(debug).unwrap();
    assert_eq!(
        debug["slots"][0]["slot"],
        "r\u{e9}cos \u{2713} \u{5e9}\u{5dc}\u{5d5}\u{5dd}"
    );

    // The site is gone: a 502 that says it is the upstream's, and the debug view says so too.
    site.shut_down();
    let r = get(b, "/none/gone", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-attune"), Some("bypass;reason=upstream"));
    let r = get(
        b,
        "/__attune/debug?path=/none/gone",
        &[("x-attune-debug", DEBUG_TOKEN)],
    );
    assert_eq!(r.status, 502);
    let debug: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(debug["outcome"], "bypass;reason=upstream");
}

/// A page the upstream sends in two parts, 1.5 s apart, and larger than a read of the rest of
/// the body: the first part reaches the visitor before the upstream sends the second, and the
/// whole page arrives byte for byte (default content: nothing to change in it).
#[test]
fn a_slow_page_streams_and_arrives_whole() {
    use std::io::{BufRead, BufReader, Read};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the site");
    let port = listener.local_addr().expect("addr").port();
    let head =
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>slow</title></head><body>\n";
    let mut tail = String::new();
    for i in 0..2000 {
        tail.push_str(&format!(
            "<p id=\"p{i}\">paragraph {i} of a long page</p>\n"
        ));
        if i == 1000 {
            tail.push_str("<ul data-attune-slot=\"r\" data-attune-strategy=\"trending\" data-attune-count=\"1\"><li data-attune-item><b data-attune-field=\"title\">kept</b></li></ul>\n");
        }
    }
    tail.push_str("</body></html>\n");
    let page = format!("{head}{tail}");
    assert!(tail.len() > 64 * 1024, "the rest spans several reads");
    let (head_bytes, tail_bytes) = (head.as_bytes().to_vec(), tail.as_bytes().to_vec());
    let site = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            head_bytes.len() + tail_bytes.len()
        )
        .into_bytes();
        out.extend_from_slice(&head_bytes);
        let _ = conn.write_all(&out);
        std::thread::sleep(Duration::from_millis(1500));
        let _ = conn.write_all(&tail_bytes);
    });
    let Some(w) = start_with(&format!("http://127.0.0.1:{port}"), &[]) else {
        return;
    };
    let worker_port: u16 = w.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", worker_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    write!(
        s,
        "GET /slow.html HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {BROWSER}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let mut first_body_at = None;
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if first_body_at.is_none()
            && let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n")
            && String::from_utf8_lossy(&raw[end + 4..]).contains("<title>slow</title>")
        {
            first_body_at = Some(started.elapsed());
        }
    }
    site.join().unwrap();
    let first = first_body_at.expect("the page's head arrived");
    assert!(
        first < Duration::from_millis(1200),
        "the first part took {first:?}: it waited for the rest of the upstream's body"
    );
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head_text = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    assert!(head_text.contains("x-attune: default"), "{head_text}");
    let body = if head_text.contains("transfer-encoding: chunked") {
        dechunk(&raw[end + 4..])
    } else {
        raw[end + 4..].to_vec()
    };
    assert_eq!(String::from_utf8_lossy(&body), page);
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(
            std::str::from_utf8(&raw[..line_end])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("hex chunk size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

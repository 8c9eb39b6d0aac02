//! Starting `wrangler dev` on the built Worker, and the HTTP client the tests speak through.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attune_harness::{Service, WranglerDev, free_port};

pub(crate) const PROFILE_KEY: &str = "test-profile-key";
pub(crate) const DEV_TOKEN: &str = "test-dev-token";
pub(crate) const DEBUG_TOKEN: &str = "test-debug-token";
pub(crate) const BROWSER: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0";
pub(crate) const SHARDS: u32 = 4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `wrangler dev` (and the workerd it runs), killed with its process group on drop.
pub(crate) struct Wrangler {
    pub(crate) base: String,
    _service: Service,
    _dir: tempfile::TempDir,
}

pub(crate) fn start() -> Option<Wrangler> {
    start_with("", &[])
}

/// `wrangler dev` with `ATTUNE_UPSTREAM = upstream` (empty: the shop's assets) and more vars.
pub(crate) fn start_with(upstream: &str, vars: &[(&str, &str)]) -> Option<Wrangler> {
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

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn convert(r: ureq::http::Response<ureq::Body>) -> Resp {
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

pub(crate) fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
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

pub(crate) fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
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

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub(crate) fn file(rel: &str) -> Vec<u8> {
    std::fs::read(root().join("examples/shop/public").join(rel)).expect("shop file")
}

//! Harness for Attune's cross-component tests: starts the real worker under `wrangler dev`
//! (real `workerd`, its own local KV state directory) and the real origin binary, each on a
//! free 127.0.0.1 port, and talks to them over HTTP as a browser or a beacon would.
//!
//! Every child is an [`attune_harness::Service`]: it runs in its own process group and is killed
//! with it on drop, so a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
pub use attune_harness::Service;
use attune_harness::{WranglerDev, free_port};
use serde_json::Value;

/// Secrets the tests give both the worker and the origin.
pub const SESSION_KEY: &str = "e2e-session-key";
pub const PROFILE_KEY: &str = "e2e-profile-key";
pub const DEBUG_TOKEN: &str = "e2e-debug-token";
pub const DEV_KV_TOKEN: &str = "e2e-dev-kv-token";
pub const INGEST_TOKEN: &str = "e2e-ingest-token";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Whether the worker has been built (`cargo xtask build-edge`); the e2e tests need it.
pub fn worker_built() -> bool {
    repo_root().join("edge/build").is_dir()
        && repo_root().join("node_modules/.bin/wrangler").exists()
}

/// A blocking HTTP client that never follows redirects and never treats a status as an error.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// A response reduced to what the tests look at.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `name=value` pairs from `Set-Cookie`.
    pub fn set_cookies(&self) -> Vec<(String, String)> {
        self.headers
            .get("set-cookie")
            .into_iter()
            .flatten()
            .filter_map(|c| {
                c.split(';')
                    .next()?
                    .split_once('=')
                    .map(|(k, v)| (k.trim().into(), v.trim().into()))
            })
            .collect()
    }
}

pub fn reply(resp: ureq::http::Response<ureq::Body>) -> Result<Reply> {
    let status = resp.status().as_u16();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in resp.headers() {
        headers
            .entry(k.as_str().to_ascii_lowercase())
            .or_default()
            .push(v.to_str().unwrap_or("").to_string());
    }
    let mut body = Vec::new();
    resp.into_body().into_reader().read_to_end(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A browser-like visitor: keeps the cookies the edge sets.
#[derive(Debug)]
pub struct Visitor {
    pub base: String,
    pub cookies: BTreeMap<String, String>,
    pub user_agent: String,
    agent: ureq::Agent,
}

impl Visitor {
    pub fn new(base: &str) -> Self {
        Visitor {
            base: base.trim_end_matches('/').into(),
            cookies: BTreeMap::new(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36".into(),
            agent: http(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn remember(&mut self, r: &Reply) {
        for (k, v) in r.set_cookies() {
            if v.is_empty() {
                self.cookies.remove(&k);
            } else {
                self.cookies.insert(k, v);
            }
        }
    }

    pub fn get(&mut self, path: &str) -> Result<Reply> {
        self.get_with(path, &[])
    }

    pub fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let mut req = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("user-agent", &self.user_agent);
        if !self.cookies.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = reply(req.call()?)?;
        self.remember(&r);
        Ok(r)
    }

    pub fn post(&mut self, path: &str, body: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("user-agent", &self.user_agent);
        if !self.cookies.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = reply(req.send(body)?)?;
        self.remember(&r);
        Ok(r)
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            match last_err {
                Some(e) => bail!("{what}: not within {timeout:?} (last error: {e:#})"),
                None => bail!("{what}: not within {timeout:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The origin binary, built on demand (a no-op when cargo already has it fresh).
pub fn origin_binary() -> Result<PathBuf> {
    workspace_binary("attune-origin")
}

/// The lab binary (`import-retail`), built on demand.
pub fn lab_binary() -> Result<PathBuf> {
    workspace_binary("attune-lab")
}

/// A workspace binary named like its package, built on demand.
fn workspace_binary(name: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo_root())
        .args(["build", "--quiet", "-p", name, "--bin", name])
        .status()
        .with_context(|| format!("building {name}"))?;
    if !status.success() {
        bail!("building {name} failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    Ok(target.join("debug").join(name))
}

/// The repository's wrangler.toml made standalone for a test: no `[build]` table (the test
/// runs the Worker the xtask built; a nested build would wait on cargo's lock) and absolute
/// paths.
pub fn standalone_wrangler_config(dir: &Path) -> Result<PathBuf> {
    let root = repo_root();
    let text =
        std::fs::read_to_string(root.join("wrangler.toml")).context("reading wrangler.toml")?;
    let mut out = String::new();
    let mut in_build = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_build = trimmed.starts_with("[build]");
        }
        if in_build {
            continue;
        }
        let absolute = |key: &str| -> Option<String> {
            let value = trimmed
                .strip_prefix(key)?
                .trim_start()
                .strip_prefix('=')?
                .trim()
                .trim_matches('"');
            Some(format!("{key} = \"{}\"", root.join(value).display()))
        };
        out.push_str(
            &absolute("main")
                .or_else(|| absolute("directory"))
                .unwrap_or_else(|| line.to_string()),
        );
        out.push('\n');
    }
    let path = dir.join("wrangler.toml");
    std::fs::write(&path, out)?;
    Ok(path)
}

/// What a test wants of the stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// Start the origin (otherwise the Worker forwards events to a closed port).
    pub origin: bool,
    /// Rules file given to the origin (published under `cfg`).
    pub rules: Option<PathBuf>,
    /// The Worker's KV time budget.
    pub budget_ms: u32,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            origin: true,
            rules: Some(repo_root().join("examples/shop/rules.json")),
            // Generous: CI machines are loaded; the production default (50 ms) is about a
            // real CDN, not two cores compiling.
            budget_ms: 3_000,
        }
    }
}

/// The Worker under `wrangler dev` and (optionally) the origin, on free ports, with their own
/// temporary state.
#[derive(Debug)]
pub struct Stack {
    pub worker_url: String,
    pub origin_url: String,
    pub worker: Service,
    pub origin: Option<Service>,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub fn start(opts: StackOptions) -> Result<Stack> {
        let dir = tempfile::tempdir()?;
        let worker_port = free_port()?;
        let kv_url = format!("http://127.0.0.1:{worker_port}/__attune/kv");
        let (origin, origin_url) = if opts.origin {
            // The origin starts before the Worker and its first publishes fail until wrangler
            // is up; a short backoff ceiling keeps a slow workerd start from turning into a
            // 30 s retry sleep (the production default).
            let config = dir.path().join("origin.toml");
            std::fs::write(&config, "[publish]\nbackoff_max_ms = 1000\n")?;
            let mut cmd = Command::new(origin_binary()?);
            cmd.current_dir(repo_root())
                .args(["serve", "--listen", "127.0.0.1:0", "--kv-url", &kv_url])
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(dir.path().join("origin"))
                .env("ATTUNE_INGEST_TOKEN", INGEST_TOKEN)
                .env("ATTUNE_PROFILE_KEY", PROFILE_KEY)
                .env("ATTUNE_DEV_KV_TOKEN", DEV_KV_TOKEN)
                .env("ATTUNE_LOG", "warn");
            if let Some(rules) = &opts.rules {
                cmd.arg("--rules").arg(rules);
            }
            let mut origin = Service::spawn("attune-origin", cmd)?;
            let line = origin.wait_for_line("listening on http://", Duration::from_secs(60))?;
            let url = line
                .split("listening on ")
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_string();
            (Some(origin), url)
        } else {
            // Nobody listens here: the origin is down.
            (None, format!("http://127.0.0.1:{}", free_port()?))
        };
        let config = standalone_wrangler_config(dir.path())?;
        let wrangler = std::env::var_os("ATTUNE_WRANGLER").map_or_else(
            || repo_root().join("node_modules/.bin/wrangler"),
            PathBuf::from,
        );
        let dev = WranglerDev::new(worker_port, dir.path().join("kv"))
            .config(config)
            // Its own devtools port too: workerd binds 9229 by default, and stacks started in
            // parallel raced for it ("Address already in use").
            .inspector_port(free_port()?)
            .var("ATTUNE_SESSION_KEY", SESSION_KEY)
            .var("ATTUNE_PROFILE_KEY", PROFILE_KEY)
            .var("ATTUNE_DEBUG_TOKEN", DEBUG_TOKEN)
            .var("ATTUNE_DEV_KV_TOKEN", DEV_KV_TOKEN)
            .var("ATTUNE_INGEST_TOKEN", INGEST_TOKEN)
            .var(
                "ATTUNE_ORIGIN_INGEST_URL",
                format!("{origin_url}/v1/events"),
            )
            .var("ATTUNE_BUDGET_MS", opts.budget_ms)
            .var("ATTUNE_DEMO_LOGIN", 1);
        let mut cmd = dev.command(wrangler);
        cmd.current_dir(dir.path());
        let mut worker = Service::spawn("wrangler dev", cmd)?;
        worker.wait_http(worker_port, "/__attune/beacon.js", Duration::from_secs(90))?;
        let stack = Stack {
            worker_url: dev.url(),
            origin_url,
            worker,
            origin,
            dir,
        };
        Ok(stack)
    }

    /// Runs an origin CLI command against the running origin (`--url`).
    pub fn origin_cli(&self, args: &[&str]) -> Result<String> {
        self.cli(&origin_binary()?, args)
    }

    /// Runs a lab CLI command (`import-retail`) against the running origin (`--url`).
    pub fn lab_cli(&self, args: &[&str]) -> Result<String> {
        self.cli(&lab_binary()?, args)
    }

    fn cli(&self, binary: &std::path::Path, args: &[&str]) -> Result<String> {
        let out = Command::new(binary)
            .current_dir(repo_root())
            .args(args)
            .args(["--url", &self.origin_url])
            .env("ATTUNE_INGEST_TOKEN", INGEST_TOKEN)
            .env("ATTUNE_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "{} {args:?} failed: {}\n{}",
                binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The origin's Prometheus metrics as `(series, value)`.
    pub fn origin_metrics(&self) -> Result<BTreeMap<String, f64>> {
        let text = reply(http().get(format!("{}/metrics", self.origin_url)).call()?)?.text();
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// Sum of every series of a metric whose labels contain all of `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> Result<f64> {
        Ok(self
            .origin_metrics()?
            .into_iter()
            .filter(|(k, _)| {
                (k == name || k.starts_with(&format!("{name}{{")))
                    && labels.iter().all(|l| k.contains(l))
            })
            .map(|(_, v)| v)
            .sum())
    }

    /// Writes raw values into the Worker's local KV through its dev bulk route.
    pub fn kv_put(&self, pairs: &[(&str, &[u8])]) -> Result<()> {
        use base64::Engine as _;
        use std::fmt::Write as _;
        let mut body = String::from("[");
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                "{{\"key\":{},\"value\":\"{}\",\"base64\":true}}",
                serde_json::Value::from(*k),
                base64::engine::general_purpose::STANDARD.encode(v)
            );
        }
        body.push(']');
        let r = reply(
            http()
                .put(format!("{}/__attune/kv/bulk", self.worker_url))
                .header("authorization", format!("Bearer {DEV_KV_TOKEN}"))
                .header("content-type", "application/json")
                .send(body.as_str())?,
        )?;
        if r.status != 200 {
            bail!("kv bulk put: {} {}", r.status, r.text());
        }
        Ok(())
    }
}

// ---- Page-level helpers shared by the end-to-end and browser tests ----

pub const SAMPLE: &str = "data/online-retail/online_retail_sample.csv";

pub fn skip_without_worker() -> bool {
    if worker_built() {
        return false;
    }
    println!(
        "SKIPPED: edge/build or node_modules missing; run `cargo xtask build-edge` (cargo xtask test does)"
    );
    true
}

/// The debug explanation of one page for this visitor (the same request a page view makes).
pub fn debug(v: &mut Visitor, path: &str) -> Result<(Reply, Value)> {
    // The page view itself (cookies, session, impressions), then the debug route, which renders
    // the same page for the same cookies to the end and explains every slot (the page's own
    // `x-attune-debug` header only covers the slots in its first chunk).
    let page = v.get(path)?;
    let r = v.get_with(
        &format!("/__attune/debug?path={path}"),
        &[("x-attune-debug", DEBUG_TOKEN)],
    )?;
    if r.status != 200 {
        bail!("debug route: {} {}", r.status, r.text());
    }
    let json: Value = serde_json::from_slice(&r.body)
        .with_context(|| format!("debug is not JSON: {}", r.text()))?;
    Ok((page, json))
}

pub fn slot<'a>(debug: &'a Value, name: &str) -> Option<&'a Value> {
    debug["slots"]
        .as_array()?
        .iter()
        .find(|s| s["slot"] == name)
}

pub fn picks(debug: &Value, name: &str) -> Vec<(String, String)> {
    slot(debug, name)
        .and_then(|s| s["picks"].as_array())
        .map(|p| {
            p.iter()
                .map(|p| {
                    (
                        p["item"].as_str().unwrap_or("").to_string(),
                        p["reason"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Hrefs of the items inside one slot of the rendered HTML, in order.
pub fn slot_hrefs(html: &str, name: &str) -> Vec<String> {
    let marker = format!("data-attune-slot=\"{name}\"");
    let Some(start) = html.find(&marker) else {
        return Vec::new();
    };
    let section = &html[start..];
    let end = section.find("</section>").unwrap_or(section.len());
    section[..end]
        .split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

/// Starts the stack, imports the sample, and waits until the model reached the Worker.
pub fn stack_with_sample() -> Result<Stack> {
    let stack = Stack::start(StackOptions::default())?;
    let out = stack.lab_cli(&["import-retail", SAMPLE])?;
    println!("import-retail: {}", out.trim());
    let mut probe = Visitor::new(&stack.worker_url);
    let mut last = String::new();
    let ready = eventually(
        Duration::from_secs(90),
        "the published model reaches the Worker",
        || {
            let (r, d) = debug(&mut probe, "/")?;
            let ready = r.header("x-attune").is_some_and(|h| h == "personalized")
                && !picks(&d, "trending").is_empty();
            last = format!("x-attune: {:?}, debug: {d}", r.header("x-attune"));
            Ok(ready.then_some(()))
        },
    );
    if let Err(e) = ready {
        let origin = stack
            .origin
            .as_ref()
            .map(Service::output)
            .unwrap_or_default();
        bail!(
            "{e:#}\nlast page: {last}\norigin output:\n{origin}\nworker output:\n{}",
            stack.worker.output()
        );
    }
    Ok(stack)
}

/// Runs one named step of a scenario; a failure, an error or a failed assertion alike, names
/// the step.
pub fn step<T>(name: &str, run: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("step: {name}");
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(result) => result.with_context(|| format!("step `{name}` failed")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(a panic without a message)");
            panic!("step `{name}` failed: {message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_names_itself_in_the_error() {
        let err = step("the beacon reaches the origin", || -> Result<()> {
            bail!("connection refused")
        })
        .unwrap_err();
        let message = format!("{err:#}");
        assert_eq!(
            message,
            "step `the beacon reaches the origin` failed: connection refused"
        );
        assert_eq!(step("passes", || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn a_failed_assertion_names_its_step() {
        let panic = std::panic::catch_unwind(|| {
            step("bots get the page untouched", || -> Result<()> {
                assert_eq!(1 + 1, 3, "arithmetic");
                Ok(())
            })
        })
        .unwrap_err();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            message.starts_with("step `bots get the page untouched` failed: assertion"),
            "{message}"
        );
        assert!(message.contains("arithmetic"), "{message}");
    }
}

//! The stack under test: the Worker under `wrangler dev` and the origin binary, each on a free
//! port with its own temporary state, and the binaries and configuration they run from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use attune_harness::{Service, WranglerDev, free_port};

use crate::http::{http, reply};
use crate::{DEBUG_TOKEN, DEV_KV_TOKEN, INGEST_TOKEN, PROFILE_KEY, SESSION_KEY, repo_root};

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

//! Harness for Attune's cross-component tests: starts the real worker under `wrangler dev`
//! (real `workerd`, its own local KV state directory) and the real origin binary, each on a
//! free 127.0.0.1 port, and talks to them over HTTP as a browser or a beacon would.
//!
//! Every child runs in its own process group and is killed with it on drop, so a failing test
//! leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

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

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Whether the worker has been built (`cargo xtask build-edge`); the e2e tests need it.
pub fn worker_built() -> bool {
    repo_root().join("edge/build").is_dir()
        && repo_root().join("node_modules/.bin/wrangler").exists()
}

/// A child process in its own process group, killed (with its children) on drop. Its output
/// is collected so a failing test can show it.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Service {
    pub fn spawn(name: &'static str, mut cmd: Command) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, Arc::clone(&output));
        }
        if let Some(err) = child.stderr.take() {
            collect(err, Arc::clone(&output));
        }
        Ok(Service {
            name,
            child,
            output,
        })
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.join("\n")).unwrap_or_default()
    }

    /// Waits until a printed line contains `needle`; returns that line.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .output
                .lock()
                .ok()
                .and_then(|o| o.iter().find(|l| l.contains(needle)).cloned())
            {
                return Ok(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal to the whole process group.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([
                &format!("-{signal}"),
                "--",
                &format!("-{}", self.child.id()),
            ])
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM, then waits up to `grace` for a clean exit; returns whether it exited cleanly.
    pub fn stop(&mut self, grace: Duration) -> bool {
        self.signal("TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal("KILL");
        let _ = self.child.wait();
        false
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.is_running() {
            self.signal("KILL");
            let _ = self.child.wait();
        }
    }
}

fn collect(stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut s) = sink.lock() {
                s.push(line);
            }
        }
    });
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

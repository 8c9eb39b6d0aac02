//! `cargo xtask bootstrap`: installs what the repository needs, from the package registries
//! only, and skips whatever is already there at the right version (a warm run takes seconds).
//!
//! What it manages:
//! - rustup targets and components named in `rust-toolchain.toml` (rustup usually installs them
//!   by itself; this verifies);
//! - `npm ci` (wrangler + workerd + esbuild, binaryen's `wasm-opt`) when `node_modules` is
//!   missing or `package.json` / `package-lock.json` changed since the last run (stamp file);
//! - `wasm-bindgen-cli` at exactly the `wasm-bindgen` version in `Cargo.lock`;
//! - `worker-build` at [`WORKER_BUILD_VERSION`];
//! - the Debian headers the origin's bundled librdkafka build needs (`KAFKA_DEBIAN_PACKAGES`);
//! - Debian's `chromium`, only with `--browser` (best effort: a failure is a warning);
//! - with `--kafka` (and from `cargo xtask kafka`): the Apache Kafka broker's jars, the Kafka
//!   Streams comparison app and the Python Kafka client (`attune_kafka_harness::provision`).

use std::fs;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{self, fmt_duration};

/// The worker-build release this repository is built with (matches the `worker` crate 0.8.x).
pub const WORKER_BUILD_VERSION: &str = "0.8.7";
const NODE_MIN_MAJOR: u32 = 20;
const STAMP: &str = "node_modules/.attune-npm-stamp";

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Also install a browser for the browser end-to-end tests.
    pub browser: bool,
    /// Print only what gets installed (used by `build-edge`, which wrangler runs on every change).
    pub quiet: bool,
}

pub fn cmd(args: &[String]) -> Result<()> {
    let mut opts = Options::default();
    let mut kafka = false;
    for arg in args {
        match arg.as_str() {
            "--browser" => opts.browser = true,
            "--kafka" => kafka = true,
            other => bail!("bootstrap: unknown option `{other}` (options: --browser, --kafka)"),
        }
    }
    ensure(opts)?;
    if kafka {
        ensure_kafka(false)?;
    }
    Ok(())
}

#[derive(Debug)]
struct Outcome {
    name: &'static str,
    action: Action,
    detail: String,
    secs: std::time::Duration,
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Present,
    Installed,
    Warned,
}

pub fn ensure(opts: Options) -> Result<()> {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<(Action, String)>| {
        let t = Instant::now();
        let (action, detail) = f().with_context(|| format!("bootstrap: {name}"))?;
        let outcome = Outcome {
            name,
            action,
            detail,
            secs: t.elapsed(),
        };
        if !opts.quiet || outcome.action != Action::Present {
            print_outcome(&outcome);
        }
        outcomes.push(outcome);
        anyhow::Ok(())
    };

    step("rust toolchain", &mut rust_toolchain)?;
    step("node", &mut node)?;
    step("npm packages", &mut npm_ci)?;
    step("wasm-bindgen-cli", &mut wasm_bindgen_cli)?;
    step("worker-build", &mut worker_build)?;
    // The origin links librdkafka (its default `kafka` feature), built from source.
    step("kafka: debian libs", &mut kafka_debian_packages)?;
    if opts.browser {
        step("chromium", &mut chromium)?;
    }

    let installed: Vec<_> = outcomes
        .iter()
        .filter(|o| o.action == Action::Installed)
        .map(|o| o.name)
        .collect();
    if !opts.quiet || !installed.is_empty() {
        println!(
            "bootstrap: done in {} (installed: {})",
            fmt_duration(started.elapsed()),
            if installed.is_empty() {
                "nothing, all present".to_owned()
            } else {
                installed.join(", ")
            }
        );
    }
    Ok(())
}

type Step<'a> =
    dyn FnMut(&'static str, &mut dyn FnMut() -> Result<(Action, String)>) -> Result<()> + 'a;

fn kafka_steps(step: &mut Step<'_>) -> Result<()> {
    use attune_kafka_harness::provision;
    // librdkafka's Debian build dependencies are in the default steps (the origin links it).
    step("kafka: broker jars", &mut || {
        provisioned(provision::broker_jars()?)
    })?;
    step("kafka: streams app", &mut || {
        provisioned(provision::streams_app()?)
    })?;
    step("kafka: python client", &mut || {
        provisioned(provision::python_client()?)
    })
}

/// The Kafka step, on its own (`cargo xtask kafka` needs nothing else). `quiet` prints only
/// what gets installed.
pub fn ensure_kafka(quiet: bool) -> Result<()> {
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<(Action, String)>| {
        let t = Instant::now();
        let (action, detail) = f().with_context(|| format!("bootstrap: {name}"))?;
        if !quiet || action != Action::Present {
            print_outcome(&Outcome {
                name,
                action,
                detail,
                secs: t.elapsed(),
            });
        }
        anyhow::Ok(())
    };
    kafka_steps(&mut step)
}

fn print_outcome(o: &Outcome) {
    let action = match o.action {
        Action::Present => "ok       ",
        Action::Installed => "INSTALLED",
        Action::Warned => "WARNING  ",
    };
    println!(
        "bootstrap: {action} {:<18} {} ({})",
        o.name,
        o.detail,
        fmt_duration(o.secs)
    );
}

/// The quoted strings of a `key = ["a", "b"]` line in `rust-toolchain.toml`.
fn toolchain_list(toml: &str, key: &str) -> Vec<String> {
    toml.lines()
        .map(str::trim)
        .find(|line| {
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|line| {
            line.split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn rust_toolchain() -> Result<(Action, String)> {
    let toml = fs::read_to_string(util::root().join("rust-toolchain.toml"))
        .context("reading rust-toolchain.toml")?;
    let targets = toolchain_list(&toml, "targets");
    let components = toolchain_list(&toml, "components");
    let rustc = util::output(util::command("rustc").arg("--version"))
        .unwrap_or_default()
        .trim()
        .to_owned();

    if util::which("rustup").is_none() {
        return Ok((
            Action::Warned,
            format!("{rustc}; rustup not found, cannot verify targets {targets:?}"),
        ));
    }
    let installed_targets =
        util::output(util::command("rustup").args(["target", "list", "--installed"]))
            .unwrap_or_default();
    let installed_components =
        util::output(util::command("rustup").args(["component", "list", "--installed"]))
            .unwrap_or_default();

    let missing_targets: Vec<_> = targets
        .iter()
        .filter(|t| !installed_targets.lines().any(|l| l.trim() == t.as_str()))
        .cloned()
        .collect();
    // Components are listed as `<name>-<host triple>`.
    let missing_components: Vec<_> = components
        .iter()
        .filter(|c| {
            !installed_components
                .lines()
                .any(|l| l.trim() == c.as_str() || l.trim().starts_with(&format!("{c}-")))
        })
        .cloned()
        .collect();

    if missing_targets.is_empty() && missing_components.is_empty() {
        return Ok((
            Action::Present,
            format!(
                "{rustc}; targets {}; components {}",
                targets.join(", "),
                components.join(", ")
            ),
        ));
    }
    if !missing_targets.is_empty() {
        util::run(
            util::command("rustup")
                .args(["target", "add"])
                .args(&missing_targets),
        )?;
    }
    if !missing_components.is_empty() {
        util::run(
            util::command("rustup")
                .args(["component", "add"])
                .args(&missing_components),
        )?;
    }
    Ok((
        Action::Installed,
        format!(
            "{rustc}; added {}",
            missing_targets
                .iter()
                .chain(&missing_components)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn node() -> Result<(Action, String)> {
    let Some(version) = util::output(util::command("node").arg("--version")) else {
        bail!(
            "Node.js {NODE_MIN_MAJOR}+ is required (wrangler and workerd are npm packages); \
             install it (e.g. `apt-get install nodejs npm`) and re-run"
        );
    };
    let version = version.trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < NODE_MIN_MAJOR {
        bail!("Node.js {NODE_MIN_MAJOR}+ is required, found {version}");
    }
    if util::which("npm").is_none() {
        bail!("npm is required (it comes with Node.js) but was not found on PATH");
    }
    Ok((Action::Present, format!("node {version}")))
}

fn npm_ci() -> Result<(Action, String)> {
    let root = util::root();
    let mut inputs = fs::read(root.join("package.json")).context("reading package.json")?;
    inputs.extend(fs::read(root.join("package-lock.json")).context("reading package-lock.json")?);
    let want = format!("{:016x}\n", util::fingerprint(&inputs));
    let bins = ["wrangler", "workerd", "esbuild", "wasm-opt"];
    let node_bin = util::node_bin_dir();
    let all_bins = bins.iter().all(|b| node_bin.join(b).is_file());
    let stamp = root.join(STAMP);
    if all_bins && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok((
            Action::Present,
            "node_modules matches package-lock.json".to_owned(),
        ));
    }
    util::run(util::command("npm").args(["ci", "--no-audit", "--no-fund"]))?;
    for b in bins {
        if !node_bin.join(b).is_file() {
            bail!("`npm ci` finished but node_modules/.bin/{b} is missing");
        }
    }
    fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok((
        Action::Installed,
        "npm ci (wrangler, workerd, esbuild, wasm-opt)".to_owned(),
    ))
}

/// The version of `package` recorded in `Cargo.lock` (the first one if there are several).
pub fn cargo_lock_version(package: &str) -> Result<String> {
    let lock = fs::read_to_string(util::root().join("Cargo.lock")).context("reading Cargo.lock")?;
    let name_line = format!("name = \"{package}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == name_line
            && let Some(version) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = "))
        {
            return Ok(version.trim_matches('"').to_owned());
        }
    }
    bail!("Cargo.lock has no `{package}` package")
}

/// `<tool> --version` from `$CARGO_HOME/bin`, if it runs.
fn installed_version(tool: &str) -> Option<String> {
    let path = util::cargo_bin_dir().join(tool);
    if !path.is_file() {
        return None;
    }
    util::output(Command::new(path).arg("--version")).map(|s| s.trim().to_owned())
}

fn wasm_bindgen_cli() -> Result<(Action, String)> {
    let want = cargo_lock_version("wasm-bindgen")?;
    let have = installed_version("wasm-bindgen");
    let runner = util::cargo_bin_dir()
        .join("wasm-bindgen-test-runner")
        .is_file();
    if runner && have.as_deref() == Some(format!("wasm-bindgen {want}").as_str()) {
        return Ok((
            Action::Present,
            format!("wasm-bindgen {want} (matches Cargo.lock)"),
        ));
    }
    println!(
        "bootstrap: installing wasm-bindgen-cli {want} (found {}); this takes a few minutes once",
        have.as_deref().unwrap_or("none")
    );
    // No `--locked`: the CLI's own lockfile names a crate version the registry does not serve.
    util::run(util::cargo().args(["install", "wasm-bindgen-cli", "--version", &want, "--force"]))?;
    Ok((
        Action::Installed,
        format!("wasm-bindgen + wasm-bindgen-test-runner {want}"),
    ))
}

fn worker_build() -> Result<(Action, String)> {
    let have = installed_version("worker-build");
    if have.as_deref() == Some(WORKER_BUILD_VERSION) {
        return Ok((
            Action::Present,
            format!("worker-build {WORKER_BUILD_VERSION}"),
        ));
    }
    println!(
        "bootstrap: installing worker-build {WORKER_BUILD_VERSION} (found {}); this takes a few minutes once",
        have.as_deref().unwrap_or("none")
    );
    util::run(util::cargo().args([
        "install",
        "worker-build",
        "--version",
        WORKER_BUILD_VERSION,
        "--locked",
        "--force",
    ]))?;
    Ok((
        Action::Installed,
        format!("worker-build {WORKER_BUILD_VERSION}"),
    ))
}

fn chromium() -> Result<(Action, String)> {
    if let Some(path) = util::find_chromium() {
        return Ok((Action::Present, path.display().to_string()));
    }
    if util::which("apt-get").is_none() {
        return Ok((
            Action::Warned,
            "no chromium and no apt-get: install Chromium and set ATTUNE_CHROMIUM; \
             the browser tests will be skipped"
                .to_owned(),
        ));
    }
    let is_root = util::output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if is_root {
            util::command("apt-get")
        } else {
            let mut c = util::command("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        util::run(&mut cmd)
    };
    let result = apt(&["update", "-q"])
        .and_then(|()| apt(&["install", "-y", "-q", "--no-install-recommends", "chromium"]));
    match (result, util::find_chromium()) {
        (Ok(()), Some(path)) => Ok((Action::Installed, path.display().to_string())),
        (Err(err), _) => Ok((
            Action::Warned,
            format!(
                "apt-get could not install chromium ({err:#}); the browser tests will be skipped"
            ),
        )),
        (Ok(()), None) => Ok((
            Action::Warned,
            "apt-get ran but no chromium binary was found; the browser tests will be skipped"
                .to_owned(),
        )),
    }
}

fn provisioned(p: attune_kafka_harness::provision::Provisioned) -> Result<(Action, String)> {
    let action = if p.fresh {
        Action::Installed
    } else {
        Action::Present
    };
    Ok((action, p.path.display().to_string()))
}

/// What `rdkafka`'s bundled librdkafka build (`cmake-build` with the `ssl` feature) needs from
/// Debian besides a C toolchain: OpenSSL and zlib headers, and curl's, which librdkafka 2.12's
/// `rdkafka_conf.c` includes once SSL is on (without them: `fatal error: curl/curl.h: No such
/// file or directory`). zstd is built from source by `zstd-sys`.
const KAFKA_DEBIAN_PACKAGES: &[&str] = &[
    "cmake",
    "g++",
    "pkg-config",
    "libssl-dev",
    "zlib1g-dev",
    "libcurl4-openssl-dev",
];

fn kafka_debian_packages() -> Result<(Action, String)> {
    let installed = |package: &str| {
        util::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
            .is_some_and(|status| status.trim() == "install ok installed")
    };
    let missing: Vec<&str> = KAFKA_DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok((Action::Present, KAFKA_DEBIAN_PACKAGES.join(", ")));
    }
    if util::which("apt-get").is_none() {
        bail!(
            "missing {} and no apt-get to install them (rdkafka's bundled librdkafka needs them)",
            missing.join(", ")
        );
    }
    let is_root = util::output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if is_root {
            util::command("apt-get")
        } else {
            let mut c = util::command("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        util::run(&mut cmd)
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)?;
    Ok((Action::Installed, missing.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::toolchain_list;

    #[test]
    fn reads_toolchain_lists() {
        let toml = "[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"wasm32-unknown-unknown\", \"wasm32v1-none\"]\ncomponents = [\"rustfmt\", \"clippy\"]\n";
        assert_eq!(
            toolchain_list(toml, "targets"),
            ["wasm32-unknown-unknown", "wasm32v1-none"]
        );
        assert_eq!(toolchain_list(toml, "components"), ["rustfmt", "clippy"]);
        assert!(toolchain_list(toml, "profile").is_empty());
    }
}

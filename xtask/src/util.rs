//! Small process and path helpers shared by the commands. Plain `std::process`, no shell.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The repository root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// `$CARGO_HOME/bin`, where `cargo install` puts the tools.
pub fn cargo_bin_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return PathBuf::from(home).join("bin");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| OsString::from("."));
    PathBuf::from(home).join(".cargo").join("bin")
}

/// `<root>/node_modules/.bin`, where `npm ci` puts wrangler, workerd, esbuild and wasm-opt.
pub fn node_bin_dir() -> PathBuf {
    root().join("node_modules").join(".bin")
}

/// Finds an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `PATH` with the repository's tool directories first, so every child process (cargo, the
/// tests, wrangler's build command) finds the pinned tools rather than whatever else is installed.
pub fn tool_path() -> OsString {
    let mut dirs = vec![node_bin_dir(), cargo_bin_dir()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_else(|_| std::env::var_os("PATH").unwrap_or_default())
}

/// The environment every child process gets: offline wrangler, pinned tool binaries for
/// worker-build, and where the tests find wrangler and (when installed) chromium.
pub fn tool_env() -> Vec<(&'static str, OsString)> {
    let node_bin = node_bin_dir();
    let mut env = vec![
        ("PATH", tool_path()),
        // wrangler must never phone home: no telemetry, no request.cf fetch.
        ("WRANGLER_SEND_METRICS", "false".into()),
        ("CLOUDFLARE_CF_FETCH_ENABLED", "false".into()),
        // worker-build downloads these unless told where they are.
        (
            "WASM_BINDGEN_BIN",
            cargo_bin_dir().join("wasm-bindgen").into_os_string(),
        ),
        ("WASM_OPT_BIN", node_bin.join("wasm-opt").into_os_string()),
        ("ESBUILD_BIN", node_bin.join("esbuild").into_os_string()),
        // For the end-to-end tests.
        (
            "ATTUNE_WRANGLER",
            node_bin.join("wrangler").into_os_string(),
        ),
    ];
    if let Some(chromium) = find_chromium() {
        env.push(("ATTUNE_CHROMIUM", chromium.into_os_string()));
    }
    env
}

/// Where a Chromium lives, if one is installed (`ATTUNE_CHROMIUM` overrides).
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ATTUNE_CHROMIUM") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Some(path);
        }
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| which(name))
}

/// A command rooted at the repository root with the tool environment applied.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(root());
    for (key, value) in tool_env() {
        cmd.env(key, value);
    }
    cmd
}

/// `cargo` (the same cargo that runs xtask, so the pinned toolchain).
pub fn cargo() -> Command {
    command(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Renders a command line for display.
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    if let Some(name) = Path::new(&line).file_name() {
        line = name.to_string_lossy().into_owned();
    }
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs a command with inherited stdio (its output streams straight through).
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {}", display(cmd));
    let status = cmd
        .stdin(Stdio::inherit())
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout, or `None` if it cannot run or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

pub fn fmt_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.2} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

/// 64-bit FNV-1a: a stable content fingerprint for stamp files (not for security).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Splits `--flag a,b` style lists.
pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

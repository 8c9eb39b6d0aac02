//! `cargo xtask build-edge [--dev]`: builds the Worker with `worker-build`, offline.
//!
//! worker-build would download wasm-bindgen, wasm-opt and esbuild; `WASM_BINDGEN_BIN`,
//! `WASM_OPT_BIN` and `ESBUILD_BIN` (set by [`util::tool_env`]) point it at the copies the
//! bootstrap installed instead. Output, relative to the crate: `build/index.js` (the ES module
//! entry that `wrangler.toml`'s `main` names), `build/index_bg.wasm`, `build/worker/shim.mjs`
//! (a compatibility alias). wrangler runs this command as its `[build] command`.
//!
//! worker-build reruns wasm-bindgen, wasm-opt and esbuild every time, even when cargo has
//! nothing to do (seconds per run, and `wrangler dev` runs the build on every start). So this
//! first runs the same `cargo build` worker-build would, fingerprints the resulting wasm together
//! with everything else that shapes the output, and skips worker-build when `build/` already
//! holds that exact build. `--force` always rebuilds.
//!
//! Release builds then lose the wasm `name` section: worker-build runs wasm-opt with
//! `--debuginfo` appended to the configured arguments (to keep function names for stack traces),
//! so `--strip-debug` in the crate metadata cannot drop it, and the names are about 250 KB raw
//! (some 65 KB gzipped) of a Worker whose size limit counts. Panics still log their message.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::bootstrap;
use crate::util::{self, fmt_bytes, fmt_duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Release,
    Dev,
}

pub fn cmd(args: &[String]) -> Result<()> {
    let mut profile = Profile::Release;
    let mut force = false;
    // Undocumented: build another worker crate with the same plumbing (used to test the xtask
    // itself against a scratch worker).
    let mut crate_dir = util::root().join("edge");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dev" => profile = Profile::Dev,
            "--release" => profile = Profile::Release,
            "--force" => force = true,
            "--crate-dir" => {
                let dir = args.next().context("--crate-dir needs a path")?;
                crate_dir = PathBuf::from(dir);
            }
            other => bail!("build-edge: unknown option `{other}` (options: --dev, --force)"),
        }
    }
    bootstrap::ensure(bootstrap::Options {
        browser: false,
        quiet: true,
    })?;
    build(profile, &crate_dir, force)
}

/// The workspace's release profile is tuned for the native origin (`opt-level = 3`); the Worker
/// is built for size, since every kilobyte of wasm is paid on cold starts.
const EDGE_OPT_LEVEL: (&str, &str) = ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "z");

pub fn build(profile: Profile, crate_dir: &Path, force: bool) -> Result<()> {
    let started = Instant::now();
    let out = crate_dir.join("build");
    let stamp_path = out.join(".attune-build-stamp");

    // The same cargo invocation worker-build makes (same args, same env), so its own
    // `cargo build` afterwards is a no-op.
    let mut cargo = util::cargo();
    cargo
        .current_dir(crate_dir)
        .env("WASM_BINDGEN_USE_JS_SYS", "1")
        .env(EDGE_OPT_LEVEL.0, EDGE_OPT_LEVEL.1)
        .args(["build", "--lib", "--target", "wasm32-unknown-unknown"]);
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    util::run(&mut cargo)?;
    let stamp = build_fingerprint(profile, crate_dir);
    let up_to_date = out.join("index.js").is_file()
        && out.join("index_bg.wasm").is_file()
        && stamp.is_some()
        && fs::read_to_string(&stamp_path).ok() == stamp;
    if up_to_date && !force {
        println!("build-edge: worker-build output is up to date (--force rebuilds)");
    } else {
        let _ = fs::remove_file(&stamp_path);
        let mut cmd = util::command("worker-build");
        cmd.arg(match profile {
            Profile::Release => "--release",
            Profile::Dev => "--dev",
        })
        .arg(crate_dir)
        .env(EDGE_OPT_LEVEL.0, EDGE_OPT_LEVEL.1)
        .current_dir(crate_dir);
        util::run(&mut cmd)?;
        if profile == Profile::Release {
            strip_names(&out.join("index_bg.wasm"))?;
        }
        if let Some(stamp) = &stamp {
            fs::write(&stamp_path, stamp)
                .with_context(|| format!("writing {}", stamp_path.display()))?;
        }
    }

    for required in ["index.js", "index_bg.wasm"] {
        if !out.join(required).is_file() {
            bail!(
                "worker-build succeeded but {} is missing",
                out.join(required).display()
            );
        }
    }
    let wasm = fs::read(out.join("index_bg.wasm")).context("reading index_bg.wasm")?;
    let js_len = fs::metadata(out.join("index.js")).map_or(0, |m| m.len());
    println!(
        "build-edge: {} in {}: index_bg.wasm {} raw, {} gzipped; index.js {}",
        out.display(),
        fmt_duration(started.elapsed()),
        fmt_bytes(wasm.len() as u64),
        fmt_bytes(gzip_len(&wasm)?),
        fmt_bytes(js_len),
    );
    Ok(())
}

/// Removes the `name` custom section (function names) from a wasm module in place. Every other
/// section, including `producers` and `target_features`, is kept byte for byte.
fn strip_names(path: &Path) -> Result<()> {
    let wasm = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let stripped = without_custom_section(&wasm, "name")
        .with_context(|| format!("{} is not a wasm module", path.display()))?;
    if stripped.len() != wasm.len() {
        fs::write(path, stripped).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `wasm` without its custom sections called `name`; `None` if it does not parse as a module.
fn without_custom_section(wasm: &[u8], name: &str) -> Option<Vec<u8>> {
    fn leb128(bytes: &[u8], at: &mut usize) -> Option<usize> {
        let mut value = 0usize;
        for shift in (0..35).step_by(7) {
            let byte = *bytes.get(*at)?;
            *at += 1;
            value |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    if wasm.get(..4)? != b"\0asm" || wasm.len() < 8 {
        return None;
    }
    let mut out = wasm[..8].to_vec();
    let mut at = 8;
    while at < wasm.len() {
        let start = at;
        let id = wasm[at];
        at += 1;
        let len = leb128(wasm, &mut at)?;
        let end = at.checked_add(len).filter(|&end| end <= wasm.len())?;
        let drop = id == 0 && {
            let mut name_at = at;
            let name_len = leb128(wasm, &mut name_at)?;
            wasm.get(name_at..name_at.checked_add(name_len)?)? == name.as_bytes()
        };
        if !drop {
            out.extend_from_slice(&wasm[start..end]);
        }
        at = end;
    }
    Some(out)
}

/// Size after `gzip -9`, which is what the Workers size limit is measured against.
pub fn gzip_len(bytes: &[u8]) -> Result<u64> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?.len() as u64)
}

/// A fingerprint of everything that determines worker-build's output: the compiled wasm, the
/// crate manifest (wasm-opt settings live there), the profile, and the tool versions. `None`
/// when the compiled wasm cannot be found (then nothing is skipped).
fn build_fingerprint(profile: Profile, crate_dir: &Path) -> Option<String> {
    let manifest = fs::read_to_string(crate_dir.join("Cargo.toml")).ok()?;
    let lib_name = package_name(&manifest)?.replace('-', "_");
    let profile_dir = match profile {
        Profile::Release => "release",
        Profile::Dev => "debug",
    };
    let wasm_path = target_dir(crate_dir)?
        .join("wasm32-unknown-unknown")
        .join(profile_dir)
        .join(format!("{lib_name}.wasm"));
    let mut input = fs::read(wasm_path).ok()?;
    input.extend_from_slice(manifest.as_bytes());
    let wasm_bindgen = bootstrap::cargo_lock_version("wasm-bindgen").unwrap_or_default();
    // `strip-names`: output built before the name section was stripped is rebuilt.
    let tools = format!(
        "{profile:?} strip-names worker-build {} wasm-bindgen {wasm_bindgen}",
        bootstrap::WORKER_BUILD_VERSION
    );
    input.extend_from_slice(tools.as_bytes());
    for tool in ["wasm-opt", "esbuild"] {
        let len = fs::metadata(util::node_bin_dir().join(tool)).map_or(0, |m| m.len());
        input.extend_from_slice(&len.to_le_bytes());
    }
    Some(format!("{:016x}\n", util::fingerprint(&input)))
}

/// `[package] name` from a manifest.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some(value) = line.strip_prefix("name")
            && let Some(value) = value.trim_start().strip_prefix('=')
        {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// `CARGO_TARGET_DIR`, else `target/` next to the `Cargo.lock` above the crate (its workspace).
fn target_dir(crate_dir: &Path) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(dir));
    }
    let crate_dir = crate_dir.canonicalize().ok()?;
    crate_dir
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map(|dir| dir.join("target"))
}

#[cfg(test)]
mod tests {
    use super::{package_name, without_custom_section};

    #[test]
    fn reads_package_name() {
        let manifest = "[package]\nname = \"attune-edge\"\nversion.workspace = true\n\n[lib]\nname = \"other\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("attune-edge"));
        assert_eq!(package_name("[workspace]\nname = \"x\"\n"), None);
    }

    #[test]
    fn strips_only_the_name_section() {
        let custom = |name: &str, body: &[u8]| {
            let mut payload = vec![name.len() as u8];
            payload.extend_from_slice(name.as_bytes());
            payload.extend_from_slice(body);
            let mut section = vec![0, payload.len() as u8];
            section.extend_from_slice(&payload);
            section
        };
        let header = b"\0asm\x01\0\0\0".to_vec();
        let types = vec![1, 1, 0];
        let module = [
            header.clone(),
            types.clone(),
            custom("name", &[1, 2, 3]),
            custom("producers", &[4]),
        ]
        .concat();
        let expected = [header, types, custom("producers", &[4])].concat();
        assert_eq!(
            without_custom_section(&module, "name"),
            Some(expected.clone())
        );
        assert_eq!(without_custom_section(&expected, "name"), Some(expected));
        assert_eq!(without_custom_section(b"not wasm", "name"), None);
        assert_eq!(without_custom_section(&module[..12], "name"), None);
    }
}

//! `cargo xtask build-edge [--dev]`: builds the Worker with `worker-build`, offline.
//!
//! worker-build would download wasm-bindgen, wasm-opt and esbuild; `WASM_BINDGEN_BIN`,
//! `WASM_OPT_BIN` and `ESBUILD_BIN` (set by [`util::tool_env`]) point it at the copies the
//! bootstrap installed instead. Output, relative to the crate: `build/index.js` (the ES module
//! entry that `wrangler.toml`'s `main` names), `build/index_bg.wasm`, `build/worker/shim.mjs`
//! (a compatibility alias). wrangler runs this command as its `[build] command`.

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
    // Undocumented: build another worker crate with the same plumbing (used to test the xtask
    // itself against a scratch worker).
    let mut crate_dir = util::root().join("edge");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dev" => profile = Profile::Dev,
            "--release" => profile = Profile::Release,
            "--crate-dir" => {
                let dir = args.next().context("--crate-dir needs a path")?;
                crate_dir = PathBuf::from(dir);
            }
            other => bail!("build-edge: unknown option `{other}` (options: --dev)"),
        }
    }
    bootstrap::ensure(bootstrap::Options {
        browser: false,
        quiet: true,
    })?;
    build(profile, &crate_dir)
}

pub fn build(profile: Profile, crate_dir: &Path) -> Result<()> {
    let started = Instant::now();
    let mut cmd = util::command("worker-build");
    cmd.arg(match profile {
        Profile::Release => "--release",
        Profile::Dev => "--dev",
    })
    .arg(crate_dir)
    .current_dir(crate_dir);
    util::run(&mut cmd)?;

    let out = crate_dir.join("build");
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

/// Size after `gzip -9`, which is what the Workers size limit is measured against.
fn gzip_len(bytes: &[u8]) -> Result<u64> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?.len() as u64)
}

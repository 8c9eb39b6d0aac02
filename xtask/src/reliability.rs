//! `cargo xtask reliability`: the long reliability suite (`origin/tests/reliability.rs`, whose
//! tests `cargo test` skips as ignored): many SIGKILLs at random points, bit flips at random
//! positions of the log and the store, full disks at random sizes. Streams the tests' output,
//! then prints one table of counts (sent, acknowledged, applied, dead-lettered, lost) per fault,
//! the table `RELIABILITY.md` quotes.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{self, fmt_duration};

/// What each case prints before its counts.
const ROW: &str = "RELIABILITY|";

struct Options {
    kills: u32,
    flips: u32,
    full_disks: u32,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        kills: 100,
        flips: 100,
        full_disks: 5,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| -> Result<u32> {
            args.next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{flag} needs a number"))
        };
        match arg.as_str() {
            "--kills" => opts.kills = value("--kills")?,
            "--flips" => opts.flips = value("--flips")?,
            "--full-disks" => opts.full_disks = value("--full-disks")?,
            other => bail!("reliability: unknown option `{other}` (see `cargo xtask help`)"),
        }
    }
    Ok(opts)
}

pub fn cmd(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    let started = Instant::now();
    let mut cmd = util::cargo();
    cmd.args(["test", "-p", "attune-origin", "--test", "reliability", "--"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env("ATTUNE_RELIABILITY_KILLS", opts.kills.to_string())
        .env("ATTUNE_RELIABILITY_FLIPS", opts.flips.to_string())
        .env("ATTUNE_RELIABILITY_FULL_DISKS", opts.full_disks.to_string())
        .stdout(Stdio::piped());
    println!("$ {}", util::display(&cmd));
    let mut child = cmd.spawn().context("could not start cargo test")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut rows = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        // A case's line can follow the test's name on the same line.
        if let Some(at) = line.find(ROW) {
            rows.push(line[at + ROW.len()..].to_string());
        }
    }
    let status = child.wait()?;
    println!();
    println!("| fault | sent | acknowledged | applied | dead-lettered | lost | notes |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("| {} |", row.replace('|', " | "));
    }
    println!();
    println!(
        "{} cases in {}",
        rows.len(),
        fmt_duration(started.elapsed())
    );
    if !status.success() {
        bail!("the reliability suite failed ({status})");
    }
    Ok(())
}

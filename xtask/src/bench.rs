//! `cargo xtask bench [args]`: the core's criterion benchmarks. Extra arguments go to the
//! benchmark harness (e.g. `cargo xtask bench rank` to filter by name).

use anyhow::Result;

use crate::util;

pub fn cmd(args: &[String]) -> Result<()> {
    let mut cmd = util::cargo();
    cmd.args(["bench", "-p", "attune-core"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    util::run(&mut cmd)
}

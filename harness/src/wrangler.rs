//! The Worker under `wrangler dev` (the real `workerd`, local KV): the command line every
//! runner uses.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// The environment `wrangler dev` runs with everywhere: it never phones home (no telemetry,
/// no `request.cf` fetch), and its output is plain text without prompts, for logs and error
/// messages.
pub const WRANGLER_ENV: [(&str, &str); 4] = [
    ("WRANGLER_SEND_METRICS", "false"),
    ("CLOUDFLARE_CF_FETCH_ENABLED", "false"),
    ("NO_COLOR", "1"),
    ("CI", "1"),
];

/// `wrangler dev` on 127.0.0.1 with its local state in a directory of the caller's.
#[derive(Clone, Debug)]
pub struct WranglerDev {
    port: u16,
    persist_to: PathBuf,
    config: Option<PathBuf>,
    inspector_port: Option<u16>,
    vars: Vec<String>,
}

impl WranglerDev {
    /// Listening on 127.0.0.1:`port`, local KV (and the rest of workerd's state) under
    /// `persist_to`.
    pub fn new(port: u16, persist_to: impl Into<PathBuf>) -> Self {
        WranglerDev {
            port,
            persist_to: persist_to.into(),
            config: None,
            inspector_port: None,
            vars: Vec::new(),
        }
    }

    /// A wrangler.toml other than the one in the working directory.
    #[must_use]
    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// workerd's devtools port. Its default (9229) is one per machine: stacks started side by
    /// side need one each.
    #[must_use]
    pub fn inspector_port(mut self, port: u16) -> Self {
        self.inspector_port = Some(port);
        self
    }

    /// A Worker variable (`--var NAME:VALUE`), overriding wrangler.toml's `[vars]`.
    #[must_use]
    pub fn var(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        self.vars.push(format!("{name}:{value}"));
        self
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Adds `dev` and its arguments, and [`WRANGLER_ENV`], to `cmd`, a command that runs
    /// wrangler.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.arg("dev");
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(["--ip", "127.0.0.1", "--port", &self.port.to_string()]);
        if let Some(port) = self.inspector_port {
            cmd.args(["--inspector-port", &port.to_string()]);
        }
        cmd.arg("--persist-to").arg(&self.persist_to);
        for var in &self.vars {
            cmd.args(["--var", var]);
        }
        cmd.envs(WRANGLER_ENV)
    }

    /// `wrangler dev` as a new command running the `wrangler` executable.
    pub fn command(&self, wrangler: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(wrangler);
        self.apply(&mut cmd);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_has_every_option_in_order() {
        let cmd = WranglerDev::new(8787, "/tmp/kv")
            .config("/tmp/wrangler.toml")
            .inspector_port(9339)
            .var("ATTUNE_DEMO_LOGIN", 1)
            .var("ATTUNE_BUDGET_MS", "50")
            .command("wrangler");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "dev",
                "--config",
                "/tmp/wrangler.toml",
                "--ip",
                "127.0.0.1",
                "--port",
                "8787",
                "--inspector-port",
                "9339",
                "--persist-to",
                "/tmp/kv",
                "--var",
                "ATTUNE_DEMO_LOGIN:1",
                "--var",
                "ATTUNE_BUDGET_MS:50",
            ]
        );
        let envs: Vec<_> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy(), v.map(|v| v.to_string_lossy())))
            .collect();
        assert!(envs.contains(&("WRANGLER_SEND_METRICS".into(), Some("false".into()))));
        assert!(envs.contains(&("CI".into(), Some("1".into()))));
    }

    #[test]
    fn options_left_out_are_not_on_the_command_line() {
        let cmd = WranglerDev::new(8787, "kv").command("wrangler");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "dev",
                "--ip",
                "127.0.0.1",
                "--port",
                "8787",
                "--persist-to",
                "kv"
            ]
        );
    }
}

//! A temporary working folder with its own `$FERROTUNE_HOME`, for tests that drive the binary as
//! a user would (shared by the registry and audit tests).

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, ensure};
use serde_json::Value;

pub struct Home {
    pub dir: tempfile::TempDir,
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

impl Home {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self { dir: tempfile::tempdir()? })
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn s(&self, p: &str) -> String {
        self.path(p).display().to_string()
    }

    /// `ferrotune ARGS` run in the folder, with `home/` as `$FERROTUNE_HOME` and `user` as `$USER`.
    pub fn cmd(&self, user: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ferrotune"))
            .args(args)
            .current_dir(self.dir.path())
            .env("FERROTUNE_HOME", self.path("home"))
            .env("USER", user)
            .env_remove("LOGNAME")
            .output()
            .expect("runs")
    }

    pub fn ok(&self, user: &str, args: &[&str]) -> anyhow::Result<String> {
        let o = self.cmd(user, args);
        ensure!(o.status.success(), "`ferrotune {}` failed:\n{}", args.join(" "), text(&o));
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// The command's `--json` output, parsed.
    pub fn json_as(&self, user: &str, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = args.to_vec();
        if !a.contains(&"--json") {
            a.push("--json");
        }
        let out = self.ok(user, &a)?;
        serde_json::from_str(&out).with_context(|| out)
    }
}

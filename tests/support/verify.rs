//! `provgate verify` run as users run it: its own config reaching a test registry, policies in a directory, JSON out.

use std::ffi::OsStr;
use std::path::PathBuf;

use serde_json::Value;

/// A directory holding `provgate.yaml` (reaching one registry over plain HTTP) and `policies/`.
pub struct Verify {
    _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub policies: PathBuf,
}

impl Verify {
    /// Writes the config for `registry` (`host:port`) and each (file name, YAML) of `policies`.
    pub fn new<N: AsRef<str>>(registry: &str, policies: &[(N, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("provgate.yaml");
        std::fs::write(&config, format!("registries:\n  hosts:\n    \"{registry}\": {{insecure: true}}\n")).unwrap();
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir(&policy_dir).unwrap();
        for (file, text) in policies {
            std::fs::write(policy_dir.join(file.as_ref()), text).unwrap();
        }
        Self { _dir: dir, config, policies: policy_dir }
    }

    /// `provgate verify --output json --config … --policy … ARGS`: its exit code and JSON report.
    pub fn run<A: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = A>) -> (Option<i32>, Value) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_provgate"))
            .args(["verify", "--output", "json", "--config"])
            .arg(&self.config)
            .arg("--policy")
            .arg(&self.policies)
            .args(args)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    }
}

//! Runs the example policies in `policies/` against their test cases in `policies/tests/<name>/cases.yaml`.

#![cfg(test)]

use super::cli::{self, Evaluation, TestOptions};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// The policy file, relative to the case file.
    policy: PathBuf,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    name: String,
    statement: PathBuf,
    image: Option<String>,
    namespace: Option<String>,
    /// Default 2023-03-20T00:00:00Z, so cases do not age.
    now: Option<DateTime<Utc>>,
    #[serde(default)]
    signatures: Vec<serde_json::Value>,
    /// Local evidence documents by entry name, relative to the case file (`policy test --evidence NAME=FILE`).
    #[serde(default)]
    evidence: std::collections::BTreeMap<String, PathBuf>,
    /// `pass`, `fail` or `error` per validation, in order.
    #[serde(default)]
    expect: Vec<String>,
    /// Expected explanation per validation; `""` skips one.
    #[serde(default)]
    messages: Vec<String>,
    /// `allow`, `deny`, `warn` or `audit`.
    decision: Option<String>,
    /// Default 0 if every `expect` is `pass`, else 1.
    exit_code: Option<u8>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn case_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path().join("cases.yaml"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn run_case(dir: &Path, policy: &Path, case: &Case) {
    let label = format!("{} / {}", dir.display(), case.name);
    let options = TestOptions {
        statement: dir.join(&case.statement),
        image: case.image.clone(),
        namespace: case.namespace.clone(),
        now: Some(case.now.unwrap_or_else(|| "2023-03-20T00:00:00Z".parse().unwrap())),
        signatures: case.signatures.clone(),
        evidence: case.evidence.iter().map(|(name, file)| (name.clone(), dir.join(file))).collect(),
        ..TestOptions::default()
    };
    let all_pass = case.expect.iter().all(|e| e == "pass");
    let want_exit = case.exit_code.unwrap_or(if all_pass { 0 } else { 1 });
    let report = cli::test(policy, &options);
    assert_eq!(report.exit_code, want_exit, "{label}:\n{}", report.text);
    let json = cli::test(policy, &TestOptions { json: true, ..options.clone() });
    assert_eq!(json.exit_code, want_exit, "{label}");
    serde_json::from_str::<serde_json::Value>(&json.text).unwrap();
    if want_exit == 2 {
        assert!(report.text.starts_with("error: "), "{label}: {}", report.text);
        return;
    }
    let run = cli::run(policy, &options).unwrap();
    assert_eq!(run.policies.len(), 1, "{label}");
    let got: Vec<&str> = run.policies[0]
        .validations
        .iter()
        .map(|v| match v.verdict {
            Evaluation::Pass => "pass",
            Evaluation::Fail { .. } => "fail",
            Evaluation::Error { .. } => "error",
        })
        .collect();
    assert_eq!(got, case.expect, "{label}:\n{}", report.text);
    for (v, want) in run.policies[0].validations.iter().zip(&case.messages) {
        if !want.is_empty() {
            assert_eq!(&v.verdict.explain(), want, "{label}: validation {}", v.index);
        }
    }
    if let Some(decision) = &case.decision {
        assert_eq!(run.policies[0].decision, decision, "{label}");
    }
}

#[test]
fn every_example_policy_passes_its_cases() {
    let files = case_files();
    assert!(files.len() >= 6, "{files:?}");
    let mut cases = 0;
    for file in files {
        let dir = file.parent().unwrap();
        let spec: CaseFile = serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let policy = dir.join(&spec.policy);
        assert!(spec.cases.iter().any(|c| c.expect.iter().any(|e| e != "pass")), "{file:?} tests no failure");
        for case in &spec.cases {
            run_case(dir, &policy, case);
            cases += 1;
        }
    }
    assert!(cases >= 18, "{cases}");
}

#[test]
fn every_example_policy_has_cases_and_loads() {
    let report = cli::check(&root());
    assert_eq!(report.exit_code, 0, "{}", report.text);
    assert!(report.text.contains("signatures read from registry.example.com/signatures)"), "{}", report.text);
    let tested: Vec<String> = case_files().iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    for entry in std::fs::read_dir(root()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yaml") {
            assert!(tested.iter().any(|t| t.contains(&format!("policy: ../../{name}"))), "{name} has no test cases");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("registry.example.com/"), "{name} must match example images only");
        }
    }
}

/// The tampered twin of each passing provenance case: one changed builder id or source URI must fail it.
#[test]
fn tampered_twins_of_passing_cases_fail() {
    let dir = tempfile::tempdir().unwrap();
    let statements = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/statements");
    let twins = [
        (
            "chains-slsa-v02.yaml",
            "chains-kaniko-slsa-v0.2-statement.json",
            "https://tekton.dev/chains/v2",
            "https://tekton.dev/chains/v2x",
        ),
        (
            "chains-slsa-v02.yaml",
            "chains-kaniko-slsa-v0.2-statement.json",
            "tekton.dev/v1beta1/TaskRun",
            "tekton.dev/v1beta1/TaskRunX",
        ),
        (
            "chains-slsa-v1.yaml",
            "chains-slsa-v2alpha4-task-output-image.json",
            "\"https://tekton.dev/chains/v2\"",
            "\"https://evil.example/chains/v2\"",
        ),
        ("chains-slsa-v1.yaml", "chains-slsa-v2alpha4-task-output-image.json", "chains/v2/slsa", "chains/v2/slsa2"),
        (
            "source-allowlist.yaml",
            "chains-slsa-v2alpha4-task-output-image.json",
            "github.com/acme/app.git",
            "github.com/acme-evil/app.git",
        ),
        (
            "source-allowlist.yaml",
            "chains-slsa-v2alpha4-task-output-image.json",
            "tektoncd/catalog.git",
            "tektoncd/catalog-evil.git",
        ),
        (
            "source-allowlist.yaml",
            "chains-slsa-v2alpha4-task-output-image.json",
            "\"sha1\": \"6ed7",
            "\"sha512\": \"6ed7",
        ),
        (
            "freshness.yaml",
            "chains-slsa-v2alpha4-task-output-image.json",
            "\"finishedOn\": \"2023-03-14",
            "\"finishedOn\": \"2023-01-14",
        ),
    ];
    for (policy, statement, from, to) in twins {
        let original = std::fs::read_to_string(statements.join(statement)).unwrap();
        assert!(original.contains(from), "{statement} lacks {from}");
        let digest = serde_json::from_str::<serde_json::Value>(&original).unwrap()["subject"][0]["digest"]["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let policy = root().join(policy);
        let text = std::fs::read_to_string(&policy).unwrap();
        let glob = text.lines().find_map(|l| l.trim().strip_prefix("images: [\"")).unwrap();
        let image = format!("{}/app@sha256:{digest}", glob.trim_end_matches("**\"]").trim_end_matches('/'));
        let options = |file: PathBuf| TestOptions {
            statement: file,
            image: Some(image.clone()),
            now: Some("2023-03-20T00:00:00Z".parse().unwrap()),
            ..TestOptions::default()
        };
        let genuine = cli::test(&policy, &options(statements.join(statement)));
        assert_eq!(genuine.exit_code, 0, "{policy:?} {statement}:\n{}", genuine.text);
        let twin = dir.path().join(statement);
        std::fs::write(&twin, original.replacen(from, to, 1)).unwrap();
        let report = cli::test(&policy, &options(twin));
        assert_eq!(report.exit_code, 1, "{policy:?} with {from} -> {to}:\n{}", report.text);
    }
}

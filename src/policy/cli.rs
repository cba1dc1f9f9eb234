//! `provgate policy check` and `provgate policy test`: offline loading and evaluation, as printable reports.

pub use super::eval::Evaluation;
use super::eval::{CelInput, ImageInfo, Limits, ValidationOutcome};
use super::{Mode, PolicySet, engine, load};
use crate::images::ImageRef;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a command prints and the process exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub text: String,
    pub exit_code: u8,
}

/// Exit codes of `policy test` (and `check`: 0 or 1).
pub const EXIT_PASS: u8 = 0;
pub const EXIT_FAIL: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// Largest statement or envelope file read.
const MAX_STATEMENT_FILE: u64 = 4 << 20;

/// `provgate policy check PATH`: loads and compiles every policy; one `file:line: reason` per error.
pub fn check(path: &Path) -> CommandOutput {
    match load(path) {
        Ok(set) => {
            let validations: usize = set.policies().iter().map(|p| p.validations.len()).sum();
            let mut text = String::new();
            for p in set.policies() {
                let only = p.storage.only().map(|(read, _)| format!(" ({read} only)"));
                let mut looked_up = match (&p.signatures, only) {
                    (Some(r), only) => format!("; signatures read from {}{}", r.name(), only.unwrap_or_default()),
                    (None, None) => String::new(),
                    (None, Some(only)) => format!("; signatures read from each image's own repository{only}"),
                };
                for e in &p.evidence {
                    looked_up.push_str(&format!("; evidence {} from {}", e.name, e.store.key()));
                }
                text.push_str(&format!(
                    "ok  {} ({}:{}, mode {}, {} authorities, {} validations; requires {}{looked_up})\n",
                    p.name,
                    p.file.display(),
                    p.line,
                    p.mode.as_str(),
                    p.authorities.len(),
                    p.validations.len(),
                    p.requirements.describe()
                ));
            }
            text.push_str(&format!(
                "ok: {} policies, {validations} validations in {}\n",
                set.policies().len(),
                path.display()
            ));
            CommandOutput { text, exit_code: EXIT_PASS }
        }
        Err(errors) => CommandOutput { text: format!("{errors}\n"), exit_code: EXIT_FAIL },
    }
}

/// Inputs of `provgate policy test`.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// An in-toto statement, or a DSSE envelope holding one (its signature is not checked here).
    pub statement: PathBuf,
    /// `REF@DIGEST`; default: the statement's first subject.
    pub image: Option<String>,
    /// The admitted object (JSON or YAML); default `{}`.
    pub object: Option<PathBuf>,
    /// Default `default`.
    pub namespace: Option<String>,
    /// The CEL `now`; default the current time.
    pub now: Option<DateTime<Utc>>,
    /// Verified signature payloads to pretend, `{authority, dockerReference, annotations}`; default none.
    pub signatures: Vec<serde_json::Value>,
    /// The attestation name the statement is filed under; default `provenance`.
    pub attestation: Option<String>,
    /// Local evidence documents, `(entry name, file)`: each is read as the policy's entry of that name reads what
    /// its store serves, and must be named by a descriptor its `from` selects. Entries without a file are empty.
    pub evidence: Vec<(String, PathBuf)>,
    pub json: bool,
}

/// The structured result of `policy test`, also its stable `--output json` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestRun {
    pub image: String,
    pub predicate_type: String,
    pub policies: Vec<PolicyRun>,
    pub passed: usize,
    pub failed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRun {
    pub name: String,
    pub file: PathBuf,
    pub mode: Mode,
    /// What admission would do: `allow`, or on failure `deny` / `warn` / `audit` by mode.
    pub decision: &'static str,
    pub validations: Vec<ValidationOutcome>,
}

impl TestRun {
    pub fn exit_code(&self) -> u8 {
        if self.failed == 0 { EXIT_PASS } else { EXIT_FAIL }
    }
}

/// `provgate policy test PATH --statement FILE ...`: 0 all pass, 1 some fail, 2 usage or config error.
pub fn test(path: &Path, options: &TestOptions) -> CommandOutput {
    match run(path, options) {
        Ok(run) => {
            let text = if options.json { to_json(&run) } else { table(&run) };
            CommandOutput { text, exit_code: run.exit_code() }
        }
        Err(error) if options.json => {
            CommandOutput { text: format!("{}\n", json!({ "error": error })), exit_code: EXIT_USAGE }
        }
        Err(error) => CommandOutput { text: format!("error: {error}\n"), exit_code: EXIT_USAGE },
    }
}

/// Loads, reads the inputs and evaluates; `Err` is a usage or configuration error.
pub fn run(path: &Path, options: &TestOptions) -> Result<TestRun, String> {
    let set: PolicySet = load(path).map_err(|e| format!("policies do not load:\n{e}"))?;
    let statement = read_statement(&options.statement)?;
    let predicate_type = statement.get("predicateType").and_then(|t| t.as_str()).unwrap_or_default().to_string();
    let digests: Vec<&str> = statement
        .get("subject")
        .and_then(|s| s.as_array())
        .map(|subjects| subjects.iter().filter_map(|s| s.pointer("/digest/sha256")?.as_str()).collect())
        .unwrap_or_default();
    let reference = match &options.image {
        Some(image) => image.clone(),
        None => {
            let name = statement.pointer("/subject/0/name").and_then(|n| n.as_str()).unwrap_or_default();
            format!("{name}@sha256:{}", digests.first().ok_or("the statement has no subject with a sha256 digest")?)
        }
    };
    let image = ImageRef::parse(&reference).map_err(|e| format!("--image {reference:?}: {e}"))?;
    let digest = image.digest().ok_or_else(|| format!("--image {reference:?} must be REF@DIGEST"))?;
    let namespace = options.namespace.clone().unwrap_or_else(|| "default".into());
    let policies = set.matching(&image, &namespace);
    if policies.is_empty() {
        return Err(format!("no policy under {} matches {image} in namespace {namespace:?}", path.display()));
    }
    // A statement read via a release list is about the list, one covering an image volume's layers about the layers.
    let about_elsewhere =
        policies.iter().flat_map(|p| &p.requirements.attestations).any(|a| a.via.is_some() || a.cover_layers);
    if !digests.contains(&digest.hex()) && !about_elsewhere {
        return Err(format!("the statement does not attest {digest} (its subjects: {})", digests.join(", ")));
    }
    let object = match &options.object {
        Some(file) => read_object(file)?,
        None => json!({}),
    };
    let kind = object.get("kind").cloned().unwrap_or_else(|| json!("Pod"));
    let evidence = CelInput::unverified_for_policy_test(
        ImageInfo::from_ref(&image),
        options.signatures.clone(),
        BTreeMap::from([(options.attestation.clone().unwrap_or_else(|| "provenance".into()), vec![statement])]),
        object,
        namespace.clone(),
        json!({"operation": "CREATE", "userInfo": {"username": "provgate-policy-test"}, "kind": {"kind": kind}}),
        options.now.unwrap_or_else(Utc::now),
    );
    let engine = engine().map_err(|e| e.to_string())?;
    if let Some((name, _)) = options.evidence.iter().find(|(n, _)| !policies.iter().any(|p| declares(p, n))) {
        return Err(format!("--evidence {name}: no matching policy declares an evidence entry {name:?}"));
    }
    let policies: Vec<PolicyRun> = policies
        .iter()
        .map(|p| {
            let documents = local_evidence(engine, p, &evidence, &options.evidence)?;
            let input = evidence.clone().with_evidence(documents);
            let activation = engine.activation(&input, &Limits::default()).map_err(|e| e.to_string())?;
            let outcome = activation.evaluate(&p.name, &p.validations);
            let decision = match (outcome.passed(), p.mode) {
                (true, _) => "allow",
                (false, Mode::Enforce) => "deny",
                (false, Mode::Warn) => "warn",
                (false, Mode::Audit) => "audit",
            };
            Ok(PolicyRun {
                name: p.name.clone(),
                file: p.file.clone(),
                mode: p.mode,
                decision,
                validations: outcome.validations,
            })
        })
        .collect::<Result<_, String>>()?;
    let all = || policies.iter().flat_map(|p| &p.validations);
    let passed = all().filter(|v| v.verdict.passed()).count();
    let failed = all().count() - passed;
    Ok(TestRun { image: image.to_string(), predicate_type, policies, passed, failed })
}

fn declares(policy: &super::Policy, name: &str) -> bool {
    policy.evidence.iter().any(|d| d.name == name)
}

/// `evidence.<name>` for `policy` from local files: each read as its entry reads a store's answer (within its
/// `maxBytes`, parsed as its `mediaType` says), and accepted only when a descriptor its `from` selects from the
/// statement names the file's sha256, as admission accepts only what a signed digest names.
fn local_evidence(
    engine: &super::CelEngine,
    policy: &super::Policy,
    input: &CelInput,
    files: &[(String, PathBuf)],
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    use crate::evidence::{document, normalise, select};
    let mut out = serde_json::Map::new();
    for decl in &policy.evidence {
        let mut items = Vec::new();
        for (_, file) in files.iter().filter(|(n, _)| *n == decl.name) {
            let why = |e: String| format!("--evidence {}={}: {e}", decl.name, file.display());
            let bytes = read_at_most(file, decl.max_bytes).map_err(why)?;
            let results = engine.select_unverified(input, &decl.from).map_err(why)?;
            let selected = select::descriptors(&results, crate::evidence::spec::MAX_SELECTED)
                .map_err(|e| why(format!("{e} ({})", e.code())))?;
            let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            let Some(descriptor) = selected.into_iter().find(|d| d.sha256 == sha256) else {
                return Err(why(format!(
                    "the file is sha256:{sha256}, which no descriptor that `from` selects in the statement names; \
                     admission would never read it for policy {:?}",
                    policy.name
                )));
            };
            let document = normalise::read(&bytes, decl.expected)
                .map_err(|e| why(format!("cannot be read as {}: {e}", decl.expected.describe())))?;
            let store = file.display().to_string();
            items.push(document::Item { descriptor, document: std::sync::Arc::new(document), store }.to_json());
        }
        out.insert(decl.name.clone(), serde_json::Value::Array(items));
    }
    Ok(out)
}

fn read_capped(file: &Path) -> Result<Vec<u8>, String> {
    read_at_most(file, MAX_STATEMENT_FILE).map_err(|e| format!("{}: {e}", file.display()))
}

/// The file's bytes, refused when it holds more than `max`.
fn read_at_most(file: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(bytes)
}

/// An in-toto statement, directly or as the payload of a DSSE envelope.
fn read_statement(file: &Path) -> Result<serde_json::Value, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    let doc: serde_json::Value = serde_json::from_slice(&read_capped(file)?).map_err(|e| bad(&e))?;
    let doc = match (doc.get("payloadType"), doc.get("payload").and_then(|p| p.as_str())) {
        (Some(_), Some(payload)) => {
            let raw = base64::engine::general_purpose::STANDARD.decode(payload).map_err(|e| bad(&e))?;
            serde_json::from_slice(&raw).map_err(|e| bad(&format!("envelope payload: {e}")))?
        }
        _ => doc,
    };
    if doc.get("predicateType").and_then(|t| t.as_str()).is_none() || doc.get("subject").is_none() {
        return Err(bad(&"not an in-toto statement (no predicateType or subject)"));
    }
    Ok(doc)
}

fn read_object(file: &Path) -> Result<serde_json::Value, String> {
    let bytes = read_capped(file)?;
    serde_yaml_ng::from_slice(&bytes).map_err(|e| format!("{}: {e}", file.display()))
}

fn to_json(run: &TestRun) -> String {
    let mut text = serde_json::to_string_pretty(run).unwrap_or_default();
    text.push('\n');
    text
}

/// One row per validation: policy, mode, index, result, and the message (failures) or expression (passes).
fn table(run: &TestRun) -> String {
    let mut rows = vec![["POLICY".to_string(), "MODE".into(), "#".into(), "RESULT".into(), "DETAIL".into()]];
    for p in &run.policies {
        let mode = format!("{:?}", p.mode).to_lowercase();
        if p.validations.is_empty() {
            rows.push([p.name.clone(), mode.clone(), "-".into(), "pass".into(), "(no validations)".into()]);
        }
        for v in &p.validations {
            let (result, detail) = match &v.verdict {
                Evaluation::Pass => ("pass", v.expression.clone()),
                Evaluation::Fail { .. } => ("FAIL", v.verdict.explain()),
                Evaluation::Error { .. } => ("ERROR", v.verdict.explain()),
            };
            rows.push([p.name.clone(), mode.clone(), v.index.to_string(), result.into(), detail]);
        }
    }
    let widths: Vec<usize> = (0..4).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = format!("image: {}\npredicateType: {}\n\n", run.image, run.predicate_type);
    for row in &rows {
        for (cell, width) in row.iter().zip(&widths) {
            out.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    let decisions: Vec<String> = run.policies.iter().map(|p| format!("{}: {}", p.name, p.decision)).collect();
    out.push_str(&format!("\n{} passed, {} failed; {}\n", run.passed, run.failed, decisions.join(", ")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KANIKO: &str = "4fc2b2ae92a2bf753c0ab478b01c5f71ca8d2a2cf9fb5435040e8c3b7df99daf";
    const POLICY: &str = "apiVersion: provgate.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: t
spec:
  match:
    images: [\"registry.example.com/**\"]
  validations:
    - expression: provenance.builder.id == \"https://tekton.dev/chains/v2\"
      message: not chains
    - expression: provenance.materials.size() > 0
      messageExpression: '\"no materials in \" + provenance.version'
";

    fn statement_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/statements/chains-kaniko-slsa-v0.2-statement.json")
    }

    fn setup(policy: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, policy).unwrap();
        (dir, file)
    }

    fn options() -> TestOptions {
        TestOptions {
            statement: statement_path(),
            image: Some(format!("registry.example.com/team/app@sha256:{KANIKO}")),
            now: Some("2022-10-05T00:00:00Z".parse().unwrap()),
            ..TestOptions::default()
        }
    }

    /// `policy check` says where a policy reads signatures when it is not everywhere beside the image.
    #[test]
    fn check_names_the_signature_repository_and_the_places_read() {
        let with = |signatures: &str| {
            format!(
                "{POLICY}  authorities:\n    - name: a\n      key: k8s://provgate-system/cosign\n  signatures: {signatures}\n"
            )
        };
        let table = [
            ("{storage: [tags]}", "; signatures read from each image's own repository (cosign tags only))"),
            ("{storage: [referrers]}", "; signatures read from each image's own repository (OCI referrers only))"),
            (
                "{repository: r.example.com/s, storage: [tags]}",
                "; signatures read from r.example.com/s (cosign tags only))",
            ),
            ("{repository: r.example.com/s}", "; signatures read from r.example.com/s)"),
            ("{storage: [tags, referrers]}", "validations; requires signature from authority a)"),
        ];
        for (signatures, needle) in table {
            let (_dir, file) = setup(&with(signatures));
            let report = check(&file);
            assert_eq!(report.exit_code, EXIT_PASS, "{}", report.text);
            assert!(report.text.contains(needle), "{signatures}: {}", report.text);
        }
    }

    #[test]
    fn table_shows_each_validation_and_exit_one_on_failure() {
        let (_dir, file) = setup(POLICY);
        let report = test(&file, &options());
        assert_eq!(report.exit_code, EXIT_FAIL, "{}", report.text);
        let lines: Vec<&str> = report.text.lines().collect();
        assert!(lines.iter().any(|l| l.starts_with("t ") && l.contains(" 0  pass ")), "{}", report.text);
        assert!(
            lines.iter().any(|l| l.contains(" 1  FAIL ") && l.ends_with("no materials in v0.2")),
            "{}",
            report.text
        );
        assert!(report.text.contains("1 passed, 1 failed; t: deny"), "{}", report.text);

        let (_dir, file) = setup(&POLICY.replace("size() > 0", "size() == 0"));
        assert_eq!(test(&file, &options()).exit_code, EXIT_PASS);
    }

    #[test]
    fn json_output_is_stable() {
        let (_dir, file) = setup(POLICY);
        let report = test(&file, &TestOptions { json: true, ..options() });
        let got: serde_json::Value = serde_json::from_str(&report.text).unwrap();
        let want = json!({
            "image": format!("registry.example.com/team/app@sha256:{KANIKO}"),
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "policies": [{
                "name": "t",
                "file": file.display().to_string(),
                "mode": "enforce",
                "decision": "deny",
                "validations": [
                    {"index": 0, "expression": "provenance.builder.id == \"https://tekton.dev/chains/v2\"", "result": "pass"},
                    {"index": 1, "expression": "provenance.materials.size() > 0", "result": "fail", "message": "no materials in v0.2"},
                ],
            }],
            "passed": 1,
            "failed": 1,
        });
        assert_eq!(got, want);
    }

    #[test]
    fn a_dsse_envelope_is_unwrapped() {
        let (dir, file) = setup(POLICY);
        let payload = base64::engine::general_purpose::STANDARD.encode(std::fs::read(statement_path()).unwrap());
        let envelope = dir.path().join("envelope.json");
        let doc = json!({"payloadType": "application/vnd.in-toto+json", "payload": payload, "signatures": []});
        std::fs::write(&envelope, doc.to_string()).unwrap();
        let run = run(&file, &TestOptions { statement: envelope.clone(), ..options() }).unwrap();
        assert_eq!((run.passed, run.failed), (1, 1));

        std::fs::write(&envelope, json!({"payloadType": "x", "payload": "!!"}).to_string()).unwrap();
        let report = test(&file, &TestOptions { statement: envelope, ..options() });
        assert_eq!(report.exit_code, EXIT_USAGE, "{}", report.text);
    }

    #[test]
    fn usage_and_config_errors_exit_two() {
        let (dir, file) = setup(POLICY);
        let not_statement = dir.path().join("x.json");
        std::fs::write(&not_statement, "{\"hello\": 1}").unwrap();
        let (_bad_dir, bad_policy) = setup(&POLICY.replace("== \"https://tekton.dev/chains/v2\"", "=="));
        let cases: Vec<(PathBuf, TestOptions, &str)> = vec![
            (file.clone(), TestOptions { statement: dir.path().join("missing.json"), ..options() }, "missing.json"),
            (file.clone(), TestOptions { statement: not_statement, ..options() }, "not an in-toto statement"),
            (
                file.clone(),
                TestOptions { image: Some("registry.example.com/team/app:1".into()), ..options() },
                "REF@DIGEST",
            ),
            (
                file.clone(),
                TestOptions {
                    image: Some(format!("registry.example.com/team/app@sha256:{}", "a".repeat(64))),
                    ..options()
                },
                "does not attest",
            ),
            (
                file.clone(),
                TestOptions { image: Some(format!("other.example/app@sha256:{KANIKO}")), ..options() },
                "no policy",
            ),
            (bad_policy.clone(), options(), "policies do not load"),
        ];
        for (policy, opts, needle) in cases {
            let report = test(&policy, &opts);
            assert_eq!(report.exit_code, EXIT_USAGE, "{needle}: {}", report.text);
            assert!(report.text.contains(needle), "{needle}: {}", report.text);
            let json = test(&policy, &TestOptions { json: true, ..opts });
            assert!(serde_json::from_str::<serde_json::Value>(&json.text).unwrap()["error"].is_string());
        }
        // Without --image, the statement's own subject is judged; the example glob does not match it.
        let report = test(&file, &TestOptions { image: None, ..options() });
        assert!(report.text.contains("no policy under") && report.text.contains("ttl.sh/tekton-chains-demo"));
    }

    #[test]
    fn check_reports_file_line_and_exits_non_zero() {
        let (dir, _file) = setup(POLICY);
        let ok = check(dir.path());
        assert_eq!(ok.exit_code, 0);
        let lines: Vec<&str> = ok.text.lines().collect();
        assert_eq!(lines.len(), 2, "{}", ok.text);
        assert!(
            lines[0].starts_with("ok  t (")
                && lines[0].ends_with(":1, mode enforce, 0 authorities, 2 validations; requires no verification)"),
            "{}",
            ok.text
        );
        assert_eq!(lines[1], format!("ok: 1 policies, 2 validations in {}", dir.path().display()));
        std::fs::write(dir.path().join("q.yaml"), POLICY.replace("name: t", "name: q").replace("size()", "sise()"))
            .unwrap();
        let bad = check(dir.path());
        assert_eq!(bad.exit_code, EXIT_FAIL);
        assert!(bad.text.contains("q.yaml:11: validations[1].expression: unknown function `sise`"), "{}", bad.text);
    }
}

//! Reading policy files into a compiled [`PolicySet`]: every error names its file and line, and one bad document
//! rejects the whole set (the caller keeps the previous good one).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::cel::Expect;
use super::eval::{CompiledValidation, Validation};
use super::model::{API_VERSION, ImagePolicyDoc, KIND};
use super::{Policy, PolicySet};
use crate::artifact::Storage;
use crate::policy::matcher::Matcher;
use crate::policy::require::Requirements;
use crate::policy::signatures::SignatureRepository;
use crate::policy::trust::{self, AuthoritySource};

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// All the errors found while loading; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<LoadError>);

/// The policy files at `path`: the file itself, or every `*.yaml`/`*.yml` directly inside the directory (names
/// starting with `.` skipped, so a ConfigMap volume's `..data` entries are not read twice), sorted by name.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, LoadErrors> {
    let io_err =
        |e: std::io::Error| LoadErrors(vec![LoadError { file: path.into(), line: None, message: e.to_string() }]);
    if path.metadata().map_err(io_err)?.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if yaml && !name.starts_with('.') && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Loads and compiles every policy at `path` (see [`policy_files`]).
pub fn load(path: &Path) -> Result<PolicySet, LoadErrors> {
    let files = policy_files(path)?;
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => return Err(LoadErrors(vec![LoadError { file, line: None, message: e.to_string() }])),
        }
    }
    load_sources(&sources)
}

/// Compiles policies from `(file name, text)` pairs.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<PolicySet, LoadErrors> {
    let mut errors = Vec::new();
    let mut policies: Vec<Arc<Policy>> = Vec::new();
    let mut hasher = Sha256::new();
    for (file, text) in sources {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        for doc in documents(text) {
            match compile_doc(file, &doc) {
                Ok(policy) => {
                    if let Some(first) = policies.iter().find(|p| p.name == policy.name) {
                        errors.push(LoadError {
                            file: file.clone(),
                            line: Some(doc.first_line),
                            message: format!(
                                "policy name {:?} is already used in {}",
                                policy.name,
                                first.file.display()
                            ),
                        });
                    } else {
                        policies.push(Arc::new(policy));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    Ok(PolicySet::new(policies, hex::encode(&hasher.finalize()[..8])))
}

/// One `---`-separated YAML document and the file line it starts on (1-based).
struct Document {
    first_line: usize,
    text: String,
}

fn documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = Document { first_line: 1, text: String::new() };
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(std::mem::replace(&mut current, Document { first_line: i + 2, text: String::new() }));
            continue;
        }
        current.text.push_str(line);
        current.text.push('\n');
    }
    docs.push(current);
    docs.retain(|d| d.text.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

fn compile_doc(file: &Path, doc: &Document) -> Result<Policy, LoadError> {
    let err = |line: usize, message: String| LoadError { file: file.to_path_buf(), line: Some(line), message };
    // The line where `needle` first appears in this document, else the document's first line.
    let line_of =
        |needle: &str| doc.text.lines().position(|l| l.contains(needle)).map_or(doc.first_line, |i| doc.first_line + i);
    let parsed: ImagePolicyDoc = serde_yaml_ng::from_str(&doc.text).map_err(|e| {
        let line = e.location().map_or(doc.first_line, |l| doc.first_line + l.line() - 1);
        err(line, e.to_string())
    })?;
    if parsed.api_version != API_VERSION {
        return Err(err(
            line_of("apiVersion"),
            format!("apiVersion must be {API_VERSION:?}, not {:?}", parsed.api_version),
        ));
    }
    if parsed.kind != KIND {
        return Err(err(line_of("kind"), format!("kind must be {KIND:?}, not {:?}", parsed.kind)));
    }
    let name = parsed.metadata.name;
    if name.is_empty() {
        return Err(err(line_of("name"), "metadata.name must not be empty".into()));
    }
    let matches = &parsed.spec.matches;
    let matcher = Matcher::new(&matches.images, &matches.namespaces).map_err(|message| {
        let culprit = matches.images.iter().chain(&matches.namespaces).find(|g| message.contains(g.as_str()));
        err(culprit.map_or_else(|| line_of("match"), |g| line_of(g)), message)
    })?;
    let validations = compile_validations(&parsed.spec.validations, &doc.text).map_err(|(offset, message)| {
        err(offset.map_or_else(|| line_of("validations"), |o| doc.first_line + o), message)
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut authorities: Vec<AuthoritySource> = Vec::new();
    for spec in &parsed.spec.authorities {
        let line = line_of(&format!("name: {}", spec.name));
        if authorities.iter().any(|a| a.name() == spec.name) {
            return Err(err(line, format!("authorities: name {:?} is used twice", spec.name)));
        }
        authorities.push(trust::compile(spec, base).map_err(|m| err(line, m))?);
    }
    let names: Vec<String> = authorities.iter().map(|a| a.name().to_owned()).collect();
    let requirements =
        Requirements::compile(parsed.spec.require.as_ref(), &names).map_err(|m| err(line_of("require"), m))?;
    let (signatures, storage) = match &parsed.spec.signatures {
        Some(_) if authorities.is_empty() => {
            let message =
                "spec.signatures says where signatures are read, but spec.authorities lists no one to verify them";
            return Err(err(line_of("signatures:"), message.into()));
        }
        Some(spec) => {
            let at = |m| err(line_of("signatures:"), m);
            (SignatureRepository::compile(spec).map_err(at)?.map(Arc::new), spec.storage().map_err(at)?)
        }
        None => (None, Storage::BOTH),
    };
    let evidence = compile_evidence(&parsed.spec, &validations, authorities.is_empty()).map_err(|(needles, m)| {
        let found = needles.iter().find_map(|n| doc.text.lines().position(|l| l.contains(n.as_str())));
        err(found.map_or(doc.first_line, |i| doc.first_line + i), m)
    })?;
    Ok(Policy {
        name,
        file: file.to_path_buf(),
        line: doc.first_line,
        mode: parsed.spec.mode,
        matcher,
        authorities,
        requirements,
        validations,
        signatures,
        storage,
        evidence,
    })
}

/// Compiles `spec.evidence`; an error carries the texts to find its line by (the first found wins) and the
/// message. Evidence is selected from verified statements, so it needs authorities; a validation may read
/// `evidence` only when some is declared.
fn compile_evidence(
    spec: &super::model::Spec,
    validations: &[CompiledValidation],
    no_authorities: bool,
) -> Result<Vec<crate::evidence::spec::EvidenceDecl>, (Vec<String>, String)> {
    let evidence_line = || vec!["evidence:".to_owned()];
    if spec.evidence.is_empty() {
        let reads = |v: &CompiledValidation| {
            v.expression.reads("evidence") || v.message_expression.as_ref().is_some_and(|m| m.reads("evidence"))
        };
        return match validations.iter().position(reads) {
            Some(i) => Err((
                vec!["validations:".to_owned()],
                format!("validations[{i}] reads `evidence`, but spec.evidence declares none"),
            )),
            None => Ok(Vec::new()),
        };
    }
    if no_authorities {
        let message =
            "spec.evidence selects from verified statements, but spec.authorities lists no one to verify them";
        return Err((evidence_line(), message.to_owned()));
    }
    let engine = super::engine().map_err(|e| (evidence_line(), e.to_string()))?;
    crate::evidence::spec::compile(&spec.evidence, engine).map_err(|(i, m)| {
        // The entry's `from` as written (a distinctive prefix of its first line), else `evidence:`.
        let from = spec.evidence.get(i).and_then(|e| e.from.lines().map(str::trim).find(|l| !l.is_empty()));
        let mut needles: Vec<String> = from.map(|f| f.chars().take(40).collect()).into_iter().collect();
        needles.extend(evidence_line());
        (needles, m)
    })
}

/// Compiles `spec.validations`; an error carries the 0-based line in `text` where the failing expression is
/// written (when it can be found) and a message naming the validation, the field and the expression.
fn compile_validations(
    validations: &[Validation],
    text: &str,
) -> Result<Vec<CompiledValidation>, (Option<usize>, String)> {
    let engine = super::engine().map_err(|e| (None, e.to_string()))?;
    // Validations are searched for in order, each after the previous one, so equal prefixes do not confuse lines.
    let mut cursor = text.lines().position(|l| l.trim_start().starts_with("validations:")).unwrap_or(0);
    let mut compiled = Vec::with_capacity(validations.len());
    for (i, v) in validations.iter().enumerate() {
        let start = cursor;
        let expression_line = line_in(text, start, &v.expression);
        cursor = expression_line.map_or(cursor, |l| l + 1);
        let expression = engine
            .compile(&v.expression, Expect::Bool)
            .map_err(|e| (expression_line, format!("validations[{i}].expression: {e}")))?;
        let message_expression = match &v.message_expression {
            Some(m) => Some(
                engine
                    .compile(m, Expect::String)
                    .map_err(|e| (line_in(text, start, m), format!("validations[{i}].messageExpression: {e}")))?,
            ),
            None => None,
        };
        compiled.push(CompiledValidation { expression, message: v.message.clone(), message_expression });
    }
    Ok(compiled)
}

/// The 0-based line of `text`, at or after `from`, holding the start of `source` (its first line, or a
/// distinctive prefix of it).
fn line_in(text: &str, from: usize, source: &str) -> Option<usize> {
    let first = source.lines().map(str::trim).find(|l| !l.is_empty())?;
    let find = |needle: &str| text.lines().enumerate().skip(from).find(|(_, l)| l.contains(needle)).map(|(i, _)| i);
    let prefix: String = first.chars().take(40).collect();
    find(&prefix).or_else(|| {
        // Quoting in YAML may differ from the parsed text: fall back to the first word-ish run.
        let word: String = first.chars().take_while(|c| c.is_alphanumeric() || *c == '.' || *c == '_').collect();
        if word.len() >= 3 { find(&word) } else { None }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mode;

    fn load_one(text: &str) -> Result<PolicySet, LoadErrors> {
        load_sources(&[(PathBuf::from("p.yaml"), text.to_owned())])
    }

    const GOOD: &str = "apiVersion: provgate.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: team
spec:
  mode: warn
  match:
    images: [\"registry.example.com/team/**\"]
    namespaces: [\"prod-*\"]
";

    #[test]
    fn broken_evidence_is_refused_at_its_line() {
        let policy = |evidence: &str, authorities: bool| {
            let who = if authorities { "  authorities: [{name: a, key: \"k8s://ns/key\"}]\n" } else { "" };
            format!("{GOOD}{who}  evidence:\n    - name: sbom\n      store: {{oci: r.example/e}}\n{evidence}")
        };
        let table = [
            (
                policy("      from: attestations.provenance[0].\n", true),
                14,
                "evidence[0] (\"sbom\"): from: syntax error",
            ),
            (policy("      from: object.spec\n", true), 14, "from reads `object`"),
            (policy("      from: \"[]\"\n", false), 10, "spec.authorities lists no one"),
            (
                format!("{GOOD}  validations:\n    - expression: size(evidence.sbom) > 0\n"),
                10,
                "validations[0] reads `evidence`, but spec.evidence declares none",
            ),
        ];
        for (text, line, needle) in table {
            let e = load_one(&text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("p.yaml:{line}: ")), "{e}\n{text}");
            assert!(e.contains(needle), "{e}");
        }
        let ok = policy("      from: \"[]\"\n", true);
        assert_eq!(load_one(&ok).unwrap().policies()[0].evidence.len(), 1);
    }

    #[test]
    fn a_good_policy_loads() {
        let set = load_one(GOOD).unwrap();
        assert_eq!(set.policies().len(), 1);
        let p = &set.policies()[0];
        assert_eq!((p.name.as_str(), p.mode, p.line), ("team", Mode::Warn, 1));
    }

    #[test]
    fn mode_defaults_to_enforce_and_documents_split() {
        let two = "---\napiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: a}\nspec:\n  match: {images: [\"**\"]}\n---\n# only a comment\n---\napiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: b}\nspec:\n  mode: audit\n  match: {images: [\"**\"]}\n";
        let set = load_one(two).unwrap();
        let got: Vec<_> = set.policies().iter().map(|p| (p.name.clone(), p.mode, p.line)).collect();
        assert_eq!(got, vec![("a".into(), Mode::Enforce, 2), ("b".into(), Mode::Audit, 10)]);
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let table: &[(&str, usize, &str)] = &[
            (&GOOD.replace("  mode: warn", "  mode: warn\n  colour: red"), 7, "unknown field `colour`"),
            (&GOOD.replace("mode: warn", "mode: block"), 6, "unknown variant `block`"),
            (&GOOD.replace("provgate.dev/v1alpha1", "v1"), 1, "apiVersion must be"),
            (&GOOD.replace("kind: ImagePolicy", "kind: Policy"), 2, "kind must be"),
            (&GOOD.replace("registry.example.com/team/**", "registry/[x"), 8, "registry/[x"),
            (&GOOD.replace("\"prod-*\"", "\"{a\""), 9, "match.namespaces"),
            (&GOOD.replace("    images: [\"registry.example.com/team/**\"]\n", ""), 8, "missing field `images`"),
            (&GOOD.replace("name: team", "name: \"\""), 4, "metadata.name"),
            ("apiVersion: [", 1, ""),
        ];
        for (text, line, needle) in table {
            let errs = load_one(text).unwrap_err();
            assert_eq!(errs.0.len(), 1, "{text}");
            let e = &errs.0[0];
            assert_eq!(e.line, Some(*line), "{e}");
            assert!(e.message.contains(needle), "{e} should mention {needle}");
            assert!(e.to_string().starts_with(&format!("p.yaml:{line}: ")), "{e}");
        }
    }

    #[test]
    fn validations_compile_at_load_and_errors_name_line_and_expression() {
        let with = |validations: &str| format!("{GOOD}  validations:\n{validations}");
        let good = with(
            "    - expression: provenance.builder.id == \"https://tekton.dev/chains/v2\"\n      message: not chains\n",
        );
        let set = load_one(&good).unwrap();
        assert_eq!(set.policies()[0].validations.len(), 1);
        assert_eq!(set.policies()[0].validations[0].message.as_deref(), Some("not chains"));

        let table: &[(&str, usize, &str)] = &[
            (
                "    - expression: provenance.builder.id ==\n",
                11,
                "validations[0].expression: syntax error in `provenance.builder.id ==`",
            ),
            (
                "    - expression: image.ref != ''\n    - expression: image.ref != '' && nope\n",
                12,
                "validations[1].expression: unknown variable `nope`",
            ),
            (
                "    - expression: 'true'\n      messageExpression: '\"a\" + b'\n",
                12,
                "validations[0].messageExpression: unknown variable `b`",
            ),
            (
                "    - expression: \"true\"\n    - expression: provenanse.builder.id == 'x'\n",
                12,
                "unknown variable `provenanse`",
            ),
            ("    - expression: image.ref.isSorted()\n", 11, "unknown function `isSorted` in `image.ref.isSorted()`"),
            ("    - expression: image.ref\n", 11, "must evaluate to bool"),
            ("    - expression: 'true'\n      messageExpression: size(image.ref)\n", 12, "must evaluate to string"),
            ("    - expression: 'true'\n      mesage: typo\n", 12, "unknown field `mesage`"),
        ];
        for (validations, line, needle) in table {
            refused_at(&with(validations), *line, needle);
        }
    }

    #[test]
    fn signatures_name_a_repository_normalised_like_images() {
        let with = |section: &str| {
            format!("{GOOD}  authorities:\n    - name: a\n      key: k8s://provgate-system/cosign\n{section}")
        };
        let set = load_one(&with(
            "  signatures:\n    repository: INDEX.docker.io/acme/sigs\n    signaturePullSecrets: [sigs, ci/sigs]\n",
        ))
        .unwrap();
        let signatures = set.policies()[0].signatures.as_ref().unwrap();
        assert_eq!(signatures.name(), "docker.io/acme/sigs");
        assert_eq!(signatures.pull_secrets().len(), 2);
        assert!(load_one(&with("")).unwrap().policies()[0].signatures.is_none(), "the image's own repository");
        let table: &[(&str, usize, &str)] = &[
            ("  signatures:\n    repository: registry.example.com/sigs:v1\n", 13, "without a tag or digest"),
            ("  signatures:\n    repository: r.example.com/sigs\n    pullSecrets: [x]\n", 15, "unknown field"),
            (
                "  signatures:\n    repository: r.example.com/sigs\n    signaturePullSecrets: [a/b/c]\n",
                13,
                "NAMESPACE/NAME",
            ),
        ];
        for (section, line, needle) in table {
            refused_at(&with(section), *line, needle);
        }
        let e = &load_one(&format!("{GOOD}  signatures:\n    repository: r.example.com/sigs\n")).unwrap_err().0[0];
        assert!(e.message.contains("lists no one to verify them"), "{e}");
    }

    #[test]
    fn signatures_storage_names_the_places_read_and_an_empty_or_unknown_place_is_refused_with_its_line() {
        use crate::artifact::Storage;
        let with = |section: &str| {
            format!("{GOOD}  authorities:\n    - name: a\n      key: k8s://provgate-system/cosign\n{section}")
        };
        let storage = |section: &str| load_one(&with(section)).map(|set| set.policies()[0].storage);
        let (tags, referrers) = (Storage { tags: true, referrers: false }, Storage { tags: false, referrers: true });
        assert_eq!(storage("").unwrap(), Storage::BOTH, "no section: both places");
        assert_eq!(storage("  signatures:\n    storage: [tags]\n").unwrap(), tags);
        assert_eq!(storage("  signatures:\n    storage: [referrers]\n").unwrap(), referrers);
        assert_eq!(storage("  signatures:\n    storage: [referrers, tags]\n").unwrap(), Storage::BOTH);
        let own = load_one(&with("  signatures:\n    storage: [tags]\n")).unwrap();
        assert!(own.policies()[0].signatures.is_none(), "no repository: each image's own");
        let sigs = "  signatures:\n    repository: r.example.com/sigs\n    storage: [referrers]\n";
        let set = load_one(&with(sigs)).unwrap();
        assert_eq!(set.policies()[0].storage, referrers);
        assert_eq!(set.policies()[0].signatures.as_ref().unwrap().name(), "r.example.com/sigs");
        let table: &[(&str, usize, &str)] = &[
            ("  signatures:\n    storage: []\n", 13, "lists no place to read signatures from"),
            ("  signatures:\n    storage: [tags, sig]\n", 14, "unknown variant `sig`"),
            ("  signatures:\n    storage: [tags, referrers, tags]\n", 13, "names tags twice"),
            ("  signatures:\n    storage: tags\n", 14, "expected a sequence"),
            ("  signatures:\n    signaturePullSecrets: [pull]\n", 13, "needs signatures.repository"),
            // Spelled otherwise: places are lowercase words, not aliases.
            ("  signatures:\n    storage: [Tags]\n", 14, "unknown variant `Tags`"),
            ("  signatures:\n    storage: [oci-1-1]\n", 14, "unknown variant `oci-1-1`"),
        ];
        for (section, line, needle) in table {
            refused_at(&with(section), *line, needle);
        }
        // A list made huge by repetition is refused at its first repeat, not walked into a policy.
        let huge = format!("  signatures:\n    storage: [{}]\n", vec!["referrers"; 100_000].join(", "));
        refused_at(&with(&huge), 13, "names referrers twice");
        let e = &load_one(&format!("{GOOD}  signatures:\n    storage: [tags]\n")).unwrap_err().0[0];
        assert!(e.message.contains("lists no one to verify them"), "{e}");
    }

    /// `text` does not load, and its first error is on `line` and mentions `needle`.
    fn refused_at(text: &str, line: usize, needle: &str) {
        let e = &load_one(text).unwrap_err().0[0];
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.message.contains(needle), "{e} should mention {needle}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let errs = load_sources(&[(PathBuf::from("a.yaml"), GOOD.into()), (PathBuf::from("b.yaml"), GOOD.into())])
            .unwrap_err();
        assert_eq!(errs.0.len(), 1);
        assert!(errs.0[0].to_string().starts_with("b.yaml:1: policy name \"team\" is already used in a.yaml"));
    }

    #[test]
    fn generation_follows_content() {
        let a = load_one(GOOD).unwrap();
        let b = load_one(GOOD).unwrap();
        let c = load_one(&GOOD.replace("warn", "enforce")).unwrap();
        assert_eq!(a.generation(), b.generation());
        assert_ne!(a.generation(), c.generation());
    }

    #[test]
    fn directories_read_yaml_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "broken: [").unwrap();
        std::fs::create_dir(dir.path().join("tests")).unwrap();
        std::fs::write(dir.path().join("tests/x.yaml"), "broken: [").unwrap();
        assert_eq!(load(dir.path()).unwrap().policies().len(), 1);
        assert!(load(&dir.path().join("missing")).is_err());
    }
}

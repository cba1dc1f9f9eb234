//! Evaluating a policy's CEL validations over one image's verified evidence, with bounded input.

use super::cel::{CelEngine, CompileError, Expression, json_to_value, type_name};
use super::provenance::Provenance;
use crate::verify::{ImageSignature, Statement, Verified};
use cel::{Context, Value};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;

/// One `spec.validations[]` entry as written in a policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Validation {
    pub expression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_expression: Option<String>,
}

/// A validation whose expressions compiled.
#[derive(Debug, Clone)]
pub struct CompiledValidation {
    pub expression: Expression,
    pub message: Option<String>,
    pub message_expression: Option<Expression>,
}

impl CelEngine {
    /// The policy engine, with the sample context used to reject non-bool expressions at load.
    pub fn new() -> Result<Self, CompileError> {
        CelEngine::with_sample(sample_variables())
    }

    /// Builds the CEL variables for one image once; every policy's validations then run against it.
    pub fn activation(&self, evidence: &CelInput, limits: &Limits) -> Result<Activation<'static>, InputError> {
        limits.check(evidence)?;
        let mut context = self.context();
        for (name, value) in variables(evidence) {
            context.add_variable_from_value(name, value);
        }
        Ok(Activation { context })
    }
}

/// Everything CEL sees for one image in one request, in one value: what `provgate policy test` evaluates over a
/// local statement. Admission builds its input from `Verified` values instead ([`ReviewScope`], [`ImageInput`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CelInput {
    image: ImageInfo,
    /// Signature payloads, `{authority, dockerReference, annotations}`.
    signatures: Vec<serde_json::Value>,
    /// Attestation name to in-toto statements (whole statements; CEL sees `{predicateType, subject, predicate}`).
    attestations: BTreeMap<String, Vec<serde_json::Value>>,
    object: serde_json::Value,
    namespace: String,
    /// `{operation, userInfo, kind}`; CEL also sees `namespace` in it, since CEL reserves the word `namespace`.
    request: serde_json::Value,
    now: DateTime<Utc>,
    /// Evidence name to its documents (`evidence.<name>`); empty unless given.
    evidence: serde_json::Map<String, serde_json::Value>,
}

impl CelInput {
    /// Input whose statements and signatures were NOT verified: only for `provgate policy test`, which evaluates
    /// policies over a local file to show what they would say.
    #[allow(clippy::too_many_arguments)]
    pub fn unverified_for_policy_test(
        image: ImageInfo,
        signatures: Vec<serde_json::Value>,
        attestations: BTreeMap<String, Vec<serde_json::Value>>,
        object: serde_json::Value,
        namespace: String,
        request: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Self {
        Self { image, signatures, attestations, object, namespace, request, now, evidence: serde_json::Map::new() }
    }

    /// The same input with `evidence.<name>` set to each entry of `evidence`.
    pub fn with_evidence(mut self, evidence: serde_json::Map<String, serde_json::Value>) -> Self {
        self.evidence = evidence;
        self
    }
}

/// The CEL `image` variable; absent parts are `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    #[serde(rename = "ref")]
    pub reference: String,
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

impl ImageInfo {
    pub fn from_ref(image: &crate::images::ImageRef) -> Self {
        ImageInfo {
            reference: image.to_string(),
            registry: image.registry().to_string(),
            repository: image.repository().to_string(),
            tag: image.tag().unwrap_or_default().to_string(),
            digest: image.digest().map(ToString::to_string).unwrap_or_default(),
        }
    }
}

/// Caps on what is converted into CEL values, checked before conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Statements plus signatures per image.
    pub max_documents: usize,
    /// Serialised JSON bytes of each statement or signature, and of the admitted object.
    pub max_document_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_documents: 64, max_document_bytes: 1 << 20 }
    }
}

/// Evidence too big to evaluate; a denial, never a pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("{count} statements and signatures for one image, more than the {max} evaluated")]
    TooManyDocuments { count: usize, max: usize },
    #[error("{what} is larger than {max} bytes of JSON")]
    TooLarge { what: String, max: usize },
}

impl Limits {
    /// The limits on one image's signatures and statements (the object is checked once per review).
    fn check_image(&self, input: &ImageInput) -> Result<(), InputError> {
        let statements = input.attestations.values().map(Vec::len).sum::<usize>();
        let count = statements + input.signatures.len();
        if count > self.max_documents {
            return Err(InputError::TooManyDocuments { count, max: self.max_documents });
        }
        for (name, list) in &input.attestations {
            if let Some(i) = list.iter().position(|s| !fits(s, self.max_document_bytes)) {
                let what = format!("attestation {name}[{i}]");
                return Err(InputError::TooLarge { what, max: self.max_document_bytes });
            }
        }
        if let Some(i) = input.signatures.iter().position(|s| !fits(s, self.max_document_bytes)) {
            return Err(InputError::TooLarge { what: format!("signature {i}"), max: self.max_document_bytes });
        }
        Ok(())
    }

    fn check(&self, evidence: &CelInput) -> Result<(), InputError> {
        let statements = evidence.attestations.values().map(Vec::len).sum::<usize>();
        let count = statements + evidence.signatures.len();
        if count > self.max_documents {
            return Err(InputError::TooManyDocuments { count, max: self.max_documents });
        }
        let named = evidence
            .attestations
            .iter()
            .flat_map(|(name, list)| list.iter().enumerate().map(move |(i, s)| (format!("attestation {name}[{i}]"), s)))
            .chain(evidence.signatures.iter().enumerate().map(|(i, s)| (format!("signature {i}"), s)))
            .chain(std::iter::once(("the admitted object".to_string(), &evidence.object)));
        for (what, doc) in named {
            if !fits(doc, self.max_document_bytes) {
                return Err(InputError::TooLarge { what, max: self.max_document_bytes });
            }
        }
        Ok(())
    }
}

/// Whether `doc` serialises to at most `max` bytes; stops writing as soon as it does not.
fn fits(doc: &serde_json::Value, max: usize) -> bool {
    json_size(doc, max) <= max
}

/// The size of `doc` as JSON, counting no further than just past `max` (serialisation stops there).
pub fn json_size(doc: &serde_json::Value, max: usize) -> usize {
    struct Count(usize, usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 > self.1 { Err(std::io::Error::other("over budget")) } else { Ok(buf.len()) }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0, max);
    let _ = serde_json::to_writer(&mut count, doc);
    count.0
}

/// The provenance view: the first statement, in attestation-name order, whose predicate is provenance.
pub fn provenance_of(attestations: &BTreeMap<String, Vec<serde_json::Value>>) -> Provenance {
    attestations
        .values()
        .flatten()
        .find_map(|s| Provenance::normalise(s.get("predicateType")?.as_str()?, s.get("predicate")?))
        .unwrap_or_else(Provenance::empty)
}

/// Every distinct provenance view among the statements, in an order fixed by their content (never by the order a
/// registry listed them); one empty view when there is none, so validations still run.
pub fn provenances_of(attestations: &BTreeMap<String, Vec<serde_json::Value>>) -> Vec<serde_json::Value> {
    let mut views: Vec<(String, serde_json::Value)> = attestations
        .values()
        .flatten()
        .filter_map(|s| Provenance::normalise(s.get("predicateType")?.as_str()?, s.get("predicate")?))
        .map(|p| {
            let json = p.to_json();
            (json.to_string(), json)
        })
        .collect();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    views.dedup_by(|a, b| a.0 == b.0);
    if views.is_empty() {
        return vec![Provenance::empty().to_json()];
    }
    views.into_iter().map(|(_, v)| v).collect()
}

/// The variables every image of one review shares: `object`, `namespace`, `request`, `now`.
fn review_variables(
    object: &serde_json::Value,
    namespace: &str,
    request: &serde_json::Value,
    now: DateTime<Utc>,
) -> Vec<(&'static str, Value)> {
    // `namespace` is a reserved word in CEL, so policies read `request.namespace`.
    let mut request = request.clone();
    if let Some(map) = request.as_object_mut() {
        map.entry("namespace").or_insert_with(|| namespace.to_owned().into());
    }
    vec![
        ("object", json_to_value(object)),
        ("namespace", Value::String(namespace.to_owned().into())),
        ("request", json_to_value(&request)),
        ("now", Value::Timestamp(now.fixed_offset())),
    ]
}

/// The variables of one image: `image`, `signatures`, `attestations`, `evidence` (`provenance` is bound per
/// statement).
fn image_variables(
    image: &ImageInfo,
    signatures: &[serde_json::Value],
    attestations: &BTreeMap<String, Vec<serde_json::Value>>,
    evidence: &serde_json::Map<String, serde_json::Value>,
) -> Vec<(&'static str, Value)> {
    let statements: serde_json::Map<String, serde_json::Value> = attestations
        .iter()
        .map(|(name, list)| {
            let views = list
                .iter()
                .map(|s| json!({"predicateType": s["predicateType"], "subject": s["subject"], "predicate": s["predicate"]}))
                .collect();
            (name.clone(), serde_json::Value::Array(views))
        })
        .collect();
    vec![
        ("image", json_to_value(&serde_json::to_value(image).unwrap_or_default())),
        ("signatures", json_to_value(&serde_json::Value::Array(signatures.to_vec()))),
        ("attestations", json_to_value(&serde_json::Value::Object(statements))),
        ("evidence", json_to_value(&serde_json::Value::Object(evidence.clone()))),
    ]
}

fn variables(e: &CelInput) -> Vec<(&'static str, Value)> {
    let mut all = image_variables(&e.image, &e.signatures, &e.attestations, &e.evidence);
    all.push(("provenance", json_to_value(&provenance_of(&e.attestations).to_json())));
    all.extend(review_variables(&e.object, &e.namespace, &e.request, e.now));
    all
}

/// What one review gives every image's evaluation: `object`, `namespace`, `request` and `now`, checked against the
/// limits and converted to CEL once per review, however many images and policies there are.
pub struct ReviewScope {
    context: Context<'static, 'static>,
}

/// One image's verified evidence as CEL reads it. It can only be built from `Verified` values.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInput {
    image: ImageInfo,
    /// Verified signature payloads, `{authority, dockerReference, annotations}`.
    signatures: Vec<serde_json::Value>,
    /// Attestation name to the verified statements, `{predicateType, subject, predicate}`.
    attestations: BTreeMap<String, Vec<serde_json::Value>>,
    /// Evidence name to the documents fetched by digest and checked (`evidence.<name>`).
    evidence: serde_json::Map<String, serde_json::Value>,
}

impl ImageInput {
    /// The CEL view of `image` with what verified for it: its signatures, and its statements by attestation name.
    pub fn verified(
        image: &crate::images::ImageRef,
        signatures: &[Verified<ImageSignature>],
        attestations: &BTreeMap<String, Vec<&Verified<Statement>>>,
    ) -> Self {
        let signatures = signatures
            .iter()
            .map(|s| json!({"authority": s.authority(), "dockerReference": s.docker_reference, "annotations": s.annotations}))
            .collect();
        let attestations = attestations
            .iter()
            .map(|(name, list)| {
                let views = list
                    .iter()
                    .map(|s| json!({"predicateType": s.predicate_type, "subject": s.subject, "predicate": s.predicate}))
                    .collect();
                (name.clone(), views)
            })
            .collect();
        Self { image: ImageInfo::from_ref(image), signatures, attestations, evidence: serde_json::Map::new() }
    }

    /// The same input with `evidence.<name>` set to each entry of `evidence` (documents checked against the
    /// digests verified statements name).
    pub fn with_evidence(mut self, evidence: serde_json::Map<String, serde_json::Value>) -> Self {
        self.evidence = evidence;
        self
    }
}

impl CelEngine {
    /// Converts the review's shared variables once.
    pub fn review_scope(
        &self,
        object: &serde_json::Value,
        namespace: &str,
        request: &serde_json::Value,
        now: DateTime<Utc>,
        limits: &Limits,
    ) -> Result<ReviewScope, InputError> {
        if !fits(object, limits.max_document_bytes) {
            return Err(InputError::TooLarge { what: "the admitted object".into(), max: limits.max_document_bytes });
        }
        let mut context = self.context();
        for (name, value) in review_variables(object, namespace, request, now) {
            context.add_variable_from_value(name, value);
        }
        Ok(ReviewScope { context })
    }
}

impl ReviewScope {
    /// Runs `validations` over one image, once per distinct verified provenance statement (see
    /// [`provenances_of`]): the image passes only if every statement passes them all, so the answer never depends
    /// on which statement a registry lists first. The outcome is the first failing statement's, in content order.
    pub fn evaluate(
        &self,
        input: &ImageInput,
        limits: &Limits,
        policy: &str,
        validations: &[CompiledValidation],
    ) -> Result<PolicyOutcome, InputError> {
        limits.check_image(input)?;
        let mut image = self.context.new_inner_scope();
        for (name, value) in image_variables(&input.image, &input.signatures, &input.attestations, &input.evidence) {
            image.add_variable_from_value(name, value);
        }
        let provenances = provenances_of(&input.attestations);
        let count = provenances.len();
        let mut passed = None;
        for (i, provenance) in provenances.iter().enumerate() {
            let mut context = image.new_inner_scope();
            context.add_variable_from_value("provenance", json_to_value(provenance));
            let mut outcome = Activation { context }.evaluate(policy, validations);
            outcome.statement = Some((i, count));
            if !outcome.passed() {
                return Ok(outcome);
            }
            passed.get_or_insert(outcome);
        }
        Ok(passed.unwrap_or(PolicyOutcome { policy: policy.into(), validations: Vec::new(), statement: None }))
    }
}

impl CelEngine {
    /// Evaluates an `evidence[].from` over one image's verified input: `image`, `signatures`, `attestations`, and
    /// `provenance` bound to each distinct verified provenance statement in turn (as validations see them). One
    /// result per statement, as JSON; the first failure is the error.
    pub fn select(
        &self,
        input: &ImageInput,
        limits: &Limits,
        from: &Expression,
    ) -> Result<Vec<serde_json::Value>, String> {
        limits.check_image(input).map_err(|e| e.to_string())?;
        self.select_over(&input.image, &input.signatures, &input.attestations, from)
    }

    /// [`CelEngine::select`] over a local statement (`provgate policy test`).
    pub fn select_unverified(&self, input: &CelInput, from: &Expression) -> Result<Vec<serde_json::Value>, String> {
        self.select_over(&input.image, &input.signatures, &input.attestations, from)
    }

    fn select_over(
        &self,
        image: &ImageInfo,
        signatures: &[serde_json::Value],
        attestations: &BTreeMap<String, Vec<serde_json::Value>>,
        from: &Expression,
    ) -> Result<Vec<serde_json::Value>, String> {
        let mut scope = self.context();
        for (name, value) in image_variables(image, signatures, attestations, &serde_json::Map::new()) {
            scope.add_variable_from_value(name, value);
        }
        provenances_of(attestations)
            .iter()
            .map(|provenance| {
                let mut context = scope.new_inner_scope();
                context.add_variable_from_value("provenance", json_to_value(provenance));
                let value = from.execute(&context).map_err(|e| format!("`{}`: {e}", from.source()))?;
                value.json().map_err(|e| format!("`{}` gave a value that is not JSON: {e}", from.source()))
            })
            .collect()
    }
}

/// The sample image used at load to reject expressions that are not bool (or not string).
fn sample_variables() -> HashMap<&'static str, Value> {
    let statement = json!({
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "registry.example.com/team/app", "digest": {"sha256": "0".repeat(64)}}],
        "predicate": {
            "builder": {"id": "https://tekton.dev/chains/v2"},
            "buildType": "tekton.dev/v1/TaskRun",
            "invocation": {"parameters": {"IMAGE": "registry.example.com/team/app"}, "environment": {}},
            "metadata": {"buildStartedOn": "2024-01-01T00:00:00Z", "buildFinishedOn": "2024-01-01T00:05:00Z"},
            "materials": [{"uri": "git+https://github.com/acme/app.git", "digest": {"sha1": "0".repeat(40)}}]
        }
    });
    let evidence = CelInput {
        image: ImageInfo {
            reference: format!("registry.example.com/team/app:1.0@sha256:{}", "0".repeat(64)),
            registry: "registry.example.com".into(),
            repository: "team/app".into(),
            tag: "1.0".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
        },
        signatures: vec![
            json!({"authority": "chains", "dockerReference": "registry.example.com/team/app", "annotations": {}}),
        ],
        attestations: BTreeMap::from([("provenance".to_string(), vec![statement])]),
        object: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "default", "labels": {}}}),
        namespace: "default".into(),
        request: json!({"operation": "CREATE", "userInfo": {"username": "alice", "groups": []}, "kind": {"group": "", "version": "v1", "kind": "Pod"}}),
        now: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(19_800),
        evidence: serde_json::Map::new(),
    };
    variables(&evidence).into_iter().collect()
}

/// The CEL variables of one image, ready to evaluate any number of validations.
pub struct Activation<'a> {
    context: Context<'a, 'static>,
}

/// The outcome of one validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Evaluation {
    Pass,
    /// The expression was false; `message` is the evaluated messageExpression, else `message`, else a default.
    /// `note` says why a messageExpression was not used.
    Fail {
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The expression could not be evaluated (or was not bool); counts as a failure.
    Error {
        error: String,
    },
}

impl Evaluation {
    pub fn passed(&self) -> bool {
        matches!(self, Evaluation::Pass)
    }

    /// One line for a denial or a table cell.
    pub fn explain(&self) -> String {
        match self {
            Evaluation::Pass => "pass".into(),
            Evaluation::Fail { message, note: None } => message.clone(),
            Evaluation::Fail { message, note: Some(note) } => format!("{message} ({note})"),
            Evaluation::Error { error } => format!("error: {error}"),
        }
    }
}

impl Activation<'_> {
    /// Evaluates one validation.
    pub fn check(&self, v: &CompiledValidation) -> Evaluation {
        match v.expression.execute(&self.context) {
            Ok(Value::Bool(true)) => Evaluation::Pass,
            Ok(Value::Bool(false)) => self.failure(v),
            Ok(other) => Evaluation::Error {
                error: format!("`{}` evaluated to {}, not bool", v.expression.source(), type_name(&other)),
            },
            Err(error) => Evaluation::Error { error: format!("`{}`: {error}", v.expression.source()) },
        }
    }

    fn failure(&self, v: &CompiledValidation) -> Evaluation {
        let fallback = v.message.clone().unwrap_or_else(|| format!("failed expression: {}", v.expression.source()));
        let Some(m) = &v.message_expression else {
            return Evaluation::Fail { message: fallback, note: None };
        };
        let note = match m.execute(&self.context) {
            Ok(Value::String(s)) if !s.trim().is_empty() => {
                return Evaluation::Fail { message: s.to_string(), note: None };
            }
            Ok(Value::String(_)) => "messageExpression gave an empty string".to_string(),
            Ok(other) => format!("messageExpression gave {}, not string", type_name(&other)),
            Err(e) => format!("messageExpression failed: {e}"),
        };
        Evaluation::Fail { message: fallback, note: Some(note) }
    }
}

/// One validation's result, with what a denial needs to say which one it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationOutcome {
    pub index: usize,
    pub expression: String,
    #[serde(flatten)]
    pub verdict: Evaluation,
}

/// The result of one policy's validations for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub policy: String,
    pub validations: Vec<ValidationOutcome>,
    /// Which provenance statement `provenance` was (index, count), when the image has more than one.
    pub statement: Option<(usize, usize)>,
}

impl PolicyOutcome {
    /// Every validation passed (vacuously so for a policy without validations).
    pub fn passed(&self) -> bool {
        self.validations.iter().all(|v| v.verdict.passed())
    }

    /// For a failed policy: which policy, which validations (index and message), e.g.
    /// `policy chains: validations[1] failed: built from git+https://...; validations[2] error: ...`.
    pub fn explain(&self) -> Option<String> {
        let failures: Vec<String> = self
            .validations
            .iter()
            .filter_map(|v| match &v.verdict {
                Evaluation::Pass => None,
                Evaluation::Fail { .. } => Some(format!("validations[{}] failed: {}", v.index, v.verdict.explain())),
                Evaluation::Error { error } => {
                    Some(format!("validations[{}] could not be evaluated: {error}", v.index))
                }
            })
            .collect();
        let which = match self.statement {
            Some((i, n)) if n > 1 => format!("provenance statement {} of {n}: ", i + 1),
            _ => String::new(),
        };
        (!failures.is_empty()).then(|| format!("policy {}: {which}{}", self.policy, failures.join("; ")))
    }
}

impl Activation<'_> {
    /// Evaluates a policy's validations, all of them (no short-circuit), so a denial lists every failure.
    pub fn evaluate(&self, policy: &str, validations: &[CompiledValidation]) -> PolicyOutcome {
        let validations = validations
            .iter()
            .enumerate()
            .map(|(index, v)| ValidationOutcome {
                index,
                expression: v.expression.source().into(),
                verdict: self.check(v),
            })
            .collect();
        PolicyOutcome { policy: policy.into(), validations, statement: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(name: &str) -> serde_json::Value {
        let path = format!("{}/testdata/statements/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn evidence(file: &str) -> CelInput {
        CelInput {
            image: ImageInfo::from_ref(
                &crate::images::ImageRef::parse(&format!("ttl.sh/tekton-chains-demo@sha256:{}", "4f".repeat(32)))
                    .unwrap(),
            ),
            signatures: vec![
                json!({"authority": "chains", "dockerReference": "ttl.sh/tekton-chains-demo", "annotations": {}}),
            ],
            attestations: BTreeMap::from([("provenance".to_string(), vec![statement(file)])]),
            object: json!({"kind": "Pod", "spec": {"replicas": 2}}),
            namespace: "prod-a".into(),
            request: json!({"operation": "CREATE", "userInfo": {"username": "bob"}, "kind": {"kind": "Pod"}}),
            now: "2022-10-05T00:00:00Z".parse().unwrap(),
            evidence: serde_json::Map::new(),
        }
    }

    fn validation(expression: &str, message: Option<&str>, message_expression: Option<&str>) -> CompiledValidation {
        let v = Validation {
            expression: expression.into(),
            message: message.map(Into::into),
            message_expression: message_expression.map(Into::into),
        };
        let engine = crate::policy::engine().unwrap();
        CompiledValidation {
            expression: engine.compile(&v.expression, crate::policy::Expect::Bool).unwrap(),
            message: v.message.clone(),
            message_expression: v
                .message_expression
                .as_deref()
                .map(|m| engine.compile(m, crate::policy::Expect::String).unwrap()),
        }
    }

    fn verdict(file: &str, v: &CompiledValidation) -> Evaluation {
        crate::policy::engine().unwrap().activation(&evidence(file), &Limits::default()).unwrap().check(v)
    }

    #[test]
    fn variables_reach_the_expression() {
        for expression in [
            r#"image.registry == "ttl.sh" && image.repository == "tekton-chains-demo" && image.digest.startsWith("sha256:4f4f")"#,
            r#"image.tag == "" && image.ref.endsWith(image.digest)"#,
            r#"signatures[0].authority == "chains" && size(signatures) == 1"#,
            r#"attestations.provenance[0].predicateType == "https://slsa.dev/provenance/v0.2""#,
            r#"attestations.provenance[0].subject[0].name == "ttl.sh/tekton-chains-demo""#,
            r#"!has(attestations.provenance[0]._type)"#,
            r#"provenance.version == "v0.2" && provenance.builder.id == "https://tekton.dev/chains/v2""#,
            r#"provenance.materials == [] && provenance.externalParameters == {}"#,
            r#"object.spec.replicas + 1 == 3 && type(object.spec.replicas) == int"#,
            r#"request.namespace == "prod-a" && request.userInfo.username == "bob""#,
            r#"now - timestamp(provenance.finishedOn) < duration("48h")"#,
            r#"now > timestamp(provenance.startedOn)"#,
        ] {
            let v = validation(expression, None, None);
            assert_eq!(verdict("chains-kaniko-slsa-v0.2-statement.json", &v), Evaluation::Pass, "{expression}");
        }
    }

    #[test]
    fn one_expression_serves_every_provenance_version() {
        let v = validation(
            r#"provenance.builder.id != "" && provenance.finishedOn != "" && provenance.materials.all(m, m.uri != "")"#,
            None,
            None,
        );
        for file in [
            "chains-kaniko-slsa-v0.2-statement.json",
            "chains-maven-intoto-provenance-v0.1-statement.json",
            "chains-slsa-v1-format-task-output-image.json",
            "chains-slsa-v2alpha4-task-output-image.json",
        ] {
            assert_eq!(verdict(file, &v), Evaluation::Pass, "{file}");
        }
    }

    #[test]
    fn failures_carry_the_right_message() {
        let file = "chains-kaniko-slsa-v0.2-statement.json";
        let cases = [
            (validation("false", None, None), "failed expression: false", None),
            (validation("false", Some("static"), None), "static", None),
            (
                validation("false", Some("static"), Some(r#""from " + provenance.builder.id"#)),
                "from https://tekton.dev/chains/v2",
                None,
            ),
            (
                validation("false", Some("static"), Some("provenance.materials[0].uri")),
                "static",
                Some("messageExpression failed: Index out of bounds: Int(0)"),
            ),
            (
                validation("false", None, Some(r#""""#)),
                "failed expression: false",
                Some("messageExpression gave an empty string"),
            ),
        ];
        for (v, message, note) in cases {
            match verdict(file, &v) {
                Evaluation::Fail { message: m, note: n } => {
                    assert_eq!(m, message);
                    assert_eq!(n.as_deref(), note);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn runtime_errors_are_failures_quoting_the_error() {
        for (expression, needle) in [
            ("provenance.nope == 1", "No such key: nope"),
            ("attestations.sbom.size() > 0", "No such key: sbom"),
            ("1 / (size(signatures) - 1) == 0", "Division by zero"),
            (r#"image.tag == "1.0" ? true : image.tag"#, "evaluated to string, not bool"),
        ] {
            let v = validation(expression, Some("never shown"), None);
            let got = verdict("chains-kaniko-slsa-v0.2-statement.json", &v);
            assert!(!got.passed(), "{expression}");
            match &got {
                Evaluation::Error { error } => {
                    assert!(error.contains(needle), "{error}");
                    assert!(error.contains(expression), "{error}");
                    assert!(got.explain().starts_with("error: "));
                }
                other => panic!("{expression}: {other:?}"),
            }
        }
    }

    #[test]
    fn limits_are_enforced_before_conversion() {
        let engine = crate::policy::engine().unwrap();
        let mut many = evidence("chains-kaniko-slsa-v0.2-statement.json");
        let one = many.attestations["provenance"][0].clone();
        many.attestations.insert("more".into(), vec![one; 64]);
        let err = engine.activation(&many, &Limits::default()).err().unwrap();
        assert_eq!(err, InputError::TooManyDocuments { count: 66, max: 64 });

        let mut big = evidence("chains-kaniko-slsa-v0.2-statement.json");
        big.attestations.get_mut("provenance").unwrap()[0]["predicate"]["pad"] = json!("x".repeat(1 << 20));
        let err = engine.activation(&big, &Limits::default()).err().unwrap();
        assert_eq!(err.to_string(), "attestation provenance[0] is larger than 1048576 bytes of JSON");

        let small = Limits { max_documents: 2, max_document_bytes: 1024 };
        assert!(engine.activation(&evidence("chains-kaniko-slsa-v0.2-statement.json"), &small).is_err());
        let roomy = Limits { max_documents: 2, max_document_bytes: 16384 };
        assert!(engine.activation(&evidence("chains-kaniko-slsa-v0.2-statement.json"), &roomy).is_ok());
    }

    #[test]
    fn a_policy_outcome_explains_every_failure() {
        let act = crate::policy::engine()
            .unwrap()
            .activation(&evidence("chains-slsa-v2alpha4-task-output-image.json"), &Limits::default())
            .unwrap();
        let validations = [
            validation(r#"provenance.version == "v1""#, None, None),
            validation(
                "provenance.materials.size() > 5",
                Some("too few"),
                Some(r#""only " + string(provenance.materials.size())"#),
            ),
            validation("provenance.nope", None, None),
        ];
        let outcome = act.evaluate("chains", &validations);
        assert!(!outcome.passed());
        assert_eq!(
            outcome.explain().unwrap(),
            "policy chains: validations[1] failed: only 3; validations[2] could not be evaluated: `provenance.nope`: No such key: nope"
        );
        let ok = act.evaluate("chains", &validations[..1]);
        assert!(ok.passed());
        assert_eq!(ok.explain(), None);
        assert!(act.evaluate("empty", &[]).passed());
    }

    #[test]
    fn no_provenance_statement_gives_the_empty_view() {
        let mut e = evidence("chains-kaniko-slsa-v0.2-statement.json");
        e.attestations
            .insert("provenance".into(), vec![json!({"predicateType": "https://spdx.dev/Document", "predicate": {}})]);
        let v = validation(
            r#"provenance.version == "" && provenance.builder.id == "" && provenance.materials == []"#,
            None,
            None,
        );
        let act = crate::policy::engine().unwrap().activation(&e, &Limits::default()).unwrap();
        assert_eq!(act.check(&v), Evaluation::Pass);
        let chains = validation(r#"provenance.builder.id == "https://tekton.dev/chains/v2""#, Some("not chains"), None);
        assert_eq!(act.check(&chains), Evaluation::Fail { message: "not chains".into(), note: None });
    }
}

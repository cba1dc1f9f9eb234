//! Checks one image against one policy, purely: the authorities' keys verify the gathered layers (`verify`), the
//! `require` section is checked over what verified, then the CEL validations run over the verified statements only.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::gather::{Authorities, ImageEvidence, Verification, Verifications, evidence_key};
use crate::images::{Digest, ImageRef, Use};
pub use crate::judged::Checked;
use crate::judged::rememberable;
use crate::policy::eval::{ImageInput, Limits, ReviewScope};
use crate::policy::require::{Platforms, check_attestation, check_signature};
use crate::policy::{Policy, engine};
use crate::reason::{Reason, Requirement};
use crate::verify::{AttestationCheck, Authority, SignatureCheck};

mod coverage;
use coverage::Alternatives;

/// What CEL sees of the request, besides the image: converted at most once per review, on the first validation
/// that needs it (a review whose policies have no validations never converts the object), and shared by every
/// image and policy.
pub struct ReviewContext<'a> {
    pub namespace: String,
    /// What the CEL variables are made from, until they are.
    input: Option<ScopeInput<'a>>,
    /// `object`, `namespace`, `request` and `now` as CEL values, or why they cannot be evaluated (e.g. the object
    /// is larger than the evaluation limit; a denial for any policy with validations).
    scope: std::cell::OnceCell<Result<ReviewScope, String>>,
}

struct ScopeInput<'a> {
    object: &'a Value,
    request: &'a Value,
    now: DateTime<Utc>,
}

fn review_scope(object: &Value, namespace: &str, request: &Value, now: DateTime<Utc>) -> Result<ReviewScope, String> {
    engine().map_err(|e| e.to_string()).and_then(|engine| {
        engine.review_scope(object, namespace, request, now, &Limits::default()).map_err(|e| e.to_string())
    })
}

impl ReviewContext<'static> {
    /// The variables converted now. `request` is `{operation, userInfo, kind}`.
    pub fn new(object: &Value, namespace: &str, request: &Value, now: DateTime<Utc>) -> Self {
        let scope = std::cell::OnceCell::from(review_scope(object, namespace, request, now));
        Self { namespace: namespace.to_owned(), input: None, scope }
    }
}

impl<'a> ReviewContext<'a> {
    /// The variables converted when a validation first needs them. `request` is `{operation, userInfo, kind}`.
    pub fn lazy(object: &'a Value, namespace: &str, request: &'a Value, now: DateTime<Utc>) -> Self {
        let input = Some(ScopeInput { object, request, now });
        Self { namespace: namespace.to_owned(), input, scope: std::cell::OnceCell::new() }
    }

    fn scope(&self) -> &Result<ReviewScope, String> {
        self.scope.get_or_init(|| match &self.input {
            Some(i) => review_scope(i.object, &self.namespace, i.request, i.now),
            None => Err("the review's CEL variables were not given".to_owned()),
        })
    }
}

/// Checks `image`, used as `usage`, against `policy` over the gathered verifications (an image volume may be covered
/// by its layers, a container never).
pub fn check(
    policy: &Policy,
    image: &ImageRef,
    usage: Use,
    evidence: Option<&Result<Arc<ImageEvidence>, Reason>>,
    authorities: &Authorities,
    context: &ReviewContext,
) -> Checked {
    let mut verified = Vec::new();
    let unmet = unmet(policy, image, usage, evidence, authorities, context, &mut verified);
    Checked { unmet, verified }
}

/// [`check`], remembered with the evidence when what the policy makes of the image depends on nothing else (see
/// [`crate::judged`]): a warm review judges such an image by one lookup.
pub fn check_once(
    policy: &Arc<Policy>,
    image: &ImageRef,
    usage: Use,
    evidence: Option<&Result<Arc<ImageEvidence>, Reason>>,
    authorities: &Authorities,
    context: &ReviewContext,
) -> Arc<Checked> {
    let judge = || check(policy, image, usage, evidence, authorities, context);
    let Some(Ok(found)) = evidence.filter(|_| rememberable(policy)) else { return Arc::new(judge()) };
    let resolved: Option<smallvec::SmallVec<[&Arc<Authority>; 4]>> =
        authorities.of(policy).map(|(_, resolution)| resolution?.as_ref().ok()).collect();
    match resolved {
        Some(resolved) => found.judged.get_or_check(policy, image, usage, &resolved, judge),
        None => Arc::new(judge()),
    }
}

/// Each requirement in turn, each its own function below. Stops at the first step whose failure makes the later
/// ones meaningless (no evidence, an authority without keys, a verification not gathered); the policy's evidence
/// documents are read, and the CEL validations run, only when every requirement is met.
fn unmet(
    policy: &Policy,
    image: &ImageRef,
    usage: Use,
    evidence: Option<&Result<Arc<ImageEvidence>, Reason>>,
    authorities: &Authorities,
    context: &ReviewContext,
    verified: &mut Vec<Arc<str>>,
) -> Vec<Reason> {
    let mut unmet: Vec<Reason> = digest_pin(policy, image).into_iter().collect();
    if !policy.needs_evidence() {
        if !policy.validations.is_empty() {
            unmet.extend(validate(policy, &ImageInput::verified(image, &[], &BTreeMap::new()), context));
        }
        return unmet;
    }
    let evidence = match gathered(evidence) {
        Ok(evidence) => evidence,
        Err(reason) => {
            unmet.push(reason);
            return unmet;
        }
    };
    // The CEL input (a JSON view of every verified signature and statement) is built only for validations to read.
    let wanted = !policy.validations.is_empty();
    let input = match requirements(policy, image, usage, evidence, authorities, verified, unmet, wanted) {
        Ok(input) => input,
        Err(reasons) => return reasons,
    };
    let documents = match documents(policy, evidence, verified) {
        Ok(documents) => documents,
        Err(reasons) => return reasons,
    };
    let Some(input) = input else { return Vec::new() };
    let input = if documents.is_empty() { input } else { input.with_evidence(documents) };
    validate(policy, &input, context).into_iter().collect()
}

/// What `policy`'s validations would read for `image` (and its `spec.evidence` selects from), when the image meets
/// every requirement of the policy over `evidence` as a container image (layer coverage, which only image volumes
/// get, does not select evidence); `None` when it does not (the policy denies it anyway).
pub fn verified_input(
    policy: &Policy,
    image: &ImageRef,
    evidence: &ImageEvidence,
    authorities: &Authorities,
) -> Option<ImageInput> {
    let unmet: Vec<Reason> = digest_pin(policy, image).into_iter().collect();
    requirements(policy, image, Use::Run, evidence, authorities, &mut Vec::new(), unmet, true).ok().flatten()
}

/// The requirements over the gathered `evidence`, after `unmet` (what already failed): when all are met, the CEL
/// input of what verified (if `wanted`), else every reason.
#[allow(clippy::too_many_arguments)]
fn requirements(
    policy: &Policy,
    image: &ImageRef,
    usage: Use,
    evidence: &ImageEvidence,
    authorities: &Authorities,
    verified: &mut Vec<Arc<str>>,
    mut unmet: Vec<Reason>,
    wanted: bool,
) -> Result<Option<ImageInput>, Vec<Reason>> {
    let resolved = match resolve_authorities(policy, authorities) {
        Ok(resolved) => resolved,
        Err(reasons) => {
            unmet.extend(reasons);
            return Err(unmet);
        }
    };
    if !unmet.is_empty() {
        return Err(unmet);
    }
    let Some(checks) = checks_of(&evidence.verified, policy, &resolved) else {
        unmet.push(not_gathered(&evidence.digest));
        return Err(unmet);
    };
    let image = image.with_digest(evidence.digest.clone());
    let signatures = SignatureCheck::merged(&evidence.digest, checks.iter().map(|c| &c.signatures));
    verified.extend(signatures.verified.iter().map(|s| s.listed().clone()));
    unmet.extend(signature_need(policy, &signatures, &resolved).map(|r| absent(r, policy, evidence)));
    unmet.extend(platforms_need(policy, evidence, &resolved));
    let statements = counted_statements(&evidence.digest, &signatures, &checks);
    let alternatives = Alternatives::of(policy, &image, usage, evidence, &resolved);
    let named = match attestation_needs(policy, &statements, &alternatives, &resolved, verified) {
        Ok(named) => named,
        Err(reasons) => {
            unmet.extend(reasons.into_iter().map(|r| absent(r, policy, evidence)));
            return Err(unmet);
        }
    };
    if !unmet.is_empty() {
        return Err(unmet);
    }
    Ok(wanted.then(|| ImageInput::verified(&image, &signatures.verified, &named)))
}

/// `spec.evidence`: the documents each entry fetched, as `evidence.<name>` lists, or a reason for every entry that
/// could not be had. What was read is added to `verified`.
fn documents(
    policy: &Policy,
    evidence: &ImageEvidence,
    verified: &mut Vec<Arc<str>>,
) -> Result<serde_json::Map<String, Value>, Vec<Reason>> {
    let mut documents = serde_json::Map::new();
    if policy.evidence.is_empty() {
        return Ok(documents);
    }
    let not_gathered = crate::evidence::document::EvidenceError::NotGathered;
    let found = evidence.evidence.get(&policy.name);
    let mut unmet = Vec::new();
    for decl in &policy.evidence {
        let entry = found.and_then(|f| f.get(&decl.name));
        match entry {
            Some(Ok(items)) => {
                verified.extend(items.iter().map(|i| i.describe(&decl.name).into()));
                documents.insert(decl.name.clone(), items.iter().map(|i| i.to_json()).collect());
            }
            Some(Err(error)) => unmet.push(Reason::Evidence { name: decl.name.clone(), error: error.clone() }),
            None => unmet.push(Reason::Evidence { name: decl.name.clone(), error: not_gathered.clone() }),
        }
    }
    if unmet.is_empty() { Ok(documents) } else { Err(unmet) }
}

/// `require.digest`: the image must be written by digest.
fn digest_pin(policy: &Policy, image: &ImageRef) -> Option<Reason> {
    (policy.requirements.digest && image.digest().is_none()).then(|| Reason::TagNotPinned { image: image.to_string() })
}

/// The evidence gathered for the image, or why there is none (a registry or deadline reason passes through).
fn gathered(evidence: Option<&Result<Arc<ImageEvidence>, Reason>>) -> Result<&ImageEvidence, Reason> {
    match evidence {
        Some(Ok(evidence)) => Ok(evidence),
        Some(Err(reason)) => Err(reason.clone()),
        None => Err(Reason::Unmet {
            requirement: Requirement::NoEvidence,
            message: "no evidence was gathered for this image".into(),
        }),
    }
}

/// Every authority of the policy with its keys or identities, or a reason for each one that has none.
fn resolve_authorities(policy: &Policy, authorities: &Authorities) -> Result<Vec<Arc<Authority>>, Vec<Reason>> {
    let mut resolved = Vec::with_capacity(policy.authorities.len());
    let mut missing = Vec::new();
    for (name, resolution) in authorities.of(policy) {
        match resolution {
            Some(Ok(authority)) => resolved.push(authority.clone()),
            Some(Err(reason)) => missing.push(reason.clone()),
            None => missing.push(Reason::Unmet {
                requirement: Requirement::NoEvidence,
                message: format!("the keys of authority {name:?} were not gathered for this review"),
            }),
        }
    }
    if missing.is_empty() { Ok(resolved) } else { Err(missing) }
}

/// `require.signature` over the image's own digest.
fn signature_need(policy: &Policy, signatures: &SignatureCheck, names: &[Arc<Authority>]) -> Option<Reason> {
    let need = policy.requirements.signature.as_ref()?;
    check_signature(need, signatures, names).map(unmet_reason)
}

/// `require.platforms: all` for an index: see [`every_platform`].
fn platforms_need(policy: &Policy, evidence: &ImageEvidence, resolved: &[Arc<Authority>]) -> Vec<Reason> {
    match &policy.requirements.signature {
        Some(need) if policy.requirements.platforms == Platforms::All && !evidence.platforms.is_empty() => {
            every_platform(need, policy, evidence, resolved)
        }
        _ => Vec::new(),
    }
}

/// The statements that count for the image. A statement about a platform manifest counts for the index only
/// through a verified link: the index itself must carry a valid signature from one of this policy's authorities, so
/// that its platform list is vouched for. Otherwise anyone could list a legitimately attested manifest in an index
/// of their own.
fn counted_statements<'a>(
    digest: &Digest,
    signatures: &SignatureCheck,
    checks: &[&'a Verification],
) -> Cow<'a, AttestationCheck> {
    let all_statements = AttestationCheck::merged(digest, checks.iter().map(|c| &c.attestations));
    if signatures.verified.is_empty() { Cow::Owned(all_statements.about_only(digest)) } else { all_statements }
}

/// `require.attestations`: each named need over the counted statements. On success, the statements each name
/// gives CEL; what verified is added to `verified` either way.
fn attestation_needs<'s>(
    policy: &'s Policy,
    statements: &'s AttestationCheck,
    alternatives: &'s Alternatives,
    names: &[Arc<Authority>],
    verified: &mut Vec<Arc<str>>,
) -> Result<Named<'s>, Vec<Reason>> {
    let mut named: Named<'s> = BTreeMap::new();
    let mut unmet = Vec::new();
    for need in &policy.requirements.attestations {
        let met = alternatives.statements_for(need, statements).and_then(|(check, source)| {
            match check_attestation(need, check, names) {
                Ok(found) => Ok((found, source, &check.digest)),
                Err(u) => alternatives.layers_instead(need, u, names),
            }
        });
        let (statements, source, digest) = match met {
            Ok(met) => met,
            Err(reason) => {
                unmet.push(reason);
                continue;
            }
        };
        let how = match source {
            coverage::Source::Image => String::new(),
            coverage::Source::List(via) => format!(" via release list {}", via.list.with_digest(digest.clone())),
            coverage::Source::Layers => format!(" naming every layer of {digest}"),
        };
        verified.extend(
            statements
                .iter()
                .map(|s| format!("attestation {} ({}) by {}{how}", need.name, s.predicate_type, s.vouched_by()).into()),
        );
        named.insert(need.name.clone(), statements);
    }
    if unmet.is_empty() { Ok(named) } else { Err(unmet) }
}

/// The verifications of `authorities`, over the signatures read where `policy` says, among those gathered; None if
/// one is missing (never judged as a pass).
fn checks_of<'a>(
    verified: &'a Verifications,
    policy: &Policy,
    authorities: &[Arc<Authority>],
) -> Option<Vec<&'a Verification>> {
    let at = policy.signatures.as_deref();
    authorities.iter().map(|a| verified.get(&evidence_key(at, a)).map(Arc::as_ref)).collect()
}

/// A reason that nothing was found, with where provgate looked and when it looks again (a signer may not have
/// published yet).
fn absent(reason: Reason, policy: &Policy, evidence: &ImageEvidence) -> Reason {
    match reason {
        Reason::Unmet { requirement, message } if matches!(requirement.code(), "unsigned" | "no-attestations") => {
            let message = match evidence.absence(policy.signatures.as_deref()) {
                Some(note) => format!("{message}; {note}"),
                None => message,
            };
            Reason::Unmet { requirement, message }
        }
        other => other,
    }
}

fn not_gathered(digest: &Digest) -> Reason {
    Reason::Unmet {
        requirement: Requirement::NoEvidence,
        message: format!("the verification of {digest} under this policy's authorities was not gathered"),
    }
}

/// `require.platforms: all`: every platform manifest needs the signature, and was only fetched when the index
/// verified under one of the policy's authorities.
fn every_platform(
    need: &crate::policy::require::Need,
    policy: &Policy,
    evidence: &ImageEvidence,
    resolved: &[Arc<Authority>],
) -> Vec<Reason> {
    // Platforms fetched for another policy's signature repository were not checked for this one.
    let checked = |p: &&Vec<(Digest, Verifications)>| p.iter().any(|(_, v)| checks_of(v, policy, resolved).is_some());
    let Some(platforms) = evidence.platforms_verified.as_ref().filter(checked) else {
        return vec![Reason::Unmet {
            requirement: Requirement::PlatformsUnchecked,
            message: format!(
                "the platform manifests of {} were not checked: its index carries no valid signature from {}, and \
                 every platform must be signed",
                evidence.digest,
                need.describe()
            ),
        }];
    };
    let mut unmet = Vec::new();
    for (digest, verified) in platforms {
        let Some(checks) = checks_of(verified, policy, resolved) else {
            unmet.push(not_gathered(digest));
            continue;
        };
        let check = SignatureCheck::merge(digest, checks.iter().map(|c| &c.signatures));
        if let Some(u) = check_signature(need, &check, resolved) {
            unmet.push(Reason::Unmet {
                requirement: u.requirement,
                message: format!("platform manifest {digest}: {}", u.message),
            });
        }
    }
    unmet
}

fn unmet_reason(u: crate::policy::require::Unmet) -> Reason {
    Reason::from(u)
}

/// The verified statements that count, by attestation name.
type Named<'s> = BTreeMap<String, Vec<&'s crate::verify::Verified<crate::verify::Statement>>>;

/// Runs the CEL validations over verified evidence, once per verified provenance statement.
fn validate(policy: &Policy, input: &ImageInput, context: &ReviewContext) -> Option<Reason> {
    if policy.validations.is_empty() {
        return None;
    }
    let too_large = |message: String| Reason::Unmet { requirement: Requirement::EvidenceTooLarge, message };
    let scope = match context.scope() {
        Ok(scope) => scope,
        Err(e) => return Some(too_large(e.clone())),
    };
    let outcome = match scope.evaluate(input, &Limits::default(), &policy.name, &policy.validations) {
        Ok(outcome) => outcome,
        Err(e) => return Some(too_large(e.to_string())),
    };
    // The failure is reported under the policy's name already; keep only what failed.
    let prefix = format!("policy {}: ", policy.name);
    outcome.explain().map(|message| Reason::Unmet {
        requirement: Requirement::Validation,
        message: message.strip_prefix(&prefix).map(str::to_owned).unwrap_or(message),
    })
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;

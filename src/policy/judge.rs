//! Judges one image against one policy, purely: the authorities' keys verify the gathered layers (`verify`), the
//! `require` section is checked over what verified, then the CEL validations run over the verified statements only.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::eval::{Evidence, ImageInfo, Limits};
use super::require::{check_attestation, check_signature};
use super::{Policy, engine};
use crate::evidence::{Authorities, ImageEvidence};
use crate::images::ImageRef;
use crate::reason::Reason;
use crate::verify::{self, Authority};

/// What CEL sees of the request, besides the image.
#[derive(Debug, Clone)]
pub struct ReviewContext {
    pub object: Value,
    pub namespace: String,
    /// `{operation, userInfo, kind}`.
    pub request: Value,
    pub now: DateTime<Utc>,
}

/// What one policy made of one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Every way the image fails the policy; empty when it passes.
    pub unmet: Vec<Reason>,
    /// What verified, and by which authority and key or identity, e.g.
    /// `signature by chains (key sha256:ab12…)`.
    pub verified: Vec<String>,
}

/// Judges `image` against `policy` over the gathered evidence.
pub fn judge(
    policy: &Policy,
    image: &ImageRef,
    evidence: Option<&Result<Arc<ImageEvidence>, Reason>>,
    authorities: &Authorities,
    context: &ReviewContext,
) -> Judgement {
    let mut verified = Vec::new();
    let unmet = unmet(policy, image, evidence, authorities, context, &mut verified);
    Judgement { unmet, verified }
}

fn signer(s: &verify::Signer) -> String {
    match s {
        verify::Signer::Key { fingerprint, .. } => format!("key {fingerprint}"),
        verify::Signer::Certificate { subject, issuer } => format!("certificate {subject} from {issuer}"),
    }
}

fn unmet(
    policy: &Policy,
    image: &ImageRef,
    evidence: Option<&Result<Arc<ImageEvidence>, Reason>>,
    authorities: &Authorities,
    context: &ReviewContext,
    verified: &mut Vec<String>,
) -> Vec<Reason> {
    let mut unmet = Vec::new();
    if policy.requirements.digest && image.digest().is_none() {
        unmet.push(Reason::TagNotPinned { image: image.to_string() });
    }
    if !policy.needs_evidence() {
        unmet.extend(validate(policy, image, &[], BTreeMap::new(), context));
        return unmet;
    }
    let evidence = match evidence {
        Some(Ok(evidence)) => evidence,
        Some(Err(reason)) => {
            unmet.push(reason.clone());
            return unmet;
        }
        None => {
            unmet
                .push(Reason::Unmet { code: "no-evidence", message: "no evidence was gathered for this image".into() });
            return unmet;
        }
    };
    let mut resolved: Vec<Authority> = Vec::new();
    for source in &policy.authorities {
        match authorities.get(&(policy.name.clone(), source.name().to_owned())) {
            Some(Ok(authority)) => resolved.push(Authority::clone(authority)),
            Some(Err(reason)) => unmet.push(reason.clone()),
            None => unmet.push(Reason::KeyUnavailable {
                authority: source.name().to_owned(),
                detail: "its keys were not loaded for this review".into(),
            }),
        }
    }
    if !unmet.is_empty() {
        return unmet;
    }
    let image = image.with_digest(evidence.digest.clone());
    let signatures = verify::signatures(&evidence.artifacts, &evidence.digest, &resolved);
    verified
        .extend(signatures.verified.iter().map(|s| format!("signature by {} ({})", s.authority(), signer(&s.signer))));
    if let Some(need) = &policy.requirements.signature {
        unmet.extend(check_signature(need, &signatures, &resolved).map(unmet_reason));
        for (digest, artifacts) in &evidence.platform_artifacts {
            let platform = verify::signatures(artifacts, digest, &resolved);
            if let Some(u) = check_signature(need, &platform, &resolved) {
                unmet.push(Reason::Unmet {
                    code: u.code,
                    message: format!("platform manifest {digest}: {}", u.message),
                });
            }
        }
    }
    let statements = verify::attestations(&evidence.artifacts, &evidence.acceptable_digests(), &resolved);
    let mut named: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for need in &policy.requirements.attestations {
        match check_attestation(need, &statements, &resolved) {
            Ok(statements) => {
                verified.extend(statements.iter().map(|s| {
                    format!(
                        "attestation {} ({}) by {} ({})",
                        need.name,
                        s.predicate_type,
                        s.authority(),
                        signer(&s.signer)
                    )
                }));
                let views = statements
                    .iter()
                    .map(|s| json!({"predicateType": s.predicate_type, "subject": s.subject, "predicate": s.predicate}))
                    .collect();
                named.insert(need.name.clone(), views);
            }
            Err(u) => unmet.push(unmet_reason(u)),
        }
    }
    if !unmet.is_empty() {
        return unmet;
    }
    let signed: Vec<Value> = signatures
        .verified
        .iter()
        .map(|s| json!({"authority": s.authority(), "dockerReference": s.docker_reference, "annotations": s.annotations}))
        .collect();
    validate(policy, &image, &signed, named, context).into_iter().collect()
}

fn unmet_reason(u: super::require::Unmet) -> Reason {
    Reason::Unmet { code: u.code, message: u.message }
}

/// Runs the CEL validations over verified evidence.
fn validate(
    policy: &Policy,
    image: &ImageRef,
    signatures: &[Value],
    attestations: BTreeMap<String, Vec<Value>>,
    context: &ReviewContext,
) -> Option<Reason> {
    if policy.validations.is_empty() {
        return None;
    }
    let engine = match engine() {
        Ok(engine) => engine,
        Err(e) => return Some(Reason::Unmet { code: "validation-error", message: e.to_string() }),
    };
    let evidence = Evidence {
        image: ImageInfo::from_ref(image),
        signatures: signatures.to_vec(),
        attestations,
        object: context.object.clone(),
        namespace: context.namespace.clone(),
        request: context.request.clone(),
        now: context.now,
    };
    let activation = match engine.activation(&evidence, &Limits::default()) {
        Ok(activation) => activation,
        Err(e) => return Some(Reason::Unmet { code: "evidence-too-large", message: e.to_string() }),
    };
    let outcome = activation.evaluate(&policy.name, &policy.validations);
    // The failure is reported under the policy's name already; keep only what failed.
    let prefix = format!("policy {}: ", policy.name);
    outcome.explain().map(|message| Reason::Unmet {
        code: "validation-failed",
        message: message.strip_prefix(&prefix).map(str::to_owned).unwrap_or(message),
    })
}

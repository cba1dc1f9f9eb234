//! Every reason code provgate can put in an audit record, a metric label or `auditAnnotations`: one value of every
//! variant of every reason type (the `match`es below stop compiling when a variant is added and not listed here),
//! each code stable kebab-case, no two variants sharing one, and each documented in the README's table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use provgate::evidence::document::EvidenceError;
use provgate::images::{Digest, RefError};
use provgate::keys::{KeysError, SecretRef};
use provgate::reason::{Reason, Requirement};
use provgate::registry::RegistryError;
use provgate::verify::{KeyError, Rejection};

fn s() -> String {
    "x".into()
}

/// One of each Reason variant that has a code of its own (Registry, KeyUnavailable and Unmet delegate).
fn reasons() -> Vec<Reason> {
    let all = vec![
        Reason::InvalidReference(RefError::Empty),
        Reason::NoPolicy { image: s(), namespace: s(), no_match: "deny" },
        Reason::UnreadableObject { kind: s(), problem: s() },
        Reason::UnreadableRequest(s()),
        Reason::PoliciesNotLoaded { why: s() },
        Reason::DeadlineExceeded(Duration::from_secs(1)),
        Reason::ShuttingDown,
        Reason::TagNotPinned { image: s() },
        Reason::TooManyImages { kind: s(), count: 2, max: 1 },
        Reason::ObjectTooLarge { kind: s(), size: 2, max: 1 },
        Reason::TooManyPlatforms { image: s(), count: 2, max: 1 },
        Reason::Overloaded { limit: 1, waited: Duration::from_secs(1) },
        Reason::InternalError,
    ];
    for r in &all {
        match r {
            Reason::InvalidReference(_)
            | Reason::NoPolicy { .. }
            | Reason::UnreadableObject { .. }
            | Reason::UnreadableRequest(_)
            | Reason::PoliciesNotLoaded { .. }
            | Reason::DeadlineExceeded(_)
            | Reason::ShuttingDown
            | Reason::TagNotPinned { .. }
            | Reason::TooManyImages { .. }
            | Reason::ObjectTooLarge { .. }
            | Reason::TooManyPlatforms { .. }
            | Reason::Overloaded { .. }
            | Reason::InternalError => {}
            // These take the code of their cause, listed below.
            Reason::Registry { .. }
            | Reason::KeyUnavailable { .. }
            | Reason::Unmet { .. }
            | Reason::Evidence { .. } => {
                unreachable!()
            }
        }
    }
    all
}

fn registry_errors() -> Vec<RegistryError> {
    let all = vec![
        RegistryError::NotFound { registry: s(), what: s() },
        RegistryError::Unauthorized { registry: s(), repository: s(), detail: s() },
        RegistryError::RateLimited { registry: s(), retry_after: None },
        RegistryError::Unreachable { registry: s(), detail: s() },
        RegistryError::ServerError { registry: s(), what: s(), status: 500, attempts: 3 },
        RegistryError::TimedOut { registry: s(), what: s() },
        RegistryError::DigestMismatch { registry: s(), what: s(), expected: s(), actual: s() },
        RegistryError::TooLarge { registry: s(), what: s(), limit: 1 },
        RegistryError::Malformed { registry: s(), what: s(), detail: s() },
        RegistryError::OverBudget { registry: s(), what: s(), scope: "image", key: "maxImageBytes", limit: 1 },
        RegistryError::Busy { registry: s(), what: s(), limit: 1 },
        RegistryError::TokenRealm { registry: s(), realm: s(), detail: s() },
    ];
    for e in &all {
        match e {
            RegistryError::NotFound { .. }
            | RegistryError::Unauthorized { .. }
            | RegistryError::RateLimited { .. }
            | RegistryError::Unreachable { .. }
            | RegistryError::ServerError { .. }
            | RegistryError::TimedOut { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::TooLarge { .. }
            | RegistryError::Malformed { .. }
            | RegistryError::OverBudget { .. }
            | RegistryError::Busy { .. }
            | RegistryError::TokenRealm { .. } => {}
        }
    }
    all
}

fn evidence_errors() -> Vec<EvidenceError> {
    let all = vec![
        EvidenceError::Selection { detail: s() },
        EvidenceError::NoDigest { descriptor: s() },
        EvidenceError::TooMany { count: 2, max: 1 },
        EvidenceError::Missing { store: s(), sha256: s() },
        EvidenceError::DigestMismatch { store: s(), expected: s(), actual: s() },
        EvidenceError::Oversize { store: s(), sha256: s(), limit: 1 },
        EvidenceError::Unparsable { store: s(), sha256: s(), expected: "JSON", detail: s() },
        EvidenceError::StoreUnreachable { store: s(), detail: s() },
        EvidenceError::StoreTimedOut { store: s(), sha256: s() },
        EvidenceError::StoreError { store: s(), sha256: s(), detail: s() },
        EvidenceError::NotGathered,
    ];
    for e in &all {
        match e {
            EvidenceError::Selection { .. }
            | EvidenceError::NoDigest { .. }
            | EvidenceError::TooMany { .. }
            | EvidenceError::Missing { .. }
            | EvidenceError::DigestMismatch { .. }
            | EvidenceError::Oversize { .. }
            | EvidenceError::Unparsable { .. }
            | EvidenceError::StoreUnreachable { .. }
            | EvidenceError::StoreTimedOut { .. }
            | EvidenceError::StoreError { .. }
            | EvidenceError::NotGathered => {}
            // An OCI store's other registry failures keep the registry's code.
            EvidenceError::Registry(_) => unreachable!(),
        }
    }
    all
}

fn key_errors() -> Vec<KeysError> {
    let secret = SecretRef { namespace: s(), name: s(), key: s() };
    let all = vec![
        KeysError::BadRef(s()),
        KeysError::SecretNotFound(secret.clone()),
        KeysError::MissingDataKey(secret),
        KeysError::Unparseable { source_ref: s(), error: KeyError::NoPem },
        KeysError::Io { source_ref: s(), error: s() },
        KeysError::NotLoaded(s()),
        KeysError::NoClient(s()),
        KeysError::Api { reference: s(), error: s() },
    ];
    for e in &all {
        match e {
            KeysError::BadRef(_)
            | KeysError::SecretNotFound(_)
            | KeysError::MissingDataKey(_)
            | KeysError::Unparseable { .. }
            | KeysError::Io { .. }
            | KeysError::NotLoaded(_)
            | KeysError::NoClient(_)
            | KeysError::Api { .. } => {}
        }
    }
    all
}

fn rejections() -> Vec<Rejection> {
    let d = Digest::sha256_of(b"x");
    let all = vec![
        Rejection::Unsigned { digest: d.clone() },
        Rejection::NoAttestations { digest: d.clone() },
        Rejection::NoAuthorities,
        Rejection::MissingSignature,
        Rejection::MalformedSignature(s()),
        Rejection::WrongKey { keys: vec![] },
        Rejection::DigestMismatch { signed: s(), expected: d },
        Rejection::WrongSignatureType { found: s() },
        Rejection::MalformedPayload(s()),
        Rejection::MalformedEnvelope(s()),
        Rejection::WrongPayloadType { found: s() },
        Rejection::MalformedStatement(s()),
        Rejection::SubjectMismatch { subjects: vec![] },
        Rejection::MalformedBundle(s()),
        Rejection::UnsupportedBundle(s()),
        Rejection::UntrustedCertificate(s()),
        Rejection::IdentityMismatch { san: s(), issuer: s() },
        Rejection::MissingTransparency(s()),
        Rejection::SetInvalid(s()),
        Rejection::TlogMismatch(s()),
        Rejection::OutsideValidity { integrated_time: 0 },
        Rejection::LeafCertificateUsage(s()),
        Rejection::CaConstraints(s()),
        Rejection::TrustedRootValidity { entry: s(), window: s(), at: s(), what: "x" },
        Rejection::MissingSct,
        Rejection::SctUnknownLog { log_ids: vec![] },
        Rejection::SctInvalid(s()),
    ];
    for r in &all {
        match r {
            Rejection::Unsigned { .. }
            | Rejection::NoAttestations { .. }
            | Rejection::NoAuthorities
            | Rejection::MissingSignature
            | Rejection::MalformedSignature(_)
            | Rejection::WrongKey { .. }
            | Rejection::DigestMismatch { .. }
            | Rejection::WrongSignatureType { .. }
            | Rejection::MalformedPayload(_)
            | Rejection::MalformedEnvelope(_)
            | Rejection::WrongPayloadType { .. }
            | Rejection::MalformedStatement(_)
            | Rejection::SubjectMismatch { .. }
            | Rejection::MalformedBundle(_)
            | Rejection::UnsupportedBundle(_)
            | Rejection::UntrustedCertificate(_)
            | Rejection::IdentityMismatch { .. }
            | Rejection::MissingTransparency(_)
            | Rejection::SetInvalid(_)
            | Rejection::TlogMismatch(_)
            | Rejection::OutsideValidity { .. }
            | Rejection::LeafCertificateUsage(_)
            | Rejection::CaConstraints(_)
            | Rejection::TrustedRootValidity { .. }
            | Rejection::MissingSct
            | Rejection::SctUnknownLog { .. }
            | Rejection::SctInvalid(_) => {}
        }
    }
    all
}

/// The requirement kinds with a code of their own (with a rejection they take its code).
fn requirements() -> Vec<Requirement> {
    let all = vec![
        Requirement::Signature(None),
        Requirement::Attestation(None),
        Requirement::PredicateType,
        Requirement::NoEvidence,
        Requirement::PlatformsUnchecked,
        Requirement::Validation,
        Requirement::EvidenceTooLarge,
        Requirement::NotOnList,
        Requirement::ListTooLarge,
        Requirement::ListInvalid,
        Requirement::LayersUncovered,
    ];
    for r in &all {
        match r {
            Requirement::Signature(None)
            | Requirement::Attestation(None)
            | Requirement::PredicateType
            | Requirement::NoEvidence
            | Requirement::PlatformsUnchecked
            | Requirement::Validation
            | Requirement::EvidenceTooLarge
            | Requirement::NotOnList
            | Requirement::ListTooLarge
            | Requirement::ListInvalid
            | Requirement::LayersUncovered => {}
            Requirement::Signature(Some(_)) | Requirement::Attestation(Some(_)) => unreachable!(),
        }
    }
    all
}

/// Every code, with the type whose variant gives it.
fn codes() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    out.extend(reasons().iter().map(|r| (r.code(), format!("Reason::{r:?}"))));
    out.extend(registry_errors().iter().map(|e| (e.code(), format!("RegistryError::{e:?}"))));
    out.extend(key_errors().iter().map(|e| (e.code(), format!("KeysError::{e:?}"))));
    out.extend(evidence_errors().iter().map(|e| (e.code(), format!("EvidenceError::{e:?}"))));
    out.extend(rejections().iter().map(|r| (r.code(), format!("Rejection::{r:?}"))));
    out.extend(requirements().iter().map(|r| (r.code(), format!("Requirement::{r:?}"))));
    out
}

#[test]
fn every_code_is_kebab_case_and_names_one_reason() {
    let kebab = regex::Regex::new(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$").unwrap();
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (code, from) in codes() {
        assert!(kebab.is_match(code), "{code:?} ({from}) is not kebab-case");
        if let Some(first) = seen.insert(code, from.clone()) {
            panic!("{code:?} is the code of both {first} and {from}");
        }
    }
    assert!(seen.len() > 60, "{} codes", seen.len());
}

#[test]
fn delegating_reasons_take_the_code_of_their_cause() {
    let cause = RegistryError::TimedOut { registry: s(), what: s() };
    assert_eq!(Reason::Registry { image: s(), error: cause }.code(), "registry-timed-out");
    let key = KeysError::NoClient(s());
    assert_eq!(Reason::KeyUnavailable { authority: s(), error: key }.code(), "key-no-client");
    let unmet = Reason::Unmet { requirement: Requirement::Signature(Some(Rejection::MissingSct)), message: s() };
    assert_eq!(unmet.code(), "missing-sct");
    let missing = EvidenceError::Missing { store: s(), sha256: s() };
    assert_eq!(Reason::Evidence { name: s(), error: missing }.code(), "evidence-missing");
    let refused = RegistryError::Unauthorized { registry: s(), repository: s(), detail: s() };
    let evidence = Reason::Evidence { name: s(), error: EvidenceError::Registry(refused) };
    assert_eq!(evidence.code(), "registry-unauthorized");
}

#[test]
fn the_readme_table_lists_every_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Reason codes").nth(1).expect("README has a \"## Reason codes\" section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let listed: Vec<&str> = section.lines().filter_map(|l| l.strip_prefix("| `")?.split('`').next()).collect();
    let missing: Vec<&str> = codes().into_iter().map(|(c, _)| c).filter(|c| !listed.contains(c)).collect();
    assert!(missing.is_empty(), "README's reason-code table lacks {missing:?}");
    let known: Vec<&str> = codes().into_iter().map(|(c, _)| c).collect();
    let stale: Vec<&&str> = listed.iter().filter(|c| !known.contains(c)).collect();
    assert!(stale.is_empty(), "README's reason-code table lists codes provgate never gives: {stale:?}");
}

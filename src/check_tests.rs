//! Table tests of `check`, one section per requirement, over evidence `verify` made of layers signed at test time
//! (`verify::fixtures`): nothing verified is faked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use std::path::PathBuf;

use super::*;
use crate::artifact::{Artifacts, Layer};
use crate::keys::{KeyRef, KeyStore};
use crate::registry::RegistryError;
use crate::verify::fixtures::{Key, SLSA_V02, artifacts, digest};

const NAME: &str = "registry.example.com/team/app";
const TRUSTED: &str = "https://builder.example/trusted";

/// A policy named `p` over authorities `names`, with `spec` (YAML lines under `spec:`) after them. Its keys live in
/// Secrets and are never read here: the `Authorities` map stands in for what the review resolved.
fn policy(names: &[&str], spec: &str) -> Policy {
    let mut text = String::from(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: p}\nspec:\n  match: {images: \
         [\"registry.example.com/**\"]}\n",
    );
    if !names.is_empty() {
        text.push_str("  authorities:\n");
        for n in names {
            text.push_str(&format!("    - {{name: {n}, key: \"k8s://keys/{n}\"}}\n"));
        }
    }
    for line in spec.lines() {
        text.push_str(&format!("  {line}\n"));
    }
    let set = crate::policy::load_sources(&[(PathBuf::from("p.yaml"), text)]).unwrap();
    Policy::clone(&set.policies()[0])
}

/// The review's authorities for policy `p`.
fn resolved(authorities: &[&Authority]) -> Authorities {
    authorities.iter().map(|a| (("p".to_owned(), a.name().to_owned()), Ok(Arc::new(Authority::clone(a))))).collect()
}

/// What each of `authorities` verifies of `artifacts` stored for `digest`, keyed as the gatherer keys it.
fn verifications(a: &Artifacts, digest: &Digest, platforms: &[Digest], authorities: &[&Authority]) -> Verifications {
    authorities.iter().map(|auth| (auth.cache_key(), Arc::new(Verification::of(a, digest, platforms, auth)))).collect()
}

fn evidence(digest: &Digest, platforms: &[Digest], a: &Artifacts, authorities: &[&Authority]) -> ImageEvidence {
    ImageEvidence {
        digest: digest.clone(),
        platforms: platforms.to_vec(),
        verified: verifications(a, digest, platforms, authorities),
        platforms_verified: None,
        lookups: Default::default(),
        evidence: Default::default(),
        coverage: Default::default(),
        judged: Default::default(),
    }
}

fn context() -> ReviewContext<'static> {
    ReviewContext::new(&json!({}), "team-a", &json!({}), DateTime::UNIX_EPOCH)
}

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

fn tagged() -> ImageRef {
    image(&format!("{NAME}:1"))
}

fn codes(reasons: &[Reason]) -> Vec<&'static str> {
    reasons.iter().map(Reason::code).collect()
}

fn run(policy: &Policy, image: &ImageRef, found: Option<Result<ImageEvidence, Reason>>, auth: &Authorities) -> Checked {
    let found = found.map(|r| r.map(Arc::new));
    check(policy, image, Use::Run, found.as_ref(), auth, &context())
}

/// Three authorities `a`, `b`, `c` and a stranger's key.
struct Keys {
    keys: [Key; 4],
    authorities: [Authority; 3],
}

impl Keys {
    fn new() -> Self {
        let keys = [Key::new(), Key::new(), Key::new(), Key::new()];
        let authorities = [keys[0].authority("a"), keys[1].authority("b"), keys[2].authority("c")];
        Self { keys, authorities }
    }

    /// Signature layers for `digest` by the keys named (`x` is the stranger).
    fn signed(&self, digest: &Digest, by: &str) -> Vec<Layer> {
        by.chars().map(|c| self.key(c).signature(digest)).collect()
    }

    fn key(&self, c: char) -> &Key {
        &self.keys[match c {
            'a' => 0,
            'b' => 1,
            'c' => 2,
            _ => 3,
        }]
    }

    fn all(&self) -> Vec<&Authority> {
        self.authorities.iter().collect()
    }
}

// ---- digest pin ----

#[test]
fn digest_pin_table() {
    let pinned = format!("{NAME}@{}", digest("image"));
    let tag = format!("{NAME}:1");
    let table: &[(&str, &str, Option<&str>)] = &[
        ("require: {digest: true, signature: true}", &tag, Some("tag-not-pinned")),
        ("require: {digest: true, signature: true}", &pinned, None),
        ("require: {signature: true}", &tag, None),
        ("require: {signature: true}", &pinned, None),
    ];
    for (spec, reference, want) in table {
        let got = digest_pin(&policy(&["a"], spec), &image(reference));
        assert_eq!(got.as_ref().map(Reason::code), *want, "{spec} {reference}");
    }
}

// ---- evidence gathered ----

#[test]
fn gathered_passes_a_registry_or_deadline_reason_through_and_names_missing_evidence() {
    let refused = RegistryError::Unauthorized {
        registry: "registry.example.com".into(),
        repository: "team/app".into(),
        detail: "401".into(),
    };
    let registry = Reason::Registry { image: tagged().to_string(), error: refused.clone() };
    let deadline = Reason::DeadlineExceeded(std::time::Duration::from_secs(8));
    for reason in [registry, deadline] {
        assert_eq!(gathered(Some(&Err(reason.clone()))).unwrap_err(), reason);
    }
    assert_eq!(gathered(None).unwrap_err().code(), "no-evidence");
    let found = Arc::new(evidence(&digest("image"), &[], &Artifacts::default(), &[]));
    assert_eq!(gathered(Some(&Ok(found))).unwrap().digest, digest("image"));
}

// ---- authorities resolved ----

#[test]
fn resolve_authorities_table() {
    let k = Keys::new();
    let p = policy(&["a", "b"], "require: {signature: true}");
    // A Secret key with no Kubernetes client: the reason the gatherer gives for it.
    let secret = KeyRef::parse("k8s://keys/b").unwrap();
    let failed = KeyStore::default().key_set(&[secret]).unwrap_err();
    let failed = Reason::KeyUnavailable { authority: "b".into(), error: failed };
    let mut with_failed = resolved(&[&k.authorities[0]]);
    with_failed.insert("p", "b", Err(failed.clone()));
    type Row<'a> = (&'a str, Authorities, Result<Vec<&'a str>, Vec<Reason>>);
    let table: Vec<Row> = vec![
        ("both resolved", resolved(&[&k.authorities[0], &k.authorities[1]]), Ok(vec!["a", "b"])),
        ("b failed", with_failed, Err(vec![failed])),
        (
            "b missing",
            resolved(&[&k.authorities[0]]),
            Err(vec![Reason::Unmet {
                requirement: crate::reason::Requirement::NoEvidence,
                message: "the keys of authority \"b\" were not gathered for this review".into(),
            }]),
        ),
        ("both missing", Authorities::new(), Err(vec![])),
    ];
    for (what, authorities, want) in table {
        let got = resolve_authorities(&p, &authorities);
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got.iter().map(|a| a.name()).collect::<Vec<_>>(), want, "{what}"),
            (Err(got), Err(want)) if want.is_empty() => assert_eq!(codes(&got), ["no-evidence"; 2], "{what}"),
            (Err(got), Err(want)) => assert_eq!(got, want, "{what}"),
            (got, _) => panic!("{what}: {got:?}"),
        }
    }
    // Another policy's authority of the same name is not this policy's.
    let mut other = Authorities::new();
    other.insert("q", "a", Ok(Arc::new(k.authorities[0].clone())));
    other.insert("q", "b", Ok(Arc::new(k.authorities[1].clone())));
    assert_eq!(codes(&resolve_authorities(&p, &other).unwrap_err()), ["no-evidence"; 2]);
}

// ---- signature need ----

/// The signature check of `digest` under `authorities`, merged as `unmet` merges it.
fn signature_check(a: &Artifacts, digest: &Digest, authorities: &[&Authority]) -> SignatureCheck {
    let verified = verifications(a, digest, &[], authorities);
    let arcs: Vec<Arc<Authority>> = authorities.iter().map(|a| Arc::new(Authority::clone(a))).collect();
    let checks = checks_of(&verified, &policy(&[], ""), &arcs);
    SignatureCheck::merge(digest, checks.unwrap().iter().map(|c| &c.signatures))
}

#[test]
fn signature_need_table() {
    let k = Keys::new();
    let d = digest("image");
    let table: &[(&[&str], &str, &str, Option<&str>)] = &[
        // (authorities, require, signed by, unmet code)
        (&["a"], "require: {signature: true}", "a", None),
        (&["a"], "require: {signature: true}", "", Some("unsigned")),
        (&["a"], "require: {signature: true}", "x", Some("wrong-key")),
        (&["a", "b"], "require: {signature: true}", "b", None),
        (&["a", "b"], "require: {signature: true}", "x", Some("wrong-key")),
        (&["a", "b"], "require: {signature: {match: all}}", "a", Some("signature-threshold")),
        (&["a", "b"], "require: {signature: {match: all}}", "ab", None),
        (&["a", "b", "c"], "require: {signature: {match: all}}", "ab", Some("signature-threshold")),
        (&["a", "b", "c"], "require: {signature: {match: all}}", "abc", None),
        (&["a", "b", "c"], "require: {signature: {match: {atLeast: 2}}}", "a", Some("signature-threshold")),
        (&["a", "b", "c"], "require: {signature: {match: {atLeast: 2}}}", "ax", Some("signature-threshold")),
        (&["a", "b", "c"], "require: {signature: {match: {atLeast: 2}}}", "ac", None),
        (&["a", "b", "c"], "require: {signature: {match: {atLeast: 2}}}", "", Some("unsigned")),
        // Only the listed authorities count towards the threshold.
        (
            &["a", "b", "c"],
            "require: {signature: {authorities: [a, b], match: {atLeast: 2}}}",
            "ac",
            Some("signature-threshold"),
        ),
        (&["a", "b", "c"], "require: {signature: {authorities: [a, b], match: {atLeast: 2}}}", "ab", None),
        (&["a", "b", "c"], "require: {signature: {authorities: [c]}}", "ab", Some("signature-threshold")),
        // No signature required: nothing to meet here, even unsigned.
        (&["a"], "require: {attestations: [{name: build, predicateType: slsa}]}", "", None),
    ];
    for (names, spec, by, want) in table {
        let p = policy(names, spec);
        let authorities: Vec<&Authority> = k.all().into_iter().take(names.len()).collect();
        let check = signature_check(&artifacts(k.signed(&d, by), vec![]), &d, &authorities);
        let owned: Vec<Arc<Authority>> = authorities.iter().map(|a| Arc::new((*a).clone())).collect();
        let got = signature_need(&p, &check, &owned);
        assert_eq!(got.as_ref().map(Reason::code), *want, "{names:?} {spec} signed by {by:?}: {got:?}");
    }
    // A signature of another digest replayed here.
    let replayed = signature_check(&artifacts(k.signed(&digest("other"), "a"), vec![]), &d, &[&k.authorities[0]]);
    let a = [Arc::new(k.authorities[0].clone())];
    let got = signature_need(&policy(&["a"], "require: {signature: true}"), &replayed, &a);
    assert_eq!(got.map(|r| r.code()), Some("digest-mismatch"));
}

// ---- every platform ----

#[test]
fn platforms_need_table() {
    let k = Keys::new();
    let a = &k.authorities[0];
    let (index, amd, arm) = (digest("index"), digest("amd64"), digest("arm64"));
    let platforms = [amd.clone(), arm.clone()];
    let found = evidence(&index, &platforms, &artifacts(k.signed(&index, "a"), vec![]), &[a]);
    let of = |d: &Digest, by: &str| (d.clone(), verifications(&artifacts(k.signed(d, by), vec![]), d, &[], &[a]));
    let all = "require: {signature: true, platforms: all}";
    type Row<'a> = (&'a str, &'a str, Option<Vec<(Digest, Verifications)>>, &'a [Digest], &'a [&'a str]);
    let table: Vec<Row> = vec![
        // The index carries no valid signature from the policy's authorities: its platforms were not fetched.
        ("unchecked", all, None, &platforms, &["platforms-unchecked"]),
        ("every platform signed", all, Some(vec![of(&amd, "a"), of(&arm, "a")]), &platforms, &[]),
        ("arm64 unsigned", all, Some(vec![of(&amd, "a"), of(&arm, "")]), &platforms, &["unsigned"]),
        ("arm64 by a stranger", all, Some(vec![of(&amd, "a"), of(&arm, "x")]), &platforms, &["wrong-key"]),
        ("both unsigned", all, Some(vec![of(&amd, ""), of(&arm, "")]), &platforms, &["unsigned", "unsigned"]),
        (
            "arm64 not gathered",
            all,
            Some(vec![of(&amd, "a"), (arm.clone(), Verifications::default())]),
            &platforms,
            &["no-evidence"],
        ),
        ("platforms: index", "require: {signature: true}", None, &platforms, &[]),
        ("a single manifest", all, None, &[], &[]),
    ];
    for (what, spec, platforms_verified, platforms, want) in table {
        let found = ImageEvidence { platforms: platforms.to_vec(), platforms_verified, ..found.clone() };
        let arcs = [Arc::new(a.clone())];
        let got = platforms_need(&policy(&["a"], spec), &found, &arcs);
        assert_eq!(codes(&got), *want, "{what}: {got:?}");
        if what == "arm64 unsigned" {
            assert!(got[0].to_string().starts_with(&format!("platform manifest {arm}: ")), "{}", got[0]);
        }
    }
}

// ---- attestation needs, and the verified-index rule ----

#[test]
fn attestation_needs_table() {
    let k = Keys::new();
    let (index, amd) = (digest("index"), digest("amd64"));
    let one = "require: {attestations: [{name: build, predicateType: slsa}]}";
    let all = "require: {attestations: [{name: build, predicateType: slsa, match: all}]}";
    let two = "require: {attestations: [{name: build, predicateType: slsa}, {name: sbom, predicateType: \
               https://cyclonedx.org/bom}]}";
    let provenance = |c: char, subject: &Digest| k.key(c).provenance(subject, TRUSTED);
    let sbom = |c: char, subject: &Digest| k.key(c).attestation(subject, "https://cyclonedx.org/bom", json!({}));
    // (what, authorities, require, index signed by, attestations, unmet codes or the statement count per name)
    type Row<'a> = (&'a str, &'a [&'a str], &'a str, &'a str, Vec<Layer>, Result<Vec<usize>, Vec<&'a str>>);
    let table: Vec<Row> = vec![
        ("about the index", &["a"], one, "", vec![provenance('a', &index)], Ok(vec![1])),
        ("no attestations", &["a"], one, "", vec![], Err(vec!["no-attestations"])),
        ("by a stranger", &["a"], one, "", vec![provenance('x', &index)], Err(vec!["wrong-key"])),
        (
            "about another image",
            &["a"],
            one,
            "",
            vec![provenance('a', &digest("other"))],
            Err(vec!["subject-mismatch"]),
        ),
        ("wrong predicate type", &["a"], one, "", vec![sbom('a', &index)], Err(vec!["predicate-type-mismatch"])),
        // A platform statement counts only through an index verified under one of the policy's authorities.
        ("platform, index unverified", &["a"], one, "", vec![provenance('a', &amd)], Err(vec!["subject-mismatch"])),
        ("platform, index by a stranger", &["a"], one, "x", vec![provenance('a', &amd)], Err(vec!["subject-mismatch"])),
        ("platform, index verified", &["a"], one, "a", vec![provenance('a', &amd)], Ok(vec![1])),
        ("all, one attested", &["a", "b"], all, "", vec![provenance('a', &index)], Err(vec!["attestation-threshold"])),
        (
            "all, both attested",
            &["a", "b"],
            all,
            "",
            vec![provenance('a', &index), provenance('b', &index)],
            Ok(vec![2]),
        ),
        ("two needs, both met", &["a"], two, "", vec![provenance('a', &index), sbom('a', &index)], Ok(vec![1, 1])),
        ("two needs, sbom unmet", &["a"], two, "", vec![provenance('a', &index)], Err(vec!["predicate-type-mismatch"])),
        ("two needs, none", &["a"], two, "", vec![], Err(vec!["no-attestations", "no-attestations"])),
    ];
    for (what, names, spec, index_by, layers, want) in table {
        let authorities: Vec<&Authority> = k.all().into_iter().take(names.len()).collect();
        let owned: Vec<Authority> = authorities.iter().copied().cloned().collect();
        let found =
            evidence(&index, std::slice::from_ref(&amd), &artifacts(k.signed(&index, index_by), layers), &authorities);
        let arcs: Vec<Arc<Authority>> = owned.iter().cloned().map(Arc::new).collect();
        let checks = checks_of(&found.verified, &policy(&[], ""), &arcs).unwrap();
        let signatures = SignatureCheck::merge(&index, checks.iter().map(|c| &c.signatures));
        let statements = counted_statements(&index, &signatures, &checks);
        let mut verified = Vec::new();
        let policy = policy(names, spec);
        let alternatives = Alternatives::of(&policy, &tagged(), Use::Run, &found, &arcs);
        let got = attestation_needs(&policy, &statements, &alternatives, &arcs, &mut verified);
        match (got, want) {
            (Ok(named), Ok(counts)) => {
                assert_eq!(named.values().map(Vec::len).collect::<Vec<_>>(), counts, "{what}");
                assert_eq!(verified.len(), counts.iter().sum::<usize>(), "{what}: {verified:?}");
                assert!(verified.iter().all(|v| v.starts_with("attestation ")), "{what}: {verified:?}");
            }
            (Err(reasons), Err(want)) => assert_eq!(codes(&reasons), want, "{what}: {reasons:?}"),
            (got, _) => panic!("{what}: {got:?}"),
        }
    }
}

// ---- validations ----

/// A policy requiring SLSA provenance from `a`, whose builder must be the trusted one.
fn validated() -> Policy {
    policy(
        &["a"],
        "require: {attestations: [{name: build, predicateType: slsa}]}\nvalidations:\n  - expression: \
         provenance.builder.id == \"https://builder.example/trusted\"\n    messageExpression: '\"built by \" + \
         provenance.builder.id'",
    )
}

#[test]
fn validations_pass_only_when_every_statement_passes() {
    let k = Keys::new();
    let a = &k.authorities[0];
    let d = digest("image");
    let statement = |builder: &str, run: &str| {
        k.keys[0].attestation(&d, SLSA_V02, json!({"builder": {"id": builder}, "buildType": run}))
    };
    let evil = "https://builder.example/evil";
    let table: Vec<(&str, Vec<Layer>, Option<&str>)> = vec![
        ("one trusted", vec![statement(TRUSTED, "1")], None),
        ("two trusted", vec![statement(TRUSTED, "1"), statement(TRUSTED, "2")], None),
        ("trusted and evil", vec![statement(TRUSTED, "1"), statement(evil, "2")], Some(evil)),
        ("evil and trusted", vec![statement(evil, "1"), statement(TRUSTED, "2")], Some(evil)),
        ("one evil", vec![statement(evil, "1")], Some(evil)),
    ];
    for (what, layers, failing) in table {
        let found = evidence(&d, &[], &artifacts(vec![], layers), &[a]);
        let got = run(&validated(), &tagged(), Some(Ok(found)), &resolved(&[a]));
        match failing {
            None => assert_eq!(got.unmet, vec![], "{what}"),
            Some(builder) => {
                assert_eq!(codes(&got.unmet), ["validation-failed"], "{what}");
                assert!(got.unmet[0].to_string().contains(&format!("built by {builder}")), "{what}: {}", got.unmet[0]);
            }
        }
    }
}

#[test]
fn validations_see_signatures_and_run_without_evidence_when_none_is_needed() {
    let k = Keys::new();
    let a = &k.authorities[0];
    let d = digest("image");
    let by_a = "require: {signature: true}\nvalidations:\n  - expression: signatures.exists(s, s.authority == \"a\")";
    let found = evidence(&d, &[], &artifacts(k.signed(&d, "a"), vec![]), &[a]);
    assert_eq!(run(&policy(&["a"], by_a), &tagged(), Some(Ok(found)), &resolved(&[a])).unmet, vec![]);
    // No authorities: nothing is gathered, and the validations run over no evidence at all.
    let none = |expression: &str| policy(&[], &format!("validations:\n  - expression: '{expression}'"));
    assert_eq!(run(&none("size(signatures) == 0"), &tagged(), None, &Authorities::new()).unmet, vec![]);
    let got = run(&none("size(signatures) > 0"), &tagged(), None, &Authorities::new());
    assert_eq!(codes(&got.unmet), ["validation-failed"]);
    // Validations run only once every requirement is met: an unsigned image is not also a validation failure.
    let unsigned = evidence(&d, &[], &Artifacts::default(), &[a]);
    let got = run(&validated(), &tagged(), Some(Ok(unsigned)), &resolved(&[a]));
    assert_eq!(codes(&got.unmet), ["no-attestations"]);
}

// ---- judged once per evidence ----

/// `check_once` of `policy` over `found`, with `resolved` authorities and the review's `object`.
fn once(
    policy: &Arc<Policy>,
    image: &ImageRef,
    usage: Use,
    found: &Arc<ImageEvidence>,
    auth: &Authorities,
) -> Arc<Checked> {
    check_once(policy, image, usage, Some(&Ok(found.clone())), auth, &context())
}

/// An image's digest and its evidence, signed by `a`.
fn signed_by_a(k: &Keys) -> (Digest, Arc<ImageEvidence>) {
    let d = digest("image");
    let found = evidence(&d, &[], &artifacts(k.signed(&d, "a"), vec![]), &[&k.authorities[0]]);
    (d, Arc::new(found))
}

#[test]
fn a_judgement_is_remembered_with_its_evidence_and_found_only_by_the_same_policy_reference_use_and_keys() {
    let k = Keys::new();
    let a = &k.authorities[0];
    let (d, found) = signed_by_a(&k);
    let pinned = image(&format!("{NAME}@{d}"));
    let spec = "require: {digest: true, signature: true}";
    let (policy_a, auth) = (Arc::new(policy(&["a"], spec)), resolved(&[a]));
    let first = once(&policy_a, &pinned, Use::Run, &found, &auth);
    assert_eq!(first.unmet, vec![]);
    assert_eq!(first.verified.len(), 1, "{:?}", first.verified);
    assert!(Arc::ptr_eq(&first, &once(&policy_a, &pinned, Use::Run, &found, &auth)), "judged once");
    assert_eq!(found.judged.remembered(), 1);
    // A tag under the same policy is judged on its own: it is not pinned.
    assert_eq!(codes(&once(&policy_a, &tagged(), Use::Run, &found, &auth).unmet), ["tag-not-pinned"]);
    // The same key read again for another review finds the judgement.
    let again = resolved(&[a]);
    assert!(Arc::ptr_eq(&first, &once(&policy_a, &pinned, Use::Run, &found, &again)));
    // A rotated key (authority `a` now holding b's key) finds no remembered pass: nothing of `a`'s old key counts.
    let rotated_authority = k.keys[1].authority("a");
    let rotated = resolved(&[&rotated_authority]);
    let got = once(&policy_a, &pinned, Use::Run, &found, &rotated);
    assert_eq!(codes(&got.unmet), ["no-evidence"], "not gathered under the new key");
    // A reloaded policy that now asks for another authority is judged by what it asks.
    let reloaded = Arc::new(policy(&["b"], spec));
    let got = once(&reloaded, &pinned, Use::Run, &found, &resolved(&[&k.authorities[1]]));
    assert_eq!(codes(&got.unmet), ["no-evidence"]);
    // Used otherwise (an image volume) is judged again.
    assert!(!Arc::ptr_eq(&first, &once(&policy_a, &pinned, Use::Mount, &found, &auth)));
    // Evidence cloned to be changed starts with nothing judged.
    assert_eq!(ImageEvidence::clone(&found).judged.remembered(), 0);
}

#[test]
fn what_depends_on_the_review_or_an_unresolved_authority_is_judged_every_time() {
    let k = Keys::new();
    let a = &k.authorities[0];
    let (_, found) = signed_by_a(&k);
    // The validation reads the object: each review's object is judged.
    let named = Arc::new(policy(
        &["a"],
        "require: {signature: true}\nvalidations:\n  - expression: object.metadata.name == \"good\"",
    ));
    let judge = |name: &str| {
        let context =
            ReviewContext::new(&json!({"metadata": {"name": name}}), "team-a", &json!({}), DateTime::UNIX_EPOCH);
        check_once(&named, &tagged(), Use::Run, Some(&Ok(found.clone())), &resolved(&[a]), &context)
    };
    assert_eq!(judge("good").unmet, vec![]);
    assert_eq!(codes(&judge("evil").unmet), ["validation-failed"]);
    assert_eq!(judge("good").unmet, vec![]);
    // An authority whose keys could not be read this review is not remembered either.
    let plain = Arc::new(policy(&["a"], "require: {signature: true}"));
    let got = once(&plain, &tagged(), Use::Run, &found, &Authorities::new());
    assert_eq!(codes(&got.unmet), ["no-evidence"]);
    assert_eq!(found.judged.remembered(), 0);
    assert_eq!(once(&plain, &tagged(), Use::Run, &found, &resolved(&[a])).unmet, vec![]);
    assert_eq!(found.judged.remembered(), 1);
}

#[test]
fn an_evidence_remembers_a_bounded_number_of_judgements_and_judges_the_rest_each_time() {
    let k = Keys::new();
    let a = &k.authorities[0];
    let (_, found) = signed_by_a(&k);
    let auth = resolved(&[a]);
    let policies: Vec<Arc<Policy>> =
        (0..crate::judged::MAX_ENTRIES + 3).map(|_| Arc::new(policy(&["a"], "require: {signature: true}"))).collect();
    for _ in 0..2 {
        for p in &policies {
            assert_eq!(once(p, &tagged(), Use::Run, &found, &auth).unmet, vec![]);
        }
    }
    assert_eq!(found.judged.remembered(), crate::judged::MAX_ENTRIES);
    let last = policies.last().unwrap();
    let twice = (once(last, &tagged(), Use::Run, &found, &auth), once(last, &tagged(), Use::Run, &found, &auth));
    assert!(!Arc::ptr_eq(&twice.0, &twice.1), "beyond the bound, judged each time");
}

#[test]
fn many_references_to_one_evidence_repeated_and_reordered_are_each_judged_as_written() {
    // A Pod author names one signed digest under many references: tags alone (not pinned), the digest alone, tags
    // with the digest, the host in other cases. Each is judged as written, whatever was remembered before it and
    // in whatever order they come, and no more than the bound is remembered.
    let k = Keys::new();
    let a = &k.authorities[0];
    let (d, found) = signed_by_a(&k);
    let pinning = Arc::new(policy(&["a"], "require: {digest: true, signature: true}"));
    let auth = resolved(&[a]);
    let mut references: Vec<ImageRef> = Vec::new();
    for i in 0..12 {
        references.push(image(&format!("{NAME}:t{i}")));
        references.push(image(&format!("{NAME}:t{i}@{d}")));
    }
    references.push(image(&format!("{NAME}@{d}")));
    references.push(image(&format!("REGISTRY.example.com/team/app@{d}")));
    let fresh = |r: &ImageRef| check(&pinning, r, Use::Run, Some(&Ok(found.clone())), &auth, &context());
    let want: Vec<Checked> = references.iter().map(fresh).collect();
    assert_eq!(want.iter().filter(|c| codes(&c.unmet) == ["tag-not-pinned"]).count(), 12);
    assert_eq!(want.iter().filter(|c| c.unmet.is_empty()).count(), 14);
    let mut order: Vec<usize> = (0..references.len()).collect();
    for round in 0..4 {
        if round % 2 == 1 {
            order.reverse();
        } else {
            order.rotate_left(5);
        }
        for &i in order.iter().chain(order.iter()) {
            let got = once(&pinning, &references[i], Use::Run, &found, &auth);
            assert_eq!(*got, want[i], "round {round}: {}", references[i]);
        }
    }
    assert_eq!(found.judged.remembered(), crate::judged::MAX_ENTRIES);
}

// ---- the whole check, path by path ----

#[test]
fn check_table() {
    let k = Keys::new();
    let (a, b) = (&k.authorities[0], &k.authorities[1]);
    let d = digest("image");
    let signed = |by: &str| Some(Ok(evidence(&d, &[], &artifacts(k.signed(&d, by), vec![]), &[a])));
    let pinned = image(&format!("{NAME}@{d}"));
    let sig = policy(&["a"], "require: {signature: true}");
    let pin = policy(&["a"], "require: {digest: true, signature: true}");
    let refused =
        RegistryError::NotFound { registry: "registry.example.com".into(), what: "manifest team/app:1".into() };
    let registry = Reason::Registry { image: tagged().to_string(), error: refused.clone() };
    let not_gathered = Some(Ok(evidence(&d, &[], &Artifacts::default(), &[b])));
    type Row<'a> = (&'a str, &'a Policy, ImageRef, Option<Result<ImageEvidence, Reason>>, Authorities, &'a [&'a str]);
    let table: Vec<Row> = vec![
        ("signed", &sig, tagged(), signed("a"), resolved(&[a]), &[]),
        ("signed, by digest", &pin, pinned.clone(), signed("a"), resolved(&[a]), &[]),
        ("unsigned", &sig, tagged(), signed(""), resolved(&[a]), &["unsigned"]),
        ("wrong key", &sig, tagged(), signed("x"), resolved(&[a]), &["wrong-key"]),
        ("tag not pinned", &pin, tagged(), signed("a"), resolved(&[a]), &["tag-not-pinned"]),
        // A tag that is not pinned stops the check before the signatures are looked at.
        ("tag not pinned, unsigned", &pin, tagged(), signed(""), resolved(&[a]), &["tag-not-pinned"]),
        ("no evidence", &sig, tagged(), None, resolved(&[a]), &["no-evidence"]),
        ("registry error", &sig, tagged(), Some(Err(registry.clone())), resolved(&[a]), &["registry-not-found"]),
        (
            "tag not pinned, registry error",
            &pin,
            tagged(),
            Some(Err(registry)),
            resolved(&[a]),
            &["tag-not-pinned", "registry-not-found"],
        ),
        ("key missing", &sig, tagged(), signed("a"), Authorities::new(), &["no-evidence"]),
        ("verification not gathered", &sig, tagged(), not_gathered, resolved(&[a]), &["no-evidence"]),
    ];
    for (what, policy, image, found, authorities, want) in table {
        let got = run(policy, &image, found, &authorities);
        assert_eq!(codes(&got.unmet), *want, "{what}: {:?}", got.unmet);
        let signed = got.verified.iter().any(|v| v.starts_with("signature by a (key sha256:"));
        assert_eq!(signed, what.starts_with("signed"), "{what}: {:?}", got.verified);
    }
}

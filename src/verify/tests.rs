//! Vector and negative-case tests for `verify`: each public vector verifies, its one-byte twin fails, and each
//! way to fail has its own reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;

use super::*;
use crate::artifact::media_type;

const V: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vectors");

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{V}/{rel}")).unwrap()
}

fn b64e(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn flip(data: &[u8], at: usize) -> Vec<u8> {
    let mut d = data.to_vec();
    d[at] ^= 0x01;
    d
}

fn sig_layer(payload: &[u8], annotations: &[(&str, String)]) -> Layer {
    Layer {
        origin: Origin::SigTag,
        media_type: media_type::SIMPLE_SIGNING.into(),
        digest: Digest::sha256_of(payload),
        data: payload.to_vec().into(),
        annotations: annotations.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
    }
}

fn key_authority(name: &str, pem: &[u8]) -> Authority {
    Authority::keys(name, KeySet::new(vec![PublicKey::from_pem(pem).unwrap()]).unwrap())
}

const BUSYBOX: &str = "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b";

fn busybox() -> (Vec<u8>, String, Authority) {
    let payload = read("sigstore-rs/key-signed-busybox.payload.json");
    let sig = String::from_utf8(read("sigstore-rs/key-signed-busybox.signature.b64")).unwrap();
    (payload, sig.trim().to_owned(), key_authority("sigstore-rs", &read("sigstore-rs/key-signed-busybox.pub.pem")))
}

fn sigs(layers: Vec<Layer>) -> Artifacts {
    Artifacts { signatures: layers, ..Default::default() }
}

#[test]
fn key_signed_vector_verifies_and_every_one_byte_twin_fails() {
    let (payload, sig, auth) = busybox();
    let layer = sig_layer(&payload, &[("dev.cosignproject.cosign/signature", sig.clone())]);
    let check = signatures(&sigs(vec![layer]), &digest(BUSYBOX), std::slice::from_ref(&auth));
    assert_eq!(check.outcome(), Ok(()), "{}", check.explain(std::slice::from_ref(&auth)));
    assert_eq!(check.verified[0].authority(), "sigstore-rs");
    assert_eq!(check.verified[0].docker_reference, "registry-testing.svc.lan/busybox");
    assert!(matches!(&check.verified[0].signer, Signer::Key { scheme, .. } if scheme == "ecdsa-p256-sha256"));

    // Every byte of the payload: changing it must not verify.
    for at in 0..payload.len() {
        let layer = sig_layer(&flip(&payload, at), &[("dev.cosignproject.cosign/signature", sig.clone())]);
        let check = signatures(&sigs(vec![layer]), &digest(BUSYBOX), std::slice::from_ref(&auth));
        assert!(check.verified.is_empty(), "payload byte {at} changed but verified");
        assert_eq!(check.outcome().unwrap_err().code(), "wrong-key");
    }
    let raw = b64(&sig).unwrap();
    for at in 0..raw.len() {
        let layer = sig_layer(&payload, &[("dev.cosignproject.cosign/signature", b64e(&flip(&raw, at)))]);
        let check = signatures(&sigs(vec![layer]), &digest(BUSYBOX), std::slice::from_ref(&auth));
        assert!(check.verified.is_empty(), "signature byte {at} changed but verified");
    }
}

#[test]
fn signature_negative_cases_each_have_their_own_reason() {
    let (payload, sig, auth) = busybox();
    let good = [("dev.cosignproject.cosign/signature", sig.clone())];
    let other = digest("sha256:1111111111111111111111111111111111111111111111111111111111111111");
    let wrong_key = key_authority("chains", &read("tekton-chains/cosign.pub"));
    let cases: Vec<(&str, Artifacts, Digest, Vec<Authority>)> = vec![
        ("unsigned", Artifacts::default(), digest(BUSYBOX), vec![auth.clone()]),
        ("digest-mismatch", sigs(vec![sig_layer(&payload, &good)]), other, vec![auth.clone()]),
        ("wrong-key", sigs(vec![sig_layer(&payload, &good)]), digest(BUSYBOX), vec![wrong_key.clone()]),
        ("no-authorities", sigs(vec![sig_layer(&payload, &good)]), digest(BUSYBOX), vec![]),
        ("missing-signature", sigs(vec![sig_layer(&payload, &[])]), digest(BUSYBOX), vec![auth.clone()]),
        (
            "malformed-signature",
            sigs(vec![sig_layer(&payload, &[("dev.cosignproject.cosign/signature", "not base64!".into())])]),
            digest(BUSYBOX),
            vec![auth.clone()],
        ),
    ];
    for (code, artifacts, d, auths) in cases {
        let check = signatures(&artifacts, &d, &auths);
        let err = check.outcome().unwrap_err();
        assert_eq!(err.code(), code, "{err}");
        assert!(!check.explain(&auths).is_empty());
    }
    let check = signatures(&sigs(vec![sig_layer(&payload, &good)]), &digest(BUSYBOX), std::slice::from_ref(&wrong_key));
    let msg = check.explain(&[wrong_key]);
    assert!(
        msg.starts_with(
            "1 signature found, none valid for authority chains: signature does not verify with key sha256:"
        ),
        "{msg}"
    );
}

#[test]
fn a_second_authority_and_a_bad_layer_do_not_hide_a_good_one() {
    let (payload, sig, auth) = busybox();
    let wrong_key = key_authority("chains", &read("tekton-chains/cosign.pub"));
    let layers = vec![
        sig_layer(b"garbage", &[("dev.cosignproject.cosign/signature", sig.clone())]),
        sig_layer(&payload, &[("dev.cosignproject.cosign/signature", sig)]),
    ];
    let check = signatures(&sigs(layers), &digest(BUSYBOX), &[wrong_key, auth]);
    assert_eq!(check.verified.len(), 1);
    assert_eq!(check.by("sigstore-rs").count(), 1);
    assert_eq!(check.by("chains").count(), 0);
    assert_eq!(check.rejected.len(), 1);
    assert_eq!(check.found(), 2);
}

#[test]
fn one_check_is_borrowed_as_its_merge_only_when_merging_would_change_nothing() {
    use std::borrow::Cow;
    let (payload, sig, auth) = busybox();
    let good = sig_layer(&payload, &[("dev.cosignproject.cosign/signature", sig.clone())]);
    let garbage = sig_layer(b"garbage", &[("dev.cosignproject.cosign/signature", sig)]);
    let clean = signatures(&sigs(vec![garbage.clone(), good.clone()]), &digest(BUSYBOX), std::slice::from_ref(&auth));
    let merged = SignatureCheck::merged(&digest(BUSYBOX), [&clean]);
    assert!(matches!(merged, Cow::Borrowed(_)));
    assert_eq!(*merged, SignatureCheck::merge(&digest(BUSYBOX), [&clean]));
    // Of another digest, it is not the check asked for.
    assert!(matches!(SignatureCheck::merged(&digest(&format!("sha256:{}", "0".repeat(64))), [&clean]), Cow::Owned(_)));
    // The same rejected layer found twice (say by tag and as a referrer): merging lists it once, so the one check
    // is merged, not borrowed.
    let twice = signatures(&sigs(vec![garbage.clone(), garbage, good]), &digest(BUSYBOX), std::slice::from_ref(&auth));
    assert_eq!(twice.rejected.len(), 2);
    let merged = SignatureCheck::merged(&digest(BUSYBOX), [&twice]);
    assert!(matches!(merged, Cow::Owned(_)));
    assert_eq!(merged.rejected.len(), 1);
    assert_eq!(*merged, SignatureCheck::merge(&digest(BUSYBOX), [&twice]));
    // Two checks are always merged.
    assert!(matches!(SignatureCheck::merged(&digest(BUSYBOX), [&clean, &clean]), Cow::Owned(_)));
}

#[test]
fn key_set_and_keyless_authorities_cannot_be_empty() {
    assert_eq!(KeySet::new(vec![]), Err(EmptyKeySet));
    let root = Arc::new(TrustedRoot::from_json(&read("sigstore-public-good/trusted_root.json")).unwrap());
    assert!(Keyless::new(root, vec![]).is_err());
}

fn public_good() -> Arc<TrustedRoot> {
    Arc::new(TrustedRoot::from_json(&read("sigstore-public-good/trusted_root.json")).unwrap())
}

/// The public-good trusted root without its CT logs. The 2021 vector's certificate predates embedded SCTs, so
/// only a root that lists no CT log (and so asks for no SCT) accepts it.
fn public_good_json_without_ctlogs() -> serde_json::Value {
    let mut json: serde_json::Value = serde_json::from_slice(&read("sigstore-public-good/trusted_root.json")).unwrap();
    json.as_object_mut().unwrap().remove("ctlogs");
    json
}

fn public_good_without_ctlogs() -> Arc<TrustedRoot> {
    Arc::new(TrustedRoot::from_json(public_good_json_without_ctlogs().to_string().as_bytes()).unwrap())
}

fn flavio(root: Arc<TrustedRoot>) -> Authority {
    let id = Identity {
        subject: IdentityMatcher::Exact("flavio@castelli.me".into()),
        issuer: IdentityMatcher::regex(".*").unwrap(),
    };
    Authority::new("kubewarden", Trust::Keyless(Keyless::new(root, vec![id]).unwrap()))
}

const NODEPORT: &str = "sha256:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e";

fn nodeport_layer(payload: &[u8], sig: &str, cert: &str, bundle: &str) -> Layer {
    sig_layer(
        payload,
        &[
            ("dev.cosignproject.cosign/signature", sig.to_owned()),
            ("dev.sigstore.cosign/certificate", cert.to_owned()),
            ("dev.sigstore.cosign/bundle", bundle.to_owned()),
        ],
    )
}

fn nodeport() -> (Vec<u8>, String, String, String) {
    let s = |p: &str| String::from_utf8(read(p)).unwrap();
    (
        read("sigstore-rs/keyless-disallow-service-nodeport.payload.json"),
        s("sigstore-rs/keyless-disallow-service-nodeport.signature.b64").trim().to_owned(),
        s("sigstore-rs/keyless-disallow-service-nodeport.cert.pem"),
        s("sigstore-rs/keyless-disallow-service-nodeport.rekor-bundle.json"),
    )
}

#[test]
fn keyless_vector_verifies_with_public_good_cas_and_needs_an_sct_under_its_ct_logs() {
    let (payload, sig, cert, bundle) = nodeport();
    let layer = || sigs(vec![nodeport_layer(&payload, &sig, &cert, &bundle)]);
    let check = signatures(&layer(), &digest(NODEPORT), &[flavio(public_good_without_ctlogs())]);
    assert_eq!(check.outcome(), Ok(()), "{:?}", check.rejected);
    assert!(
        matches!(&check.verified[0].signer, Signer::Certificate { subject, .. } if subject == "flavio@castelli.me")
    );
    // The full public-good root lists CT logs; the October 2021 certificate has no embedded SCT (cosign 2 also
    // refuses it without --insecure-ignore-sct).
    let check = signatures(&layer(), &digest(NODEPORT), &[flavio(public_good())]);
    assert_eq!(check.outcome().unwrap_err().code(), "missing-sct");
}

#[test]
fn keyless_negative_cases_each_have_their_own_reason() {
    let (payload, sig, cert, bundle) = nodeport();
    let root = public_good_without_ctlogs();
    let run = |payload: &[u8], sig: &str, cert: &str, bundle: &str, auth: &Authority| {
        let layer = nodeport_layer(payload, sig, cert, bundle);
        signatures(&sigs(vec![layer]), &digest(NODEPORT), std::slice::from_ref(auth)).outcome().unwrap_err().code()
    };
    let auth = flavio(root.clone());
    // One byte of the payload changed: the certificate key no longer verifies it.
    assert_eq!(run(&flip(&payload, 40), &sig, &cert, &bundle, &auth), "wrong-key");
    // Another identity.
    let other = Identity {
        subject: IdentityMatcher::Exact("someone@example.com".into()),
        issuer: IdentityMatcher::regex(".*").unwrap(),
    };
    let other = Authority::new("other", Trust::Keyless(Keyless::new(root.clone(), vec![other]).unwrap()));
    assert_eq!(run(&payload, &sig, &cert, &bundle, &other), "identity-mismatch");
    // A trusted root without the 2021 CA: the certificate is from another root.
    let mut json = public_good_json_without_ctlogs();
    json["certificateAuthorities"].as_array_mut().unwrap().remove(0);
    let other_root = Arc::new(TrustedRoot::from_json(json.to_string().as_bytes()).unwrap());
    assert_eq!(run(&payload, &sig, &cert, &bundle, &flavio(other_root)), "untrusted-certificate");
    // The public-good Rekor key trusted only from 2022 on; the 2021 CA trusted only until September 2021.
    let root_with = |pointer: &str, at: &str| {
        let mut json = public_good_json_without_ctlogs();
        *json.pointer_mut(pointer).unwrap() = at.into();
        flavio(Arc::new(TrustedRoot::from_json(json.to_string().as_bytes()).unwrap()))
    };
    let late_rekor = root_with("/tlogs/0/publicKey/validFor/start", "2022-01-01T00:00:00Z");
    assert_eq!(run(&payload, &sig, &cert, &bundle, &late_rekor), "trusted-root-validity");
    let early_ca = root_with("/certificateAuthorities/0/validFor/end", "2021-09-30T00:00:00Z");
    assert_eq!(run(&payload, &sig, &cert, &bundle, &early_ca), "trusted-root-validity");
    // SET with one byte changed.
    let mut b: serde_json::Value = serde_json::from_str(&bundle).unwrap();
    let set = b64(b["SignedEntryTimestamp"].as_str().unwrap()).unwrap();
    b["SignedEntryTimestamp"] = b64e(&flip(&set, 20)).into();
    assert_eq!(run(&payload, &sig, &cert, &b.to_string(), &auth), "set-invalid");
    // Payload changed under the SET (integrated time moved): the SET no longer verifies.
    let mut b: serde_json::Value = serde_json::from_str(&bundle).unwrap();
    b["Payload"]["integratedTime"] = (1634714718_i64).into();
    assert_eq!(run(&payload, &sig, &cert, &b.to_string(), &auth), "set-invalid");
    // No bundle annotation at all.
    let layer = sig_layer(
        &payload,
        &[("dev.cosignproject.cosign/signature", sig.clone()), ("dev.sigstore.cosign/certificate", cert.clone())],
    );
    let code = signatures(&sigs(vec![layer]), &digest(NODEPORT), &[auth]).outcome().unwrap_err().code();
    assert_eq!(code, "missing-transparency");
}

/// A P-256 key pair made at test time with aws-lc (signing only happens in tests).
pub(crate) struct TestKey(EcdsaKeyPair);

impl TestKey {
    pub(super) fn new() -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        Self(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap())
    }
    pub(super) fn public(&self) -> PublicKey {
        PublicKey::from_spki_der(self.0.public_key().as_der().unwrap().as_ref()).unwrap()
    }
    pub(super) fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(&aws_lc_rs::rand::SystemRandom::new(), msg).unwrap().as_ref().to_vec()
    }
    pub(super) fn authority(&self, name: &str) -> Authority {
        Authority::keys(name, KeySet::new(vec![self.public()]).unwrap())
    }
}

pub(crate) fn statement_json(subject_hex: &str) -> Vec<u8> {
    serde_json::json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "subject": [{"name": "index.docker.io/acme/app", "digest": {"sha256": subject_hex}}],
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "predicate": {"builder": {"id": "https://tekton.dev/chains/v2"}}
    })
    .to_string()
    .into_bytes()
}

pub(super) fn envelope(key: &TestKey, payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let sig = key.sign(&pae(payload_type, payload));
    serde_json::json!({"payloadType": payload_type, "payload": b64e(payload), "signatures": [{"keyid": "", "sig": b64e(&sig)}]})
        .to_string()
        .into_bytes()
}

fn att_layer(data: Vec<u8>) -> Layer {
    Layer {
        origin: Origin::AttTag,
        media_type: media_type::DSSE_ENVELOPE.into(),
        digest: Digest::sha256_of(&data),
        data: data.into(),
        annotations: BTreeMap::from([("dev.cosignproject.cosign/signature".to_owned(), String::new())]),
    }
}

fn atts(layers: Vec<Layer>) -> Artifacts {
    Artifacts { attestations: layers, ..Default::default() }
}

const IMG: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const PLATFORM: &str = "3333333333333333333333333333333333333333333333333333333333333333";

/// A statement listing many subjects (one attestation for a whole release, images in several repositories).
fn statement_of_subjects(hexes: &[String]) -> Vec<u8> {
    let subject: Vec<serde_json::Value> = hexes
        .iter()
        .enumerate()
        .map(|(i, h)| serde_json::json!({"name": format!("registry.example.com/team{}/app", i % 7), "digest": {"sha256": h}}))
        .collect();
    serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subject,
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {"runDetails": {"builder": {"id": "https://tekton.dev/chains/v2"}}}
    })
    .to_string()
    .into_bytes()
}

#[test]
fn a_statement_with_500_subjects_covers_each_digest_it_names_and_no_other() {
    let key = TestKey::new();
    let auth = key.authority("chains");
    let hexes: Vec<String> = (0..500u32).map(|i| Digest::sha256_of(&i.to_be_bytes()).hex().to_owned()).collect();
    let release = envelope(&key, "application/vnd.in-toto+json", &statement_of_subjects(&hexes));
    for i in [0, 1, 250, 499] {
        let named = digest(&format!("sha256:{}", hexes[i]));
        let check = attestations(
            &atts(vec![att_layer(release.clone())]),
            std::slice::from_ref(&named),
            std::slice::from_ref(&auth),
        );
        assert_eq!(check.outcome(), Ok(()), "subject {i}");
        assert_eq!(check.verified[0].matched, named);
        assert_eq!(check.verified[0].subject.len(), 500);
    }
    // An image the release does not name gets no credit, and the denial names a few subjects, not 500.
    let other = digest(&format!("sha256:{IMG}"));
    let check = attestations(
        &atts(vec![att_layer(release.clone())]),
        std::slice::from_ref(&other),
        std::slice::from_ref(&auth),
    );
    let err = check.outcome().unwrap_err();
    assert_eq!(err.code(), "subject-mismatch", "{err}");
    let text = err.to_string();
    assert!(text.contains("and 497 more") && text.len() < 600, "{} bytes: {text}", text.len());
    // The same release signed by another key, or with one subject changed after signing, verifies for no image.
    let named = digest(&format!("sha256:{}", hexes[7]));
    let check = attestations(
        &atts(vec![att_layer(release.clone())]),
        std::slice::from_ref(&named),
        &[TestKey::new().authority("other")],
    );
    assert_eq!(check.outcome().unwrap_err().code(), "wrong-key");
    let mut v: serde_json::Value = serde_json::from_slice(&release).unwrap();
    let mut forged = hexes.clone();
    forged[7] = IMG.to_owned();
    v["payload"] = b64e(&statement_of_subjects(&forged)).into();
    let check = attestations(&atts(vec![att_layer(v.to_string().into_bytes())]), std::slice::from_ref(&other), &[auth]);
    assert_eq!(check.outcome().unwrap_err().code(), "wrong-key");
}

#[test]
fn attestation_verifies_for_image_or_platform_digest_and_negative_cases_have_reasons() {
    let key = TestKey::new();
    let auth = key.authority("chains");
    let img = digest(&format!("sha256:{IMG}"));
    let platform = digest(&format!("sha256:{PLATFORM}"));
    let good = envelope(&key, "application/vnd.in-toto+json", &statement_json(IMG));
    let check =
        attestations(&atts(vec![att_layer(good.clone())]), std::slice::from_ref(&img), std::slice::from_ref(&auth));
    assert_eq!(check.outcome(), Ok(()));
    assert_eq!(check.verified[0].predicate_type, "https://slsa.dev/provenance/v0.2");
    assert_eq!(check.verified[0].predicate["builder"]["id"], "https://tekton.dev/chains/v2");
    // A statement about the platform manifest counts when the caller accepts that digest.
    let on_platform = envelope(&key, "application/vnd.in-toto+json", &statement_json(PLATFORM));
    let both = [img.clone(), platform.clone()];
    let check = attestations(&atts(vec![att_layer(on_platform.clone())]), &both, std::slice::from_ref(&auth));
    assert_eq!(check.verified[0].matched, platform);
    // Many envelopes: all considered; one good is enough, the others are reported.
    let layers = vec![att_layer(on_platform.clone()), att_layer(good.clone())];
    let check = attestations(&atts(layers), std::slice::from_ref(&img), std::slice::from_ref(&auth));
    assert_eq!((check.verified.len(), check.rejected.len()), (1, 1));

    let other_key = TestKey::new().authority("other");
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let v: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let mut non_b64 = v.clone();
    non_b64["payload"] = "%%% not base64 %%%".into();
    let mut tampered = v.clone();
    let mut stmt = statement_json(IMG);
    let at = stmt.len() - 5;
    stmt[at] ^= 1;
    tampered["payload"] = b64e(&stmt).into();
    let cases: Vec<(&str, Vec<u8>, &Authority)> = vec![
        ("subject-mismatch", on_platform, &auth),
        ("wrong-payload-type", envelope(&key, "text/plain", &statement_json(IMG)), &auth),
        ("wrong-key", good.clone(), &other_key),
        ("wrong-key", tampered.to_string().into_bytes(), &auth),
        ("malformed-envelope", truncated, &auth),
        ("malformed-envelope", non_b64.to_string().into_bytes(), &auth),
        ("malformed-statement", envelope(&key, "application/vnd.in-toto+json", b"{\"_type\":\"x\"}"), &auth),
    ];
    for (code, data, a) in cases {
        let check = attestations(&atts(vec![att_layer(data)]), std::slice::from_ref(&img), std::slice::from_ref(a));
        let err = check.outcome().unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    let check = attestations(&Artifacts::default(), std::slice::from_ref(&img), &[auth]);
    assert_eq!(check.outcome().unwrap_err().code(), "no-attestations");
}

#[test]
fn cosign_encrypted_private_key_vector_reads_and_its_signatures_verify() {
    use sigstore::crypto::signing_key::SigStoreKeyPair;
    let pem = read("sigstore-rs/cosign_generated_encrypted_empty_private.key");
    let pair = SigStoreKeyPair::from_encrypted_pem(&pem, b"").unwrap();
    let public_pem = pair.public_key_to_pem().unwrap();
    let key = PublicKey::from_pem(public_pem.as_bytes()).unwrap();
    let signer = pair.to_sigstore_signer(&sigstore::crypto::SigningScheme::ECDSA_P256_SHA256_ASN1).unwrap();
    let msg = b"provgate";
    let sig = signer.sign(msg).unwrap();
    assert_eq!(key.verify(msg, &sig), Some(Scheme::EcdsaP256Sha256));
    assert_eq!(key.verify(&flip(msg, 0), &sig), None);
    assert!(SigStoreKeyPair::from_encrypted_pem(&flip(&pem, 100), b"").is_err());
}

/// Finds `needle` in `hay` (for flipping a byte inside a certificate's public key).
fn position(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn trusted_root_one_byte_twins_fail_the_keyless_vector() {
    use x509_cert::der::{Decode, Encode};
    let (payload, sig, cert, bundle) = nodeport();
    let json = public_good_json_without_ctlogs();
    let run = |json: &serde_json::Value| {
        let root = Arc::new(TrustedRoot::from_json(json.to_string().as_bytes()).unwrap());
        let layer = nodeport_layer(&payload, &sig, &cert, &bundle);
        signatures(&sigs(vec![layer]), &digest(NODEPORT), &[flavio(root)]).outcome()
    };
    assert_eq!(run(&json), Ok(()));
    // One byte of the 2021 Fulcio root's public key changed.
    let mut twin = json.clone();
    let ca = &mut twin["certificateAuthorities"][0]["certChain"]["certificates"][0]["rawBytes"];
    let mut der = b64(ca.as_str().unwrap()).unwrap();
    let cert_parsed = x509_cert::Certificate::from_der(&der).unwrap();
    let spki = cert_parsed.tbs_certificate().subject_public_key_info().to_der().unwrap();
    let at = position(&der, &spki) + spki.len() - 3;
    der[at] ^= 1;
    *ca = b64e(&der).into();
    assert_eq!(run(&twin).unwrap_err().code(), "untrusted-certificate");
    // One byte of the public-good Rekor key changed.
    let mut twin = json.clone();
    let key = &mut twin["tlogs"][0]["publicKey"]["rawBytes"];
    let raw = b64(key.as_str().unwrap()).unwrap();
    *key = b64e(&flip(&raw, raw.len() - 3)).into();
    assert_eq!(run(&twin).unwrap_err().code(), "set-invalid");
}

#[test]
fn chains_public_key_vector_parses_and_its_twin_is_another_or_no_key() {
    let pem = read("tekton-chains/cosign.pub");
    let key = PublicKey::from_pem(&pem).unwrap();
    assert_eq!(key.kind(), KeyKind::EcdsaP256);
    let text = String::from_utf8(pem).unwrap();
    let body_start = text.find('\n').unwrap() + 40;
    let mut twin = text.into_bytes();
    twin[body_start] = if twin[body_start] == b'A' { b'B' } else { b'A' };
    assert!(PublicKey::from_pem(&twin).map_or(true, |k| k.fingerprint() != key.fingerprint()));
}

#[test]
fn real_chains_statements_sign_and_verify_with_their_predicates() {
    let key = TestKey::new();
    let auth = key.authority("chains");
    for seed in ["chains-kaniko-slsa-v0.2-statement.json", "chains-maven-intoto-provenance-v0.1-statement.json"] {
        let stmt = std::fs::read(format!("{V}/../seeds/{seed}")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&stmt).unwrap();
        let hex = v["subject"][0]["digest"]["sha256"].as_str().unwrap();
        let img = digest(&format!("sha256:{hex}"));
        let layer = att_layer(envelope(&key, "application/vnd.in-toto+json", &stmt));
        let check = attestations(&atts(vec![layer]), std::slice::from_ref(&img), std::slice::from_ref(&auth));
        assert_eq!(check.outcome(), Ok(()), "{seed}");
        assert_eq!(check.verified[0].predicate, v["predicate"], "{seed}");
        assert_eq!(check.verified[0].predicate_type, v["predicateType"].as_str().unwrap());
    }
}

#[test]
fn identity_patterns_are_anchored() {
    let m = IdentityMatcher::regex(r"https://github\.com/acme/.*").unwrap();
    assert!(m.matches("https://github.com/acme/app/.github/workflows/x.yml@refs/heads/main"));
    assert!(!m.matches("https://evil.example/?https://github.com/acme/x"));
    assert!(!IdentityMatcher::regex("a|b").unwrap().matches("ab"));
    assert!(!IdentityMatcher::Exact("a".into()).matches("ab"));
}

#[test]
fn cache_keys_change_with_keys_and_roots() {
    let a = TestKey::new().authority("chains");
    let b = TestKey::new().authority("chains");
    assert_ne!(a.cache_key(), b.cache_key());
    let root = public_good();
    assert!(flavio(root.clone()).cache_key().contains(root.digest()));
}

/// Only `verify` may use the sigstore crate.
#[test]
fn only_verify_imports_sigstore() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out)
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p)
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let uses = text.contains("sigstore::") || text.contains("use sigstore");
        assert!(!uses || f.starts_with(src.join("verify")), "{} uses sigstore outside verify", f.display());
    }
}

#[test]
fn signed_but_wrong_simple_signing_documents_have_their_own_reasons() {
    let key = TestKey::new();
    let auth = key.authority("k");
    let img = digest(BUSYBOX);
    let doc = |kind: &str| {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"x"}},"image":{{"docker-manifest-digest":"{BUSYBOX}"}},"type":"{kind}"}},"optional":null}}"#
        )
        .into_bytes()
    };
    let run = |payload: Vec<u8>| {
        let sig = b64e(&key.sign(&payload));
        let layer = sig_layer(&payload, &[("dev.cosignproject.cosign/signature", sig)]);
        signatures(&sigs(vec![layer]), &img, std::slice::from_ref(&auth)).outcome()
    };
    assert_eq!(run(doc("cosign container image signature")), Ok(()));
    assert_eq!(run(doc("atomic container signature")).unwrap_err().code(), "wrong-signature-type");
    assert_eq!(run(b"not json".to_vec()).unwrap_err().code(), "malformed-payload");
    // docker-reference is informational: another repository name still verifies (the digest is the binding).
    let other_ref =
        String::from_utf8(doc("cosign container image signature")).unwrap().replace("\"x\"", "\"evil/repo\"");
    assert_eq!(run(other_ref.into_bytes()), Ok(()));
}

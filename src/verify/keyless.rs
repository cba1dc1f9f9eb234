//! Keyless trust: a Fulcio leaf judged against the trusted root (its chain, its embedded SCT, its identity), and
//! offline Rekor SET verification with the entry body bound to this signature and payload.

mod chain;
mod sct;

use std::collections::BTreeMap;

use serde::Deserialize;
use x509_cert::Certificate;
use x509_cert::der::Decode;

use super::authority::Keyless;
use super::envelope::Decoded;
use super::key::PublicKey;
use super::reason::Rejection;
use super::trusted_root::TrustedRoot;
pub(super) use super::trusted_root::hex_sha256;
use super::{Signer, b64};

const CERT_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";

/// (subject alternative name, OIDC issuer) of a Fulcio certificate.
fn identity(cert: &Certificate) -> (String, String) {
    use x509_cert::ext::pkix::{SubjectAltName, name::GeneralName};
    let tbs = cert.tbs_certificate();
    let san = match tbs.get_extension::<SubjectAltName>() {
        Ok(Some((_, names))) => names.0.iter().find_map(|n| match n {
            GeneralName::Rfc822Name(s) | GeneralName::UniformResourceIdentifier(s) => Some(s.to_string()),
            _ => None,
        }),
        _ => None,
    };
    let mut issuer = String::new();
    for ext in tbs.extensions().map(|e| e.as_slice()).unwrap_or_default() {
        let bytes = ext.extn_value.as_bytes();
        match ext.extn_id.to_string().as_str() {
            OID_ISSUER_V2 => {
                if let Ok(s) = x509_cert::der::asn1::Utf8StringRef::from_der(bytes) {
                    issuer = s.as_str().to_owned();
                }
            }
            OID_ISSUER_V1 if issuer.is_empty() => issuer = String::from_utf8_lossy(bytes).into_owned(),
            _ => {}
        }
    }
    (san.unwrap_or_default(), issuer)
}

/// A Fulcio leaf that chains to the trusted root (see [`chain`]), carries a valid SCT when the root lists CT logs
/// (see [`sct`]), and whose identity is allowed. Returns the leaf, its key, its validity window and the signer.
pub(super) struct Leaf {
    pub der: Vec<u8>,
    pub key: PublicKey,
    pub validity: (i64, i64),
    pub signer: Signer,
}

pub(super) fn leaf(cert_der: &[u8], trust: &Keyless) -> Result<Leaf, Rejection> {
    let cert = Certificate::from_der(cert_der).map_err(|e| Rejection::UntrustedCertificate(e.to_string()))?;
    let root = trust.trusted_root();
    let path = chain::verify(&root.cas, &cert, cert_der)?;
    if root.require_sct {
        sct::verify(&root.ctlogs, &cert, cert_der, path.issuer)?;
    }
    let validity = path.validity;
    let (san, issuer) = identity(&cert);
    if !trust.identities().iter().any(|i| i.matches(&san, &issuer)) {
        return Err(Rejection::IdentityMismatch { san, issuer });
    }
    let key = PublicKey::from_spki(cert.tbs_certificate().subject_public_key_info())
        .map_err(|e| Rejection::UntrustedCertificate(e.to_string()))?;
    Ok(Leaf { der: cert_der.to_vec(), key, validity, signer: Signer::Certificate { subject: san, issuer } })
}

/// What a Rekor entry must be bound to.
pub(super) struct Binding<'a> {
    pub signature: &'a [u8],
    /// sha256 of the signed payload (simple signing bytes, or the DSSE payload).
    pub payload_sha256: String,
    pub leaf_der: &'a [u8],
}

/// Verifies a SET over the canonical (JCS) entry, picks the Rekor key by log id, binds the body, and checks the
/// integrated time lies inside the Rekor key's `validFor` and the leaf's validity.
pub(super) fn verify_entry(
    root: &TrustedRoot,
    set: &[u8],
    entry: &serde_json::Value,
    body: &[u8],
    binding: &Binding<'_>,
    validity: (i64, i64),
) -> Result<(), Rejection> {
    let log_id = entry.get("logID").and_then(|v| v.as_str()).unwrap_or_default();
    let log =
        root.tlogs.get(log_id).ok_or_else(|| Rejection::SetInvalid(format!("unknown Rekor log id {log_id:?}")))?;
    let key = &log.key;
    let canonical = serde_json_canonicalizer::to_vec(entry).map_err(|e| Rejection::SetInvalid(e.to_string()))?;
    if key.verify(&canonical, set).is_none() {
        return Err(Rejection::SetInvalid(format!(
            "signature does not verify with Rekor key {}",
            key.short_fingerprint()
        )));
    }
    bind_body(body, binding)?;
    let time = entry.get("integratedTime").and_then(serde_json::Value::as_i64).unwrap_or(i64::MIN);
    log.window.check(|| format!("Rekor log {log_id}"), time, "the entry's integrated time")?;
    if time < validity.0 || time > validity.1 {
        return Err(Rejection::OutsideValidity { integrated_time: time });
    }
    Ok(())
}

fn bind_body(body: &[u8], b: &Binding<'_>) -> Result<(), Rejection> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| Rejection::TlogMismatch(e.to_string()))?;
    let at = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or_default().to_owned();
    let kind = at("/kind");
    let (hash, sigs, keys): (String, Vec<String>, Vec<String>) = match kind.as_str() {
        "hashedrekord" | "rekord" => (
            at("/spec/data/hash/value"),
            vec![at("/spec/signature/content")],
            vec![at("/spec/signature/publicKey/content")],
        ),
        "dsse" => {
            let list = v.pointer("/spec/signatures").and_then(|s| s.as_array()).cloned().unwrap_or_default();
            let sigs = list.iter().filter_map(|s| s.get("signature")?.as_str().map(str::to_owned)).collect();
            let keys = list.iter().filter_map(|s| s.get("verifier")?.as_str().map(str::to_owned)).collect();
            (at("/spec/payloadHash/value"), sigs, keys)
        }
        "intoto" => {
            let list = v.pointer("/spec/content/envelope/signatures").and_then(|s| s.as_array()).cloned();
            let list = list.unwrap_or_default();
            // intoto v0.0.2 stores the base64 signature base64-encoded once more.
            let sigs = list
                .iter()
                .filter_map(|s| s.get("sig")?.as_str())
                .filter_map(|s| b64(s).ok())
                .filter_map(|s| String::from_utf8(s).ok())
                .collect();
            let keys = list.iter().filter_map(|s| s.get("publicKey")?.as_str().map(str::to_owned)).collect();
            (at("/spec/content/payloadHash/value"), sigs, keys)
        }
        other => return Err(Rejection::TlogMismatch(format!("unsupported Rekor entry kind {other:?}"))),
    };
    if hash != b.payload_sha256 {
        return Err(Rejection::TlogMismatch(format!("entry hash {hash:?} is not the payload's")));
    }
    if !sigs.iter().any(|s| b64(s).is_ok_and(|raw| raw == b.signature)) {
        return Err(Rejection::TlogMismatch("entry signature is not this signature".into()));
    }
    let same_cert = |k: &String| {
        b64(k).ok().and_then(|pem| {
            let mut r = pem.as_slice();
            rustls_pemfile::certs(&mut r).next().and_then(Result::ok).map(|c| c.as_ref() == b.leaf_der)
        }) == Some(true)
    };
    if !keys.iter().any(same_cert) {
        return Err(Rejection::TlogMismatch("entry certificate is not the signing certificate".into()));
    }
    Ok(())
}

#[derive(Deserialize)]
struct RekorBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: serde_json::Value,
}

/// Keyless check of a cosign layer from its `certificate` and `bundle` annotations, over `msg` signed by `sig`.
fn legacy(
    annotations: &BTreeMap<String, String>,
    msg: &[u8],
    sig: &[u8],
    payload: &[u8],
    trust: &Keyless,
) -> Result<Signer, Rejection> {
    let cert_pem = annotations
        .get(CERT_ANNOTATION)
        .ok_or_else(|| Rejection::MissingTransparency("no dev.sigstore.cosign/certificate annotation".into()))?;
    let mut reader = cert_pem.as_bytes();
    let cert_der = rustls_pemfile::certs(&mut reader)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| Rejection::UntrustedCertificate("certificate annotation is not a PEM certificate".into()))?;
    let leaf = leaf(cert_der.as_ref(), trust)?;
    if leaf.key.verify(msg, sig).is_none() {
        return Err(Rejection::WrongKey { keys: vec![format!("certificate of {}", signer_name(&leaf.signer))] });
    }
    let bundle = annotations
        .get(BUNDLE_ANNOTATION)
        .ok_or_else(|| Rejection::MissingTransparency("no dev.sigstore.cosign/bundle annotation".into()))?;
    let bundle: RekorBundle = serde_json::from_str(bundle).map_err(|e| Rejection::SetInvalid(e.to_string()))?;
    let set = b64(&bundle.set).map_err(Rejection::SetInvalid)?;
    let body_b64 = bundle.payload.get("body").and_then(|b| b.as_str()).unwrap_or_default();
    let body = b64(body_b64).map_err(Rejection::SetInvalid)?;
    let binding = Binding { signature: sig, payload_sha256: hex_sha256(payload), leaf_der: &leaf.der };
    verify_entry(trust.trusted_root(), &set, &bundle.payload, &body, &binding, leaf.validity)?;
    Ok(leaf.signer)
}

pub(super) fn signer_name(s: &Signer) -> String {
    match s {
        Signer::Key { fingerprint, .. } => fingerprint.clone(),
        Signer::Certificate { subject, .. } => subject.clone(),
    }
}

/// Keyless `.sig` layer: the signature covers the exact payload bytes.
pub(super) fn verify_legacy(
    annotations: &BTreeMap<String, String>,
    payload: &[u8],
    sig: &[u8],
    trust: &Keyless,
) -> Result<Signer, Rejection> {
    legacy(annotations, payload, sig, payload, trust)
}

/// Keyless `.att` layer: any envelope signature over PAE, bound through the Rekor entry.
pub(super) fn verify_legacy_dsse(
    annotations: &BTreeMap<String, String>,
    env: &Decoded,
    trust: &Keyless,
) -> Result<Signer, Rejection> {
    let msg = super::envelope::pae(&env.payload_type, &env.payload);
    let mut last = Rejection::MissingSignature;
    for sig in &env.signatures {
        match legacy(annotations, &msg, sig, &env.payload, trust) {
            Ok(signer) => return Ok(signer),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod fulcio_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vectors");

    fn vector() -> (TrustedRoot, RekorBundle, Vec<u8>, Vec<u8>, Vec<u8>) {
        let read = |p: &str| std::fs::read(format!("{V}/{p}")).unwrap();
        let root = TrustedRoot::from_json(&read("sigstore-public-good/trusted_root.json")).unwrap();
        let bundle: RekorBundle =
            serde_json::from_slice(&read("sigstore-rs/keyless-disallow-service-nodeport.rekor-bundle.json")).unwrap();
        let sig =
            b64(std::str::from_utf8(&read("sigstore-rs/keyless-disallow-service-nodeport.signature.b64")).unwrap())
                .unwrap();
        let pem = read("sigstore-rs/keyless-disallow-service-nodeport.cert.pem");
        let cert = rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap().as_ref().to_vec();
        (root, bundle, sig, cert, read("sigstore-rs/keyless-disallow-service-nodeport.payload.json"))
    }

    fn run(sig: &[u8], cert: &[u8], payload: &[u8], validity: (i64, i64)) -> Result<(), Rejection> {
        let (root, bundle, ..) = vector();
        let set = b64(&bundle.set).unwrap();
        let body = b64(bundle.payload["body"].as_str().unwrap()).unwrap();
        let binding = Binding { signature: sig, payload_sha256: hex_sha256(payload), leaf_der: cert };
        verify_entry(&root, &set, &bundle.payload, &body, &binding, validity)
    }

    #[test]
    fn rekor_entry_is_bound_to_signature_payload_certificate_and_time() {
        let (_, _, sig, cert, payload) = vector();
        let inside = (1634714000, 1634715000);
        assert_eq!(run(&sig, &cert, &payload, inside), Ok(()));
        let code = |r: Result<(), Rejection>| r.unwrap_err().code();
        assert_eq!(code(run(&sig[1..], &cert, &payload, inside)), "tlog-mismatch");
        assert_eq!(code(run(&sig, &cert, b"another payload", inside)), "tlog-mismatch");
        assert_eq!(code(run(&sig, &cert[1..], &payload, inside)), "tlog-mismatch");
        assert_eq!(code(run(&sig, &cert, &payload, (0, 1))), "outside-validity");
    }

    #[test]
    fn leaf_identity_and_unknown_log() {
        let (root, mut bundle, sig, cert, payload) = vector();
        let (san, issuer) = identity(&Certificate::from_der(&cert).unwrap());
        assert_eq!(san, "flavio@castelli.me");
        // 2021 Fulcio certificates predate the issuer extension (OID 1.3.6.1.4.1.57264.1.1).
        assert_eq!(issuer, "");
        bundle.payload["logID"] = "00".into();
        let set = b64(&bundle.set).unwrap();
        let binding = Binding { signature: &sig, payload_sha256: hex_sha256(&payload), leaf_der: &cert };
        let err = verify_entry(&root, &set, &bundle.payload, b"{}", &binding, (0, i64::MAX)).unwrap_err();
        assert_eq!(err.code(), "set-invalid");
        assert!(TrustedRoot::from_json(b"{}").is_err());
    }
}

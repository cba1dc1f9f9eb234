//! Sigstore bundles (v0.1–v0.3 JSON): key-signed (publicKey hint, no tlog) and keyless (Fulcio certificate +
//! Rekor inclusion promise), carrying a DSSE envelope that is either an image signature or an attestation.

use serde::Deserialize;

use super::authority::{Authority, Keyless, Trust};
use super::dsse;
use super::envelope::{self, Decoded, Envelope};
use super::keyless::{self, Binding};
use super::reason::Rejection;
use super::{ImageSignature, Signer, Statement, b64, simple};
use crate::artifact::Layer;
use crate::images::Digest;

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    verification_material: Material,
    dsse_envelope: Option<Envelope>,
    message_signature: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Material {
    certificate: Option<RawBytes>,
    x509_certificate_chain: Option<Chain>,
    #[serde(default)]
    tlog_entries: Vec<TlogEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct Chain {
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogEntry {
    log_index: String,
    log_id: LogId,
    integrated_time: String,
    inclusion_promise: Option<Promise>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Promise {
    signed_entry_timestamp: String,
}

/// Whether a bundle carries an image signature or an attestation (decided from its signed content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Signature,
    Attestation,
}

fn parse(data: &[u8]) -> Result<(Bundle, Option<Decoded>), Rejection> {
    let bundle: Bundle = serde_json::from_slice(data).map_err(|e| Rejection::MalformedBundle(e.to_string()))?;
    if !bundle.media_type.starts_with("application/vnd.dev.sigstore.bundle") {
        return Err(Rejection::MalformedBundle(format!("unknown mediaType {:?}", bundle.media_type)));
    }
    let env = match &bundle.dsse_envelope {
        Some(e) => Some(envelope::decode(Envelope {
            payload_type: e.payload_type.clone(),
            payload: e.payload.clone(),
            signatures: e.signatures.iter().map(|s| envelope::EnvelopeSignature { sig: s.sig.clone() }).collect(),
        })?),
        None => None,
    };
    Ok((bundle, env))
}

/// A bundle layer parsed once, for every authority and both kinds of check.
pub(super) struct Parsed<'l> {
    pub layer: &'l Layer,
    bundle: Result<(Bundle, Option<Decoded>), Rejection>,
    pub kind: Kind,
}

/// Parses a bundle layer and classifies it. Unreadable bundles count as signatures so their rejection is reported
/// once.
pub(super) fn parse_layer(layer: &Layer) -> Parsed<'_> {
    let bundle = parse(&layer.data);
    let kind = match &bundle {
        Ok((_, Some(env))) if env.payload_type != SIMPLE_SIGNING => {
            let predicate = serde_json::from_slice::<serde_json::Value>(&env.payload)
                .ok()
                .and_then(|v| v.get("predicateType")?.as_str().map(str::to_owned));
            if predicate.as_deref() == Some(COSIGN_SIGN_PREDICATE) { Kind::Signature } else { Kind::Attestation }
        }
        _ => Kind::Signature,
    };
    Parsed { layer, bundle, kind }
}

fn envelope<'p>(parsed: &'p Parsed<'_>) -> Result<(&'p Bundle, &'p Decoded), Rejection> {
    let (bundle, env) = parsed.bundle.as_ref().map_err(Clone::clone)?;
    if bundle.message_signature.is_some() {
        return Err(Rejection::UnsupportedBundle("messageSignature bundles sign a blob, not an image".into()));
    }
    let env =
        env.as_ref().ok_or_else(|| Rejection::MalformedBundle("neither dsseEnvelope nor messageSignature".into()))?;
    Ok((bundle, env))
}

/// A signature-kind bundle under one authority.
pub(super) fn verify_signature(
    parsed: &Parsed<'_>,
    digest: &Digest,
    auth: &Authority,
) -> Result<ImageSignature, Rejection> {
    let layer = parsed.layer;
    let (bundle, env) = envelope(parsed)?;
    if env.payload_type == SIMPLE_SIGNING {
        // Chains' sigstore-bundle mode may sign the raw payload rather than PAE; both bind the same document.
        let signer = signer(bundle, env, auth, true)?;
        let (docker_reference, annotations) = simple::bind_payload(&env.payload, digest)?;
        return Ok(ImageSignature { layer: layer.digest.clone(), docker_reference, annotations, signer });
    }
    let signer = signer(bundle, env, auth, false)?;
    let st = dsse::statement(layer.digest.clone(), env, std::slice::from_ref(digest), signer)?;
    let subject = st.subject.iter().find(|s| s.digest.get("sha256").map(String::as_str) == Some(digest.hex()));
    Ok(ImageSignature {
        layer: st.layer,
        docker_reference: subject.map(|s| s.name.clone()).unwrap_or_default(),
        annotations: serde_json::Value::Null,
        signer: st.signer,
    })
}

/// An attestation-kind bundle under one authority.
pub(super) fn verify_attestation(
    parsed: &Parsed<'_>,
    acceptable: &[Digest],
    auth: &Authority,
) -> Result<Statement, Rejection> {
    let (bundle, env) = envelope(parsed)?;
    let signer = signer(bundle, env, auth, false)?;
    dsse::statement(parsed.layer.digest.clone(), env, acceptable, signer)
}

fn signer(bundle: &Bundle, env: &Decoded, auth: &Authority, raw_ok: bool) -> Result<Signer, Rejection> {
    match auth.trust() {
        Trust::Keys(keys) => match dsse::by_keys(keys, env) {
            Err(e) if raw_ok => {
                env.signatures.iter().find_map(|s| simple::by_keys(keys, &env.payload, s).ok()).ok_or(e)
            }
            other => other,
        },
        Trust::Keyless(k) => keyless_signer(bundle, env, k),
    }
}

fn keyless_signer(bundle: &Bundle, env: &Decoded, trust: &Keyless) -> Result<Signer, Rejection> {
    let m = &bundle.verification_material;
    let cert_b64 = m
        .certificate
        .as_ref()
        .or_else(|| m.x509_certificate_chain.as_ref().and_then(|c| c.certificates.first()))
        .ok_or_else(|| Rejection::MissingTransparency("bundle has no certificate (key-signed?)".into()))?;
    let cert_der = b64(&cert_b64.raw_bytes).map_err(|e| Rejection::UntrustedCertificate(e.to_string()))?;
    let leaf = keyless::leaf(&cert_der, trust)?;
    let msg = envelope::pae(&env.payload_type, &env.payload);
    let sig = env.signatures.iter().find(|s| leaf.key.verify(&msg, s).is_some()).ok_or_else(|| {
        Rejection::WrongKey { keys: vec![format!("certificate of {}", keyless::signer_name(&leaf.signer))] }
    })?;
    let mut last = Rejection::MissingTransparency("bundle has no Rekor entry with an inclusion promise".into());
    for entry in &m.tlog_entries {
        match check_entry(entry, trust, sig, env, &leaf) {
            Ok(()) => return Ok(leaf.signer),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn check_entry(
    entry: &TlogEntry,
    trust: &Keyless,
    sig: &[u8],
    env: &Decoded,
    leaf: &keyless::Leaf,
) -> Result<(), Rejection> {
    let promise = entry
        .inclusion_promise
        .as_ref()
        .ok_or_else(|| Rejection::MissingTransparency("Rekor entry has no inclusion promise (SET)".into()))?;
    let set = b64(&promise.signed_entry_timestamp).map_err(Rejection::SetInvalid)?;
    let int = |s: &str| s.parse::<i64>().map_err(|e| Rejection::MalformedBundle(format!("{s:?}: {e}")));
    let log_id = hex::encode(b64(&entry.log_id.key_id).map_err(Rejection::MalformedBundle)?);
    let payload = serde_json::json!({
        "body": entry.canonicalized_body,
        "integratedTime": int(&entry.integrated_time)?,
        "logID": log_id,
        "logIndex": int(&entry.log_index)?,
    });
    let body = b64(&entry.canonicalized_body).map_err(Rejection::MalformedBundle)?;
    let binding = Binding { signature: sig, payload_sha256: keyless::hex_sha256(&env.payload), leaf_der: &leaf.der };
    keyless::verify_entry(trust.trusted_root(), &set, &payload, &body, &binding, leaf.validity)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::artifact::{Artifacts, Origin};
    use crate::verify::tests::{TestKey, statement_json};
    use crate::verify::{attestations, signatures};

    const V: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vectors/sigstore-rs");
    const BUSYBOX: &str = "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b";

    fn b64e(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    fn bundle(payload_type: &str, payload: &[u8], sig: &[u8]) -> Artifacts {
        let json = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": "unauthenticated"}},
            "dsseEnvelope": {"payloadType": payload_type, "payload": b64e(payload), "signatures": [{"sig": b64e(sig)}]}
        });
        artifacts(json.to_string().into_bytes())
    }

    fn artifacts(data: Vec<u8>) -> Artifacts {
        let origin = Origin::Referrer { manifest: Digest::sha256_of(b"m"), artifact_type: None };
        let layer = Layer {
            origin,
            media_type: crate::artifact::media_type::BUNDLE_V03.into(),
            digest: Digest::sha256_of(&data),
            data: data.into(),
            annotations: Default::default(),
        };
        Artifacts { bundles: vec![layer], ..Default::default() }
    }

    /// Chains' sigstore-bundle mode: a simple-signing payload in a DSSE envelope, signed over the raw payload
    /// (the busybox vector's signature) or over PAE; both verify, and a one-byte twin does not.
    #[test]
    fn simple_signing_bundles_raw_or_pae() {
        let payload = std::fs::read(format!("{V}/key-signed-busybox.payload.json")).unwrap();
        let sig =
            crate::verify::b64(&std::fs::read_to_string(format!("{V}/key-signed-busybox.signature.b64")).unwrap())
                .unwrap();
        let pem = std::fs::read(format!("{V}/key-signed-busybox.pub.pem")).unwrap();
        let auth = Authority::keys(
            "sigstore-rs",
            crate::verify::KeySet::new(vec![crate::verify::PublicKey::from_pem(&pem).unwrap()]).unwrap(),
        );
        let digest = Digest::parse(BUSYBOX).unwrap();
        let check = signatures(&bundle(SIMPLE_SIGNING, &payload, &sig), &digest, std::slice::from_ref(&auth));
        assert_eq!(check.outcome(), Ok(()));
        let mut twin = payload.clone();
        twin[100] ^= 1;
        let check = signatures(&bundle(SIMPLE_SIGNING, &twin, &sig), &digest, std::slice::from_ref(&auth));
        assert_eq!(check.outcome().unwrap_err().code(), "wrong-key");

        let key = TestKey::new();
        let pae_sig = key.sign(&dsse::pae(SIMPLE_SIGNING, &payload));
        let check = signatures(&bundle(SIMPLE_SIGNING, &payload, &pae_sig), &digest, &[key.authority("k")]);
        assert_eq!(check.outcome(), Ok(()));
        let other = Digest::sha256_of(b"other");
        let check = signatures(&bundle(SIMPLE_SIGNING, &payload, &pae_sig), &other, &[key.authority("k")]);
        assert_eq!(check.outcome().unwrap_err().code(), "digest-mismatch");
        // Raw-payload signatures are accepted only for simple signing, never for in-toto statements.
        let hex = "2222222222222222222222222222222222222222222222222222222222222222";
        let stmt = statement_json(hex);
        let raw = key.sign(&stmt);
        let acceptable = [Digest::parse(&format!("sha256:{hex}")).unwrap()];
        let check = attestations(&bundle(dsse::IN_TOTO, &stmt, &raw), &acceptable, &[key.authority("k")]);
        assert_eq!(check.outcome().unwrap_err().code(), "wrong-key");
    }

    #[test]
    fn unsupported_and_malformed_bundles_say_so() {
        let key = TestKey::new();
        let digest = Digest::parse(BUSYBOX).unwrap();
        let message = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": "x"}},
            "messageSignature": {"messageDigest": {"algorithm": "SHA2_256", "digest": "AA=="}, "signature": "AA=="}
        });
        let code = |a: Artifacts| signatures(&a, &digest, &[key.authority("k")]).outcome().unwrap_err().code();
        assert_eq!(code(artifacts(message.to_string().into_bytes())), "unsupported-bundle");
        assert_eq!(code(artifacts(b"{\"mediaType\":1}".to_vec())), "malformed-bundle");
        let mut other_type = message.clone();
        other_type["mediaType"] = "application/json".into();
        assert_eq!(code(artifacts(other_type.to_string().into_bytes())), "malformed-bundle");
    }
}

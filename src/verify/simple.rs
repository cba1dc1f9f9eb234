//! cosign `.sig` layers: the simple-signing payload, checked on its exact bytes, bound to the image digest.

use serde::Deserialize;

use super::authority::{Authority, Trust};
use super::reason::Rejection;
use super::{ImageSignature, Signer, b64, keyless};
use crate::artifact::Layer;
use crate::images::Digest;

pub(super) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const COSIGN_TYPE: &str = "cosign container image signature";

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
    #[serde(default)]
    optional: serde_json::Value,
}

#[derive(Deserialize)]
struct Critical {
    identity: Option<IdentityField>,
    image: ImageField,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct IdentityField {
    #[serde(rename = "docker-reference", default)]
    docker_reference: String,
}

#[derive(Deserialize)]
struct ImageField {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// One `.sig` layer under one authority.
pub(super) fn verify_layer(layer: &Layer, digest: &Digest, auth: &Authority) -> Result<ImageSignature, Rejection> {
    let sig_b64 = layer.annotations.get(SIGNATURE_ANNOTATION).map(String::as_str).unwrap_or_default();
    if sig_b64.trim().is_empty() {
        return Err(Rejection::MissingSignature);
    }
    let sig = b64(sig_b64).map_err(Rejection::MalformedSignature)?;
    let signer = match auth.trust() {
        Trust::Keys(keys) => by_keys(keys, &layer.data, &sig)?,
        Trust::Keyless(k) => keyless::verify_legacy(&layer.annotations, &layer.data, &sig, k)?,
    };
    let (docker_reference, annotations) = bind_payload(&layer.data, digest)?;
    Ok(ImageSignature { layer: layer.digest.clone(), docker_reference, annotations, signer })
}

/// Checks `sig` over `msg` with every key in the set; the first that verifies signs.
pub(super) fn by_keys(keys: &super::KeySet, msg: &[u8], sig: &[u8]) -> Result<Signer, Rejection> {
    for key in keys.keys() {
        if let Some(scheme) = key.verify(msg, sig) {
            return Ok(Signer::Key { fingerprint: key.fingerprint().to_owned(), scheme: scheme.to_string() });
        }
    }
    Err(Rejection::WrongKey { keys: keys.keys().iter().map(ToString::to_string).collect() })
}

/// Parses a signed simple-signing payload and checks it names `digest`. Returns (docker-reference, optional).
pub(super) fn bind_payload(data: &[u8], digest: &Digest) -> Result<(String, serde_json::Value), Rejection> {
    let payload: Payload = serde_json::from_slice(data).map_err(|e| Rejection::MalformedPayload(e.to_string()))?;
    if payload.critical.kind != COSIGN_TYPE {
        return Err(Rejection::WrongSignatureType { found: payload.critical.kind });
    }
    let signed = payload.critical.image.docker_manifest_digest;
    if signed != digest.to_string() {
        return Err(Rejection::DigestMismatch { signed, expected: digest.clone() });
    }
    let reference = payload.critical.identity.map(|i| i.docker_reference).unwrap_or_default();
    Ok((reference, payload.optional))
}

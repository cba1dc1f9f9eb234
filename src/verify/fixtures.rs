//! Test fixtures for code that judges verified provenance: P-256 keys made at test time, cosign signature and
//! in-toto attestation layers signed with them. Nothing is faked: every `Verified` value comes out of `verify`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Authority, KeySet, PublicKey, pae};
use crate::artifact::{Artifacts, Layer, Origin, media_type};
use crate::images::Digest;

const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const IN_TOTO: &str = "application/vnd.in-toto+json";

/// SLSA provenance v0.2, the predicate type Tekton Chains writes.
pub(crate) const SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";

fn b64e(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A digest named after `label` (its sha256), for manifests that exist only in a test.
pub(crate) fn digest(label: &str) -> Digest {
    Digest::sha256_of(label.as_bytes())
}

/// A P-256 signing key made at test time.
pub(crate) struct Key(EcdsaKeyPair);

impl Key {
    pub(crate) fn new() -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        Self(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap())
    }

    pub(crate) fn public(&self) -> PublicKey {
        PublicKey::from_spki_der(self.0.public_key().as_der().unwrap().as_ref()).unwrap()
    }

    /// The public key as PEM, as a policy's `authorities[].key` holds it inline.
    pub(crate) fn pem(&self) -> String {
        let body = b64e(self.public().spki_der());
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    /// An authority named `name` trusting this key only.
    pub(crate) fn authority(&self, name: &str) -> Authority {
        Authority::keys(name, KeySet::new(vec![self.public()]).unwrap())
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(&aws_lc_rs::rand::SystemRandom::new(), msg).unwrap().as_ref().to_vec()
    }

    /// A cosign `.sig` layer: a simple-signing payload naming `digest`, signed with this key.
    pub(crate) fn signature(&self, digest: &Digest) -> Layer {
        let payload = json!({
            "critical": {
                "identity": {"docker-reference": "registry.example.com/team/app"},
                "image": {"docker-manifest-digest": digest.to_string()},
                "type": "cosign container image signature"
            },
            "optional": {"signed-by": "fixtures"}
        })
        .to_string()
        .into_bytes();
        let signature = b64e(&self.sign(&payload));
        Layer {
            origin: Origin::SigTag,
            media_type: media_type::SIMPLE_SIGNING.into(),
            digest: Digest::sha256_of(&payload),
            data: payload.into(),
            annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_owned(), signature)]),
        }
    }

    /// A cosign `.att` layer: a DSSE envelope, signed with this key, of an in-toto statement about `subject`.
    pub(crate) fn attestation(&self, subject: &Digest, predicate_type: &str, predicate: Value) -> Layer {
        self.attestation_of(std::slice::from_ref(subject), predicate_type, predicate)
    }

    /// [`Key::attestation`] of a statement naming every digest of `subjects`.
    pub(crate) fn attestation_of(&self, subjects: &[Digest], predicate_type: &str, predicate: Value) -> Layer {
        let subjects: Vec<Value> = subjects
            .iter()
            .map(|d| json!({"name": "registry.example.com/team/app", "digest": {"sha256": d.hex()}}))
            .collect();
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "subject": subjects,
            "predicateType": predicate_type,
            "predicate": predicate
        })
        .to_string()
        .into_bytes();
        let sig = self.sign(&pae(IN_TOTO, &statement));
        let envelope =
            json!({"payloadType": IN_TOTO, "payload": b64e(&statement), "signatures": [{"sig": b64e(&sig)}]})
                .to_string()
                .into_bytes();
        Layer {
            origin: Origin::AttTag,
            media_type: media_type::DSSE_ENVELOPE.into(),
            digest: Digest::sha256_of(&envelope),
            data: envelope.into(),
            annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_owned(), String::new())]),
        }
    }

    /// [`Key::attestation`] of SLSA v0.2 provenance built by `builder`.
    pub(crate) fn provenance(&self, subject: &Digest, builder: &str) -> Layer {
        self.attestation(subject, SLSA_V02, json!({"builder": {"id": builder}, "buildType": "fixtures"}))
    }
}

/// The artifacts a registry would hold: these signature and attestation layers.
pub(crate) fn artifacts(signatures: Vec<Layer>, attestations: Vec<Layer>) -> Artifacts {
    Artifacts { signatures, attestations, bundles: Vec::new() }
}

#[test]
fn fixture_layers_verify_under_their_key_only() {
    let (key, other) = (Key::new(), Key::new());
    let d = digest("image");
    let a = artifacts(vec![key.signature(&d)], vec![key.provenance(&d, "https://builder.example")]);
    let (sigs, atts) = super::check(&a, std::slice::from_ref(&d), &[key.authority("k")]);
    assert_eq!((sigs.verified.len(), atts.verified.len()), (1, 1));
    assert_eq!(atts.verified[0].predicate["builder"]["id"], "https://builder.example");
    let (sigs, atts) = super::check(&a, std::slice::from_ref(&d), &[other.authority("k")]);
    assert_eq!((sigs.outcome().unwrap_err().code(), atts.outcome().unwrap_err().code()), ("wrong-key", "wrong-key"));
    assert_eq!(PublicKey::from_pem(key.pem().as_bytes()).unwrap(), key.public());
}

//! DSSE envelopes (PAE, any-signature-verifies) and in-toto statements bound to the image by subject digest.

use serde::Deserialize;

use super::authority::{Authority, Trust};
pub use super::envelope::pae;
use super::envelope::{Decoded, parse};
use super::reason::Rejection;
use super::{Signer, Statement, Subject, keyless, simple};
use crate::artifact::Layer;
use crate::images::Digest;

pub(super) const IN_TOTO: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPES: [&str; 2] = ["https://in-toto.io/Statement/v0.1", "https://in-toto.io/Statement/v1"];

/// Any envelope signature valid under the authority's keys (PAE over type and payload) counts.
pub(super) fn by_keys(keys: &super::KeySet, env: &Decoded) -> Result<Signer, Rejection> {
    let msg = pae(&env.payload_type, &env.payload);
    let mut last = None;
    for sig in &env.signatures {
        match simple::by_keys(keys, &msg, sig) {
            Ok(signer) => return Ok(signer),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(Rejection::MissingSignature))
}

/// One `.att` layer under one authority.
pub(super) fn verify_layer(layer: &Layer, acceptable: &[Digest], auth: &Authority) -> Result<Statement, Rejection> {
    let env = parse(&layer.data)?;
    let signer = match auth.trust() {
        Trust::Keys(keys) => by_keys(keys, &env)?,
        Trust::Keyless(k) => keyless::verify_legacy_dsse(&layer.annotations, &env, k)?,
    };
    statement(layer.digest.clone(), &env, acceptable, signer)
}

#[derive(Deserialize)]
struct RawStatement {
    #[serde(rename = "_type")]
    statement_type: String,
    #[serde(default)]
    subject: Vec<RawSubject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    #[serde(default)]
    predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct RawSubject {
    #[serde(default)]
    name: String,
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// Parses the signed statement and requires one subject's sha256 to equal an acceptable digest.
pub(super) fn statement(
    layer: Digest,
    env: &Decoded,
    acceptable: &[Digest],
    signer: Signer,
) -> Result<Statement, Rejection> {
    if env.payload_type != IN_TOTO {
        return Err(Rejection::WrongPayloadType { found: env.payload_type.clone() });
    }
    let raw: RawStatement =
        serde_json::from_slice(&env.payload).map_err(|e| Rejection::MalformedStatement(e.to_string()))?;
    if !STATEMENT_TYPES.contains(&raw.statement_type.as_str()) {
        return Err(Rejection::MalformedStatement(format!("unknown _type {:?}", raw.statement_type)));
    }
    let matched = raw.subject.iter().find_map(|s| {
        let hex = s.digest.get("sha256")?;
        acceptable.iter().find(|d| d.algorithm() == "sha256" && d.hex() == hex.as_str())
    });
    let Some(matched) = matched.cloned() else {
        let subjects = raw
            .subject
            .iter()
            .map(|s| s.digest.get("sha256").map_or_else(|| "(no sha256)".to_owned(), |h| format!("sha256:{h}")))
            .collect();
        return Err(Rejection::SubjectMismatch { subjects });
    };
    Ok(Statement {
        layer,
        statement_type: raw.statement_type,
        predicate_type: raw.predicate_type,
        subject: raw.subject.into_iter().map(|s| Subject { name: s.name, digest: s.digest }).collect(),
        predicate: raw.predicate,
        matched,
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_table() {
        let cases: &[(&str, &[u8], &[u8])] = &[
            ("application/vnd.in-toto+json", b"{}", b"DSSEv1 28 application/vnd.in-toto+json 2 {}"),
            ("", b"", b"DSSEv1 0  0 "),
            (
                "http://example.com/HelloWorld",
                b"hello world",
                b"DSSEv1 29 http://example.com/HelloWorld 11 hello world",
            ),
            ("t", "é".as_bytes(), "DSSEv1 1 t 2 é".as_bytes()),
        ];
        for (ty, body, want) in cases {
            assert_eq!(pae(ty, body), want.to_vec(), "PAE({ty:?}, {body:?})");
        }
    }
}

//! Embedded SCTs (RFC 6962 §3.3): the leaf's precertificate SCT list (OID 1.3.6.1.4.1.11129.2.4.2), each SCT
//! verified with the CT log key whose log id (sha256 of its SPKI) matches, over the precertificate entry rebuilt
//! from the leaf (its TBS without the SCT list extension, and the sha256 of the issuer's SPKI), at a timestamp inside
//! the log's `validFor`. One verified SCT from a trusted log is enough.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;
use x509_cert::der::asn1::{Any, AnyRef};
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::{Decode, Encode, Tag, TagNumber, Tagged};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::sct::{
    HashAlgorithm, SignatureAlgorithm, SignatureAndHashAlgorithm, SignedCertificateTimestamp,
    SignedCertificateTimestampList,
};

use crate::verify::key::{KeyKind, Scheme};
use crate::verify::reason::Rejection;
use crate::verify::trusted_root::Log;

/// Verifies that `leaf` (DER `leaf_der`, issued by `issuer`) embeds an SCT from one of `logs` (by hex log id).
pub(super) fn verify(
    logs: &BTreeMap<String, Log>,
    leaf: &Certificate,
    leaf_der: &[u8],
    issuer: &Certificate,
) -> Result<(), Rejection> {
    let list = match leaf.tbs_certificate().get_extension::<SignedCertificateTimestampList>() {
        Ok(Some((_, list))) => list,
        Ok(None) => return Err(Rejection::MissingSct),
        Err(e) => return Err(invalid(format!("the SCT list extension is malformed or repeated ({e})"))),
    };
    let scts = list.parse_timestamps().map_err(|e| invalid(format!("the SCT list is malformed ({e:?})")))?;
    if scts.is_empty() {
        return Err(invalid("the SCT list is empty".into()));
    }
    let tbs = precert_tbs(leaf_der).map_err(|e| invalid(format!("the precertificate cannot be rebuilt ({e})")))?;
    let issuer_spki = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| invalid(format!("the issuer's key cannot be encoded ({e})")))?;
    let issuer_key_hash = Sha256::digest(&issuer_spki);
    let mut unknown = Vec::new();
    let mut failure = None;
    for serialized in &scts {
        let sct = match serialized.parse_timestamp() {
            Ok(sct) => sct,
            Err(e) => {
                failure.get_or_insert(invalid(format!("an SCT is malformed ({e:?})")));
                continue;
            }
        };
        let id = hex::encode(sct.log_id.key_id);
        let Some(log) = logs.get(&id) else {
            unknown.push(id);
            continue;
        };
        match check(&sct, log, &id, &issuer_key_hash, &tbs) {
            Ok(()) => return Ok(()),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    Err(failure.unwrap_or(Rejection::SctUnknownLog { log_ids: unknown }))
}

fn invalid(m: String) -> Rejection {
    Rejection::SctInvalid(m)
}

/// One SCT from a known log: its signature over the precertificate entry, then its (now authenticated) timestamp.
fn check(
    sct: &SignedCertificateTimestamp,
    log: &Log,
    id: &str,
    issuer_key_hash: &[u8],
    tbs: &[u8],
) -> Result<(), Rejection> {
    let alg = &sct.signature.algorithm;
    let scheme = scheme(alg, log.key.kind()).ok_or_else(|| {
        invalid(format!("the SCT from CT log {id} uses {alg:?}, which its {:?} key cannot", log.key.kind()))
    })?;
    let message = signed_entry(sct, issuer_key_hash, tbs)?;
    if !log.key.verify_exact(scheme, &message, sct.signature.signature.as_slice()) {
        return Err(invalid(format!("the SCT from CT log {id} is not its signature over this certificate")));
    }
    let secs = i64::try_from(sct.timestamp / 1000).unwrap_or(i64::MAX);
    log.window.check(|| format!("CT log {id}"), secs, "the SCT's timestamp")
}

/// The RFC 6962 §3.2 `digitally-signed` struct of a precert_entry SCT.
fn signed_entry(sct: &SignedCertificateTimestamp, issuer_key_hash: &[u8], tbs: &[u8]) -> Result<Vec<u8>, Rejection> {
    let tbs_len = u32::try_from(tbs.len())
        .ok()
        .filter(|l| *l < 1 << 24)
        .ok_or_else(|| invalid("the precertificate is too large".into()))?;
    let extensions = sct.extensions.as_slice();
    let extensions_len =
        u16::try_from(extensions.len()).map_err(|_| invalid("the SCT's extensions are too large".into()))?;
    let mut m = Vec::with_capacity(tbs.len() + extensions.len() + 50);
    m.push(0); // sct_version v1
    m.push(0); // signature_type certificate_timestamp
    m.extend_from_slice(&sct.timestamp.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // entry_type precert_entry
    m.extend_from_slice(issuer_key_hash);
    m.extend_from_slice(&tbs_len.to_be_bytes()[1..]);
    m.extend_from_slice(tbs);
    m.extend_from_slice(&extensions_len.to_be_bytes());
    m.extend_from_slice(extensions);
    Ok(m)
}

/// The verification scheme an SCT's (hash, signature) pair names for a log key of `kind`.
fn scheme(alg: &SignatureAndHashAlgorithm, kind: KeyKind) -> Option<Scheme> {
    use {HashAlgorithm as H, SignatureAlgorithm as S};
    match (&alg.hash, &alg.signature, kind) {
        (H::Sha256, S::Ecdsa, KeyKind::EcdsaP256) => Some(Scheme::EcdsaP256Sha256),
        (H::Sha256, S::Ecdsa, KeyKind::EcdsaP384) => Some(Scheme::EcdsaP384Sha256),
        (H::Sha384, S::Ecdsa, KeyKind::EcdsaP384) => Some(Scheme::EcdsaP384Sha384),
        (H::Sha512, S::Ecdsa, KeyKind::EcdsaP521) => Some(Scheme::EcdsaP521Sha512),
        (H::Sha256, S::Rsa, KeyKind::Rsa) => Some(Scheme::RsaPkcs1Sha256),
        (_, S::Ed25519, KeyKind::Ed25519) => Some(Scheme::Ed25519),
        _ => None,
    }
}

/// The precertificate's TBS: the leaf's TBS with the SCT list extension removed. Every other field and extension
/// keeps its exact encoding (only the lengths around them are recomputed); an extension list left empty is dropped.
/// x509-cert 0.3 cannot build a modified `TbsCertificate` (its fields are crate-private), so the TBS is rebuilt
/// from its DER elements with `der`.
fn precert_tbs(leaf_der: &[u8]) -> Result<Vec<u8>, x509_cert::der::Error> {
    let cert = Vec::<AnyRef<'_>>::from_der(leaf_der)?;
    let tbs = cert.first().ok_or(x509_cert::der::ErrorKind::Failed)?;
    let tbs_der = tbs.to_der()?;
    let extensions = Tag::ContextSpecific { constructed: true, number: TagNumber(3) };
    let mut fields = Vec::new();
    for field in Vec::<AnyRef<'_>>::from_der(&tbs_der)? {
        if field.tag() != extensions {
            fields.push(Any::from(field));
            continue;
        }
        let raw = Vec::<AnyRef<'_>>::from_der(field.value())?;
        let parsed = Vec::<Extension>::from_der(field.value())?;
        let kept: Vec<AnyRef<'_>> = raw
            .into_iter()
            .zip(parsed)
            .filter(|(_, e)| e.extn_id != SignedCertificateTimestampList::OID)
            .map(|(raw, _)| raw)
            .collect();
        if !kept.is_empty() {
            fields.push(Any::new(extensions, kept.to_der()?)?);
        }
    }
    fields.to_der()
}

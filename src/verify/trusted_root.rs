//! The Sigstore trusted root (`trusted_root.json`, protobuf-JSON): Fulcio CA chains, Rekor and CT log keys, each
//! with the `validFor` window in which it may vouch.

use std::collections::BTreeMap;

use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use x509_cert::Certificate;
use x509_cert::der::Decode;

use crate::verify::b64;
use crate::verify::key::PublicKey;
use crate::verify::reason::Rejection;

/// A trusted root could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trusted root: {0}")]
pub struct TrustedRootError(String);

/// When a trusted-root entry may vouch (its `validFor`), both ends inclusive; an absent end is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Window {
    start: Option<i64>,
    end: Option<i64>,
}

impl Window {
    fn parse(raw: Option<&RawValidity>) -> Result<Self, TrustedRootError> {
        match raw {
            Some(v) => Ok(Self { start: rfc3339(&v.start)?, end: rfc3339(&v.end)? }),
            None => Ok(Self::default()),
        }
    }

    fn contains(&self, t: i64) -> bool {
        self.start.is_none_or(|s| t >= s) && self.end.is_none_or(|e| t <= e)
    }

    /// `Ok` when `t` lies inside; otherwise a rejection naming the entry, its window and what `t` is.
    pub(super) fn check(&self, entry: impl FnOnce() -> String, t: i64, what: &'static str) -> Result<(), Rejection> {
        if self.contains(t) {
            return Ok(());
        }
        let window = match (self.start, self.end) {
            (Some(s), Some(e)) => format!("from {} until {}", time(s), time(e)),
            (Some(s), None) => format!("from {}", time(s)),
            (None, Some(e)) => format!("until {}", time(e)),
            (None, None) => "always".to_owned(),
        };
        Err(Rejection::TrustedRootValidity { entry: entry(), window, at: time(t), what })
    }
}

/// RFC 3339 for messages (the raw number if out of range).
fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
}

/// A Fulcio CA: its chain (intermediates first, the trust anchor last), parsed and as DER, and its `validFor`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Ca {
    pub chain: Vec<Certificate>,
    pub der: Vec<CertificateDer<'static>>,
    pub window: Window,
}

impl Ca {
    /// How messages name it: by the anchor's subject.
    pub(super) fn name(&self) -> String {
        let subject = self.chain.last().map(|c| c.tbs_certificate().subject().to_string()).unwrap_or_default();
        format!("certificate authority {subject:?}")
    }
}

/// A transparency log (Rekor or CT) key and its `validFor`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Log {
    pub key: PublicKey,
    pub window: Window,
}

/// Fulcio CAs, Rekor keys and CT log keys, from a `trusted_root.json` (Sigstore's protobuf-JSON format).
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedRoot {
    /// sha256 of the JSON it was read from, for cache keys.
    digest: String,
    pub(super) cas: Vec<Ca>,
    /// Rekor keys by log id (hex sha256 of the SPKI DER, as written in cosign bundles).
    pub(super) tlogs: BTreeMap<String, Log>,
    /// CT log keys by RFC 6962 log id (hex sha256 of the SPKI DER, computed here from the key).
    pub(super) ctlogs: BTreeMap<String, Log>,
    /// The root lists CT logs, so every leaf needs an embedded SCT from one of them.
    pub(super) require_sct: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoot {
    #[serde(default)]
    tlogs: Vec<RawLog>,
    #[serde(default)]
    certificate_authorities: Vec<RawCa>,
    #[serde(default)]
    ctlogs: Vec<RawLog>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    public_key: RawPublicKey,
    log_id: RawLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPublicKey {
    raw_bytes: String,
    valid_for: Option<RawValidity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCa {
    cert_chain: RawChain,
    valid_for: Option<RawValidity>,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
struct RawValidity {
    start: Option<String>,
    end: Option<String>,
}

fn rfc3339(s: &Option<String>) -> Result<Option<i64>, TrustedRootError> {
    s.as_deref()
        .map(|s| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp()))
        .transpose()
        .map_err(|e| TrustedRootError(format!("bad time: {e}")))
}

/// Log keys by `id(entry, SPKI DER)`. Keys of types we cannot parse are skipped: they can only fail to verify.
fn logs(
    raw: &[RawLog],
    id: impl Fn(&RawLog, &[u8]) -> Result<String, TrustedRootError>,
) -> Result<BTreeMap<String, Log>, TrustedRootError> {
    let mut logs = BTreeMap::new();
    for t in raw {
        let der = b64(&t.public_key.raw_bytes).map_err(TrustedRootError)?;
        let window = Window::parse(t.public_key.valid_for.as_ref())?;
        if let Ok(key) = PublicKey::from_spki_der(&der) {
            logs.insert(id(t, &der)?, Log { key, window });
        }
    }
    Ok(logs)
}

/// A CA entry; `None` for an empty chain. The chain's last certificate must be usable as a trust anchor.
fn ca(raw: &RawCa) -> Result<Option<Ca>, TrustedRootError> {
    let der = raw
        .cert_chain
        .certificates
        .iter()
        .map(|c| b64(&c.raw_bytes).map(CertificateDer::from).map_err(TrustedRootError))
        .collect::<Result<Vec<_>, _>>()?;
    let chain = der
        .iter()
        .map(|d| Certificate::from_der(d).map_err(|e| TrustedRootError(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(anchor) = der.last() else { return Ok(None) };
    webpki::anchor_from_trusted_cert(anchor).map_err(|e| {
        TrustedRootError(format!("the last certificate of a CA chain is not a usable trust anchor: {e}"))
    })?;
    Ok(Some(Ca { chain, der, window: Window::parse(raw.valid_for.as_ref())? }))
}

impl TrustedRoot {
    /// Parses a `trusted_root.json`. Fails on malformed JSON, base64 or times, on a CA certificate that does not
    /// parse or a CA chain whose last certificate is not a usable trust anchor, and on a root with neither CAs nor
    /// Rekor logs. CT logs make an embedded SCT mandatory for every keyless leaf judged under this root.
    pub fn from_json(json: &[u8]) -> Result<Self, TrustedRootError> {
        let raw: RawRoot = serde_json::from_slice(json).map_err(|e| TrustedRootError(e.to_string()))?;
        let tlogs = logs(&raw.tlogs, |t, _| Ok(hex::encode(b64(&t.log_id.key_id).map_err(TrustedRootError)?)))?;
        // RFC 6962 defines a CT log's id as the hash of its key: computed, not taken from the root's `logId`.
        let ctlogs = logs(&raw.ctlogs, |_, der| Ok(hex_sha256(der)))?;
        let mut cas = Vec::new();
        for raw in &raw.certificate_authorities {
            cas.extend(ca(raw)?);
        }
        if cas.is_empty() && tlogs.is_empty() {
            return Err(TrustedRootError("no certificate authorities and no transparency logs".into()));
        }
        Ok(Self {
            digest: crate::images::Digest::sha256_of(json).to_string(),
            cas,
            tlogs,
            ctlogs,
            require_sct: !raw.ctlogs.is_empty(),
        })
    }

    /// `sha256:` of the JSON document: changes whenever the root is replaced.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// Lowercase hex of the SHA-256 of `data` (log ids, payload hashes).
pub(super) fn hex_sha256(data: &[u8]) -> String {
    crate::images::Digest::sha256_of(data).hex().to_owned()
}

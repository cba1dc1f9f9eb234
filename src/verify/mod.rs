//! Judges what the registry found next to an image: cosign `.sig` simple signatures, `.att` DSSE attestations and
//! Sigstore bundles, against configured authorities. The only module that uses `sigstore`; the only code that can
//! build a [`Verified`] value.
//!
//! Use: build [`Authority`]s once per policy load (`Authority::keys(name, keys::KeyStore::key_set(&refs)?)`, or
//! `Trust::Keyless(Keyless::new(Arc::new(TrustedRoot::from_json(..)?), identities)?)`), then per image digest call
//! [`signatures`] and [`attestations`] on the [`Artifacts`] the registry fetched. Each returns the verified items
//! (with the authority that verified them) and one [`Rejected`] per layer that did not count; `outcome()` gives
//! the most telling [`Rejection`] (with a stable `code()`) and `explain()` a one-line denial message. Include
//! [`Authority::cache_key`] in any cache key.

mod authority;
mod bundle;
mod dsse;
mod envelope;
mod key;
mod keyless;
mod reason;
mod simple;
mod trusted_root;

use std::sync::Arc;

use serde::Serialize;

use crate::artifact::{Artifacts, Layer, Origin};
use crate::images::Digest;

pub use authority::{Authority, EmptyKeySet, Identity, IdentityMatcher, KeySet, Keyless, NoIdentities, Pattern, Trust};
pub use envelope::pae;
pub use key::{KeyError, KeyKind, PublicKey, Scheme};
pub use reason::Rejection;
pub use trusted_root::{TrustedRoot, TrustedRootError};

/// Provenance that passed verification. Only `verify` can build one; `decide` reads it. Verified once and read
/// by every review of the image while it is cached, so its parts are shared and a clone is a few counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verified<T> {
    authority: Arc<str>,
    /// Where the layer that verified was found.
    #[serde(skip)]
    origin: Origin,
    /// How a decision lists it, ending in who vouched (from `vouched_at`): see [`Verified::vouched_by`] and
    /// [`Verified::listed`]. Worded once, when it verifies, and read by every review while it is cached.
    #[serde(skip)]
    listed: Arc<str>,
    #[serde(skip)]
    vouched_at: usize,
    #[serde(flatten)]
    value: Arc<T>,
}

/// What was signed by a [`Signer`].
pub trait Signed {
    /// What a decision lists before who vouched: `signature by ` for a signature. Empty for a statement, which
    /// the check words with the need it met.
    const LISTED_AS: &'static str;
    fn signer(&self) -> &Signer;
}

impl Signed for ImageSignature {
    const LISTED_AS: &'static str = "signature by ";
    fn signer(&self) -> &Signer {
        &self.signer
    }
}

impl Signed for Statement {
    const LISTED_AS: &'static str = "";
    fn signer(&self) -> &Signer {
        &self.signer
    }
}

impl<T: Signed> Verified<T> {
    fn new(authority: &Authority, origin: &Origin, value: T) -> Self {
        let listed = format!("{}{} ({})", T::LISTED_AS, authority.name(), value.signer()).into();
        let (authority, origin) = (authority.name().into(), origin.clone());
        Self { authority, origin, listed, vouched_at: T::LISTED_AS.len(), value: Arc::new(value) }
    }

    /// How a decision lists this: `signature by chains (key sha256:ab12…)`; for a statement, who vouched.
    pub fn listed(&self) -> &Arc<str> {
        &self.listed
    }
}

impl<T> Verified<T> {
    /// The name of the authority whose key or identity verified this.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The authority and its key or identity that verified this: `chains (key sha256:ab12…)` or
    /// `keyless (certificate SUBJECT from ISSUER)`.
    pub fn vouched_by(&self) -> &str {
        &self.listed[self.vouched_at..]
    }

    pub fn value(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Who produced a verified signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Signer {
    /// A configured public key (fingerprint `sha256:` of its SPKI DER) under the named scheme.
    Key { fingerprint: String, scheme: String },
    /// A Fulcio certificate chained to the trusted root, with its identity.
    Certificate { subject: String, issuer: String },
}

/// `key sha256:ab12…` or `certificate SUBJECT from ISSUER`.
impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key { fingerprint, .. } => write!(f, "key {fingerprint}"),
            Self::Certificate { subject, issuer } => write!(f, "certificate {subject} from {issuer}"),
        }
    }
}

/// A verified cosign image signature (simple signing, from `.sig` or a bundle).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSignature {
    /// The layer (or bundle) digest this came from.
    pub layer: Digest,
    /// `critical.identity.docker-reference` as signed; informational, never trusted for the binding.
    pub docker_reference: String,
    /// The signed `optional` map (`cosign sign -a k=v`), `null` when absent.
    pub annotations: serde_json::Value,
    pub signer: Signer,
}

/// One subject of an in-toto statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    pub name: String,
    pub digest: std::collections::BTreeMap<String, String>,
}

/// A verified in-toto statement whose subject digest matched the image.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Statement {
    pub layer: Digest,
    /// `_type`: `https://in-toto.io/Statement/v0.1` or `/v1`.
    pub statement_type: String,
    pub predicate_type: String,
    pub subject: Vec<Subject>,
    pub predicate: serde_json::Value,
    /// Which acceptable digest a subject matched (the image, or one of its platform manifests).
    pub matched: Digest,
    pub signer: Signer,
}

/// A layer that did not count, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub layer: Digest,
    pub origin: Origin,
    pub reason: Rejection,
}

/// Outcome of checking every signature layer of one image digest.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureCheck {
    pub digest: Digest,
    pub verified: Vec<Verified<ImageSignature>>,
    pub rejected: Vec<Rejected>,
}

/// Outcome of checking every attestation layer against the acceptable digests.
#[derive(Debug, Clone, PartialEq)]
pub struct AttestationCheck {
    pub digest: Digest,
    pub verified: Vec<Verified<Statement>>,
    pub rejected: Vec<Rejected>,
}

macro_rules! check_common {
    ($t:ty, $item:ty, $one:literal, $what:literal, $none:ident) => {
        impl $t {
            /// How many layers were looked at.
            pub fn found(&self) -> usize {
                self.verified.len() + self.rejected.len()
            }

            /// Verified items from one authority.
            pub fn by<'a>(&'a self, authority: &'a str) -> impl Iterator<Item = &'a Verified<$item>> + 'a {
                self.verified.iter().filter(move |v| v.authority() == authority)
            }

            /// `Ok` when something verified; otherwise the most telling reason (for the denial's `code()`).
            pub fn outcome(&self) -> Result<(), Rejection> {
                if !self.verified.is_empty() {
                    return Ok(());
                }
                match self.rejected.iter().max_by_key(|r| r.reason.rank()) {
                    Some(r) => Err(r.reason.clone()),
                    None => Err(Rejection::$none { digest: self.digest.clone() }),
                }
            }

            /// [`Self::merge`], borrowing the one check there is when it is of `digest` already (nothing to merge).
            pub fn merged<'a>(
                digest: &Digest,
                checks: impl IntoIterator<Item = &'a Self>,
            ) -> std::borrow::Cow<'a, Self> {
                let mut checks = checks.into_iter();
                match (checks.next(), checks.next()) {
                    (Some(one), None) if &one.digest == digest && one.is_merged() => std::borrow::Cow::Borrowed(one),
                    (first, second) => {
                        std::borrow::Cow::Owned(Self::merge(digest, first.into_iter().chain(second).chain(checks)))
                    }
                }
            }

            /// Whether merging this check alone would leave it as it is: no layer is both verified and rejected,
            /// and none is rejected twice.
            fn is_merged(&self) -> bool {
                self.rejected.iter().enumerate().all(|(i, r)| {
                    !self.verified.iter().any(|v| v.layer == r.layer)
                        && !self.rejected[..i].iter().any(|x| x.layer == r.layer)
                })
            }

            /// Several authorities' checks of one digest as one: every verified item, and for each layer that no
            /// authority accepted, its most telling rejection (wrong-key rejections merged, so the message lists
            /// every key tried), as if the authorities had been checked together.
            pub fn merge<'a>(digest: &Digest, checks: impl IntoIterator<Item = &'a Self>) -> Self {
                let checks: Vec<&Self> = checks.into_iter().collect();
                let verified: Vec<Verified<$item>> = checks.iter().flat_map(|c| c.verified.iter().cloned()).collect();
                let mut rejected: Vec<Rejected> = Vec::new();
                for r in checks.iter().flat_map(|c| c.rejected.iter()) {
                    if verified.iter().any(|v| v.layer == r.layer) {
                        continue;
                    }
                    match rejected.iter_mut().find(|x| x.layer == r.layer) {
                        Some(known) => known.reason = Rejection::stronger(known.reason.clone(), r.reason.clone()),
                        None => rejected.push(r.clone()),
                    }
                }
                Self { digest: digest.clone(), verified, rejected }
            }

            /// A one-line explanation for a denial, naming the authorities and each layer's reason.
            pub fn explain<A: std::borrow::Borrow<Authority>>(&self, authorities: &[A]) -> String {
                let names: Vec<&str> = authorities.iter().map(|a| a.borrow().name()).collect();
                let names = if names.is_empty() { "(none configured)".to_owned() } else { names.join(", ") };
                if self.found() == 0 {
                    return format!("no {} found for {}", $what, self.digest);
                }
                let mut msg = format!(
                    "{} {} found, {} valid for authority {}",
                    self.found(),
                    if self.found() == 1 { $one } else { $what },
                    if self.verified.is_empty() { "none".to_owned() } else { self.verified.len().to_string() },
                    names
                );
                let mut reasons: Vec<String> = self.rejected.iter().map(|r| r.reason.to_string()).collect();
                reasons.dedup();
                if !reasons.is_empty() {
                    msg.push_str(": ");
                    msg.push_str(&reasons.join("; "));
                }
                msg
            }
        }
    };
}
check_common!(SignatureCheck, ImageSignature, "signature", "signatures", Unsigned);
check_common!(AttestationCheck, Statement, "attestation", "attestations", NoAttestations);

impl AttestationCheck {
    /// The same check counting only statements about `digest` itself: a statement that matched another acceptable
    /// digest (a platform manifest of an index no authority vouched for) becomes a subject mismatch.
    pub fn about_only(&self, digest: &Digest) -> Self {
        let (mut verified, mut rejected) = (Vec::new(), self.rejected.clone());
        for v in &self.verified {
            if &v.matched == digest {
                verified.push(v.clone());
            } else if !rejected.iter().any(|r| r.layer == v.layer) {
                let subjects = v.subject.iter().filter_map(|s| s.digest.get("sha256")).map(|h| format!("sha256:{h}"));
                rejected.push(Rejected {
                    layer: v.layer.clone(),
                    origin: v.origin.clone(),
                    reason: Rejection::SubjectMismatch { subjects: subjects.collect() },
                });
            }
        }
        rejected.retain(|r| !verified.iter().any(|v| v.layer == r.layer));
        Self { digest: digest.clone(), verified, rejected }
    }
}

/// Verifies every `.sig` layer and every signature-kind bundle for `digest` against `authorities`.
pub fn signatures(a: &Artifacts, digest: &Digest, authorities: &[Authority]) -> SignatureCheck {
    let bundles: Vec<bundle::Parsed<'_>> = a.bundles.iter().map(bundle::parse_layer).collect();
    signatures_of(a, &bundles, digest, authorities)
}

/// Verifies every `.att` DSSE layer and every attestation-kind bundle. A statement counts only if one subject's
/// sha256 equals one of `acceptable`: the image digest first (it names the check), then e.g. its platform
/// manifest digests. With `acceptable` empty nothing can match and every statement is a subject mismatch.
pub fn attestations(a: &Artifacts, acceptable: &[Digest], authorities: &[Authority]) -> AttestationCheck {
    let bundles: Vec<bundle::Parsed<'_>> = a.bundles.iter().map(bundle::parse_layer).collect();
    attestations_of(a, &bundles, acceptable, authorities)
}

/// [`signatures`] of `acceptable[0]` and [`attestations`] over `acceptable`, parsing each bundle once for both.
pub fn check(a: &Artifacts, acceptable: &[Digest], authorities: &[Authority]) -> (SignatureCheck, AttestationCheck) {
    let bundles: Vec<bundle::Parsed<'_>> = a.bundles.iter().map(bundle::parse_layer).collect();
    let digest = acceptable.first().cloned().unwrap_or_else(|| Digest::sha256_of(b""));
    (signatures_of(a, &bundles, &digest, authorities), attestations_of(a, &bundles, acceptable, authorities))
}

fn signatures_of(
    a: &Artifacts,
    bundles: &[bundle::Parsed<'_>],
    digest: &Digest,
    authorities: &[Authority],
) -> SignatureCheck {
    let mut check = SignatureCheck { digest: digest.clone(), verified: Vec::new(), rejected: Vec::new() };
    for layer in &a.signatures {
        judge(layer, authorities, &mut check.verified, &mut check.rejected, |auth| {
            simple::verify_layer(layer, digest, auth)
        });
    }
    for parsed in bundles.iter().filter(|p| p.kind == bundle::Kind::Signature) {
        judge(parsed.layer, authorities, &mut check.verified, &mut check.rejected, |auth| {
            bundle::verify_signature(parsed, digest, auth)
        });
    }
    check
}

fn attestations_of(
    a: &Artifacts,
    bundles: &[bundle::Parsed<'_>],
    acceptable: &[Digest],
    authorities: &[Authority],
) -> AttestationCheck {
    let digest = acceptable.first().cloned().unwrap_or_else(|| Digest::sha256_of(b""));
    let mut check = AttestationCheck { digest, verified: Vec::new(), rejected: Vec::new() };
    for layer in &a.attestations {
        judge(layer, authorities, &mut check.verified, &mut check.rejected, |auth| {
            dsse::verify_layer(layer, acceptable, auth)
        });
    }
    for parsed in bundles.iter().filter(|p| p.kind == bundle::Kind::Attestation) {
        judge(parsed.layer, authorities, &mut check.verified, &mut check.rejected, |auth| {
            bundle::verify_attestation(parsed, acceptable, auth)
        });
    }
    check
}

/// Runs `attempt` for each authority; records one `Verified` per accepting authority, or one rejection with the
/// most telling reason (wrong-key reasons are merged so the message lists every key tried).
fn judge<T: Signed>(
    layer: &Layer,
    authorities: &[Authority],
    verified: &mut Vec<Verified<T>>,
    rejected: &mut Vec<Rejected>,
    attempt: impl Fn(&Authority) -> Result<T, Rejection>,
) {
    let mut reasons = Vec::new();
    let mut accepted = false;
    for auth in authorities {
        match attempt(auth) {
            Ok(item) => {
                accepted = true;
                verified.push(Verified::new(auth, &layer.origin, item));
            }
            Err(reason) => reasons.push(reason),
        }
    }
    if accepted {
        return;
    }
    let reason = reasons.into_iter().reduce(Rejection::stronger).unwrap_or(Rejection::NoAuthorities);
    rejected.push(Rejected { layer: layer.digest.clone(), origin: layer.origin.clone(), reason });
}

/// Decodes standard (or URL-safe) base64, ignoring line breaks and surrounding whitespace.
pub(crate) fn b64(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&clean))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&clean))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

//! Why a signature, attestation or bundle layer was not accepted: one variant per reason, actionable `Display`,
//! stable `code()` labels for audit and metrics.

use crate::images::Digest;

/// One reason a layer (or a whole check) does not count as verified provenance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no signatures found for {digest}; sign it (cosign sign --key ...) or check the signature repository")]
    Unsigned { digest: Digest },
    #[error("no attestations found for {digest}; attach one (cosign attest, or Tekton Chains with oci storage)")]
    NoAttestations { digest: Digest },
    #[error("no authorities configured: nothing could verify this, so nothing is trusted")]
    NoAuthorities,
    #[error("layer has no signature (annotation dev.cosignproject.cosign/signature is missing or empty)")]
    MissingSignature,
    #[error("signature is not valid base64: {0}")]
    MalformedSignature(String),
    #[error("signature does not verify with {}", keys.join(", "))]
    WrongKey { keys: Vec<String> },
    #[error("signed payload is for {signed}, not {expected} (signature replayed from another digest)")]
    DigestMismatch { signed: String, expected: Digest },
    #[error("payload type is {found:?}, want \"cosign container image signature\"")]
    WrongSignatureType { found: String },
    #[error("signed payload is not a cosign simple-signing document: {0}")]
    MalformedPayload(String),
    #[error("malformed DSSE envelope: {0}")]
    MalformedEnvelope(String),
    #[error("DSSE payloadType is {found:?}, want \"application/vnd.in-toto+json\"")]
    WrongPayloadType { found: String },
    #[error("not an in-toto Statement (v0.1 or v1): {0}")]
    MalformedStatement(String),
    #[error("attestation subject digest does not match image (subjects: {})", subjects_text(subjects))]
    SubjectMismatch { subjects: Vec<String> },
    #[error("malformed Sigstore bundle: {0}")]
    MalformedBundle(String),
    #[error("unsupported Sigstore bundle: {0}")]
    UnsupportedBundle(String),
    #[error("certificate is not trusted: {0}")]
    UntrustedCertificate(String),
    #[error("certificate identity {san:?} (issuer {issuer:?}) matches none of the allowed identities")]
    IdentityMismatch { san: String, issuer: String },
    #[error("keyless signature needs a certificate and a Rekor entry: {0}")]
    MissingTransparency(String),
    #[error("Rekor signed entry timestamp does not verify: {0}")]
    SetInvalid(String),
    #[error("Rekor entry does not match this signature: {0}")]
    TlogMismatch(String),
    #[error("signed at {integrated_time}, outside the certificate's validity")]
    OutsideValidity { integrated_time: i64 },
    #[error(
        "signing certificate is not a code-signing leaf: {0}; a Fulcio leaf has keyUsage digitalSignature, extended \
         key usage codeSigning (1.3.6.1.5.5.7.3.3) and no CA flag"
    )]
    LeafCertificateUsage(String),
    #[error(
        "certificate chain breaks CA constraints: {0}; every issuer must be a CA (basicConstraints CA:TRUE, path \
         length respected) with keyUsage keyCertSign"
    )]
    CaConstraints(String),
    #[error(
        "{entry} in the trusted root is trusted {window}, not at {at} ({what}); use a trusted root whose entry \
         covers that time"
    )]
    TrustedRootValidity { entry: String, window: String, at: String, what: &'static str },
    #[error(
        "certificate has no embedded SCT but the trusted root lists CT logs: it was never logged for certificate \
         transparency; sign again with a Fulcio that logs to a CT log in the trusted root"
    )]
    MissingSct,
    #[error(
        "no embedded SCT is from a CT log in the trusted root (SCT log ids: {}); add the log to the trusted root's \
         ctlogs only if you trust it",
        log_ids.join(", ")
    )]
    SctUnknownLog { log_ids: Vec<String> },
    #[error("embedded SCT does not verify: {0}")]
    SctInvalid(String),
}

/// Subjects named in a denial: a statement may list hundreds (one per released artifact), so the message names the
/// first few and counts the rest.
fn subjects_text(subjects: &[String]) -> String {
    const SHOWN: usize = 3;
    match subjects.len() {
        0 => "none".to_owned(),
        n if n <= SHOWN => subjects.join(", "),
        n => format!("{} and {} more", subjects[..SHOWN].join(", "), n - SHOWN),
    }
}

impl Rejection {
    /// A stable, lowercase label for audit records and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsigned { .. } => "unsigned",
            Self::NoAttestations { .. } => "no-attestations",
            Self::NoAuthorities => "no-authorities",
            Self::MissingSignature => "missing-signature",
            Self::MalformedSignature(_) => "malformed-signature",
            Self::WrongKey { .. } => "wrong-key",
            Self::DigestMismatch { .. } => "digest-mismatch",
            Self::WrongSignatureType { .. } => "wrong-signature-type",
            Self::MalformedPayload(_) => "malformed-payload",
            Self::MalformedEnvelope(_) => "malformed-envelope",
            Self::WrongPayloadType { .. } => "wrong-payload-type",
            Self::MalformedStatement(_) => "malformed-statement",
            Self::SubjectMismatch { .. } => "subject-mismatch",
            Self::MalformedBundle(_) => "malformed-bundle",
            Self::UnsupportedBundle(_) => "unsupported-bundle",
            Self::UntrustedCertificate(_) => "untrusted-certificate",
            Self::IdentityMismatch { .. } => "identity-mismatch",
            Self::MissingTransparency(_) => "missing-transparency",
            Self::SetInvalid(_) => "set-invalid",
            Self::TlogMismatch(_) => "tlog-mismatch",
            Self::OutsideValidity { .. } => "outside-validity",
            Self::LeafCertificateUsage(_) => "leaf-certificate-usage",
            Self::CaConstraints(_) => "ca-constraints",
            Self::TrustedRootValidity { .. } => "trusted-root-validity",
            Self::MissingSct => "missing-sct",
            Self::SctUnknownLog { .. } => "sct-unknown-log",
            Self::SctInvalid(_) => "sct-invalid",
        }
    }

    /// How informative a reason is when several authorities rejected the same layer: the highest wins.
    /// Of two reasons one layer was rejected for, the more telling (the later on a tie); two wrong-key reasons
    /// become one listing every key tried.
    pub fn stronger(self, other: Self) -> Self {
        match (self, other) {
            (Self::WrongKey { mut keys }, Self::WrongKey { keys: more }) => {
                keys.extend(more.into_iter().filter(|k| !keys.contains(k)).collect::<Vec<_>>());
                Self::WrongKey { keys }
            }
            (a, b) => {
                if b.rank() >= a.rank() {
                    b
                } else {
                    a
                }
            }
        }
    }

    pub(crate) fn rank(&self) -> u8 {
        match self {
            Self::DigestMismatch { .. } | Self::SubjectMismatch { .. } | Self::IdentityMismatch { .. } => 9,
            Self::SetInvalid(_)
            | Self::TlogMismatch(_)
            | Self::OutsideValidity { .. }
            | Self::TrustedRootValidity { .. }
            | Self::MissingSct
            | Self::SctUnknownLog { .. }
            | Self::SctInvalid(_) => 8,
            Self::UntrustedCertificate(_)
            | Self::LeafCertificateUsage(_)
            | Self::CaConstraints(_)
            | Self::WrongSignatureType { .. }
            | Self::WrongPayloadType { .. } => 7,
            Self::MalformedPayload(_) | Self::MalformedStatement(_) => 6,
            Self::MissingTransparency(_) => 4,
            Self::WrongKey { .. } => 3,
            _ => 5,
        }
    }
}

//! Every reason provgate does not simply admit: `Display` is the message a user acts on, `code()` the stable label
//! used in audit records, auditAnnotations and metrics.

use std::time::Duration;

use crate::images::RefError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("{0}; write the image as registry/repository:tag or registry/repository@sha256:<digest>")]
    InvalidReference(RefError),
    #[error(
        "no ImagePolicy matches {image} in namespace {namespace:?} (noMatch: {no_match}); add a policy whose \
         match.images covers this image"
    )]
    NoPolicy { image: String, namespace: String, no_match: &'static str },
    #[error("the {kind} object cannot be read: {problem}")]
    UnreadableObject { kind: String, problem: String },
    #[error("the request cannot be read: {0}")]
    UnreadableRequest(String),
    #[error("provgate has no valid policy set loaded yet: {why}; fix the policy files (see `provgate policy check`)")]
    PoliciesNotLoaded { why: String },
    #[error(
        "verification did not finish within the {}s deadline; the registry may be slow or unreachable, retry \
         or check provgate's registry settings",
        .0.as_secs_f32()
    )]
    DeadlineExceeded(Duration),
    /// The registry did not give what judging `image` needs; the code is the registry error's.
    #[error("{error}")]
    Registry {
        image: String,
        #[source]
        error: crate::registry::RegistryError,
    },
    /// An authority's key could not be read; the code is the key error's (a missing Secret, a missing data key…).
    #[error("authority {authority:?} has no usable key: {error}")]
    KeyUnavailable {
        authority: String,
        #[source]
        error: crate::keys::KeysError,
    },
    /// A policy's `spec.evidence` entry could not be had (fetched by digest, checked and read); the code is the
    /// evidence error's.
    #[error("evidence {name}: {error}")]
    Evidence {
        name: String,
        #[source]
        error: crate::evidence::document::EvidenceError,
    },
    #[error("provgate is shutting down; retry")]
    ShuttingDown,
    #[error(
        "{image} is referenced by tag and this policy requires a digest: write it as image@sha256:<digest> so the \
         kubelet pulls exactly what was verified"
    )]
    TagNotPinned { image: String },
    #[error(
        "the {kind} names {count} images, more than the {max} provgate judges in one review; split the workload or \
         raise maxImagesPerReview"
    )]
    TooManyImages { kind: String, count: usize, max: usize },
    #[error(
        "the {kind} object is {size} bytes of JSON, more than the {max} provgate evaluates; raise maxObjectBytes if \
         this is intended"
    )]
    ObjectTooLarge { kind: String, size: usize, max: usize },
    #[error(
        "{image} is an index of {count} platform manifests, more than the {max} provgate checks one by one under \
         require.platforms: all; use platforms: index, or raise cache.maxPlatforms"
    )]
    TooManyPlatforms { image: String, count: usize, max: usize },
    /// A requirement or validation the verified evidence does not meet; the code is the requirement's (or the
    /// layer rejection's behind it).
    #[error("{message}")]
    Unmet { requirement: Requirement, message: String },
    /// Every review slot stayed busy for as long as this review could wait.
    #[error(
        "provgate is already judging its limit of {limit} reviews at once and no slot freed within {}s; retry, or \
         raise server.maxConcurrentReviews or add replicas",
        .waited.as_secs_f32()
    )]
    Overloaded { limit: usize, waited: Duration },
    /// provgate itself failed (a bug); the details are in its log, never in the answer.
    #[error(
        "provgate failed while judging this request (an internal error, logged with the request's uid); retry, and \
         report it to provgate's maintainers if it persists"
    )]
    InternalError,
}

impl Reason {
    /// A stable, lowercase label for this kind of reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidReference(_) => "invalid-reference",
            Self::NoPolicy { .. } => "no-policy",
            Self::UnreadableObject { .. } => "unreadable-object",
            Self::UnreadableRequest(_) => "unreadable-request",
            Self::PoliciesNotLoaded { .. } => "policies-not-loaded",
            Self::DeadlineExceeded(_) => "deadline-exceeded",
            Self::Registry { error, .. } => error.code(),
            Self::KeyUnavailable { error, .. } => error.code(),
            Self::Evidence { error, .. } => error.code(),
            Self::ShuttingDown => "shutting-down",
            Self::Unmet { requirement, .. } => requirement.code(),
            Self::TagNotPinned { .. } => "tag-not-pinned",
            Self::TooManyImages { .. } => "too-many-images",
            Self::ObjectTooLarge { .. } => "object-too-large",
            Self::TooManyPlatforms { .. } => "too-many-platforms",
            Self::Overloaded { .. } => "overloaded",
            Self::InternalError => "internal-error",
        }
    }
}

/// What kind of requirement the verified evidence did not meet, with the layer rejection behind it when one
/// explains it (the code is then the rejection's: `unsigned`, `wrong-key`, `subject-mismatch`…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `require.signature` (or, under `platforms: all`, a platform manifest's signature).
    Signature(Option<crate::verify::Rejection>),
    /// One of `require.attestations`.
    Attestation(Option<crate::verify::Rejection>),
    /// Attestations verified, but none of the predicate type required.
    PredicateType,
    /// Nothing was gathered for the image or an authority (never a pass).
    NoEvidence,
    /// `platforms: all`, but the index carries no valid signature, so its platforms were not checked.
    PlatformsUnchecked,
    /// A CEL validation failed or could not be evaluated.
    Validation,
    /// The verified evidence is larger than CEL evaluates.
    EvidenceTooLarge,
    /// A release list (`via.list`) verified, but does not pin the image's digest (under its repository).
    NotOnList,
    /// A release list is larger than `cache.maxListBytes`, or holds more than `cache.maxListEntries` entries.
    ListTooLarge,
    /// A release list is neither an image index nor an artifact holding one JSON list of digest references, or is
    /// not of the `via.artifactType` required.
    ListInvalid,
    /// `coverLayers`: statements about the image volume's layers verified, but none names every layer.
    LayersUncovered,
}

impl Requirement {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Signature(Some(r)) | Self::Attestation(Some(r)) => r.code(),
            Self::Signature(None) => "signature-threshold",
            Self::Attestation(None) => "attestation-threshold",
            Self::PredicateType => "predicate-type-mismatch",
            Self::NoEvidence => "no-evidence",
            Self::PlatformsUnchecked => "platforms-unchecked",
            Self::Validation => "validation-failed",
            Self::EvidenceTooLarge => "evidence-too-large",
            Self::NotOnList => "not-on-list",
            Self::ListTooLarge => "list-too-large",
            Self::ListInvalid => "list-invalid",
            Self::LayersUncovered => "layers-uncovered",
        }
    }
}

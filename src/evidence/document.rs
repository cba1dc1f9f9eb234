//! What evidence gathering hands to judging: the descriptors a policy selected, the documents fetched for them
//! (checked against the signed sha256 and normalised), and every way that can fail, each with its reason code.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::registry::RegistryError;

/// One in-toto resourceDescriptor selected by an `evidence[].from`: what provgate reads of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Descriptor {
    /// `digest.sha256`: 64 lowercase hex digits, from a verified statement. The only thing the bytes are trusted by.
    pub sha256: String,
    /// `name`, `uri`, `mediaType` as the statement wrote them (empty when absent); informational only.
    pub name: String,
    pub uri: String,
    pub media_type: String,
}

/// What a fetched document was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A CycloneDX JSON SBOM, normalised to `{components: [...]}`.
    CycloneDx,
    /// An SPDX 2.x JSON SBOM, normalised to `{components: [...]}`.
    Spdx,
    /// Other JSON, as it is.
    Json,
}

impl Format {
    /// The `format` CEL reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CycloneDx => "cyclonedx",
            Self::Spdx => "spdx",
            Self::Json => "json",
        }
    }
}

/// One evidence document: fetched by digest, checked, parsed and normalised. Immutable, so cached by digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub format: Format,
    /// `{components: [{name, version, purl, licenses}]}` for an SBOM, else the JSON as fetched.
    pub content: Value,
    /// Bytes fetched (the cache weighs documents by them).
    pub bytes: u64,
}

impl Document {
    /// Components of a normalised SBOM (none for other JSON).
    pub fn components(&self) -> Option<usize> {
        match self.format {
            Format::Json => None,
            _ => Some(self.content["components"].as_array().map_or(0, Vec::len)),
        }
    }
}

/// One selected descriptor with its document, and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub descriptor: Descriptor,
    pub document: Arc<Document>,
    /// The store it was read from (`oci://REPO` or the HTTPS URL), for explanations.
    pub store: String,
}

impl Item {
    /// One element of `evidence.<name>` in CEL: `{name, uri, mediaType, digest: {sha256}, format, content}`.
    pub fn to_json(&self) -> Value {
        let d = &self.descriptor;
        json!({
            "name": d.name,
            "uri": d.uri,
            "mediaType": d.media_type,
            "digest": {"sha256": d.sha256},
            "format": self.document.format.as_str(),
            "content": self.document.content,
        })
    }

    /// What verified, for audit records and `provgate verify`, e.g.
    /// `evidence sbom sha256:ab12… (cyclonedx, 12 components) from oci://registry.example.com/team/evidence`.
    pub fn describe(&self, entry: &str) -> String {
        let what = match self.document.components() {
            Some(n) => format!("{}, {n} components", self.document.format.as_str()),
            None => self.document.format.as_str().to_owned(),
        };
        format!("evidence {entry} sha256:{} ({what}) from {}", self.descriptor.sha256, self.store)
    }
}

/// What one policy's evidence entries gave for one image, by entry name.
pub type Found = BTreeMap<String, Result<Vec<Item>, EvidenceError>>;

/// [`Found`] per policy name (only policies that declare evidence, and whose requirements were met).
pub type ByPolicy = HashMap<String, Arc<Found>>;

/// Why evidence could not be had. Each is a denial: `Display` says what to fix, `code()` is the stable label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("`from` could not select descriptors: {detail}; fix the expression or the statements it reads")]
    Selection { detail: String },
    #[error(
        "a selected descriptor ({descriptor}) has no digest.sha256 of 64 hex digits: evidence is fetched and \
         trusted only by the sha256 a signed statement names"
    )]
    NoDigest { descriptor: String },
    #[error("`from` selected {count} descriptors, more than the {max} fetched per evidence entry; select fewer")]
    TooMany { count: usize, max: usize },
    #[error("sha256:{sha256} is not in {store}: publish it there, or fix the statement that names it")]
    Missing { store: String, sha256: String },
    #[error("{store} served bytes for sha256:{expected} that hash to sha256:{actual}: the store holds altered content")]
    DigestMismatch { store: String, expected: String, actual: String },
    #[error(
        "sha256:{sha256} from {store} is larger than its maxBytes ({limit} bytes); raise maxBytes if it is legitimate"
    )]
    Oversize { store: String, sha256: String, limit: u64 },
    #[error("sha256:{sha256} from {store} cannot be read as {expected}: {detail}")]
    Unparsable { store: String, sha256: String, expected: &'static str, detail: String },
    #[error("{store} could not be reached ({detail}): check the URL, its TLS settings and the network")]
    StoreUnreachable { store: String, detail: String },
    #[error("{store} did not answer in time for sha256:{sha256}: the store is slow or stalled")]
    StoreTimedOut { store: String, sha256: String },
    #[error("{store} answered sha256:{sha256} with {detail}")]
    StoreError { store: String, sha256: String, detail: String },
    /// An OCI store's registry failed otherwise (credentials, budget…); the code is the registry error's.
    #[error("{0}")]
    Registry(RegistryError),
    #[error("the evidence of this policy was not gathered (provgate has no evidence fetcher wired)")]
    NotGathered,
}

impl EvidenceError {
    /// A stable, machine-readable label for this kind of failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Selection { .. } => "evidence-selection-failed",
            Self::NoDigest { .. } => "evidence-no-digest",
            Self::TooMany { .. } => "evidence-too-many",
            Self::Missing { .. } => "evidence-missing",
            Self::DigestMismatch { .. } => "evidence-digest-mismatch",
            Self::Oversize { .. } => "evidence-oversize",
            Self::Unparsable { .. } => "evidence-unparsable",
            Self::StoreUnreachable { .. } => "evidence-store-unreachable",
            Self::StoreTimedOut { .. } => "evidence-store-timed-out",
            Self::StoreError { .. } => "evidence-store-error",
            Self::Registry(e) => e.code(),
            Self::NotGathered => "evidence-not-gathered",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_is_what_cel_reads_and_describes_itself() {
        let item = Item {
            descriptor: Descriptor {
                sha256: "ab".repeat(32),
                name: "sbom".into(),
                uri: "oci://r/e".into(),
                media_type: "application/vnd.cyclonedx+json".into(),
            },
            document: Arc::new(Document {
                format: Format::CycloneDx,
                content: json!({"components": [{"name": "a"}, {"name": "b"}]}),
                bytes: 10,
            }),
            store: "oci://r/e".into(),
        };
        let v = item.to_json();
        assert_eq!(v["digest"]["sha256"], "ab".repeat(32));
        assert_eq!((v["format"].as_str(), v["name"].as_str()), (Some("cyclonedx"), Some("sbom")));
        assert_eq!(v["content"]["components"].as_array().unwrap().len(), 2);
        assert!(item.describe("sbom").ends_with("(cyclonedx, 2 components) from oci://r/e"), "{}", item.describe("x"));
    }
}

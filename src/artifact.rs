//! What a registry holds next to an image, as data: digest-checked layers of cosign `.sig`/`.att` manifests and
//! Sigstore bundles found through referrers. `registry` produces these; `verify` judges them.

use std::collections::BTreeMap;

use crate::images::Digest;

/// Where a layer was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The cosign `sha256-<hex>.sig` tag.
    SigTag,
    /// The cosign `sha256-<hex>.att` tag.
    AttTag,
    /// An OCI 1.1 referrer (from the referrers API or the `sha256-<hex>` tag-schema index).
    Referrer { manifest: Digest, artifact_type: Option<String> },
}

/// One layer whose bytes were checked against `digest` and read within the size cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub origin: Origin,
    pub media_type: String,
    pub digest: Digest,
    pub data: Vec<u8>,
    /// Layer descriptor annotations (for referrers, merged with the manifest's annotations).
    pub annotations: BTreeMap<String, String>,
}

/// Everything found for one manifest digest (an image index or a platform manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Artifacts {
    /// Layers of media type `application/vnd.dev.cosign.simplesigning.v1+json`.
    pub signatures: Vec<Layer>,
    /// Layers of media type `application/vnd.dsse.envelope.v1+json`.
    pub attestations: Vec<Layer>,
    /// Layers of media type `application/vnd.dev.sigstore.bundle.v0.3+json` (and older bundle media types).
    pub bundles: Vec<Layer>,
}

impl Artifacts {
    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty() && self.attestations.is_empty() && self.bundles.is_empty()
    }
}

/// Media types the verifier understands.
pub mod media_type {
    pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
    pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
    pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    /// Older bundle media types, `application/vnd.dev.sigstore.bundle+json;version=0.x`.
    pub const BUNDLE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
}

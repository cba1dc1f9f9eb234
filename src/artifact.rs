//! What a registry holds next to an image, as data: digest-checked layers of cosign `.sig`/`.att` manifests and
//! Sigstore bundles found through referrers. `registry` produces these; `verify` judges them.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

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

/// Where signers store what they write for an image: the `sha256-<hex>.sig`/`.att` tags (cosign 2 by default, Tekton
/// Chains' OCI storage by default), OCI 1.1 referrers (cosign 3's bundles, Chains' `sigstore-bundle` encoding: the
/// referrers API, or the `sha256-<hex>` tag-schema index where the registry has none), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Storage {
    pub tags: bool,
    pub referrers: bool,
}

impl Storage {
    /// Both places: what is read unless a policy narrows it.
    pub const BOTH: Self = Self { tags: true, referrers: true };
    /// Neither: the start of a union.
    pub const NONE: Self = Self { tags: false, referrers: false };

    /// Every place either reads.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self { tags: self.tags || other.tags, referrers: self.referrers || other.referrers }
    }

    /// For a storage of one place, its name and the name of the place left out (for explanations); `None` for both.
    pub fn only(self) -> Option<(&'static str, &'static str)> {
        match (self.tags, self.referrers) {
            (true, false) => Some(("cosign tags", "referrers")),
            (false, true) => Some(("OCI referrers", "tags")),
            _ => None,
        }
    }
}

/// One layer whose bytes were checked against `digest` and read within the size cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub origin: Origin,
    pub media_type: String,
    pub digest: Digest,
    /// The blob's bytes, shared (not copied) by every layer that lists the same digest.
    pub data: Bytes,
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

    /// Keeps only the layers read from a place `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&Origin) -> bool) {
        for layers in [&mut self.signatures, &mut self.attestations, &mut self.bundles] {
            layers.retain(|l| keep(&l.origin));
        }
    }

    /// Every layer, signatures first.
    pub fn layers(&self) -> impl Iterator<Item = &Layer> {
        self.signatures.iter().chain(&self.attestations).chain(&self.bundles)
    }

    /// Bytes held: each distinct blob once (layers listing the same digest share it), plus every layer's media type
    /// and annotations. For weighing cache entries.
    pub fn bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for layer in self.layers() {
            if seen.insert(&layer.digest) {
                total = total.saturating_add(layer.data.len() as u64);
            }
            total = total.saturating_add(layer.overhead());
        }
        total
    }
}

impl Layer {
    /// Bytes this layer holds besides its blob: media type, annotations and a fixed allowance for the struct.
    pub fn overhead(&self) -> u64 {
        let annotations: usize = self.annotations.iter().map(|(k, v)| k.len() + v.len() + 64).sum();
        (self.media_type.len() + annotations + 256) as u64
    }
}

/// The simple-signing payload cosign writes when it signs `digest` as `reference` without annotations (`-a`), byte
/// for byte: Go's compact JSON in its field order, `optional` null. Tekton Chains writes the same.
pub fn default_payload(reference: &str, digest: &Digest) -> Vec<u8> {
    // A reference is `[host[:port]/]path` and a digest `algorithm:hex`: nothing in either is escaped in JSON.
    let reference = serde_json::to_string(reference).unwrap_or_default();
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":{reference}}},\"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\
         \"type\":\"cosign container image signature\"}},\"optional\":null}}"
    )
    .into_bytes()
}

/// Media types the verifier understands.
pub mod media_type {
    pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
    pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
    pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    /// Older bundle media types, `application/vnd.dev.sigstore.bundle+json;version=0.x`.
    pub const BUNDLE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real payloads cosign wrote (with a plain key, and keyless in 2021), from sigstore-rs's test data.
    #[test]
    fn the_default_payload_is_what_cosign_writes() {
        let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vectors/sigstore-rs/");
        for (file, reference, digest) in [
            (
                "key-signed-busybox.payload.json",
                "registry-testing.svc.lan/busybox",
                "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b",
            ),
            (
                "keyless-disallow-service-nodeport.payload.json",
                "registry-testing.svc.lan/kubewarden/disallow-service-nodeport",
                "sha256:5f481572d088dc4023afb35fced9530ced3d9b03bf7299c6f492163cb9f0452e",
            ),
        ] {
            let written = std::fs::read(format!("{vectors}{file}")).unwrap();
            let digest = Digest::parse(digest).unwrap();
            assert_eq!(
                String::from_utf8(default_payload(reference, &digest)).unwrap(),
                String::from_utf8(written).unwrap()
            );
            assert_ne!(
                default_payload(&format!("{reference}x"), &digest),
                std::fs::read(format!("{vectors}{file}")).unwrap()
            );
        }
    }

    #[test]
    fn bytes_counts_a_shared_blob_once() {
        let data = Bytes::from(vec![0u8; 1000]);
        let layer = |sig: &str| Layer {
            origin: Origin::SigTag,
            media_type: media_type::SIMPLE_SIGNING.into(),
            digest: Digest::sha256_of(&data),
            data: data.clone(),
            annotations: BTreeMap::from([("sig".to_owned(), sig.to_owned())]),
        };
        let one = Artifacts { signatures: vec![layer("a")], ..Artifacts::default() };
        let many = Artifacts { signatures: (0..64).map(|i| layer(&i.to_string())).collect(), ..Artifacts::default() };
        assert!(one.bytes() > 1000 && one.bytes() < 1500, "{}", one.bytes());
        assert!(many.bytes() < 1000 + 64 * 500, "{}", many.bytes());
        assert_eq!(Artifacts::default().bytes(), 0);
    }
}

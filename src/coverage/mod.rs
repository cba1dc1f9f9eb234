//! What covers an image besides a statement naming its digest: a verified release list that pins it, or, for an
//! image volume under a policy's opt-in, a statement naming every layer of its manifest. Pure: it reads bytes that
//! `gather` fetched and checked against their digests, and judges statements that `verify` verified.

pub mod layers;
pub mod list;

use serde::Deserialize;

use crate::images::Digest;

/// Media types of an image index (OCI index, Docker manifest list).
const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// Media types of a single manifest (OCI image manifest, Docker schema 2).
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

/// A manifest or index as far as coverage reads it. The bytes were checked against the digest they were fetched
/// by, so what they say is what that digest names; `mediaType` is read from the body, never from a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Index { artifact_type: Option<String>, manifests: Vec<Descriptor> },
    Image { artifact_type: Option<String>, layers: Vec<Descriptor> },
}

/// One content descriptor of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    /// As declared (an upper bound is enforced when the content is read, whatever this says).
    pub size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
}

impl Manifest {
    /// Reads a manifest or an index. A document that is both (lists `manifests` and `layers`), neither, or
    /// contradicts its own `mediaType` is refused: whoever pushed it could make it read either way.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("it is not a manifest or an index: {e}"))?;
        let declared = raw.media_type.as_deref();
        let is_index = match (declared, &raw.manifests, &raw.layers) {
            (_, Some(_), Some(_)) => return Err("it lists both manifests and layers".to_owned()),
            (Some(mt), manifests, layers) if INDEX_TYPES.contains(&mt) => {
                if layers.is_some() || manifests.is_none() {
                    return Err(format!("its mediaType is {mt} but it lists no manifests"));
                }
                true
            }
            (Some(mt), manifests, _) if MANIFEST_TYPES.contains(&mt) => {
                if manifests.is_some() {
                    return Err(format!("its mediaType is {mt} but it lists manifests"));
                }
                false
            }
            (Some(mt), _, _) => return Err(format!("its mediaType {mt:?} is neither a manifest nor an index")),
            (None, Some(_), None) => true,
            (None, None, Some(_)) => false,
            (None, None, None) => return Err("it lists neither manifests nor layers".to_owned()),
        };
        let descriptors = |list: Option<Vec<RawDescriptor>>| -> Result<Vec<Descriptor>, String> {
            list.unwrap_or_default().into_iter().map(Descriptor::read).collect()
        };
        if is_index {
            Ok(Self::Index { artifact_type: raw.artifact_type, manifests: descriptors(raw.manifests)? })
        } else {
            // An image manifest's artifact type is its `artifactType`, else its config's media type (OCI 1.1).
            let artifact_type = raw.artifact_type.or(raw.config.map(|c| c.media_type)).filter(|t| !t.is_empty());
            Ok(Self::Image { artifact_type, layers: descriptors(raw.layers)? })
        }
    }
}

impl Descriptor {
    fn read(raw: RawDescriptor) -> Result<Self, String> {
        let digest = Digest::parse(&raw.digest).map_err(|e| format!("a descriptor's digest: {e}"))?;
        let size = u64::try_from(raw.size).map_err(|_| format!("descriptor {digest} has a negative size"))?;
        Ok(Self { media_type: raw.media_type, digest, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(n: u8) -> String {
        Digest::sha256_of(&[n]).to_string()
    }

    #[test]
    fn a_manifest_reads_one_way_only() {
        let index = "application/vnd.oci.image.index.v1+json";
        let manifest = "application/vnd.oci.image.manifest.v1+json";
        let desc = |n| json!({"mediaType": manifest, "digest": d(n), "size": 10});
        let table = vec![
            ("index", json!({"mediaType": index, "manifests": [desc(1), desc(2)]}), Ok("index 2")),
            ("index without mediaType", json!({"manifests": [desc(1)]}), Ok("index 1")),
            ("docker list", json!({"mediaType": INDEX_TYPES[1], "manifests": []}), Ok("index 0")),
            ("manifest", json!({"mediaType": manifest, "config": desc(0), "layers": [desc(1)]}), Ok("image 1")),
            ("manifest without mediaType", json!({"layers": [desc(1), desc(2), desc(3)]}), Ok("image 3")),
            ("both", json!({"manifests": [desc(1)], "layers": [desc(2)]}), Err("both manifests and layers")),
            ("index typed, layers", json!({"mediaType": index, "layers": [desc(1)]}), Err("lists no manifests")),
            ("manifest typed, manifests", json!({"mediaType": manifest, "manifests": []}), Err("lists manifests")),
            ("other type", json!({"mediaType": "text/plain", "layers": []}), Err("neither a manifest")),
            ("nothing", json!({"schemaVersion": 2}), Err("neither manifests nor layers")),
            ("bad digest", json!({"layers": [{"digest": "sha256:xyz", "size": 1}]}), Err("digest")),
            ("negative size", json!({"layers": [{"digest": d(1), "size": -1}]}), Err("negative size")),
            ("not json", json!("a string"), Err("not a manifest")),
        ];
        for (what, doc, want) in table {
            let got = Manifest::parse(&serde_json::to_vec(&doc).unwrap()).map(|m| match m {
                Manifest::Index { manifests, .. } => format!("index {}", manifests.len()),
                Manifest::Image { layers, .. } => format!("image {}", layers.len()),
            });
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{what}"),
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{what}: {e}"),
                (got, want) => panic!("{what}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn an_artifact_type_is_its_own_or_its_configs() {
        let config = json!({"mediaType": "application/vnd.example.model.config.v1+json", "digest": d(0), "size": 2});
        let typed = json!({"artifactType": "application/vnd.example.release+json", "config": config, "layers": []});
        let untyped = json!({"config": config, "layers": []});
        for (doc, want) in
            [(typed, "application/vnd.example.release+json"), (untyped, "application/vnd.example.model.config.v1+json")]
        {
            match Manifest::parse(&serde_json::to_vec(&doc).unwrap()).unwrap() {
                Manifest::Image { artifact_type, .. } => assert_eq!(artifact_type.as_deref(), Some(want)),
                other => panic!("{other:?}"),
            }
        }
    }
}

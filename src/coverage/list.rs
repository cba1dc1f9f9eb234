//! Release lists: an image index, or an artifact holding one JSON list of `name@sha256:…` references, that a policy
//! names (`require.attestations[].via.list`). Read within caps; what a verified list pins is what it covers.

use std::collections::HashMap;

use super::{Descriptor, Manifest};
use crate::images::{Digest, ImageRef};
use crate::reason::{Reason, Requirement};

/// Caps on one release list (config `cache.maxListBytes`, `cache.maxListEntries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimits {
    /// Largest manifest, and largest JSON blob, read for a list.
    pub max_bytes: u64,
    /// Most manifests an index list, or references a JSON list, may hold.
    pub max_entries: usize,
}

/// Why a list cannot be used: over a cap, or not a release list at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListError {
    TooLarge(String),
    Invalid(String),
}

impl ListError {
    /// Read past `limit` bytes (declared or sent).
    pub fn too_many_bytes(what: &str, limit: u64) -> Self {
        Self::TooLarge(format!(
            "its {what} is larger than the {limit}-byte limit (cache.maxListBytes): split the release into several \
             lists, or raise cache.maxListBytes"
        ))
    }

    /// The denial for the image whose policy names `list`.
    pub fn reason(&self, list: &ImageRef) -> Reason {
        let (requirement, detail) = match self {
            Self::TooLarge(detail) => (Requirement::ListTooLarge, detail),
            Self::Invalid(detail) => (Requirement::ListInvalid, detail),
        };
        Reason::Unmet { requirement, message: format!("release list {list}: {detail}") }
    }
}

/// What a list's manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// An index: the list itself.
    Index(ReleaseList),
    /// An artifact: its one blob, to be read next (within `max_bytes`, whatever `blob.size` says).
    Artifact { blob: Descriptor, artifact_type: Option<String> },
}

/// Bytes a pinned digest holds in memory, roughly (for weighing cache entries).
const ENTRY_WEIGHT: u64 = 128;

/// Which images a list pins.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pins {
    /// An index pins manifests by digest, in whatever repository they are pulled from.
    Digests(std::collections::HashSet<Digest>),
    /// A JSON list pins each digest under the repository names written with it.
    Named(HashMap<Digest, Vec<String>>),
}

/// A release list read from a manifest (and its blob) fetched by `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseList {
    pub digest: Digest,
    /// The manifest's `artifactType` (for an artifact, else its config's media type).
    pub artifact_type: Option<String>,
    entries: usize,
    pins: Pins,
    weight: u64,
}

/// Reads the list manifest `digest` (its bytes already checked against it).
pub fn from_manifest(digest: &Digest, bytes: &[u8], limits: &ListLimits) -> Result<Shape, ListError> {
    let manifest = Manifest::parse(bytes).map_err(|e| ListError::Invalid(format!("{digest}: {e}")))?;
    match manifest {
        Manifest::Index { artifact_type, manifests } => {
            entries_within(manifests.len(), "manifests", limits)?;
            let entries = manifests.len();
            let pins = Pins::Digests(manifests.into_iter().map(|m| m.digest).collect());
            let weight = ENTRY_WEIGHT.saturating_mul(entries as u64).saturating_add(ENTRY_WEIGHT);
            Ok(Shape::Index(ReleaseList { digest: digest.clone(), artifact_type, entries, pins, weight }))
        }
        Manifest::Image { artifact_type, mut layers } => {
            if layers.len() != 1 {
                return Err(ListError::Invalid(format!(
                    "{digest} is an artifact of {} layers; a release list artifact holds exactly one JSON blob (a \
                     list of name@sha256:… references), or is an image index",
                    layers.len()
                )));
            }
            let blob = layers.remove(0);
            if blob.size > limits.max_bytes {
                return Err(ListError::too_many_bytes(
                    &format!("blob {} ({} bytes declared)", blob.digest, blob.size),
                    limits.max_bytes,
                ));
            }
            Ok(Shape::Artifact { blob, artifact_type })
        }
    }
}

/// Reads the JSON blob of the list artifact `digest`: an array of `name@sha256:…` strings, each naming its
/// repository and pinning its digest. One entry that is not such a reference makes the whole list unusable.
pub fn from_blob(
    digest: &Digest,
    artifact_type: Option<String>,
    bytes: &[u8],
    limits: &ListLimits,
) -> Result<ReleaseList, ListError> {
    let written: Vec<String> = serde_json::from_slice(bytes)
        .map_err(|e| ListError::Invalid(format!("its blob is not a JSON array of \"name@sha256:…\" strings: {e}")))?;
    entries_within(written.len(), "references", limits)?;
    let mut named: HashMap<Digest, Vec<String>> = HashMap::new();
    let mut weight = ENTRY_WEIGHT;
    for (i, entry) in written.iter().enumerate() {
        let image = ImageRef::parse_uncached(entry)
            .map_err(|e| ListError::Invalid(format!("entry {i} {entry:?} is not an image reference: {e}")))?;
        let Some(pinned) = image.digest() else {
            return Err(ListError::Invalid(format!(
                "entry {i} {entry:?} is not pinned by digest: write it as name@sha256:<digest>"
            )));
        };
        let names = named.entry(pinned.clone()).or_default();
        if !names.contains(&image.name()) {
            weight = weight.saturating_add(ENTRY_WEIGHT + image.name().len() as u64);
            names.push(image.name());
        }
    }
    let entries = written.len();
    Ok(ReleaseList { digest: digest.clone(), artifact_type, entries, pins: Pins::Named(named), weight })
}

fn entries_within(count: usize, what: &str, limits: &ListLimits) -> Result<(), ListError> {
    if count > limits.max_entries {
        return Err(ListError::TooLarge(format!(
            "it holds {count} {what}, more than cache.maxListEntries ({}): split the release into several lists, or \
             raise cache.maxListEntries",
            limits.max_entries
        )));
    }
    Ok(())
}

impl ReleaseList {
    /// Entries as written (an index's manifests, a JSON list's references).
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Whether the list pins `image` at `digest`: an index by the digest alone (it is the content), a JSON list by
    /// the digest written with the image's own repository (`registry/repository`, normalised).
    pub fn pins(&self, image: &ImageRef, digest: &Digest) -> bool {
        match &self.pins {
            Pins::Digests(digests) => digests.contains(digest),
            Pins::Named(named) => named.get(digest).is_some_and(|names| names.contains(&image.name())),
        }
    }

    /// Whether the list pins `digest` under some other repository than `image`'s (for the denial message).
    pub fn pins_elsewhere(&self, image: &ImageRef, digest: &Digest) -> Option<&str> {
        match &self.pins {
            Pins::Digests(_) => None,
            Pins::Named(named) => named.get(digest)?.iter().find(|n| **n != image.name()).map(String::as_str),
        }
    }

    /// The list's type, when a policy filters on it (`via.artifactType`).
    pub fn check_type(&self, wanted: Option<&str>) -> Result<(), String> {
        match wanted {
            Some(wanted) if self.artifact_type.as_deref() != Some(wanted) => Err(format!(
                "its artifactType is {}, not {wanted}",
                self.artifact_type.as_deref().map_or_else(|| "not set".to_owned(), |t| format!("{t:?}"))
            )),
            _ => Ok(()),
        }
    }

    /// "an image index of 3 manifests", "a JSON list of 2 references".
    pub fn describe(&self) -> String {
        match self.pins {
            Pins::Digests(_) => format!("an image index of {} manifests", self.entries),
            Pins::Named(_) => format!("a JSON list of {} references", self.entries),
        }
    }

    /// Bytes held, roughly, for weighing cache entries.
    pub fn weight(&self) -> u64 {
        self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: ListLimits = ListLimits { max_bytes: 1 << 20, max_entries: 100 };
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    fn d(n: u32) -> Digest {
        Digest::sha256_of(&n.to_be_bytes())
    }

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    fn index(digests: &[Digest]) -> Vec<u8> {
        let manifests: Vec<_> =
            digests.iter().map(|d| json!({"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": 100})).collect();
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})).unwrap()
    }

    fn artifact(layers: &[(Digest, i64)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(d, size)| json!({"mediaType": "application/json", "digest": d.to_string(), "size": size}))
            .collect();
        let config = json!({"mediaType": "application/vnd.oci.empty.v1+json", "digest": d(0).to_string(), "size": 2});
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.release-list.v1+json", "config": config, "layers": layers}))
        .unwrap()
    }

    #[test]
    fn an_index_pins_its_manifests_by_digest_in_any_repository() {
        let list = match from_manifest(&d(100), &index(&[d(1), d(2)]), &LIMITS).unwrap() {
            Shape::Index(list) => list,
            other => panic!("{other:?}"),
        };
        assert_eq!((list.len(), list.describe()), (2, "an image index of 2 manifests".to_owned()));
        assert!(list.pins(&image("registry.example.com/team/app:1"), &d(1)));
        assert!(list.pins(&image("mirror.example.com/other:1"), &d(2)), "a digest is the content, wherever it is");
        assert!(!list.pins(&image("registry.example.com/team/app:1"), &d(3)));
        assert!(!list.pins(&image("registry.example.com/team/app:1"), &d(100)), "the list does not pin itself");
        assert_eq!(list.check_type(None), Ok(()));
        assert!(list.check_type(Some("application/vnd.example.release-list.v1+json")).unwrap_err().contains("not set"));
    }

    #[test]
    fn a_json_list_pins_each_digest_under_the_repository_written_with_it() {
        let (app, web) = (d(1), d(2));
        let written = json!([
            format!("registry.example.com/team/app@{app}"),
            format!("registry.example.com/team/web:v2@{web}"),
            format!("index.docker.io/acme/tool@{}", d(3)),
        ]);
        let list = from_blob(&d(100), Some("t".into()), &serde_json::to_vec(&written).unwrap(), &LIMITS).unwrap();
        assert_eq!((list.len(), list.describe()), (3, "a JSON list of 3 references".to_owned()));
        assert!(list.pins(&image("registry.example.com/team/app:1"), &app));
        assert!(list.pins(&image("REGISTRY.example.com:443/team/web"), &web), "names are normalised");
        assert!(list.pins(&image("docker.io/acme/tool"), &d(3)), "ggcr's index.docker.io is docker.io");
        // The right digest under another repository is not on the list: the name must match.
        let other = image("registry.example.com/team/other:1");
        assert!(!list.pins(&other, &app));
        assert_eq!(list.pins_elsewhere(&other, &app), Some("registry.example.com/team/app"));
        assert!(!list.pins(&image("registry.example.com/team/app:1"), &web));
        assert_eq!(list.check_type(Some("t")), Ok(()));
        assert!(list.check_type(Some("u")).unwrap_err().contains("\"t\", not u"));
    }

    #[test]
    fn a_list_that_is_not_a_release_list_or_over_a_cap_is_refused() {
        let small = ListLimits { max_bytes: 1000, max_entries: 2 };
        let entries =
            |n: u32| serde_json::to_vec(&(1..=n).map(|i| format!("r.example/a@{}", d(i))).collect::<Vec<_>>()).unwrap();
        type Row = (&'static str, Result<Shape, ListError>, &'static str);
        let blob = |bytes: Vec<u8>| from_blob(&d(100), None, &bytes, &small).map(Shape::Index);
        let table: Vec<Row> = vec![
            ("three manifests", from_manifest(&d(100), &index(&[d(1), d(2), d(3)]), &small), "too-large"),
            ("two manifests", from_manifest(&d(100), &index(&[d(1), d(2)]), &small), "ok"),
            ("two layers", from_manifest(&d(100), &artifact(&[(d(1), 10), (d(2), 10)]), &small), "invalid"),
            ("no layer", from_manifest(&d(100), &artifact(&[]), &small), "invalid"),
            ("declared too big", from_manifest(&d(100), &artifact(&[(d(1), 1001)]), &small), "too-large"),
            ("one small layer", from_manifest(&d(100), &artifact(&[(d(1), 1000)]), &small), "ok"),
            ("not a manifest", from_manifest(&d(100), b"[1, 2]", &small), "invalid"),
            ("three references", blob(entries(3)), "too-large"),
            ("two references", blob(entries(2)), "ok"),
            ("a tag, no digest", blob(serde_json::to_vec(&json!(["r.example/a:1"])).unwrap()), "invalid"),
            ("not a reference", blob(serde_json::to_vec(&json!(["not a ref"])).unwrap()), "invalid"),
            ("an object", blob(serde_json::to_vec(&json!({"images": []})).unwrap()), "invalid"),
            ("numbers", blob(serde_json::to_vec(&json!([1])).unwrap()), "invalid"),
        ];
        let list = image("registry.example.com/releases/r:1");
        for (what, got, want) in table {
            let code = match &got {
                Ok(_) => "ok",
                Err(e @ ListError::TooLarge(_)) => {
                    assert_eq!(e.reason(&list).code(), "list-too-large", "{what}");
                    "too-large"
                }
                Err(e @ ListError::Invalid(_)) => {
                    assert_eq!(e.reason(&list).code(), "list-invalid", "{what}");
                    "invalid"
                }
            };
            assert_eq!(code, want, "{what}: {got:?}");
            if let Err(e) = got {
                let message = e.reason(&list).to_string();
                assert!(message.starts_with("release list registry.example.com/releases/r:1: "), "{message}");
            }
        }
    }
}

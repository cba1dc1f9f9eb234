//! Layer coverage of an image volume: under a policy's `coverLayers`, an artifact mounted as an image volume is also
//! covered by a verified statement whose subjects name every layer of its manifest (read by the pinned digest and
//! checked against it). All layers, not some; a manifest without layers, or an index, never qualifies.

use std::collections::{BTreeSet, HashSet};

use super::Manifest;
use crate::images::Digest;
use crate::verify::{Statement, Verified};

/// Most distinct layers a manifest may have to be covered by its layers: each is matched against every subject of
/// every statement, and a manifest is whatever its pusher wrote.
pub const MAX_LAYERS: usize = 1000;

/// The distinct layers of the manifest `digest` (its bytes already checked against it), or why it has none that a
/// statement could cover (none, an index, more than [`MAX_LAYERS`]).
pub fn layers_of(digest: &Digest, bytes: &[u8]) -> Result<Vec<Digest>, String> {
    match Manifest::parse(bytes).map_err(|e| format!("manifest {digest} cannot be read: {e}"))? {
        Manifest::Index { .. } => {
            Err(format!("{digest} is an image index: only a single manifest's layers can cover an image volume"))
        }
        Manifest::Image { layers, .. } if layers.is_empty() => {
            Err(format!("manifest {digest} lists no layers, so no statement can cover them"))
        }
        Manifest::Image { layers, .. } => {
            let distinct: BTreeSet<Digest> = layers.into_iter().map(|l| l.digest).collect();
            if distinct.len() > MAX_LAYERS {
                return Err(format!(
                    "manifest {digest} has {} layers, more than the {MAX_LAYERS} provgate matches against statement \
                     subjects; attest its manifest digest instead",
                    distinct.len()
                ));
            }
            Ok(distinct.into_iter().collect())
        }
    }
}

/// Whether `statement` names every one of `layers` (never true of no layers).
pub fn names_every_layer(statement: &Statement, layers: &[Digest]) -> bool {
    !layers.is_empty() && missing(statement, layers).next().is_none()
}

fn missing<'a>(statement: &'a Statement, layers: &'a [Digest]) -> impl Iterator<Item = &'a Digest> + 'a {
    let named: HashSet<(&str, &str)> =
        statement.subject.iter().flat_map(|s| s.digest.iter().map(|(alg, hex)| (alg.as_str(), hex.as_str()))).collect();
    layers.iter().filter(move |layer| !named.contains(&(layer.algorithm(), layer.hex())))
}

/// Of `statements` (verified with the layers as acceptable subjects), those that name every layer.
pub fn covering<'a>(
    statements: impl IntoIterator<Item = &'a Verified<Statement>>,
    layers: &[Digest],
) -> Vec<&'a Verified<Statement>> {
    statements.into_iter().filter(|s| names_every_layer(s, layers)).collect()
}

/// Why none of `statements` covers the layers: the closest one and what it leaves out, e.g. `a statement names 2
/// of the 3 layers of sha256:…; missing sha256:…`.
pub fn shortfall<'a>(statements: impl IntoIterator<Item = &'a Verified<Statement>>, layers: &[Digest]) -> String {
    let closest = statements.into_iter().min_by_key(|s| missing(s, layers).count());
    match closest {
        None => format!("no verified statement names any of its {} layers", layers.len()),
        Some(s) => {
            let left_out: Vec<String> = missing(s, layers).take(3).map(ToString::to_string).collect();
            let count = missing(s, layers).count();
            let more =
                if count > left_out.len() { format!(" and {} more", count - left_out.len()) } else { String::new() };
            format!(
                "the closest verified statement names {} of its {} layers; missing {}{more}",
                layers.len() - count,
                layers.len(),
                left_out.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::fixtures::{Key, artifacts};
    use serde_json::json;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn manifest(layers: &[Digest]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|l| json!({"mediaType": "application/vnd.example.model.layer", "digest": l.to_string(), "size": 9}))
            .collect();
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example.model.v1",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d(0).to_string(), "size": 2},
            "layers": layers}))
        .unwrap()
    }

    #[test]
    fn only_a_manifest_with_layers_has_layers_to_cover() {
        let twice = layers_of(&d(9), &manifest(&[d(2), d(1), d(2)])).unwrap();
        assert_eq!(twice, vec![d(1), d(2)].into_iter().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>());
        assert!(layers_of(&d(9), &manifest(&[])).unwrap_err().contains("lists no layers"));
        let index = json!({"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []});
        assert!(layers_of(&d(9), &serde_json::to_vec(&index).unwrap()).unwrap_err().contains("image index"));
        assert!(layers_of(&d(9), b"{").unwrap_err().contains("cannot be read"));
        let many: Vec<Digest> = (0..=MAX_LAYERS as u32).map(|i| Digest::sha256_of(&i.to_be_bytes())).collect();
        assert!(layers_of(&d(9), &manifest(&many)).unwrap_err().contains("1001 layers, more than the 1000"));
        assert_eq!(layers_of(&d(9), &manifest(&many[..MAX_LAYERS])).unwrap().len(), MAX_LAYERS);
    }

    #[test]
    fn a_statement_covers_the_layers_only_when_it_names_every_one() {
        let key = Key::new();
        let layers = vec![d(1), d(2), d(3)];
        let all = key.attestation_of(&[d(3), d(1), d(2), d(7)], "https://slsa.dev/provenance/v0.2", json!({}));
        let some = key.attestation_of(&[d(1), d(2)], "https://slsa.dev/provenance/v0.2", json!({}));
        let one = key.attestation_of(&[d(2)], "https://slsa.dev/provenance/v0.2", json!({}));
        let a = artifacts(vec![], vec![all, some.clone(), one.clone()]);
        let check = crate::verify::attestations(&a, &layers, &[key.authority("a")]);
        assert_eq!(check.verified.len(), 3, "each names some layer, so each verifies against the layers");
        let found = covering(&check.verified, &layers);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].subject.len(), 4, "naming more than the layers is fine");
        assert!(!names_every_layer(&check.verified[0], &[]), "no layers: never covered");

        let partial = crate::verify::attestations(&artifacts(vec![], vec![some, one]), &layers, &[key.authority("a")]);
        assert!(covering(&partial.verified, &layers).is_empty());
        let why = shortfall(&partial.verified, &layers);
        assert_eq!(why, format!("the closest verified statement names 2 of its 3 layers; missing {}", d(3)));
        assert_eq!(shortfall(&[], &layers), "no verified statement names any of its 3 layers");
    }
}

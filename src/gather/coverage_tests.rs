//! Release lists and layer coverage from an in-memory registry through plan, gather and decide: each way to be
//! covered, and each of its denied twins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::super::{CacheConfig, Gatherer};
use crate::check::ReviewContext;
use crate::decide::{Decision, NoMatch, Outcome, decide};
use crate::images::{Digest, PodKind, extract};
use crate::keys::KeyStore;
use crate::plan::plan;
use crate::policy::{PolicySet, load_sources};
use crate::registry::HostCredentials;
use crate::registry::memory::{Call, MANIFEST, MemoryRegistry};
use crate::verify::fixtures::{Key, SLSA_V02, artifacts, digest};

const APP: &str = "registry.example.com/team/app";
const WEB: &str = "registry.example.com/team/web";
const LIST: &str = "registry.example.com/releases/app";
const MODEL: &str = "registry.example.com/models/llm";
const LIST_TYPE: &str = "application/vnd.example.release-list.v1+json";

/// A policy for every image of registry.example.com trusting `key` as `chains`, with `require` as written.
fn policy(key: &Key, require: &str) -> PolicySet {
    let pem: String = key.pem().lines().map(|l| format!("        {l}\n")).collect();
    let text = format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: p}}\nspec:\n  match: {{images: \
         [\"registry.example.com/**\"]}}\n  require: {require}\n  authorities:\n    - name: chains\n      key: |\n{pem}"
    );
    load_sources(&[(PathBuf::from("p.yaml"), text)]).unwrap()
}

fn via(list: &str, artifact_type: Option<&str>) -> String {
    let typed = artifact_type.map(|t| format!(", artifactType: {t:?}")).unwrap_or_default();
    format!("{{attestations: [{{name: release, predicateType: slsa, via: {{list: {list:?}{typed}}}}}]}}")
}

/// A JSON release list artifact in `registry` naming `entries`; its manifest digest.
fn json_list(r: &MemoryRegistry, entries: &[String]) -> Digest {
    let blob = serde_json::to_vec(&entries).unwrap();
    let blob_digest = r.put_content(LIST, &blob);
    let manifest = json!({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": LIST_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": Digest::sha256_of(b"{}").to_string(), "size": 2},
        "layers": [{"mediaType": "application/json", "digest": blob_digest.to_string(), "size": blob.len()}]});
    let d = r.put_content(LIST, &serde_json::to_vec(&manifest).unwrap());
    r.put_manifest(LIST, &d, MANIFEST);
    d
}

/// An index release list in `registry` listing `manifests`; its digest.
fn index_list(r: &MemoryRegistry, manifests: &[&Digest]) -> Digest {
    let entries: Vec<Value> =
        manifests.iter().map(|d| json!({"mediaType": MANIFEST, "digest": d.to_string(), "size": 500})).collect();
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let d = r.put_content(LIST, &serde_json::to_vec(&index).unwrap());
    r.put_manifest(LIST, &d, "application/vnd.oci.image.index.v1+json");
    d
}

/// Signs the list `d` (signature and provenance) with `key`, stored beside it.
fn sign_list(r: &MemoryRegistry, d: &Digest, key: &Key) {
    r.put_artifacts(
        LIST,
        d,
        artifacts(vec![key.signature(d)], vec![key.provenance(d, "https://tekton.dev/chains/v2")]),
    );
}

/// An unsigned single-manifest image `tag` of `repository`.
fn image(r: &MemoryRegistry, repository: &str, tag: &str) -> Digest {
    let d = digest(&format!("{repository}:{tag}"));
    r.put_manifest(repository, &d, MANIFEST);
    r.tag(repository, tag, &d);
    d
}

fn pod(containers: &[&str], volumes: &[&str]) -> Value {
    let containers: Vec<Value> = containers.iter().map(|i| json!({"name": "c", "image": i})).collect();
    let volumes: Vec<Value> =
        volumes.iter().enumerate().map(|(i, v)| json!({"name": format!("v{i}"), "image": {"reference": v}})).collect();
    json!({"spec": {"containers": containers, "volumes": volumes}})
}

async fn review(g: &Gatherer, set: &PolicySet, object: &Value) -> Decision {
    let planned = plan(extract(PodKind::Pod, object).unwrap(), &[], set, "team-a");
    let budget = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + budget;
    let gathered = g.gather(&planned, &HostCredentials::default(), deadline, budget).await;
    let context = ReviewContext::new(object, "team-a", &json!({}), chrono::DateTime::UNIX_EPOCH);
    decide(&planned, &gathered, &context, NoMatch::Deny, &|| None)
}

/// Per image field: its outcome, and its reason codes.
fn outcomes(d: &Decision) -> Vec<(Outcome, Vec<&'static str>)> {
    d.images.iter().map(|i| (i.outcome, i.failures.iter().map(|f| f.reason.code()).collect())).collect()
}

fn gatherer(r: &std::sync::Arc<MemoryRegistry>, cache: CacheConfig) -> Gatherer {
    Gatherer::new(r.clone(), KeyStore::default(), cache)
}

#[tokio::test]
async fn a_verified_json_list_covers_the_images_it_pins_under_their_names_and_no_other() {
    let (key, stranger) = (Key::new(), Key::new());
    let r = std::sync::Arc::new(MemoryRegistry::new());
    let (app, web) = (image(&r, APP, "1"), image(&r, WEB, "1"));
    let list = json_list(&r, &[format!("{APP}@{app}")]);
    r.tag(LIST, "v1", &list);
    sign_list(&r, &list, &key);
    let g = gatherer(&r, CacheConfig::default());
    let set = policy(&key, &via(&format!("{LIST}:v1"), Some(LIST_TYPE)));
    let d = review(&g, &set, &pod(&[&format!("{APP}:1"), &format!("{WEB}:1")], &[])).await;
    assert_eq!(outcomes(&d), [(Outcome::Allowed, vec![]), (Outcome::Denied, vec!["not-on-list"])]);
    let credit = &d.images[0].verified;
    assert!(
        credit.iter().any(|v| v.starts_with("attestation release (https://slsa.dev/provenance/v0.2) by chains")
            && v.ends_with(&format!("via release list {LIST}:v1@{list}"))),
        "{credit:?}"
    );
    let message = d.images[1].explain();
    assert!(
        message
            .contains(&format!("release list {LIST}:v1@{list} (a JSON list of 1 references) does not pin {WEB}@{web}")),
        "{message}"
    );
    // Read once for both images and cached by digest: a second review reads no list content.
    let read = r.calls(Call::Content);
    assert_eq!(read, 2, "the list manifest and its blob");
    review(&g, &set, &pod(&[&format!("{APP}:1")], &[])).await;
    assert_eq!(r.calls(Call::Content), read, "cached by digest");

    // The app's digest written under another repository's name is not on the list for that repository.
    let moved = json_list(&r, &[format!("{WEB}@{app}")]);
    r.tag(LIST, "v1", &moved);
    sign_list(&r, &moved, &key);
    let d = review(&g, &set, &pod(&[&format!("{APP}:1")], &[])).await;
    assert_eq!(outcomes(&d), [(Outcome::Denied, vec!["not-on-list"])]);
    assert!(
        d.images[0].explain().contains(&format!("(it pins that digest for {WEB} only)")),
        "{}",
        d.images[0].explain()
    );

    // Another artifact type than the policy asks for.
    let set = policy(&key, &via(&format!("{LIST}@{list}"), Some("application/vnd.example.other+json")));
    let d = review(&g, &set, &pod(&[&format!("{APP}:1")], &[])).await;
    assert_eq!(outcomes(&d), [(Outcome::Denied, vec!["list-invalid"])]);

    // The same list signed by a stranger, or carrying a valid signature made for another list: replayed.
    let replayed = json_list(&r, &[format!("{APP}@{app}"), format!("{WEB}@{web}")]);
    r.put_artifacts(LIST, &replayed, artifacts(vec![key.signature(&list)], vec![key.provenance(&list, "x")]));
    let foreign = json_list(&r, &[format!("{APP}@{app}"), format!("{APP}@{}", digest("x"))]);
    sign_list(&r, &foreign, &stranger);
    let reads = r.calls(Call::Content);
    for (list, code) in [(&replayed, "digest-mismatch"), (&foreign, "wrong-key")] {
        let set = policy(&key, &via(&format!("{LIST}@{list}"), None));
        let d = review(&g, &set, &pod(&[&format!("{APP}:1"), &format!("{WEB}:1")], &[])).await;
        assert_eq!(outcomes(&d), [(Outcome::Denied, vec![code]), (Outcome::Denied, vec![code])], "{code}");
        assert!(d.images[0].explain().contains(&format!("release list {LIST}@{list}")), "{}", d.images[0].explain());
    }
    assert_eq!(r.calls(Call::Content), reads, "a list whose signature does not verify is never read");

    // A list not signed yet: denied, saying where provgate looked and when it looks again; never read.
    let unsigned = json_list(&r, &[format!("{APP}@{app}"), format!("{WEB}@{}", digest("y"))]);
    let set = policy(&key, &via(&format!("{LIST}@{unsigned}"), None));
    let d = review(&g, &set, &pod(&[&format!("{APP}:1")], &[])).await;
    assert_eq!(outcomes(&d), [(Outcome::Denied, vec!["unsigned"])]);
    let why = d.images[0].explain();
    assert!(why.contains(&format!("release list {LIST}@{unsigned}: no valid signature")), "{why}");
    assert!(why.contains(&format!("looked in {LIST}; the signature may not be published yet")), "{why}");
    assert_eq!(r.calls(Call::Content), reads);
}

#[tokio::test]
async fn an_index_list_covers_its_manifests_and_lists_over_a_cap_are_denied() {
    let key = Key::new();
    let r = std::sync::Arc::new(MemoryRegistry::new());
    let (app, web, other) = (image(&r, APP, "1"), image(&r, WEB, "1"), image(&r, WEB, "2"));
    let list = index_list(&r, &[&app, &web]);
    sign_list(&r, &list, &key);
    let set = policy(&key, &via(&format!("{LIST}@{list}"), None));
    let object = pod(&[&format!("{APP}:1"), &format!("{WEB}:1"), &format!("{WEB}:2")], &[]);
    let g = gatherer(&r, CacheConfig::default());
    let d = review(&g, &set, &object).await;
    let denied = (Outcome::Denied, vec!["not-on-list"]);
    assert_eq!(outcomes(&d), [(Outcome::Allowed, vec![]), (Outcome::Allowed, vec![]), denied]);
    assert!(d.images[2].explain().contains(&format!("(an image index of 2 manifests) does not pin {WEB}@{other}")));

    // At most one entry: the list (and every image it would cover) is denied, with its own reason.
    let small = gatherer(&r, CacheConfig { max_list_entries: 1, ..CacheConfig::default() });
    let d = review(&small, &set, &object).await;
    assert!(outcomes(&d).iter().all(|(o, codes)| *o == Outcome::Denied && codes == &["list-too-large"]), "{d:?}");
    assert!(d.images[0].explain().contains("it holds 2 manifests, more than cache.maxListEntries (1)"));
    // At most 100 bytes: cut there.
    let tiny = gatherer(&r, CacheConfig { max_list_bytes: 100, ..CacheConfig::default() });
    let d = review(&tiny, &set, &object).await;
    assert_eq!(outcomes(&d)[0], (Outcome::Denied, vec!["list-too-large"]));
    assert!(d.images[0].explain().contains("larger than the 100-byte limit (cache.maxListBytes)"));
}

/// A model artifact: a manifest with `artifactType` and `layers`, stored and tagged `1` in MODEL.
fn model(r: &MemoryRegistry, layers: &[&Digest]) -> Digest {
    let layers: Vec<Value> = layers
        .iter()
        .map(|d| json!({"mediaType": "application/vnd.example.model.layer.v1.tar", "digest": d.to_string(), "size": 9}))
        .collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": "application/vnd.example.model.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": Digest::sha256_of(b"{}").to_string(), "size": 2},
        "layers": layers});
    let d = r.put_content(MODEL, &serde_json::to_vec(&manifest).unwrap());
    r.put_manifest(MODEL, &d, MANIFEST);
    r.tag(MODEL, "1", &d);
    d
}

#[tokio::test]
async fn an_image_volume_is_covered_by_its_manifest_digest_or_with_cover_layers_by_every_layer() {
    let key = Key::new();
    let r = std::sync::Arc::new(MemoryRegistry::new());
    let (weights, tokenizer) = (digest("weights"), digest("tokenizer"));
    let m = model(&r, &[&weights, &tokenizer]);
    let reference = format!("{MODEL}:1");
    let plain = policy(&key, "{attestations: [{name: build, predicateType: slsa}]}");
    let layered = policy(&key, "{attestations: [{name: build, predicateType: slsa, coverLayers: true}]}");
    let g = gatherer(&r, CacheConfig::default());
    let statement = |subjects: &[Digest]| key.attestation_of(subjects, SLSA_V02, json!({"builder": {"id": "b"}}));
    let mut d;

    // A statement naming the manifest digest covers it as any image, with or without the opt-in.
    r.put_artifacts(MODEL, &m, artifacts(vec![], vec![statement(std::slice::from_ref(&m))]));
    for set in [&plain, &layered] {
        d = review(&g, set, &pod(&[], &[&reference])).await;
        assert_eq!(outcomes(&d), [(Outcome::Allowed, vec![])]);
    }
    assert_eq!(r.calls(Call::Content), 1, "the layers are read only under coverLayers");

    // Every layer named: covered under coverLayers only, and only as a volume.
    r.put_artifacts(MODEL, &m, artifacts(vec![], vec![statement(&[tokenizer.clone(), weights.clone()])]));
    g.forget_artifacts();
    d = review(&g, &plain, &pod(&[], &[&reference])).await;
    assert_eq!(outcomes(&d), [(Outcome::Denied, vec!["subject-mismatch"])], "no opt-in");
    d = review(&g, &layered, &pod(&[&reference], &[&reference])).await;
    assert_eq!(outcomes(&d), [(Outcome::Denied, vec!["subject-mismatch"]), (Outcome::Allowed, vec![])]);
    assert!(d.images[0].explain().contains("coverLayers covers image volumes only"), "{}", d.images[0].explain());
    assert!(d.images[1].verified.iter().any(|v| v.ends_with(&format!("naming every layer of {m}"))));

    // One layer missing from the subjects: not covered.
    r.put_artifacts(MODEL, &m, artifacts(vec![], vec![statement(std::slice::from_ref(&weights))]));
    g.forget_artifacts();
    d = review(&g, &layered, &pod(&[], &[&reference])).await;
    assert_eq!(outcomes(&d), [(Outcome::Denied, vec!["layers-uncovered"])]);
    let why = d.images[0].explain();
    assert!(why.contains(&format!("names 1 of its 2 layers; missing {tokenizer}")), "{why}");

    // A manifest without layers never qualifies, whatever a statement names.
    let empty = model(&r, &[]);
    r.put_artifacts(MODEL, &empty, artifacts(vec![], vec![statement(std::slice::from_ref(&weights))]));
    d = review(&g, &layered, &pod(&[], &[&reference])).await;
    assert_eq!(outcomes(&d), [(Outcome::Denied, vec!["layers-uncovered"])]);
    assert!(d.images[0].explain().contains("lists no layers"), "{}", d.images[0].explain());
}

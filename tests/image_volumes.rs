//! OCI artifacts mounted as image volumes (`volumes[*].image.reference`), in a real docker-registry: artifact
//! manifests with `artifactType` and model layers, pushed with skopeo, their provenance signed at test time by PyPI
//! `cryptography`/`securesystemslib`. An artifact is covered when its manifest digest is a statement subject, like any
//! image; under a policy's `coverLayers`, an image volume is also covered when every layer of its manifest is a
//! subject. Judged through `/validate` and `provgate verify --volume`, each way to pass with its denied twins: no
//! opt-in, one layer missing, the same artifact run as a container.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::registry::{Auth, DSSE, Desc, DockerRegistry, Layout, OCI_EMPTY, OCI_MANIFEST};
use support::signing::{SIG_ANNOTATION, attach, seed, sign};
use support::webhook::{Webhook, message, reasons, review};

const MODEL_TYPE: &str = "application/vnd.example.model.v1";
const MODEL_LAYER: &str = "application/vnd.example.model.layer.v1.tar";

/// Artifacts `model:<tag>` pushed to `plain/model` and `layered/model`, each with one `.att` as `ATTESTS` says.
struct World {
    registry: DockerRegistry,
    keys: tempfile::TempDir,
    digests: std::collections::HashMap<&'static str, String>,
}

/// (tag, layers, what its statement names: the manifest digest, or these layers by index).
const ARTIFACTS: [(&str, usize, Subjects); 3] = [
    ("by-digest", 2, Subjects::Manifest),
    ("every-layer", 2, Subjects::Layers(&[0, 1])),
    ("one-layer", 2, Subjects::Layers(&[1])),
];

#[derive(Clone, Copy)]
enum Subjects {
    Manifest,
    Layers(&'static [usize]),
}

/// An OCI artifact: `artifactType`, the empty config, and `layers` blobs of model data.
fn model(layout: &Layout, marker: &str, layers: usize) -> (Desc, Vec<Desc>) {
    let config = layout.blob(OCI_EMPTY, b"{}");
    let blobs: Vec<Desc> =
        (0..layers).map(|i| layout.blob(MODEL_LAYER, format!("{marker} weights shard {i}").as_bytes())).collect();
    let manifest = layout.json(
        OCI_MANIFEST,
        &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MODEL_TYPE, "config": config.json(),
            "layers": blobs.iter().map(Desc::json).collect::<Vec<_>>()}),
    );
    (manifest, blobs)
}

fn world() -> World {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let mut digests = std::collections::HashMap::new();
    for (tag, layers, subjects) in ARTIFACTS {
        let (manifest, blobs) = model(&layout, tag, layers);
        layout.tag(tag, &manifest);
        let named: Vec<&str> = match subjects {
            Subjects::Manifest => vec![manifest.hex()],
            Subjects::Layers(which) => which.iter().map(|i| blobs[*i].hex()).collect(),
        };
        let signed = sign(keys.path(), "chains", &named.join(","), &seed("chains-kaniko-slsa-v0.2-statement.json"));
        attach(&mut layout, &manifest, "att", (DSSE, signed.envelope, json!({SIG_ANNOTATION: ""})));
        digests.insert(tag, manifest.digest.clone());
    }
    for repo in ["plain/model", "layered/model"] {
        for tag in layout.tags() {
            registry.push(&layout, &tag, repo, &tag);
        }
    }
    World { registry, keys, digests }
}

/// A policy over `repo` requiring Chains provenance built by Tekton Chains, with `coverLayers` as given.
fn policy(name: &str, addr: &str, repo: &str, key: &Path, cover_layers: bool) -> String {
    format!(
        r#"apiVersion: provgate.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: {name}
spec:
  match:
    images: ["{addr}/{repo}/**"]
  authorities:
    - name: chains
      key: {key}
  require:
    attestations:
      - name: build
        predicateType: slsa
        coverLayers: {cover_layers}
  validations:
    - expression: attestations.build.all(s, s.predicate.builder.id == "https://tekton.dev/chains/v2")
      message: the model was not built by Tekton Chains
"#,
        key = key.display()
    )
}

fn policies(world: &World) -> Vec<(&'static str, String)> {
    let (addr, key) = (&world.registry.addr, world.keys.path().join("chains.pub"));
    vec![
        ("plain.yaml", policy("plain", addr, "plain", &key, false)),
        ("layered.yaml", policy("layered", addr, "layered", &key, true)),
    ]
}

/// A Pod CREATE running `containers` and mounting `volumes` as image volumes.
fn pod(containers: &[String], volumes: &[String]) -> Value {
    let mut r = review("pod-create");
    let containers: Vec<Value> = containers.iter().map(|i| json!({"name": "app", "image": i})).collect();
    let volumes: Vec<Value> = volumes
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"name": format!("model-{i}"), "image": {"reference": v, "pullPolicy": "IfNotPresent"}}))
        .collect();
    r["request"]["object"]["spec"] = json!({"containers": containers, "volumes": volumes});
    r
}

#[tokio::test]
async fn an_artifact_volume_is_covered_by_its_manifest_digest_or_under_cover_layers_by_every_layer() {
    let world = world();
    let registry = vec![(world.registry.addr.clone(), world.registry.host_config())];
    let hook = Webhook::trusting(&policies(&world), registry, |_| {}).await;
    let at = |repo: &str, tag: &str| format!("{}/{repo}/model:{tag}", world.registry.addr);

    // The manifest digest is a subject: covered as any image, with or without the opt-in.
    for repo in ["plain", "layered"] {
        let response = hook.review(&pod(&[], &[at(repo, "by-digest")])).await;
        assert_eq!(response["allowed"], true, "{repo}: {response}");
    }
    // Every layer is a subject: covered under coverLayers only.
    let response = hook.review(&pod(&[], &[at("layered", "every-layer")])).await;
    assert_eq!(response["allowed"], true, "{response}");
    let response = hook.review(&pod(&[], &[at("plain", "every-layer")])).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(reasons(&response), "subject-mismatch", "{response}");
    // The same artifact run as a container: its config would run too, so its layers do not cover it.
    let response = hook.review(&pod(&[at("layered", "every-layer")], &[at("layered", "every-layer")])).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(reasons(&response), "subject-mismatch", "{response}");
    let text = message(&response);
    assert!(text.starts_with("spec.containers[0].image"), "only the container is denied: {text}");
    assert!(!text.contains("spec.volumes[0]") && text.contains("coverLayers covers image volumes only"), "{text}");
    // One layer missing from the subjects.
    let response = hook.review(&pod(&[], &[at("layered", "one-layer")])).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(reasons(&response), "layers-uncovered", "{response}");
    let text = message(&response);
    assert!(text.contains("the closest verified statement names 1 of its 2 layers; missing sha256:"), "{text}");
    // What verified is recorded, layer coverage named as such.
    let records = hook.audit_records();
    let every_layer = &records[2]["images"][0];
    let digest = &world.digests["every-layer"];
    let verified = every_layer["verified"].as_array().unwrap();
    assert!(
        verified.iter().any(|v| v.as_str().unwrap().ends_with(&format!("naming every layer of {digest}"))),
        "{every_layer}"
    );
}

#[test]
fn provgate_verify_judges_volumes_as_mounted() {
    let world = world();
    let verifier = support::verify::Verify::new(&world.registry.addr, &policies(&world));
    let verify = |args: &[String]| verifier.run(args);
    let model = |tag: &str| format!("{}/layered/model:{tag}", world.registry.addr);
    let (code, report) = verify(&["--volume".into(), model("every-layer")]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["images"][0]["volume"], true, "{report}");
    assert_eq!(report["images"][0]["digest"], world.digests["every-layer"].as_str(), "{report}");
    let (code, report) = verify(&[model("every-layer"), "--volume".into(), model("one-layer")]);
    assert_eq!(code, Some(1), "{report}");
    let images = report["images"].as_array().unwrap();
    assert_eq!((images[0]["image"].as_str(), images[0].get("volume")), (Some(model("every-layer").as_str()), None));
    assert_eq!(images[0]["reasons"], json!(["subject-mismatch"]), "run as a container: {report}");
    assert_eq!(images[1]["reasons"], json!(["layers-uncovered"]), "{report}");
}

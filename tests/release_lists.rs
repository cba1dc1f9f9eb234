//! Release lists (`require.attestations[].via`), in a real docker-registry: one signed attestation covers every
//! image a list pins. The lists are an OCI image index and an artifact holding a JSON list of `name@sha256:…`,
//! pushed with skopeo, their signature and provenance made at test time by PyPI `cryptography`/`securesystemslib`.
//! Judged through `/validate` and `provgate verify`, each way to pass with its denied twins: an image not on the
//! list, a list signed by a key not in the authorities, a signature made for another list, an oversize list, a list
//! of another type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use support::registry::{Auth, DSSE, Desc, DockerRegistry, Layout, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, SIMPLE_SIGNING};
use support::signing::{SIG_ANNOTATION, attach, seed, sign};
use support::webhook::{Webhook, message, review};

const LIST_TYPE: &str = "application/vnd.example.release-list.v1+json";

/// Images `team/{app,web,other}:1`; lists in `releases/app` under the tags below; keys `chains` and `stranger`.
struct World {
    registry: DockerRegistry,
    keys: tempfile::TempDir,
    /// Image and list digests, by name.
    digests: HashMap<&'static str, String>,
}

/// A JSON release list artifact in `layout`: one `application/json` layer holding `entries`.
fn json_list(layout: &Layout, entries: &[String]) -> Desc {
    let blob = layout.blob("application/json", &serde_json::to_vec(entries).unwrap());
    let config = layout.blob(OCI_EMPTY, b"{}");
    layout.json(
        OCI_MANIFEST,
        &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": LIST_TYPE, "config": config.json(),
            "layers": [blob.json()]}),
    )
}

/// Signs `list` with `key` for the digest `signed_hex` (its own, or another list's for a replay), cosign's way.
fn sign_list(layout: &mut Layout, keys: &Path, key: &str, list: &Desc, signed_hex: &str) {
    let signed = sign(keys, key, signed_hex, &seed("chains-kaniko-slsa-v0.2-statement.json"));
    attach(layout, list, "sig", (SIMPLE_SIGNING, signed.payload, json!({SIG_ANNOTATION: signed.signature})));
    attach(layout, list, "att", (DSSE, signed.envelope, json!({SIG_ANNOTATION: ""})));
}

fn world() -> World {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let addr = registry.addr.clone();
    let mut digests = HashMap::new();
    let mut images = Layout::new();
    for name in ["app", "web", "other"] {
        let image = images.image(name, "amd64");
        images.tag(name, &image);
        registry.push(&images, name, &format!("team/{name}"), "1");
        digests.insert(name, image.digest.clone());
    }
    let pinned = |name: &str| format!("{addr}/team/{name}@{}", digests[name]);
    let mut lists = Layout::new();
    let json_v1 = json_list(&lists, &[pinned("app"), pinned("web")]);
    sign_list(&mut lists, keys.path(), "chains", &json_v1, json_v1.hex());
    // The index names the image manifests (the same bytes: skopeo copies them into the list's repository with it).
    let (app, web) = (lists.image("app", "amd64"), lists.image("web", "amd64"));
    assert_eq!((&app.digest, &web.digest), (&digests["app"], &digests["web"]));
    let index_v1 = lists.json(
        OCI_INDEX,
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [app.json(), web.json()]}),
    );
    sign_list(&mut lists, keys.path(), "chains", &index_v1, index_v1.hex());
    let stranger = json_list(&lists, &[pinned("app"), pinned("web"), pinned("other")]);
    sign_list(&mut lists, keys.path(), "stranger", &stranger, stranger.hex());
    let replayed = json_list(&lists, &[pinned("app"), pinned("other")]);
    sign_list(&mut lists, keys.path(), "chains", &replayed, json_v1.hex());
    // 15,000 references, about 1.5 MB: over the default 1 MiB (cache.maxListBytes).
    let many: Vec<String> = (0..15_000u32).map(|i| format!("{addr}/team/app@sha256:{i:064x}")).collect();
    let oversize = json_list(&lists, &many);
    sign_list(&mut lists, keys.path(), "chains", &oversize, oversize.hex());
    for (tag, list) in [
        ("json-v1", &json_v1),
        ("index-v1", &index_v1),
        ("stranger", &stranger),
        ("replayed", &replayed),
        ("oversize", &oversize),
    ] {
        lists.tag(tag, list);
        digests.insert(tag, list.digest.clone());
    }
    for tag in lists.tags() {
        registry.push(&lists, &tag, "releases/app", &tag);
    }
    World { registry, keys, digests }
}

/// A policy for the images of `team/` in namespace `ns`: Chains provenance read via the list `list`.
fn policy(world: &World, ns: &str, list: &str, artifact_type: Option<&str>) -> String {
    let typed = artifact_type.map(|t| format!("\n          artifactType: {t}")).unwrap_or_default();
    format!(
        r#"apiVersion: provgate.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: release-{ns}
spec:
  match:
    images: ["{addr}/team/**"]
    namespaces: ["{ns}"]
  authorities:
    - name: chains
      key: {key}
  require:
    attestations:
      - name: release
        predicateType: slsa
        via:
          list: {addr}/releases/app{list}{typed}
  validations:
    - expression: attestations.release.all(s, s.predicate.builder.id == "https://tekton.dev/chains/v2")
      message: the release was not built by Tekton Chains
"#,
        addr = world.registry.addr,
        key = world.keys.path().join("chains.pub").display()
    )
}

/// One policy per namespace, each naming one list.
fn policies(world: &World) -> Vec<(String, String)> {
    let index = format!("@{}", world.digests["index-v1"]);
    let cases: [(&str, &str, Option<&str>); 6] = [
        ("json", ":json-v1", Some(LIST_TYPE)),
        ("index", &index, None),
        ("stranger", ":stranger", None),
        ("replayed", ":replayed", None),
        ("oversize", ":oversize", None),
        ("wrong-type", ":json-v1", Some("application/vnd.example.sbom-list.v1+json")),
    ];
    cases.iter().map(|(ns, list, t)| (format!("{ns}.yaml"), policy(world, ns, list, *t))).collect()
}

/// A Pod CREATE in `ns` running `images`.
fn pod(ns: &str, images: &[String]) -> Value {
    let mut r = review("pod-create");
    r["request"]["namespace"] = json!(ns);
    r["request"]["object"]["metadata"]["namespace"] = json!(ns);
    let containers: Vec<Value> =
        images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect();
    r["request"]["object"]["spec"] = json!({"containers": containers});
    r
}

#[tokio::test]
async fn a_verified_list_covers_what_it_pins_and_every_twin_is_denied() {
    let world = world();
    let registry = vec![(world.registry.addr.clone(), world.registry.host_config())];
    let policies = policies(&world);
    let files: Vec<(&str, String)> = policies.iter().map(|(f, t)| (f.as_str(), t.clone())).collect();
    let hook = Webhook::trusting(&files, registry, |_| {}).await;
    let image = |name: &str| format!("{}/team/{name}:1", world.registry.addr);
    let all = [image("app"), image("web"), image("other")];

    for ns in ["json", "index"] {
        // On the list: admitted, with the list's attestation as the credit.
        let response = hook.review(&pod(ns, &all[..2])).await;
        assert_eq!(response["allowed"], true, "{ns}: {response}");
        // Not on the list: no credit, whatever else is.
        let response = hook.review(&pod(ns, &all)).await;
        assert_eq!(response["allowed"], false, "{ns}: {response}");
        assert_eq!(response["auditAnnotations"]["reasons"], "not-on-list", "{ns}: {response}");
        let text = message(&response);
        assert!(text.starts_with("spec.containers[2].image"), "only the image not on the list: {text}");
        assert!(text.contains(&format!("does not pin {}/team/other@{}", world.registry.addr, world.digests["other"])));
    }
    let records = hook.audit_records();
    let credit = records[0]["images"][0]["verified"].as_array().unwrap();
    let list = format!("{}/releases/app:json-v1@{}", world.registry.addr, world.digests["json-v1"]);
    assert!(credit.iter().any(|v| v.as_str().unwrap().ends_with(&format!("via release list {list}"))), "{credit:?}");

    // Each twin denies every image of the Pod, with its own reason naming the list.
    let twins = [
        ("stranger", "wrong-key", "signature does not verify with"),
        ("replayed", "digest-mismatch", "signature replayed from another digest"),
        ("oversize", "list-too-large", "larger than the 1048576-byte limit (cache.maxListBytes)"),
        ("wrong-type", "list-invalid", "not application/vnd.example.sbom-list.v1+json"),
    ];
    for (ns, code, words) in twins {
        let response = hook.review(&pod(ns, &all[..1])).await;
        assert_eq!(response["allowed"], false, "{ns}: {response}");
        assert_eq!(response["auditAnnotations"]["reasons"], code, "{ns}: {response}");
        let text = message(&response);
        assert!(text.contains("release list ") && text.contains(words), "{ns}: {text}");
    }
}

#[test]
fn provgate_verify_covers_images_on_the_list_and_no_other() {
    let world = world();
    let verifier = support::verify::Verify::new(&world.registry.addr, &policies(&world));
    let verify = |ns: &str, images: &[&str]| {
        let images = images.iter().map(|i| format!("{}/team/{i}:1", world.registry.addr));
        verifier.run(["--namespace".to_owned(), ns.to_owned()].into_iter().chain(images))
    };
    let (code, report) = verify("json", &["app", "web"]);
    assert_eq!(code, Some(0), "{report}");
    let (code, report) = verify("json", &["app", "other"]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["images"][0]["outcome"], "allowed", "{report}");
    assert_eq!(report["images"][1]["reasons"], json!(["not-on-list"]), "{report}");
    let (code, report) = verify("replayed", &["app"]);
    assert_eq!((code, &report["images"][0]["reasons"]), (Some(1), &json!(["digest-mismatch"])), "{report}");
}

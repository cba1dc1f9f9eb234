//! Signatures stored in another repository (`spec.signatures.repository`, cosign's `COSIGN_REPOSITORY`, Chains'
//! `storage.oci.repository`): images in one real docker-registry, their `.sig`/`.att` signed at test time by PyPI
//! `cryptography`/`securesystemslib` and pushed with skopeo to another repository of the same registry, or to a
//! second registry with TLS and Basic auth read with `signaturePullSecrets`. Judged through `/validate` and
//! `provgate verify`. Each way to pass has its hostile twin: a signature for another digest, the right signature in
//! the image's own repository, a signature repository without its credentials.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use support::registry::{Auth, DSSE, Desc, DockerRegistry, Layout, SIMPLE_SIGNING};
use support::signing::{SIG_ANNOTATION, attach, seed, sign};
use support::webhook::{Webhook, message, reasons, review};

/// Images in `images` (plain HTTP); signatures in `images`' `team/app-signatures` and in `private` (TLS + Basic).
struct World {
    images: DockerRegistry,
    private: DockerRegistry,
    keys: tempfile::TempDir,
    digests: HashMap<&'static str, String>,
}

impl World {
    fn key(&self, name: &str) -> std::path::PathBuf {
        self.keys.path().join(format!("{name}.pub"))
    }
}

fn push_all(registry: &DockerRegistry, layout: &Layout, repo: &str) {
    for tag in layout.tags() {
        registry.push(layout, &tag, repo, &tag);
    }
}

/// Signs `image` with `key` (signature and SLSA provenance, subject `subject_hex`) into `layout`, cosign's way.
fn sign_into(layout: &mut Layout, keys: &Path, key: &str, image: &Desc, subject_hex: &str) {
    let signed = sign(keys, key, subject_hex, &seed("chains-kaniko-slsa-v0.2-statement.json"));
    attach(layout, image, "sig", (SIMPLE_SIGNING, signed.payload, json!({SIG_ANNOTATION: signed.signature})));
    attach(layout, image, "att", (DSSE, signed.envelope, json!({SIG_ANNOTATION: ""})));
}

fn world() -> World {
    let images = DockerRegistry::start(Auth::None);
    let private = DockerRegistry::start(Auth::Basic(vec![("alice".into(), "wonderland".into())]));
    let keys = tempfile::tempdir().unwrap();
    let (mut app, mut app_sigs, mut two, mut two_sigs) = (Layout::new(), Layout::new(), Layout::new(), Layout::new());
    let mut digests = HashMap::new();
    let mut image = |layout: &mut Layout, tag: &'static str| {
        let desc = layout.image(tag, "amd64");
        layout.tag(tag, &desc);
        digests.insert(tag, desc.digest.clone());
        desc
    };
    let signed = image(&mut app, "signed");
    let own = image(&mut app, "own");
    let replayed = image(&mut app, "replayed");
    let both = image(&mut two, "both");
    // Where the policy says: signed for its own digest.
    sign_into(&mut app_sigs, keys.path(), "chains", &signed, signed.hex());
    // Properly signed, but beside the image, where the policy does not look.
    sign_into(&mut app, keys.path(), "chains", &own, own.hex());
    // In the signature repository under this image's tags, but signed for another digest.
    sign_into(&mut app_sigs, keys.path(), "chains", &replayed, signed.hex());
    // One image, two policies, two signature repositories in two registries, two keys.
    sign_into(&mut app_sigs, keys.path(), "chains", &both, both.hex());
    sign_into(&mut two_sigs, keys.path(), "mirror", &both, both.hex());
    push_all(&images, &app, "team/app");
    push_all(&images, &app_sigs, "team/app-signatures");
    push_all(&images, &two, "team/two");
    push_all(&private, &two_sigs, "mirror/two");
    World { images, private, keys, digests }
}

fn policy(name: &str, images: &str, key: &Path, signatures: &str) -> String {
    format!(
        r#"apiVersion: provgate.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: {name}
spec:
  match:
    images: ["{images}"]
  authorities:
    - name: {name}
      key: {key}
  require:
    signature: true
    attestations:
      - name: provenance
        predicateType: slsa
  signatures:
{signatures}
"#,
        key = key.display()
    )
}

fn policies(world: &World, secret: &str) -> Vec<(&'static str, String)> {
    let (a, b) = (&world.images.addr, &world.private.addr);
    let in_a = format!("    repository: {a}/team/app-signatures");
    let in_b = format!("    repository: {b}/mirror/two\n    signaturePullSecrets: [{secret}]");
    vec![
        ("app.yaml", policy("chains", &format!("{a}/team/app:*"), &world.key("chains"), &in_a)),
        ("two-a.yaml", policy("two-chains", &format!("{a}/team/two:*"), &world.key("chains"), &in_a)),
        ("two-b.yaml", policy("two-mirror", &format!("{a}/team/two:*"), &world.key("mirror"), &in_b)),
    ]
}

fn pod(image: &str) -> Value {
    let mut r = review("pod-create");
    r["request"]["object"]["spec"] = json!({"containers": [{"name": "app", "image": image}]});
    r
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn get_secret(
    State(secrets): State<Arc<Vec<Value>>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let meta = |s: &Value, k: &str| s["metadata"][k].as_str().unwrap_or_default().to_owned();
    match secrets.iter().find(|s| meta(s, "namespace") == ns && meta(s, "name") == name) {
        Some(secret) => axum::Json(secret.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("secrets \"{name}\" not found"), "reason": "NotFound", "code": 404})),
        )
            .into_response(),
    }
}

/// A loopback API server serving `secrets`; its client's own namespace is `provgate-system`.
async fn api(secrets: Vec<Value>) -> kube::Client {
    let app = axum::Router::new()
        .route("/api/v1/namespaces/{ns}/secrets/{name}", axum::routing::get(get_secret))
        .with_state(Arc::new(secrets));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_namespace = "provgate-system".into();
    kube::Client::try_from(config).unwrap()
}

fn pull_secret(ns: &str, name: &str, host: &str, password: &str) -> Value {
    let config = json!({"auths": {host: {"auth": b64(&format!("alice:{password}"))}}}).to_string();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
           "metadata": {"name": name, "namespace": ns, "resourceVersion": "1", "uid": format!("{ns}-{name}")},
           "data": {".dockerconfigjson": b64(&config)}})
}

async fn hook(world: &World, secrets: Vec<Value>) -> Webhook {
    hook_naming(world, "mirror-pull", secrets).await
}

/// The webhook with the policies, the second repository read with the Secret named `secret`.
async fn hook_naming(world: &World, secret: &str, secrets: Vec<Value>) -> Webhook {
    let (a, b) = (world.images.addr.clone(), world.private.addr.clone());
    let (ca, cb) = (world.images.host_config(), world.private.host_config());
    Webhook::start_with(&policies(world, secret), Some(api(secrets).await), move |c| {
        c.registries.hosts.insert(a, ca);
        c.registries.hosts.insert(b, cb);
    })
    .await
}

#[tokio::test]
async fn signatures_are_read_from_the_policy_repository_and_only_for_the_image_digest() {
    let world = world();
    let hook = hook(&world, vec![]).await;
    let image = |tag: &str| format!("{}/team/app:{tag}", world.images.addr);

    let signed = hook.review(&pod(&image("signed"))).await;
    assert_eq!(signed["allowed"], true, "{signed}");
    let record = hook.audit_records().pop().unwrap();
    assert_eq!(record["images"][0]["digest"], world.digests["signed"]);
    assert_eq!(record["images"][0]["verified"].as_array().unwrap().len(), 2, "{record}");

    // The right signature, beside the image: provgate looks where the policy says, as policy-controller does.
    let own = hook.review(&pod(&image("own"))).await;
    assert_eq!(own["allowed"], false, "{own}");
    assert_eq!(reasons(&own).split(',').next(), Some("unsigned"), "{own}");
    let looked = format!("looked in {}/team/app-signatures", world.images.addr);
    assert!(message(&own).contains(&looked), "{own}");

    // A valid signature and attestation in the signature repository, but for another digest.
    let replayed = hook.review(&pod(&image("replayed"))).await;
    assert_eq!(replayed["allowed"], false, "{replayed}");
    assert_eq!(reasons(&replayed), "digest-mismatch,subject-mismatch", "{replayed}");
}

#[tokio::test]
async fn two_policies_read_two_repositories_each_with_its_own_credentials() {
    let world = world();
    let image = format!("{}/team/two:both", world.images.addr);
    let secret = |password| pull_secret("provgate-system", "mirror-pull", &world.private.addr, password);

    let hook_ok = hook(&world, vec![secret("wonderland")]).await;
    let both = hook_ok.review(&pod(&image)).await;
    assert_eq!(both["allowed"], true, "{both}");
    let verified = hook_ok.audit_records().pop().unwrap()["images"][0]["verified"].clone();
    let by = |who: &str| verified.as_array().unwrap().iter().any(|v| v.as_str().unwrap().starts_with(who));
    assert!(by("signature by two-chains") && by("signature by two-mirror"), "{verified}");

    // A Secret in another namespace is read when named with it (a Role there must grant provgate `get`).
    let elsewhere = pull_secret("team-a", "mirror-pull", &world.private.addr, "wonderland");
    let hook_ns = hook_naming(&world, "team-a/mirror-pull", vec![elsewhere]).await;
    assert_eq!(hook_ns.review(&pod(&image)).await["allowed"], true);

    // The same policies without the Secret, with a wrong password, or with the Secret in another namespace than
    // the one named (a bare name is provgate's own): the second repository refuses.
    for secrets in
        [vec![], vec![secret("guessed")], vec![pull_secret("team-a", "mirror-pull", &world.private.addr, "wonderland")]]
    {
        let hook = hook(&world, secrets).await;
        let denied = hook.review(&pod(&image)).await;
        assert_eq!(denied["allowed"], false, "{denied}");
        assert_eq!(reasons(&denied), "registry-unauthorized", "{denied}");
        assert!(message(&denied).contains(&world.private.addr), "{denied}");
    }
}

#[test]
fn provgate_verify_reads_the_signature_repository() {
    let world = world();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("provgate.yaml");
    std::fs::write(&config, format!("registries:\n  hosts:\n    \"{}\": {{insecure: true}}\n", world.images.addr))
        .unwrap();
    let policy_file = dir.path().join("app.yaml");
    std::fs::write(&policy_file, &policies(&world, "mirror-pull")[0].1).unwrap();
    let verify = |tag: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_provgate"))
            .args(["verify", "--output", "json", "--config"])
            .arg(&config)
            .arg("--policy")
            .arg(&policy_file)
            .arg(format!("{}/team/app:{tag}", world.images.addr))
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), report)
    };
    let (code, report) = verify("signed");
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["images"][0]["digest"], world.digests["signed"]);
    let (code, report) = verify("own");
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["images"][0]["reasons"][0], "unsigned", "{report}");
    let (code, report) = verify("replayed");
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["images"][0]["reasons"], json!(["digest-mismatch", "subject-mismatch"]), "{report}");
}

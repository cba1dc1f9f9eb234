//! Registry credentials from Kubernetes: the Pod's imagePullSecrets, its ServiceAccount's, and a Secret named in the
//! config, read through a loopback API server answering real Kubernetes JSON, used against a real docker-registry
//! with TLS and Basic auth. Two namespaces with different secrets for one registry never share credentials.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use support::registry::{Auth, DSSE, DockerRegistry, Layout, SIMPLE_SIGNING};
use support::signing::{SIG_ANNOTATION, attach, seed, sign};
use support::webhook::{Webhook, review};

type Objects = Arc<HashMap<(String, String, String), Value>>;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn pull_secret(ns: &str, name: &str, host: &str, user: &str, pass: &str) -> Value {
    let config = json!({"auths": {host: {"auth": b64(&format!("{user}:{pass}"))}}}).to_string();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
           "metadata": {"name": name, "namespace": ns, "resourceVersion": "1", "uid": format!("{ns}-{name}")},
           "data": {".dockerconfigjson": b64(&config)}})
}

fn service_account(ns: &str, name: &str, secrets: &[&str]) -> Value {
    let refs: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"}, "imagePullSecrets": refs})
}

async fn get(State(objects): State<Objects>, Path((ns, kind, name)): Path<(String, String, String)>) -> Response {
    match objects.get(&(ns, kind.clone(), name.clone())) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound",
                "details": {"name": name, "kind": kind}, "code": 404})),
        )
            .into_response(),
    }
}

/// A loopback API server serving `GET /api/v1/namespaces/{ns}/{secrets|serviceaccounts}/{name}`.
async fn api(objects: Vec<Value>) -> kube::Client {
    let mut map = HashMap::new();
    for o in objects {
        let kind = match o["kind"].as_str().unwrap() {
            "Secret" => "secrets",
            _ => "serviceaccounts",
        };
        let meta = &o["metadata"];
        map.insert((meta["namespace"].as_str().unwrap().into(), kind.into(), meta["name"].as_str().unwrap().into()), o);
    }
    let app = axum::Router::new()
        .route("/api/v1/namespaces/{ns}/{kind}/{name}", axum::routing::get(get))
        .with_state(Arc::new(map));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

/// A Basic-auth registry holding a signed image; returns it with the key that signed it.
fn signed_registry() -> (DockerRegistry, tempfile::TempDir) {
    let registry = DockerRegistry::start(Auth::Basic(vec![("alice".into(), "wonderland".into())]));
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let image = layout.image("private", "amd64");
    layout.tag("1", &image);
    let signed = sign(keys.path(), "chains", image.hex(), &seed("chains-kaniko-slsa-v0.2-statement.json"));
    attach(&mut layout, &image, "sig", (SIMPLE_SIGNING, signed.payload, json!({SIG_ANNOTATION: signed.signature})));
    attach(&mut layout, &image, "att", (DSSE, signed.envelope, json!({SIG_ANNOTATION: ""})));
    for tag in ["1".to_owned(), format!("sha256-{}.sig", image.hex()), format!("sha256-{}.att", image.hex())] {
        registry.push(&layout, &tag, "team/private", &tag);
    }
    (registry, keys)
}

fn policy(key: &std::path::Path) -> String {
    format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: signed}}\nspec:\n  match: {{images: [\"**\"]}}\n  authorities: [{{name: chains, key: {}}}]\n  require: {{signature: true}}\n",
        key.display()
    )
}

fn pod(ns: &str, image: &str, pull_secrets: &[&str]) -> Value {
    let mut r = review("pod-create");
    let refs: Vec<Value> = pull_secrets.iter().map(|s| json!({"name": s})).collect();
    r["request"]["namespace"] = json!(ns);
    r["request"]["object"]["spec"] = json!({"containers": [{"name": "app", "image": image}], "imagePullSecrets": refs});
    r
}

#[tokio::test]
async fn pod_and_service_account_pull_secrets_are_used_per_namespace() {
    let (registry, keys) = signed_registry();
    let host = registry.addr.clone();
    let client = api(vec![
        pull_secret("team-a", "pull", &host, "alice", "wonderland"),
        pull_secret("team-b", "pull", &host, "alice", "guessed"),
        pull_secret("team-c", "sa-pull", &host, "alice", "wonderland"),
        service_account("team-c", "default", &["sa-pull"]),
        service_account("team-a", "default", &[]),
    ])
    .await;
    let config = registry.host_config();
    let h = host.clone();
    let hook = Webhook::start_with(&[("p.yaml", policy(&keys.path().join("chains.pub")))], Some(client), move |c| {
        c.registries.hosts.insert(h, config);
        c.credentials.image_pull_secrets = true;
    })
    .await;
    let image = format!("{host}/team/private:1");

    let allowed = hook.review(&pod("team-a", &image, &["pull"])).await;
    assert_eq!(allowed["allowed"], true, "{allowed}");
    let wrong = hook.review(&pod("team-b", &image, &["pull"])).await;
    assert_eq!(wrong["allowed"], false, "team-b's password is wrong: {wrong}");
    assert_eq!(wrong["auditAnnotations"]["reasons"], "registry-unauthorized");
    assert!(wrong["status"]["message"].as_str().unwrap().contains("provide pull credentials"), "{wrong}");
    let again = hook.review(&pod("team-a", &image, &["pull"])).await;
    assert_eq!(again["allowed"], true, "team-b's failure does not leak into team-a");
    let via_account = hook.review(&pod("team-c", &image, &[])).await;
    assert_eq!(via_account["allowed"], true, "the default ServiceAccount's pull secret: {via_account}");
    let none = hook.review(&pod("team-d", &image, &["missing"])).await;
    assert_eq!(none["allowed"], false, "no readable pull secret: {none}");
    assert_eq!(none["auditAnnotations"]["reasons"], "registry-unauthorized");
}

#[tokio::test]
async fn a_pull_secret_named_in_the_config_is_used_and_pod_secrets_only_when_enabled() {
    let (registry, keys) = signed_registry();
    let host = registry.addr.clone();
    let client = api(vec![
        pull_secret("provgate-system", "registry", &host, "alice", "wonderland"),
        pull_secret("team-a", "pull", &host, "alice", "wonderland"),
    ])
    .await;
    let image = format!("{host}/team/private:1");
    let config = registry.host_config();
    let h = host.clone();
    let hook =
        Webhook::start_with(&[("p.yaml", policy(&keys.path().join("chains.pub")))], Some(client.clone()), move |c| {
            c.registries.hosts.insert(h, config);
            c.credentials.secrets = vec!["provgate-system/registry".into()];
        })
        .await;
    assert_eq!(hook.review(&pod("anywhere", &image, &[])).await["allowed"], true);

    let config = registry.host_config();
    let off = Webhook::start_with(&[("p.yaml", policy(&keys.path().join("chains.pub")))], Some(client), move |c| {
        c.registries.hosts.insert(host, config);
    })
    .await;
    let response = off.review(&pod("team-a", &image, &["pull"])).await;
    assert_eq!(response["allowed"], false, "imagePullSecrets are not read unless enabled: {response}");
}

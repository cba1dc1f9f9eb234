//! End to end through a real Kubernetes API server: etcd and kube-apiserver (1.20, built from Debian's source
//! package by scripts/deps/30-kube.sh) on loopback call the real provgate webhook through a
//! ValidatingWebhookConfiguration, for Pods and Deployments created with kube-rs. Images are signed at test time
//! and served by a real docker-registry. What the API returns to the client is what is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::kube::Cluster;
use support::registry::{Auth, DockerRegistry, Layout, SIMPLE_SIGNING, free_port};
use support::signing::{SIG_ANNOTATION, attach, seed, sign};
use support::webhook::{ClientCa, Webhook, https_client};

const WEBHOOK: &str = "images.provgate.dev";
/// Namespaces with this label are not sent to the webhook (1.20 does not set `kubernetes.io/metadata.name`).
const EXEMPT: &str = "provgate.dev/exempt";
const NS: &str = "team-a";

/// A docker-registry holding `team/app:signed` (signed by the `chains` key) and `team/app:unsigned`.
struct Images {
    registry: DockerRegistry,
    keys: tempfile::TempDir,
    signed_digest: String,
}

impl Images {
    fn start() -> Self {
        let registry = DockerRegistry::start(Auth::None);
        let keys = tempfile::tempdir().unwrap();
        let mut layout = Layout::new();
        let signed = layout.image("signed", "amd64");
        layout.tag("signed", &signed);
        let unsigned = layout.image("unsigned", "amd64");
        layout.tag("unsigned", &unsigned);
        let s = sign(keys.path(), "chains", signed.hex(), &seed("chains-kaniko-slsa-v0.2-statement.json"));
        attach(&mut layout, &signed, "sig", (SIMPLE_SIGNING, s.payload, json!({SIG_ANNOTATION: s.signature})));
        for tag in ["signed".to_owned(), "unsigned".to_owned(), format!("sha256-{}.sig", signed.hex())] {
            registry.push(&layout, &tag, "team/app", &tag);
        }
        Self { registry, keys, signed_digest: signed.digest.clone() }
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/team/app:{tag}", self.registry.addr)
    }

    async fn webhook(&self, key: &str, kube: Option<kube::Client>) -> Webhook {
        self.webhook_with(key, kube, |_| {}).await
    }

    /// [`Images::webhook`] with the config `tweak` leaves.
    async fn webhook_with(
        &self,
        key: &str,
        kube: Option<kube::Client>,
        tweak: impl FnOnce(&mut provgate::config::Config),
    ) -> Webhook {
        let policy = format!(
            "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: signed}}\nspec:\n  match: {{images: [\"**\"]}}\n  authorities: [{{name: chains, key: \"{key}\"}}]\n  require: {{signature: true}}\n"
        );
        let (host, config) = (self.registry.addr.clone(), self.registry.host_config());
        Webhook::start_with(&[("signed.yaml", policy)], kube, move |c| {
            c.registries.hosts.insert(host, config);
            tweak(c);
        })
        .await
    }
}

fn object<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

fn pod(name: &str, image: &str) -> Pod {
    object(json!({"metadata": {"name": name}, "spec": {
        "automountServiceAccountToken": false,
        "containers": [{"name": "app", "image": image}]}}))
}

fn deployment(name: &str, image: &str) -> Deployment {
    object(json!({"metadata": {"name": name}, "spec": {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": image}]}}}}))
}

/// The webhook configuration sending pods and workloads (outside exempt namespaces) to `hook`.
fn webhook_configuration(hook: &Webhook) -> ValidatingWebhookConfiguration {
    use base64::Engine as _;
    let ops = ["CREATE", "UPDATE"];
    object(json!({
        "metadata": {"name": WEBHOOK},
        "webhooks": [{
            "name": WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "clientConfig": {
                "url": format!("https://127.0.0.1:{}/validate", hook.running.https.port()),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&hook.ca_pem),
            },
            "rules": [
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ops,
                 "resources": ["pods", "pods/ephemeralcontainers"], "scope": "Namespaced"},
                {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ops,
                 "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"], "scope": "Namespaced"},
                {"apiGroups": ["batch"], "apiVersions": ["*"], "operations": ops,
                 "resources": ["jobs", "cronjobs"], "scope": "Namespaced"},
            ],
            "namespaceSelector": {"matchExpressions": [{"key": EXEMPT, "operator": "DoesNotExist"}]},
        }]
    }))
}

/// The API's error for a request that must fail.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Creates a namespace (with the exemption label when `exempt`) and its `default` ServiceAccount, which the
/// ServiceAccount admission plugin requires and no controller-manager creates here.
async fn namespace(client: &kube::Client, name: &str, exempt: bool) {
    let labels = if exempt { json!({EXEMPT: "true"}) } else { json!({}) };
    let ns: Namespace = object(json!({"metadata": {"name": name, "labels": labels}}));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(name).await.unwrap().is_some() {
        namespaces.patch(name, &PatchParams::default(), &Patch::Merge(&ns)).await.unwrap();
    } else {
        namespaces.create(&PostParams::default(), &ns).await.unwrap();
    }
    let sa: ServiceAccount = object(json!({"metadata": {"name": "default"}}));
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    if accounts.get_opt("default").await.unwrap().is_none() {
        accounts.create(&PostParams::default(), &sa).await.unwrap();
    }
}

/// Points the webhook configuration at `hook` and waits (at most 30 s) until the apiserver really calls it.
async fn register(client: &kube::Client, hook: &Webhook, image: &str) {
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config = webhook_configuration(hook);
    if configs.get_opt(WEBHOOK).await.unwrap().is_some() {
        configs.patch(WEBHOOK, &PatchParams::default(), &Patch::Merge(&config)).await.unwrap();
    } else {
        configs.create(&PostParams::default(), &config).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let start = Instant::now();
    while hook.audit_records().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "the apiserver did not call the webhook in 30 s");
        // Admitted without the webhook until the apiserver has seen the configuration; never stored (dry run).
        let _ = pods.create(&dry, &pod("probe", image)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_denied(status: &Status, needles: &[&str]) {
    assert_eq!(status.code, 403, "{status:?}");
    let prefix = format!("admission webhook \"{WEBHOOK}\" denied the request: ");
    assert!(status.message.starts_with(&prefix), "{}", status.message);
    for needle in needles {
        assert!(status.message.contains(needle), "{:?} should contain {needle:?}", status.message);
    }
}

/// One cluster at a time: each test starts its own etcd and kube-apiserver.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn the_apiserver_admits_only_signed_images_through_the_webhook() {
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let cluster = Cluster::start().await;
    let client = cluster.client();
    namespace(&client, NS, false).await;
    namespace(&client, "kube-system", true).await;
    let hook = images.webhook(&images.keys.path().join("chains.pub").display().to_string(), None).await;
    register(&client, &hook, &images.image("signed")).await;
    let probe = hook.audit_records().pop().unwrap();
    assert_eq!((probe["kind"].as_str(), probe["dryRun"].as_bool()), (Some("Pod"), Some(true)), "{probe}");

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let (signed, unsigned) = (images.image("signed"), images.image("unsigned"));

    // A signed image: stored, after the webhook verified the digest the tag points at.
    let created = pods.create(&PostParams::default(), &pod("signed", &signed)).await.unwrap();
    assert_eq!(created.spec.unwrap().containers[0].image.as_deref(), Some(signed.as_str()));
    let record = hook.audit_records().pop().unwrap();
    assert_eq!((record["name"].as_str(), record["decision"].as_str()), (Some("signed"), Some("allow")), "{record}");
    assert_eq!(record["images"][0]["digest"], images.signed_digest.as_str(), "{record}");
    assert!(pods.get_opt("signed").await.unwrap().is_some());

    // An unsigned image: the apiserver relays provgate's denial with its code, and stores nothing.
    let status = api_error(pods.create(&PostParams::default(), &pod("unsigned", &unsigned)).await);
    assert_denied(&status, &["spec.containers[0].image", &unsigned, "policy \"signed\"", "no signatures found"]);
    assert!(pods.get_opt("unsigned").await.unwrap().is_none(), "a denied Pod is not stored");

    // UPDATE is judged too: the signed Pod's image swapped for the unsigned one.
    let swap = json!({"spec": {"containers": [{"name": "app", "image": unsigned}]}});
    let status = api_error(pods.patch("signed", &PatchParams::default(), &Patch::Strategic(&swap)).await);
    assert_denied(&status, &["spec.containers[0].image", "no signatures found"]);
    let kept = pods.get("signed").await.unwrap();
    assert_eq!(kept.spec.unwrap().containers[0].image.as_deref(), Some(signed.as_str()), "the update was refused");

    // A Deployment: judged by its Pod template, the denial names the template's field path.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let status = api_error(deployments.create(&PostParams::default(), &deployment("web", &unsigned)).await);
    assert_denied(&status, &["spec.template.spec.containers[0].image", "no signatures found"]);
    assert!(deployments.get_opt("web").await.unwrap().is_none());
    deployments.create(&PostParams::default(), &deployment("web", &signed)).await.unwrap();

    // Dry runs (dryRun=All) are judged the same, and nothing is stored either way.
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let status = api_error(pods.create(&dry, &pod("dry-unsigned", &unsigned)).await);
    assert_denied(&status, &["spec.containers[0].image", "no signatures found"]);
    let record = hook.audit_records().pop().unwrap();
    assert_eq!((record["dryRun"].as_bool(), record["decision"].as_str()), (Some(true), Some("deny")), "{record}");
    pods.create(&dry, &pod("dry-signed", &signed)).await.unwrap();
    assert!(pods.get_opt("dry-signed").await.unwrap().is_none(), "a dry run stores nothing");

    // The namespaceSelector leaves exempt namespaces alone: the webhook is not even asked.
    let calls = hook.audit_records().len();
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    system.create(&PostParams::default(), &pod("exempt", &unsigned)).await.unwrap();
    assert_eq!(hook.audit_records().len(), calls, "kube-system is not sent to the webhook");

    let Webhook { running, .. } = hook;
    running.shutdown().await;

    // Verification keys held in a Kubernetes Secret, read by the webhook through this same apiserver. Leaves the
    // configuration pointing at that webhook, stopped.
    let port = secret_key_cases(&client, &images, &signed).await;

    // With the webhook gone, failurePolicy: Fail refuses the request: nothing is admitted by accident.
    wait_closed(port).await;
    let status = api_error(pods.create(&PostParams::default(), &pod("webhook-down", &signed)).await);
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"), "{status:?}");
    assert!(status.message.contains(&format!("failed calling webhook \"{WEBHOOK}\"")), "{}", status.message);
    assert!(pods.get_opt("webhook-down").await.unwrap().is_none(), "nothing admitted while the webhook is down");
}

/// Waits (at most 15 s) until nothing accepts connections on the loopback `port`.
async fn wait_closed(port: u16) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        assert!(start.elapsed() < Duration::from_secs(15), "the webhook still listens on {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `k8s://provgate-system/chains-public-key`: a signed image is admitted while the Secret holds the key; once the
/// Secret is deleted, the denial names it. Returns the port of that webhook, stopped.
async fn secret_key_cases(client: &kube::Client, images: &Images, signed: &str) -> u16 {
    namespace(client, "provgate-system", true).await;
    let pem = std::fs::read_to_string(images.keys.path().join("chains.pub")).unwrap();
    let secret: Secret = object(json!({"metadata": {"name": "chains-public-key"}, "stringData": {"cosign.pub": pem}}));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "provgate-system");
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let hook = images.webhook("k8s://provgate-system/chains-public-key", Some(client.clone())).await;
    register(client, &hook, signed).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let created = pods.create(&PostParams::default(), &pod("secret-key", signed)).await;
    assert!(created.is_ok(), "the key from the Secret verifies the signature: {created:?}");

    secrets.delete("chains-public-key", &DeleteParams::default()).await.unwrap();
    // The webhook watches the Secret; the deletion reaches it within moments.
    let start = Instant::now();
    let status = loop {
        match pods.create(&PostParams { dry_run: true, ..PostParams::default() }, &pod("secret-gone", signed)).await {
            Err(kube::Error::Api(status)) => break status,
            other => {
                assert!(start.elapsed() < Duration::from_secs(30), "still admitted 30 s after the delete: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_denied(&status, &["Secret provgate-system/chains-public-key not found"]);
    let port = hook.running.https.port();
    let Webhook { running, .. } = hook;
    running.shutdown().await;
    port
}

/// The API server's admission configuration: the ValidatingAdmissionWebhook plugin presents `cert` and `key` to
/// the webhook at `host` (`host:port` as in the webhook's URL), through a kubeconfig user of that name.
fn admission_config(dir: &std::path::Path, host: &str, cert: &str, key: &str) -> std::path::PathBuf {
    use base64::Engine as _;
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let kubeconfig = dir.join("webhook-kubeconfig.yaml");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nusers:\n  - name: \"{host}\"\n    user:\n      client-certificate-data: {}\n      client-key-data: {}\n",
            b64(cert),
            b64(key)
        ),
    )
    .unwrap();
    let config = dir.join("admission-configuration.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n  - name: ValidatingAdmissionWebhook\n    configuration:\n      apiVersion: apiserver.config.k8s.io/v1\n      kind: WebhookAdmissionConfiguration\n      kubeConfigFile: {}\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn with_a_client_ca_only_the_apiserver_presenting_its_certificate_is_served() {
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let dir = tempfile::tempdir().unwrap();
    let client_ca = ClientCa::new("apiserver-to-webhook client CA");
    let ca_file = dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, &client_ca.ca_pem).unwrap();
    let (cert, key) = client_ca.issue("kube-apiserver");
    // The apiserver has a client certificate for this port only.
    let port = free_port();
    let config = admission_config(dir.path(), &format!("127.0.0.1:{port}"), &cert, &key);
    let cluster = Cluster::start_with_admission_config(Some(&config)).await;
    let client = cluster.client();
    namespace(&client, NS, false).await;
    let key_path = images.keys.path().join("chains.pub").display().to_string();
    let mtls = |port: u16| {
        let ca_file = ca_file.clone();
        move |c: &mut provgate::config::Config| {
            c.listen = format!("127.0.0.1:{port}").parse().unwrap();
            c.tls.client_ca_file = Some(ca_file);
        }
    };
    let hook = images.webhook_with(&key_path, None, mtls(port)).await;
    register(&client, &hook, &images.image("signed")).await;

    // Through the apiserver, authenticated by its certificate: judged as usual.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let (signed, unsigned) = (images.image("signed"), images.image("unsigned"));
    pods.create(&PostParams::default(), &pod("signed", &signed)).await.unwrap();
    let record = hook.audit_records().pop().unwrap();
    assert_eq!((record["name"].as_str(), record["decision"].as_str()), (Some("signed"), Some("allow")), "{record}");
    let status = api_error(pods.create(&PostParams::default(), &pod("unsigned", &unsigned)).await);
    assert_denied(&status, &["spec.containers[0].image", "no signatures found"]);

    // Anyone else reaching the Service without a certificate gets no answer.
    let review = serde_json::to_vec(&support::webhook::review("pod-create")).unwrap();
    let anonymous = https_client(hook.ca_pem.as_bytes());
    assert!(hook.post_raw_with(&anonymous, review).await.is_err(), "a client without a certificate is refused");

    // A webhook the apiserver has no certificate for refuses it too, so failurePolicy: Fail refuses the Pod.
    let other_port = free_port();
    let other = images.webhook_with(&key_path, None, mtls(other_port)).await;
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    configs.patch(WEBHOOK, &PatchParams::default(), &Patch::Merge(&webhook_configuration(&other))).await.unwrap();
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let start = Instant::now();
    let status = loop {
        match pods.create(&dry, &pod("no-client-cert", &signed)).await {
            Err(kube::Error::Api(status)) if status.message.contains(&other_port.to_string()) => break status,
            other => {
                assert!(start.elapsed() < Duration::from_secs(30), "still served after 30 s: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"), "{status:?}");
    assert!(status.message.contains(&format!("failed calling webhook \"{WEBHOOK}\"")), "{}", status.message);
    assert!(other.audit_records().is_empty(), "nothing reached the webhook without a client certificate");
    assert!(pods.get_opt("no-client-cert").await.unwrap().is_none());
}

/// The mutating configuration sending what [`webhook_configuration`] sends (same rules and namespaceSelector) to
/// `hook`'s `/mutate`, reinvoked when a later mutating webhook changes the object.
fn mutating_configuration(hook: &Webhook) -> k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration {
    let mut config = serde_json::to_value(webhook_configuration(hook)).unwrap();
    let webhook = &mut config["webhooks"][0];
    webhook["name"] = json!(PIN_WEBHOOK);
    webhook["reinvocationPolicy"] = json!("IfNeeded");
    webhook["clientConfig"]["url"] = json!(format!("https://127.0.0.1:{}/mutate", hook.running.https.port()));
    config["metadata"]["name"] = json!(PIN_WEBHOOK);
    config["kind"] = json!("MutatingWebhookConfiguration");
    object(config)
}

const PIN_WEBHOOK: &str = "pin.provgate.dev";

/// A kube-apiserver built with Go 1.18 or later and its vendored github.com/modern-go/reflect2 v1.0.1 dies the
/// first time it records a mutating webhook's JSONPatch (json-iterator's map iteration faults:
/// modern-go/reflect2#26, fixed in v1.0.2). Says so, rather than a bare "connection refused".
fn assert_apiserver_survives_patches(cluster: &Cluster) {
    let log = cluster.log();
    assert!(
        !log.contains("reflect2.(*UnsafeMapType).UnsafeIterate"),
        "this kube-apiserver crashed recording the webhook's JSONPatch (its vendored modern-go/reflect2 v1.0.1 \
         faults under Go >= 1.18; modern-go/reflect2#26). Rebuild it with reflect2 v1.0.2 (Debian's \
         golang-github-modern-go-reflect2-dev) over vendor/github.com/modern-go/reflect2. Log:\n{}",
        log.lines().skip_while(|l| !l.starts_with("fatal error")).take(40).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn with_the_mutating_webhook_a_pod_created_by_tag_is_stored_pinned_to_the_verified_digest() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let cluster = Cluster::start().await;
    let client = cluster.client();
    namespace(&client, NS, false).await;
    let hook = images.webhook(&images.keys.path().join("chains.pub").display().to_string(), None).await;
    register(&client, &hook, &images.image("signed")).await;
    let (signed, unsigned) = (images.image("signed"), images.image("unsigned"));
    let pinned = format!("{signed}@{}", images.signed_digest);

    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configs.create(&PostParams::default(), &mutating_configuration(&hook)).await.unwrap();
    // Wait (at most 30 s) until the apiserver calls /mutate: a dry run comes back pinned.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let start = Instant::now();
    loop {
        let probe = pods.create(&dry, &pod("probe", &signed)).await;
        let image = probe.as_ref().ok().and_then(|p| p.spec.as_ref()?.containers[0].image.clone());
        if image.as_deref() == Some(pinned.as_str()) {
            break;
        }
        assert_apiserver_survives_patches(&cluster);
        assert!(start.elapsed() < Duration::from_secs(30), "the apiserver did not call /mutate in 30 s: {probe:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Created by tag, stored by digest; validation judged the pinned Pod.
    let created = pods.create(&PostParams::default(), &pod("pinned", &signed)).await.unwrap();
    assert_eq!(created.spec.unwrap().containers[0].image.as_deref(), Some(pinned.as_str()));
    let stored = pods.get("pinned").await.unwrap();
    assert_eq!(stored.spec.unwrap().containers[0].image.as_deref(), Some(pinned.as_str()));
    let record = hook.audit_records().pop().unwrap();
    assert_eq!((record["name"].as_str(), record["decision"].as_str()), (Some("pinned"), Some("allow")), "{record}");
    assert_eq!(record["images"][0]["ref"].as_str(), Some(pinned.as_str()), "validation saw the pinned image");

    // A Deployment's template is pinned too.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let web = deployments.create(&PostParams::default(), &deployment("web", &signed)).await.unwrap();
    let template = web.spec.unwrap().template.spec.unwrap();
    assert_eq!(template.containers[0].image.as_deref(), Some(pinned.as_str()));

    // The unsigned twin is not pinned: validation denies it as written.
    let status = api_error(pods.create(&PostParams::default(), &pod("unsigned", &unsigned)).await);
    assert_denied(&status, &["spec.containers[0].image", &format!("{unsigned:?}"), "no signatures found"]);
    assert!(pods.get_opt("unsigned").await.unwrap().is_none());
}

/// The `ImagePolicy` API (cluster-scoped) of the test cluster.
fn image_policies(client: &kube::Client) -> Api<kube::api::DynamicObject> {
    Api::all_with(client.clone(), &kube::api::ApiResource::erase::<provgate::policy::ImagePolicy>(&()))
}

fn image_policy(name: &str, spec: Value) -> kube::api::DynamicObject {
    object(
        json!({"apiVersion": "provgate.dev/v1alpha1", "kind": "ImagePolicy", "metadata": {"name": name}, "spec": spec}),
    )
}

/// Waits (at most 30 s) until `name`'s `Ready` condition describes `generation`, and returns the status.
async fn ready_condition(client: &kube::Client, name: &str, generation: i64) -> Value {
    let start = Instant::now();
    loop {
        let got = image_policies(client).get(name).await.unwrap();
        let status = got.data["status"].clone();
        if status["observedGeneration"] == generation {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{name}: no status for generation {generation}: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Dry-runs a Pod with `image` until the API's answer satisfies `done` (at most 30 s); returns the last answer.
async fn until_answer(
    pods: &Api<Pod>,
    image: &str,
    done: impl Fn(&Result<Pod, kube::Error>) -> bool,
) -> Result<Pod, kube::Error> {
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let start = Instant::now();
    loop {
        let answer = pods.create(&dry, &pod("probe", image)).await;
        if done(&answer) || start.elapsed() > Duration::from_secs(30) {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn image_policies_applied_through_the_api_judge_and_report_their_status() {
    use kube::CustomResourceExt as _;
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let cluster = Cluster::start().await;
    let client = cluster.client();
    namespace(&client, NS, false).await;
    support::kube::install_crd(&client, &provgate::policy::ImagePolicy::crd()).await;
    // The file policy `signed`: every image needs a signature by the chains key.
    let key = images.keys.path().join("chains.pub").display().to_string();
    let hook = images.webhook(&key, Some(client.clone())).await;
    register(&client, &hook, &images.image("signed")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let policies = image_policies(&client);
    let (signed, unsigned) = (images.image("signed"), images.image("unsigned"));
    let pp = PostParams::default();

    // A cluster policy applied through the API takes effect: it retires the `signed` tag the files admit.
    let retire = json!({"match": {"images": [format!("{}/team/**", images.registry.addr)]}, "validations": [
        {"expression": "image.tag != 'signed'", "message": "the signed tag is retired"}]});
    policies.create(&pp, &image_policy("retire-tag", retire)).await.unwrap();
    let status = ready_condition(&client, "retire-tag", 1).await;
    let ready = &status["conditions"][0];
    assert_eq!((ready["type"].as_str(), ready["status"].as_str()), (Some("Ready"), Some("True")), "{status}");
    assert_eq!((ready["reason"].as_str(), status["activeGeneration"].as_i64()), (Some("Loaded"), Some(1)));
    let answer = until_answer(&pods, &signed, |a| a.is_err()).await;
    assert_denied(&api_error(answer), &["policy \"retire-tag\"", "the signed tag is retired"]);

    // A version whose CEL does not compile is reported on the object; the last good version keeps judging.
    let broken = json!({"spec": {"validations": [{"expression": "nope == 1"}]}});
    policies.patch("retire-tag", &PatchParams::default(), &Patch::Merge(&broken)).await.unwrap();
    let status = ready_condition(&client, "retire-tag", 2).await;
    let ready = &status["conditions"][0];
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("CompileError")), "{status}");
    let message = ready["message"].as_str().unwrap();
    for needle in ["validations[0].expression", "unknown variable `nope`", "`nope == 1`", "generation 1 stays active"] {
        assert!(message.contains(needle), "{message:?} should contain {needle:?}");
    }
    assert_eq!(status["activeGeneration"], 1, "{status}");
    let status = api_error(pods.create(&PostParams { dry_run: true, ..pp.clone() }, &pod("p", &signed)).await);
    assert_denied(&status, &["the signed tag is retired"]);

    // A cluster policy cannot widen a file policy: every matching policy must pass.
    let lenient = json!({"mode": "audit", "match": {"images": ["**"]}});
    policies.create(&pp, &image_policy("lenient", lenient)).await.unwrap();
    assert_eq!(ready_condition(&client, "lenient", 1).await["conditions"][0]["status"], "True");
    let status = api_error(pods.create(&PostParams { dry_run: true, ..pp.clone() }, &pod("p", &unsigned)).await);
    assert_denied(&status, &["policy \"signed\"", "no signatures found"]);

    // A name a policy file already uses: reported on the object, the file's policy stays the one judging.
    policies.create(&pp, &image_policy("signed", json!({"match": {"images": ["**"]}}))).await.unwrap();
    let status = ready_condition(&client, "signed", 1).await;
    let ready = &status["conditions"][0];
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("NameClash")), "{status}");
    assert!(ready["message"].as_str().unwrap().contains("signed.yaml"), "{status}");
    assert!(status["activeGeneration"].is_null(), "{status}");

    // Malformed specs never reach provgate: the apiserver's schema validation refuses them.
    let malformed = [
        json!({"mode": "block", "match": {"images": ["**"]}}),
        json!({"mode": "enforce"}),
        json!({"match": {"images": "**"}}),
        json!({"match": {"images": ["**"]}, "validations": vec![json!({"expression": "true"}); 65]}),
    ];
    for (i, spec) in malformed.into_iter().enumerate() {
        let status = api_error(policies.create(&pp, &image_policy(&format!("bad-{i}"), spec.clone())).await);
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"), "{spec}: {status:?}");
    }

    // A spec the apiserver stores but provgate will not compile (over its 64 KiB bound) is reported, never loaded.
    let huge: Vec<String> = (0..5000).map(|i| format!("registry.example.com/team/image-{i}")).collect();
    policies.create(&pp, &image_policy("huge", json!({"match": {"images": huge}}))).await.unwrap();
    let status = ready_condition(&client, "huge", 1).await;
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("more than 65536") && message.contains("no version is active"), "{status}");

    // Deleting the cluster policy removes it from the active set.
    policies.delete("retire-tag", &DeleteParams::default()).await.unwrap();
    let answer = until_answer(&pods, &signed, |a| a.is_ok()).await;
    assert!(answer.is_ok(), "{answer:?}");
}

/// A workload object of `kind` (apps/v1 or batch) whose Pod template runs `image`.
fn workload(api_version: &str, kind: &str, name: &str, image: &str) -> kube::api::DynamicObject {
    let template = json!({"metadata": {"labels": {"app": name}}, "spec": {
        "automountServiceAccountToken": false, "restartPolicy": if kind.ends_with("Job") { "Never" } else { "Always" },
        "containers": [{"name": "app", "image": image}]}});
    let selector = json!({"matchLabels": {"app": name}});
    let spec = match kind {
        "Job" => json!({"template": template}),
        "CronJob" => json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}),
        "StatefulSet" => json!({"serviceName": name, "selector": selector, "template": template}),
        _ => json!({"selector": selector, "template": template}),
    };
    object(json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, "spec": spec}))
}

#[tokio::test]
async fn jobs_cronjobs_statefulsets_and_daemonsets_are_judged_through_the_apiserver() {
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let cluster = Cluster::start().await;
    let client = cluster.client();
    namespace(&client, NS, false).await;
    let hook = images.webhook(&images.keys.path().join("chains.pub").display().to_string(), None).await;
    register(&client, &hook, &images.image("signed")).await;
    let (signed, unsigned) = (images.image("signed"), images.image("unsigned"));
    // kube-apiserver 1.20 serves CronJob as batch/v1beta1 only.
    let kinds = [
        ("batch", "v1", "Job", "jobs", "spec.template.spec.containers[0].image"),
        ("batch", "v1beta1", "CronJob", "cronjobs", "spec.jobTemplate.spec.template.spec.containers[0].image"),
        ("apps", "v1", "StatefulSet", "statefulsets", "spec.template.spec.containers[0].image"),
        ("apps", "v1", "DaemonSet", "daemonsets", "spec.template.spec.containers[0].image"),
    ];
    for (group, version, kind, plural, field) in kinds {
        let resource = kube::api::ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
        let name = kind.to_lowercase();
        let bad = workload(&resource.api_version, kind, &format!("{name}-unsigned"), &unsigned);
        let status = api_error(api.create(&PostParams::default(), &bad).await);
        assert_denied(&status, &[field, &unsigned, "no signatures found"]);
        assert!(api.get_opt(&format!("{name}-unsigned")).await.unwrap().is_none(), "{kind}: a denied object is stored");
        let good = workload(&resource.api_version, kind, &format!("{name}-signed"), &signed);
        api.create(&PostParams::default(), &good).await.unwrap_or_else(|e| panic!("{kind}: {e}"));
        let record = hook.audit_records().pop().unwrap();
        assert_eq!((record["kind"].as_str(), record["decision"].as_str()), (Some(kind), Some("allow")), "{record}");
    }

    // With deploy/'s namespaceSelector, a namespace labelled provgate.dev/ignore=true is not sent to the webhook.
    let shipped: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/webhook.yaml")).unwrap(),
    )
    .unwrap();
    let mut config = serde_json::to_value(webhook_configuration(&hook)).unwrap();
    config["webhooks"][0]["namespaceSelector"] = shipped["webhooks"][0]["namespaceSelector"].clone();
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    configs.patch(WEBHOOK, &PatchParams::default(), &Patch::Merge(&config)).await.unwrap();
    let ignored: Namespace =
        object(json!({"metadata": {"name": "ignored", "labels": {"provgate.dev/ignore": "true"}}}));
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ignored).await.unwrap();
    namespace(&client, "ignored", false).await;
    let (in_ignored, in_team): (Api<Pod>, Api<Pod>) =
        (Api::namespaced(client.clone(), "ignored"), Api::namespaced(client.clone(), NS));
    let answer = until_answer(&in_ignored, &unsigned, |a| a.is_ok()).await;
    assert!(answer.is_ok(), "an ignored namespace is admitted without a review: {answer:?}");
    let calls = hook.audit_records().len();
    in_ignored.create(&PostParams::default(), &pod("unsigned", &unsigned)).await.unwrap();
    assert_eq!(hook.audit_records().len(), calls, "the webhook was not asked");
    let status = api_error(in_team.create(&PostParams::default(), &pod("unsigned", &unsigned)).await);
    assert_denied(&status, &["no signatures found"]);
}

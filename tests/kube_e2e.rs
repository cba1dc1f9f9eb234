//! End to end through a real Kubernetes API server: etcd and kube-apiserver (1.20, built from Debian's source
//! package by scripts/deps/30-kube.sh) on loopback call the real provgate webhook through a
//! ValidatingWebhookConfiguration, for Pods and Deployments created with kube-rs. Images are signed at test time
//! and served by a real docker-registry. What the API returns to the client is what is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event as EventV1;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::kube::Cluster;
use support::registry::{Auth, DockerRegistry, Layout, free_port};
use support::signing::{seed, sign, sign_image};
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
        sign_image(&mut layout, keys.path(), &signed);
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

/// `k8s://provgate-system/chains-public-key`: a signed image is admitted while the Secret holds the key, denied
/// while it holds another (rotation), admitted when the key is back; once the Secret is deleted, the denial names
/// it. Returns the port of that webhook, stopped.
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

    // Key rotation through the Secret takes effect: another key in its place denies the image signed by the old
    // one; the old key put back admits it again.
    let _ = sign(images.keys.path(), "rotated", &"0".repeat(64), &seed("chains-kaniko-slsa-v0.2-statement.json"));
    let rotated = std::fs::read_to_string(images.keys.path().join("rotated.pub")).unwrap();
    let put = |pem: String| {
        let secrets = secrets.clone();
        async move {
            let data = json!({"stringData": {"cosign.pub": pem}});
            secrets.patch("chains-public-key", &PatchParams::default(), &Patch::Merge(&data)).await.unwrap();
        }
    };
    put(rotated).await;
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let start = Instant::now();
    let status = loop {
        match pods.create(&dry, &pod("rotated-away", signed)).await {
            Err(kube::Error::Api(status)) => break status,
            other => {
                assert!(start.elapsed() < Duration::from_secs(30), "still admitted 30 s after rotation: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_denied(&status, &["no valid signature from authority chains"]);
    put(pem.clone()).await;
    let start = Instant::now();
    while let Err(e) = pods.create(&dry, &pod("rotated-back", signed)).await {
        assert!(start.elapsed() < Duration::from_secs(30), "still denied 30 s after the key came back: {e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

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

/// The Events in `namespace` whose reason is `reason` (ProvgateDenied or ProvgateWarned).
async fn provgate_events(client: &kube::Client, namespace: &str) -> Vec<EventV1> {
    let events: Api<EventV1> = Api::namespaced(client.clone(), namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items.into_iter().filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with("Provgate"))).collect()
}

/// Waits (at most 30 s) until `namespace` holds an Event about `kind`/`name` with `reason` and at least `count`
/// occurrences; returns it.
async fn wait_event(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    reason: &str,
    count: i32,
) -> EventV1 {
    let start = Instant::now();
    loop {
        let found = provgate_events(client, namespace).await.into_iter().find(|e| {
            let regarding = e.regarding.as_ref().unwrap();
            (regarding.kind.as_deref(), regarding.name.as_deref(), e.reason.as_deref())
                == (Some(kind), Some(name), Some(reason))
                && e.series.as_ref().map_or(1, |s| s.count) >= count
        });
        if let Some(event) = found {
            return event;
        }
        let all = provgate_events(client, namespace).await;
        assert!(start.elapsed() < Duration::from_secs(30), "no {reason} Event x{count} on {kind}/{name}: {all:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A client for the `provgate` ServiceAccount holding only what `deploy/rbac.yaml` grants cluster-wide.
async fn deployed_rbac_client(cluster: &Cluster, admin: &kube::Client) -> kube::Client {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml")).unwrap();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc = Value::deserialize(doc).unwrap();
        match doc["kind"].as_str().unwrap() {
            "ClusterRole" => {
                drop(Api::<ClusterRole>::all(admin.clone()).create(&PostParams::default(), &object(doc)).await.unwrap())
            }
            "ClusterRoleBinding" => drop(
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .create(&PostParams::default(), &object(doc))
                    .await
                    .unwrap(),
            ),
            "ServiceAccount" => {
                let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "provgate-system");
                accounts.create(&PostParams::default(), &object(doc)).await.unwrap();
            }
            _ => {}
        }
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "provgate-system");
    let request: TokenRequest = object(json!({"spec": {"audiences": ["https://kubernetes.default.svc"]}}));
    let token: TokenRequest =
        accounts.create_subresource("token", "provgate", &PostParams::default(), &request).await.unwrap();
    cluster.client_with_token(&token.status.unwrap().token)
}

#[tokio::test]
async fn denials_and_warnings_raise_one_event_series_on_the_object_its_owner_or_its_namespace() {
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let cluster = Cluster::start().await;
    let admin = cluster.client();
    for ns in [NS, "team-warn", "team-dry"] {
        namespace(&admin, ns, false).await;
    }
    namespace(&admin, "provgate-system", true).await;
    // The webhook writes Events as its ServiceAccount, with only the deploy/ RBAC.
    let client = deployed_rbac_client(&cluster, &admin).await;
    let key = images.keys.path().join("chains.pub").display().to_string();
    let policy = |name: &str, mode: &str, namespaces: &str| {
        format!(
            "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: {mode}\n  match: {{images: [\"**\"], namespaces: [{namespaces}]}}\n  authorities: [{{name: chains, key: \"{key}\"}}]\n  require: {{signature: true}}\n"
        )
    };
    let policies = [
        ("signed.yaml", policy("signed", "enforce", "team-a, team-dry")),
        ("warned.yaml", policy("warned", "warn", "team-warn")),
    ];
    let (host, config) = (images.registry.addr.clone(), images.registry.host_config());
    let hook = Webhook::start_with(&policies, Some(client), move |c| {
        c.registries.hosts.insert(host, config);
    })
    .await;
    let (signed, unsigned) = (images.image("signed"), images.image("unsigned"));
    register(&admin, &hook, &signed).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);

    // Admitted: no Event. A dry run, even denied, has no side effects: no Event either.
    pods.create(&PostParams::default(), &pod("quiet", &signed)).await.unwrap();
    pods.create(&PostParams::default(), &pod("admitted", &signed)).await.unwrap();
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let dry_pods: Api<Pod> = Api::namespaced(admin.clone(), "team-dry");
    assert_denied(&api_error(dry_pods.create(&dry, &pod("dry", &unsigned)).await), &["no signatures found"]);

    // A denied CREATE of a Pod nobody owns: on its Namespace, one series however often it is retried.
    for _ in 0..3 {
        assert_denied(&api_error(pods.create(&PostParams::default(), &pod("unsigned", &unsigned)).await), &[]);
    }
    let record = hook.audit_records().into_iter().rev().find(|r| r["name"] == "unsigned").unwrap();
    let code = record["images"][0]["reason"].as_str().unwrap().to_owned();
    let event = wait_event(&admin, NS, "Namespace", NS, "ProvgateDenied", 3).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.clone().unwrap();
    for needle in [&format!("image {unsigned} denied"), "by policy signed", &format!("({code})"), "no signatures found"]
    {
        assert!(note.contains(needle), "{note:?} should contain {needle:?}");
    }
    let uid = note.rsplit("provgate audit show ").next().unwrap().trim_end_matches(')');
    let first = hook.audit_records().into_iter().find(|r| r["uid"] == uid).unwrap();
    assert_eq!((first["name"].as_str(), first["decision"].as_str()), (Some("unsigned"), Some("deny")), "{first}");
    assert_eq!(event.series.as_ref().unwrap().count, 3, "three denials, one series");

    // A Pod its ReplicaSet creates: on the ReplicaSet, which `kubectl describe rs` shows.
    let sets: Api<ReplicaSet> = Api::namespaced(admin.clone(), NS);
    let rs: ReplicaSet = object(json!({"metadata": {"name": "web"}, "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": signed}]}}}}));
    let rs_uid = sets.create(&PostParams::default(), &rs).await.unwrap().metadata.uid.unwrap();
    let mut owned = pod("", &unsigned);
    owned.metadata = object(json!({"generateName": "web-", "labels": {"app": "web"}, "ownerReferences": [{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": rs_uid, "controller": true}]}));
    api_error(pods.create(&PostParams::default(), &owned).await);
    let event = wait_event(&admin, NS, "ReplicaSet", "web", "ProvgateDenied", 1).await;
    assert_eq!(event.regarding.as_ref().unwrap().uid.as_deref(), Some(rs_uid.as_str()));

    // A denied UPDATE: on the Pod itself.
    let pod_uid = pods.get("admitted").await.unwrap().metadata.uid.unwrap();
    let swap = json!({"spec": {"containers": [{"name": "app", "image": unsigned}]}});
    api_error(pods.patch("admitted", &PatchParams::default(), &Patch::Strategic(&swap)).await);
    // The API server may review one patch twice (it retries against fresh data): each review counts once.
    let reviews = hook.audit_records().iter().filter(|r| r["name"] == "admitted" && r["operation"] == "UPDATE").count();
    let event = wait_event(&admin, NS, "Pod", "admitted", "ProvgateDenied", i32::try_from(reviews).unwrap()).await;
    assert_eq!(event.regarding.as_ref().unwrap().uid.as_deref(), Some(pod_uid.as_str()));
    assert_eq!(event.series.map_or(1, |s| s.count), i32::try_from(reviews).unwrap(), "{reviews} reviews");

    // A warn-mode failure: admitted, with a ProvgateWarned Event.
    let warn_pods: Api<Pod> = Api::namespaced(admin.clone(), "team-warn");
    warn_pods.create(&PostParams::default(), &pod("warned", &unsigned)).await.unwrap();
    let event = wait_event(&admin, "team-warn", "Namespace", "team-warn", "ProvgateWarned", 1).await;
    assert!(event.note.unwrap().contains("admitted with a warning by policy warned"));

    // Every Event accounted for: the admissions and the dry run raised none.
    let series: Vec<(String, String)> = provgate_events(&admin, NS)
        .await
        .into_iter()
        .map(|e| (e.regarding.unwrap().kind.unwrap(), e.reason.unwrap()))
        .collect();
    let want = ["Namespace", "Pod", "ReplicaSet"].map(|k| (k.to_owned(), "ProvgateDenied".to_owned()));
    let mut got = series.clone();
    got.sort();
    assert_eq!(got, want, "{series:?}");
    assert!(provgate_events(&admin, "team-dry").await.is_empty(), "a dry run raises no Event");

    // A flood of denials about distinct objects (forged UPDATEs posted straight to the webhook, as a caller that
    // reaches its Service could): Events are written within the budget (a burst of 50, then 10 per second), and
    // every one is written in the end.
    namespace(&admin, "team-flood", false).await;
    let started = Instant::now();
    for i in 0..120 {
        let pod = |image: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}"), "namespace": "team-flood", "uid": format!("uid-{i}")},
                                      "spec": {"containers": [{"name": "app", "image": image}]}})
        };
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": format!("flood-{i}"), "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "team-flood",
            "name": format!("p{i}"), "operation": "UPDATE", "userInfo": {"username": "mallory"},
            "object": pod("quay.io/evil/miner:latest"), "oldObject": pod("quay.io/evil/miner:old")}});
        assert_eq!(hook.review(&review).await["allowed"], false);
    }
    let budget = |since: Duration| 50 + 10 * (since.as_secs() as usize + 1);
    loop {
        // Measured after the list, so `since` covers every write it can see.
        let written = provgate_events(&admin, "team-flood").await.len();
        let since = started.elapsed();
        assert!(written <= budget(since), "{written} Events written in {since:?}");
        if written == 120 {
            break;
        }
        assert!(since < Duration::from_secs(40), "only {written} of 120 Events written in {since:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(6500), "at 10 per second, the 70 beyond the burst take 7 s, not {took:?}");

    let (_, metrics) = hook.admin_get("/metrics").await;
    assert!(metrics.contains("provgate_events_dropped_total 0"), "{metrics}");
    let Webhook { running, .. } = hook;
    running.shutdown().await;
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

// ---- Self-managed TLS (tls.managed) ----

const TLS_NS: &str = "provgate-system";
const TLS_SECRET: &str = "provgate-tls";

/// Managed TLS in `TLS_NS`, writing caBundle into the ValidatingWebhookConfiguration `WEBHOOK` only, for a
/// serving certificate that also covers loopback (the test's webhook URL) and `localhost` (the test client's).
fn managed_tls() -> provgate::config::ManagedTlsConfig {
    provgate::config::ManagedTlsConfig {
        secret: TLS_SECRET.into(),
        namespace: TLS_NS.into(),
        service: "provgate".into(),
        extra_names: vec!["127.0.0.1".into(), "localhost".into()],
        webhooks: provgate::config::WebhookNames { validating: vec![WEBHOOK.into()], mutating: vec![] },
        check_interval: Duration::from_millis(500),
        ..Default::default()
    }
}

/// [`Images::webhook_with`] listening on `port` with managed TLS `managed`.
async fn managed_webhook(
    images: &Images,
    client: &kube::Client,
    port: u16,
    managed: provgate::config::ManagedTlsConfig,
) -> Webhook {
    let key = images.keys.path().join("chains.pub").display().to_string();
    images
        .webhook_with(&key, Some(client.clone()), move |c| {
            c.listen = format!("127.0.0.1:{port}").parse().unwrap();
            c.tls.cert_file = None;
            c.tls.key_file = None;
            c.tls.managed = Some(managed);
        })
        .await
}

/// A webhook configuration named `name` (its one webhook named `WEBHOOK`) calling `https://127.0.0.1:PORT/validate` for Pods in non-exempt
/// namespaces, with `ca_bundle` when given (none: provgate is to write it).
fn url_webhook_configuration(name: &str, port: u16, ca_bundle: Option<&str>) -> ValidatingWebhookConfiguration {
    let mut client_config = json!({"url": format!("https://127.0.0.1:{port}/validate")});
    if let Some(bundle) = ca_bundle {
        client_config["caBundle"] = json!(bundle);
    }
    object(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "clientConfig": client_config,
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [{"key": EXEMPT, "operator": "DoesNotExist"}]},
        }]
    }))
}

/// The `caBundle` (base64) of the configuration `name`'s first webhook, if any.
async fn published_bundle(client: &kube::Client, name: &str) -> Option<String> {
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config = serde_json::to_value(configs.get(name).await.unwrap()).unwrap();
    config["webhooks"][0]["clientConfig"]["caBundle"].as_str().map(str::to_owned)
}

/// One value of the managed Secret, as text.
async fn tls_secret_value(client: &kube::Client, key: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), TLS_NS);
    let secret = secrets.get(TLS_SECRET).await.unwrap();
    String::from_utf8(secret.data.unwrap()[key].0.clone()).unwrap()
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn unb64(text: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text).unwrap()).unwrap()
}

/// Dry-run Pod creations through the apiserver until one reaches `hook` (at most 30 s).
async fn wait_called(client: &kube::Client, hook: &Webhook, image: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let start = Instant::now();
    let calls = hook.audit_records().len();
    loop {
        let result = pods.create(&dry, &pod("probe", image)).await;
        if hook.audit_records().len() > calls && result.is_ok() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the apiserver did not call the webhook in 30 s: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The certificate (DER) a TLS server on loopback `port` presents, checked against `ca_pem`.
async fn served_certificate(port: u16, ca_pem: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap().to_vec()
}

#[tokio::test]
async fn managed_tls_creates_its_secret_publishes_its_ca_to_its_own_webhook_only_and_is_called_over_it() {
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let cluster = Cluster::start().await;
    let client = cluster.client();
    namespace(&client, NS, false).await;
    namespace(&client, TLS_NS, true).await;
    let port = free_port();
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    configs.create(&PostParams::default(), &url_webhook_configuration(WEBHOOK, port, None)).await.unwrap();
    // A configuration provgate is not told about: its caBundle must stay as it is. (Never called: nothing listens
    // there, and it fails open.)
    let bystander_bundle = b64(&provgate::certs::generate(&["other".into()], &[]).unwrap().ca_pem);
    let mut bystander = url_webhook_configuration("bystander.example.com", free_port(), Some(&bystander_bundle));
    bystander.webhooks.as_mut().unwrap()[0].failure_policy = Some("Ignore".into());
    bystander.webhooks.as_mut().unwrap()[0].rules.as_mut().unwrap()[0].resources = Some(vec!["configmaps".into()]);
    configs.create(&PostParams::default(), &bystander).await.unwrap();

    let hook = managed_webhook(&images, &client, port, managed_tls()).await;
    // The Secret exists once provgate is up, and the named configuration carries its bundle.
    let bundle = tls_secret_value(&client, "ca.crt").await;
    for key in ["tls.crt", "tls.key", "ca-signing.crt", "ca-signing.key"] {
        assert!(!tls_secret_value(&client, key).await.is_empty(), "{key}");
    }
    assert_eq!(published_bundle(&client, WEBHOOK).await.map(|b| unb64(&b)), Some(bundle.clone()));
    assert_eq!(published_bundle(&client, "bystander.example.com").await, Some(bystander_bundle.clone()));

    // The apiserver calls provgate over that CA: a signed image is admitted, an unsigned one denied.
    let (signed, unsigned) = (images.image("signed"), images.image("unsigned"));
    wait_called(&client, &hook, &signed).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(&PostParams::default(), &pod("signed", &signed)).await.unwrap();
    let status = api_error(pods.create(&PostParams::default(), &pod("unsigned", &unsigned)).await);
    assert_denied(&status, &["spec.containers[0].image", "no signatures found"]);
    assert_eq!(served_certificate(port, &bundle).await, der_of(&tls_secret_value(&client, "tls.crt").await));

    // The expiry metric follows the served certificate.
    let (_, metrics) = hook.admin_get("/metrics").await;
    let leaf = tls_secret_value(&client, "tls.crt").await;
    let not_after = {
        use x509_cert::der::Decode as _;
        let cert = x509_cert::Certificate::from_der(&der_of(&leaf)).unwrap();
        cert.tbs_certificate().validity().not_after.to_unix_duration().as_secs()
    };
    assert!(
        metrics.contains(&format!("provgate_serving_certificate_expiry_timestamp_seconds {not_after}")),
        "{metrics}"
    );

    // Hostile: someone else's CA (with its key) put in the Secret, which does not sign the serving certificate.
    // It is never published; the Secret is replaced with a fresh CA and pair, and that one is published.
    let foreign = provgate::certs::new_ca(time::OffsetDateTime::now_utc(), time::Duration::days(30)).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), TLS_NS);
    let edit = json!({"stringData": {
        "ca-signing.crt": foreign.cert_pem, "ca-signing.key": foreign.key_pem, "ca.crt": foreign.cert_pem}});
    secrets.patch(TLS_SECRET, &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    let start = Instant::now();
    loop {
        let published = unb64(&published_bundle(&client, WEBHOOK).await.unwrap());
        assert!(!published.contains(foreign.cert_pem.trim()), "a CA that does not sign the leaf was published");
        let now_bundle = tls_secret_value(&client, "ca.crt").await;
        if now_bundle != foreign.cert_pem && now_bundle != bundle && published == now_bundle {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the edited Secret was not replaced in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replaced = tls_secret_value(&client, "ca.crt").await;
    wait_called(&client, &hook, &signed).await;
    assert_eq!(served_certificate(port, &replaced).await, der_of(&tls_secret_value(&client, "tls.crt").await));

    // Hostile: garbage in place of the serving pair is replaced, never served.
    let edit = json!({"stringData": {"tls.crt": "garbage", "tls.key": "garbage"}});
    secrets.patch(TLS_SECRET, &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    let start = Instant::now();
    while tls_secret_value(&client, "tls.crt").await == "garbage" {
        assert!(start.elapsed() < Duration::from_secs(30), "the garbage Secret was not replaced in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_called(&client, &hook, &signed).await;
    assert_eq!(published_bundle(&client, "bystander.example.com").await, Some(bystander_bundle));
}

#[tokio::test]
async fn two_managed_replicas_started_at_once_end_with_one_secret_and_serve_the_same_pair() {
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let cluster = Cluster::start().await;
    let client = cluster.client();
    namespace(&client, TLS_NS, true).await;
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let (a_port, b_port) = (free_port(), free_port());
    configs.create(&PostParams::default(), &url_webhook_configuration(WEBHOOK, a_port, None)).await.unwrap();
    let (a, b) = tokio::join!(
        managed_webhook(&images, &client, a_port, managed_tls()),
        managed_webhook(&images, &client, b_port, managed_tls())
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), TLS_NS);
    let listed = secrets.list(&Default::default()).await.unwrap();
    let managed: Vec<_> = listed.items.iter().filter(|s| s.metadata.name.as_deref() == Some(TLS_SECRET)).collect();
    assert_eq!(managed.len(), 1);
    let (bundle, leaf) = (tls_secret_value(&client, "ca.crt").await, tls_secret_value(&client, "tls.crt").await);
    // Both serve the Secret's pair (within a moment: the replica whose create lost follows the winner's Secret).
    let start = Instant::now();
    while served_certificate(a_port, &bundle).await != der_of(&leaf)
        || served_certificate(b_port, &bundle).await != der_of(&leaf)
    {
        assert!(start.elapsed() < Duration::from_secs(10), "the replicas do not serve the Secret's pair");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published_bundle(&client, WEBHOOK).await.map(|b| unb64(&b)), Some(bundle.clone()));
    // Some checks later, nothing has changed: neither replica fights the other.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tls_secret_value(&client, "tls.crt").await, leaf);
    drop((a, b));
}

#[tokio::test]
async fn forced_renewals_and_ca_rollovers_under_load_fail_no_request() {
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let cluster = Cluster::start().await;
    let client = cluster.client();
    namespace(&client, NS, false).await;
    namespace(&client, TLS_NS, true).await;
    let (port, other_port) = (free_port(), free_port());
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    configs.create(&PostParams::default(), &url_webhook_configuration(WEBHOOK, port, None)).await.unwrap();
    // The test knob: renewBefore above validity renews the serving certificate at every check, caRenewBefore
    // above caValidity starts a CA rollover as soon as the last one ends.
    let hour = Duration::from_secs(3600);
    let churn = provgate::config::ManagedTlsConfig {
        validity: hour,
        renew_before: 2 * hour,
        ca_validity: 2 * hour,
        ca_renew_before: 3 * hour,
        ca_handover: Duration::from_secs(2),
        ..managed_tls()
    };
    let hook = managed_webhook(&images, &client, port, churn.clone()).await;
    // A second replica renewing the same Secret at the same time (it serves nobody here).
    let other = managed_webhook(&images, &client, other_port, churn).await;
    let signed = images.image("signed");
    wait_called(&client, &hook, &signed).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let review = serde_json::to_vec(&support::webhook::review("pod-create")).unwrap();
    let (mut leaves, mut cas) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let (mut through_apiserver, mut direct) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        // Through the apiserver, which trusts whatever caBundle provgate published.
        let result = pods.create(&dry, &pod("load", &signed)).await;
        assert!(result.is_ok(), "request {through_apiserver} through the apiserver failed: {result:?}");
        through_apiserver += 1;
        // A new connection trusting only the bundle published right now, as an apiserver that just read it.
        let published = unb64(&published_bundle(&client, WEBHOOK).await.unwrap());
        let fresh = https_client(published.as_bytes());
        let answer = hook.post_raw_with(&fresh, review.clone()).await;
        assert!(matches!(answer, Ok((200, _))), "direct request {direct} failed: {answer:?}");
        direct += 1;
        leaves.insert(tls_secret_value(&client, "tls.crt").await);
        cas.insert(tls_secret_value(&client, "ca-signing.crt").await);
    }
    eprintln!(
        "{through_apiserver} reviews through the apiserver and {direct} direct, 0 failed, across {} serving certificates and {} CAs",
        leaves.len(),
        cas.len()
    );
    assert!(leaves.len() >= 5, "the serving certificate was renewed during the load ({} seen)", leaves.len());
    assert!(cas.len() >= 2, "a CA rollover happened during the load ({} seen)", cas.len());
    drop((hook, other));
}

/// Creates every object of `deploy/rbac.yaml` with the admin `client`.
async fn apply_shipped_rbac(client: &kube::Client) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc = <Value as serde::Deserialize>::deserialize(doc).unwrap();
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let pp = PostParams::default();
        match doc["kind"].as_str().unwrap() {
            "ServiceAccount" => {
                drop(Api::<ServiceAccount>::namespaced(client.clone(), &ns).create(&pp, &object(doc)).await.unwrap())
            }
            "Role" => drop(Api::<Role>::namespaced(client.clone(), &ns).create(&pp, &object(doc)).await.unwrap()),
            "RoleBinding" => {
                drop(Api::<RoleBinding>::namespaced(client.clone(), &ns).create(&pp, &object(doc)).await.unwrap())
            }
            "ClusterRole" => drop(Api::<ClusterRole>::all(client.clone()).create(&pp, &object(doc)).await.unwrap()),
            "ClusterRoleBinding" => {
                drop(Api::<ClusterRoleBinding>::all(client.clone()).create(&pp, &object(doc)).await.unwrap())
            }
            other => panic!("unexpected {other} in deploy/rbac.yaml"),
        }
    }
}

#[tokio::test]
async fn managed_tls_works_with_the_shipped_rbac_and_is_refused_anything_more() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::authentication::v1::TokenRequest;
    let _one = ONE_CLUSTER.lock().await;
    let images = Images::start();
    let cluster = Cluster::start().await;
    let admin = cluster.client();
    namespace(&admin, NS, false).await;
    namespace(&admin, TLS_NS, true).await;
    apply_shipped_rbac(&admin).await;
    let request: TokenRequest =
        object(json!({"spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}}));
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), TLS_NS)
        .create_token_request("provgate", &PostParams::default(), &request)
        .await
        .unwrap();
    let provgate_client = cluster.client_with_token(&token.status.unwrap().token);

    // provgate's own configurations, by the names deploy/ uses, and one that is not its own.
    let port = free_port();
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    configs.create(&PostParams::default(), &url_webhook_configuration("provgate", port, None)).await.unwrap();
    let bystander = url_webhook_configuration("bystander.example.com", free_port(), Some(&b64("x")));
    let mut bystander = bystander;
    bystander.webhooks.as_mut().unwrap()[0].failure_policy = Some("Ignore".into());
    bystander.webhooks.as_mut().unwrap()[0].rules.as_mut().unwrap()[0].resources = Some(vec!["configmaps".into()]);
    configs.create(&PostParams::default(), &bystander).await.unwrap();
    let mutating: MutatingWebhookConfiguration = object(json!({"metadata": {"name": "provgate"}}));
    Api::<MutatingWebhookConfiguration>::all(admin.clone()).create(&PostParams::default(), &mutating).await.unwrap();

    // Renewing at every check, so update is exercised too.
    let managed = provgate::config::ManagedTlsConfig {
        webhooks: provgate::config::WebhookNames {
            validating: vec!["provgate".into()],
            mutating: vec!["provgate".into()],
        },
        validity: Duration::from_secs(3600),
        renew_before: Duration::from_secs(7200),
        ..managed_tls()
    };
    let hook = managed_webhook(&images, &provgate_client, port, managed).await;
    let first = tls_secret_value(&admin, "tls.crt").await;
    let bundle = tls_secret_value(&admin, "ca.crt").await;
    assert_eq!(published_bundle(&admin, "provgate").await.map(|b| unb64(&b)), Some(bundle));
    wait_called(&admin, &hook, &images.image("signed")).await;
    let start = Instant::now();
    while tls_secret_value(&admin, "tls.crt").await == first {
        assert!(start.elapsed() < Duration::from_secs(10), "no renewal with the shipped RBAC");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing beyond: another webhook configuration, another Secret.
    let as_provgate: Api<ValidatingWebhookConfiguration> = Api::all(provgate_client.clone());
    let patch = json!({"webhooks": [{"name": WEBHOOK, "clientConfig": {"caBundle": b64("y")}}]});
    let status =
        api_error(as_provgate.patch("bystander.example.com", &PatchParams::default(), &Patch::Strategic(&patch)).await);
    assert_eq!(status.code, 403, "{status:?}");
    let other: Secret = object(json!({"metadata": {"name": "other"}, "stringData": {"k": "v"}}));
    Api::<Secret>::namespaced(admin.clone(), TLS_NS).create(&PostParams::default(), &other).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(provgate_client.clone(), TLS_NS);
    let edit = json!({"stringData": {"k": "changed"}});
    let status = api_error(secrets.patch("other", &PatchParams::default(), &Patch::Merge(&edit)).await);
    assert_eq!(status.code, 403, "{status:?}");
    let mut whole = secrets.get("other").await.unwrap();
    whole.string_data = Some([("k".to_owned(), "changed".to_owned())].into());
    assert_eq!(api_error(secrets.replace("other", &PostParams::default(), &whole).await).code, 403);
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

//! Keys kept in Kubernetes Secrets, judged through the real `/validate`: a signed image is admitted while its key's
//! Secret holds it; a rotated key applies without restart; a deleted Secret or a missing data key is a denial that
//! names it. The API is the loopback server of `support::kube_api`; the registry is a real docker-registry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::kube_api::serve;
use support::registry::{Auth, DockerRegistry, Layout, SIMPLE_SIGNING};
use support::signing::{SIG_ANNOTATION, attach, seed, sign};
use support::webhook::{Webhook, review};

const SECRET: &str = "k8s://provgate-system/chains-public-key";

fn pod(image: &str) -> Value {
    let mut r = review("pod-create");
    r["request"]["object"]["spec"] = json!({"containers": [{"name": "app", "image": image}]});
    r
}

/// Posts `pod` until `done` holds for the response (a watch event takes a moment to arrive), at most 10 s.
async fn until(hook: &Webhook, pod: &Value, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let response = hook.review(pod).await;
        if done(&response) || started.elapsed() > Duration::from_secs(10) {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn keys_in_secrets_verify_rotate_and_fail_by_name() {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let image = layout.image("secret-key", "amd64");
    layout.tag("1", &image);
    let signed = sign(keys.path(), "chains", image.hex(), &seed("chains-kaniko-slsa-v0.2-statement.json"));
    attach(&mut layout, &image, "sig", (SIMPLE_SIGNING, signed.payload, json!({SIG_ANNOTATION: signed.signature})));
    for tag in ["1".to_owned(), format!("sha256-{}.sig", image.hex())] {
        registry.push(&layout, &tag, "team/app", &tag);
    }
    sign(keys.path(), "other", image.hex(), &seed("chains-kaniko-slsa-v0.2-statement.json"));
    let pem = |name: &str| std::fs::read_to_string(keys.path().join(format!("{name}.pub"))).unwrap();

    let (api, client) = serve().await;
    // A Chains-style Secret: the private key and password sit beside the public key and are never kept.
    api.put(
        "provgate-system",
        "chains-public-key",
        &[("cosign.pub", &pem("chains")), ("cosign.key", "PRIVATE"), ("cosign.password", "secret")],
    );
    let policy = format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: chains}}\nspec:\n  match: {{images: [\"**\"]}}\n  authorities: [{{name: chains, key: \"{SECRET}\"}}]\n  require: {{signature: true}}\n"
    );
    let host = registry.addr.clone();
    let config = registry.host_config();
    let hook = Webhook::start_with(&[("p.yaml", policy)], Some(client), move |c| {
        c.registries.hosts.insert(host, config);
    })
    .await;
    let pod = pod(&format!("{}/team/app:1", registry.addr));

    let response = hook.review(&pod).await;
    assert_eq!(response["allowed"], true, "the key was loaded before readiness: {response}");

    api.put("provgate-system", "chains-public-key", &[("cosign.pub", &pem("other"))]);
    let rotated = until(&hook, &pod, |r| r["allowed"] == false).await;
    assert_eq!(rotated["auditAnnotations"]["reasons"], "wrong-key", "{rotated}");

    api.put("provgate-system", "chains-public-key", &[("cosign.pub", &pem("chains"))]);
    let back = until(&hook, &pod, |r| r["allowed"] == true).await;
    assert_eq!(back["allowed"], true, "rotating back applies without restart: {back}");

    api.put("provgate-system", "chains-public-key", &[("other.pub", &pem("chains"))]);
    let missing_key = until(&hook, &pod, |r| r["allowed"] == false).await;
    assert_eq!(missing_key["auditAnnotations"]["reasons"], "key-missing-data-key", "{missing_key}");
    let message = missing_key["status"]["message"].as_str().unwrap();
    assert!(message.contains("authority \"chains\"") && message.contains("cosign.pub"), "{message}");

    api.delete("provgate-system", "chains-public-key");
    let deleted =
        until(&hook, &pod, |r| r["status"]["message"].as_str().unwrap_or_default().contains("not found")).await;
    assert_eq!(deleted["allowed"], false);
    assert_eq!(deleted["auditAnnotations"]["reasons"], "key-secret-not-found");
    assert!(deleted["status"]["message"].as_str().unwrap().contains("provgate-system/chains-public-key"), "{deleted}");
}

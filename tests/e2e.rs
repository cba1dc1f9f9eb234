//! End to end: images and their cosign signatures and Chains-style attestations, signed at test time by PyPI
//! `cryptography`/`securesystemslib`, pushed with skopeo to a real Debian docker-registry on loopback, and judged
//! through the real HTTPS `/validate` endpoint. Every way to pass has a tampered twin that must fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::registry::{Auth, Canned, CannedServer, DSSE, DockerRegistry, Layout, SIMPLE_SIGNING};
use support::signing::{SIG_ANNOTATION, attach, seed, sign, sign_as};
use support::webhook::{Webhook, review};

/// The registry, its images and the keys: built once per test.
struct World {
    registry: DockerRegistry,
    keys: tempfile::TempDir,
    digests: std::collections::HashMap<&'static str, String>,
}

impl World {
    fn key(&self, name: &str) -> PathBuf {
        self.keys.path().join(format!("{name}.pub"))
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/team/app:{tag}", self.registry.addr)
    }
}

fn world() -> World {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let chains = seed("chains-kaniko-slsa-v0.2-statement.json");
    let mut digests = std::collections::HashMap::new();
    let mut tags = Vec::new();
    for tag in
        ["signed", "unsigned", "wrongkey", "replayed", "subject", "tampered", "payloadtype", "truncated", "nonbase64"]
    {
        let image = layout.image(tag, "amd64");
        layout.tag(tag, &image);
        digests.insert(tag, image.digest.clone());
        tags.push((tag, image));
    }
    let good_hex = tags[0].1.hex().to_owned();
    for (tag, image) in &tags {
        let (key, digest_hex) = match *tag {
            "unsigned" => continue,
            "wrongkey" => ("other", image.hex().to_owned()),
            // Signed for the "signed" image, stored next to another one.
            "replayed" => ("chains", good_hex.clone()),
            _ => ("chains", image.hex().to_owned()),
        };
        let signed = sign(keys.path(), key, &digest_hex, &chains);
        let mut payload = signed.payload.clone();
        if *tag == "tampered" {
            let at = payload.len() / 2;
            payload[at] ^= 0x01;
        }
        attach(&mut layout, image, "sig", (SIMPLE_SIGNING, payload, json!({SIG_ANNOTATION: signed.signature})));
        let envelope = match *tag {
            // A valid signature over the statement, but the statement's subject is another image.
            "subject" => sign(keys.path(), "chains", &good_hex, &chains).envelope,
            // Properly signed, but not as an in-toto statement.
            "payloadtype" => sign_as(keys.path(), "chains", image.hex(), &chains, "application/json").envelope,
            "truncated" => signed.envelope[..signed.envelope.len() / 2].to_vec(),
            "nonbase64" => {
                let mut e: Value = serde_json::from_slice(&signed.envelope).unwrap();
                e["payload"] = json!("not base64 at all!");
                serde_json::to_vec(&e).unwrap()
            }
            _ => signed.envelope,
        };
        attach(&mut layout, image, "att", (DSSE, envelope, json!({SIG_ANNOTATION: ""})));
    }
    let index_tags: Vec<String> = layout.tags();
    for tag in index_tags {
        registry.push(&layout, &tag, "team/app", &tag);
    }
    World { registry, keys, digests }
}

fn chains_policy(key: &Path, builder: &str) -> String {
    format!(
        r#"apiVersion: provgate.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: chains
spec:
  match:
    images: ["**"]
  authorities:
    - name: chains
      key: {key}
  require:
    signature: true
    attestations:
      - name: provenance
        predicateType: slsa
  validations:
    - expression: provenance.builder.id == "{builder}"
      messageExpression: '"built by " + provenance.builder.id'
"#,
        key = key.display()
    )
}

/// A Pod CREATE review whose only container runs `image`.
fn pod(image: &str) -> Value {
    let mut r = review("pod-create");
    r["request"]["object"]["spec"] = json!({"containers": [{"name": "app", "image": image}]});
    r
}

async fn hook_for(world: &World, policy: String) -> Webhook {
    let host = world.registry.addr.clone();
    let config = world.registry.host_config();
    Webhook::start(&[("chains.yaml", policy)], move |c| {
        c.registries.hosts.insert(host, config);
    })
    .await
}

#[tokio::test]
async fn signed_and_attested_images_pass_and_every_tampered_twin_fails() {
    let world = world();
    let hook = hook_for(&world, chains_policy(&world.key("chains"), "https://tekton.dev/chains/v2")).await;

    let response = hook.review(&pod(&world.image("signed"))).await;
    assert_eq!(response["allowed"], true, "{response}");
    let record = hook.audit_records().pop().unwrap();
    assert_eq!(record["images"][0]["digest"], world.digests["signed"], "the audit names the verified digest");
    let verified: Vec<&str> =
        record["images"][0]["verified"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(verified.len(), 2, "{verified:?}");
    assert!(verified[0].starts_with("signature by chains (key sha256:"), "{verified:?}");
    assert!(
        verified[1].starts_with("attestation provenance (https://slsa.dev/provenance/v0.2) by chains (key sha256:"),
        "{verified:?}"
    );
    let warning = format!("the tag can move after verification; pin it as @{}", world.digests["signed"]);
    assert!(response["warnings"][0].as_str().unwrap().ends_with(&warning), "{response}");

    let table = [
        ("unsigned", "unsigned", "no signatures found for"),
        ("wrongkey", "wrong-key", "signature does not verify with"),
        ("replayed", "digest-mismatch", "replayed from another digest"),
        ("tampered", "wrong-key", "signature does not verify"),
        ("subject", "subject-mismatch", "subject digest does not match"),
        ("payloadtype", "wrong-payload-type", "payloadType"),
        ("truncated", "malformed-envelope", "malformed DSSE envelope"),
        ("nonbase64", "malformed-envelope", "malformed DSSE envelope"),
    ];
    for (tag, code, needle) in table {
        let response = hook.review(&pod(&world.image(tag))).await;
        assert_eq!(response["allowed"], false, "{tag}: {response}");
        assert_eq!(response["status"]["code"], 403);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.starts_with("spec.containers[0].image"), "{message}");
        assert!(message.contains("policy \"chains\""), "{message}");
        assert!(message.contains(needle), "{tag}: {message} should contain {needle:?}");
        let reasons = response["auditAnnotations"]["reasons"].as_str().unwrap();
        assert_eq!(reasons.split(',').next(), Some(code), "{tag}: {message}");
    }
}

#[tokio::test]
async fn a_failing_validation_denies_with_the_evaluated_message() {
    let world = world();
    let hook = hook_for(&world, chains_policy(&world.key("chains"), "https://builder.example.com")).await;
    let response = hook.review(&pod(&world.image("signed"))).await;
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("validations[0] failed: built by https://tekton.dev/chains/v2"), "{message}");
    assert_eq!(response["auditAnnotations"]["reasons"], "validation-failed");
}

#[tokio::test]
async fn digest_references_and_a_missing_key_file() {
    let world = world();
    let hook = hook_for(&world, chains_policy(&world.key("chains"), "https://tekton.dev/chains/v2")).await;
    let pinned = format!("{}/team/app@{}", world.registry.addr, world.digests["signed"]);
    let response = hook.review(&pod(&pinned)).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("warnings").is_none(), "a digest reference cannot move: {response}");
    let wrong_digest = format!("{}/team/app@{}", world.registry.addr, world.digests["unsigned"]);
    assert_eq!(hook.review(&pod(&wrong_digest)).await["allowed"], false);

    let missing = chains_policy(&world.keys.path().join("absent.pub"), "x");
    let errors = provgate::policy::load_sources(&[(PathBuf::from("p.yaml"), missing)]).unwrap_err();
    assert!(errors.to_string().contains("absent.pub"), "{errors}");
}

#[tokio::test]
async fn a_stalled_registry_is_a_denial_within_the_deadline() {
    let stall = CannedServer::start([("/v2/".to_owned(), Canned::stall())].into_iter().collect());
    let host = stall.addr.clone();
    let config = stall.host_config();
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vectors/tekton-chains/cosign.pub");
    let hook = Webhook::start(&[("chains.yaml", chains_policy(&key, "x"))], move |c| {
        c.deadline = Duration::from_millis(1500);
        c.registries.hosts.insert(host, config);
    })
    .await;
    let started = Instant::now();
    let response = hook.review(&pod(&format!("{}/team/app:1", stall.addr))).await;
    let took = started.elapsed();
    assert_eq!(response["allowed"], false, "{response}");
    assert!(took < Duration::from_secs(4), "answered after {took:?}, past the 1.5 s deadline");
    let reasons = response["auditAnnotations"]["reasons"].as_str().unwrap();
    assert!(reasons == "deadline-exceeded" || reasons == "registry-timed-out", "{reasons}: {response}");
}

#[tokio::test]
async fn an_unreachable_registry_is_a_denial_naming_it() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vectors/tekton-chains/cosign.pub");
    let host = addr.clone();
    let hook = Webhook::start(&[("chains.yaml", chains_policy(&key, "x"))], move |c| {
        c.registries.hosts.insert(host, provgate::registry::HostConfig { insecure: true, ..Default::default() });
    })
    .await;
    let response = hook.review(&pod(&format!("{addr}/team/app:1"))).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["auditAnnotations"]["reasons"], "registry-unreachable");
    assert!(response["status"]["message"].as_str().unwrap().contains(&addr), "{response}");
}

#[test]
fn verify_reports_digest_platforms_and_artifacts_as_json() {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let (index, amd, arm) = layout.index("multi");
    layout.tag("multi", &index);
    let signed = sign(keys.path(), "chains", index.hex(), &seed("chains-kaniko-slsa-v0.2-statement.json"));
    attach(&mut layout, &index, "sig", (SIMPLE_SIGNING, signed.payload, json!({SIG_ANNOTATION: signed.signature})));
    for tag in layout.tags() {
        registry.push(&layout, &tag, "team/multi", &tag);
    }
    let config = keys.path().join("provgate.yaml");
    std::fs::write(&config, format!("registries:\n  hosts:\n    \"{}\": {{insecure: true}}\n", registry.addr)).unwrap();
    let run = |key: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_provgate"))
            .args(["verify", "--output", "json", "--config"])
            .arg(&config)
            .arg("--key")
            .arg(key)
            .arg(format!("{}/team/multi:multi", registry.addr))
            .output()
            .unwrap()
    };
    let out = run(&keys.path().join("chains.pub"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = &report["images"][0];
    assert_eq!(report["decision"], "allow");
    assert_eq!(image["digest"], index.digest, "a multi-arch tag resolves to the index digest");
    assert_eq!(image["platforms"], json!([amd.digest, arm.digest]));
    let artifacts = image["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert_eq!((artifacts[0]["kind"].as_str(), artifacts[0]["source"].as_str()), (Some("signature"), Some("sig-tag")));
    assert!(image["verified"][0].as_str().unwrap().starts_with("signature by key (key sha256:"), "{image}");

    sign(keys.path(), "stranger", index.hex(), &seed("chains-kaniko-slsa-v0.2-statement.json"));
    let denied = run(&keys.path().join("stranger.pub"));
    assert_eq!(denied.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(report["images"][0]["reasons"], json!(["wrong-key"]));
    assert_eq!(report["images"][0]["digest"], index.digest, "the registry data is reported on denial too");
}

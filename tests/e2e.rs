//! End to end: images and their cosign signatures and Chains-style attestations, signed at test time by PyPI
//! `cryptography`/`securesystemslib`, pushed with skopeo to a real Debian docker-registry on loopback, and judged
//! through the real HTTPS `/validate` endpoint. Every way to pass has a tampered twin that must fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::registry::{Auth, Canned, CannedServer, DSSE, Desc, DockerRegistry, Layout, SIMPLE_SIGNING, tool};
use support::webhook::{Webhook, review};

const SIG_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

fn seed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/seeds").join(name)
}

/// What the independent signer produced for one digest.
struct Signed {
    payload: Vec<u8>,
    signature: String,
    envelope: Vec<u8>,
}

fn sign(keydir: &Path, key: &str, digest_hex: &str, statement: &Path) -> Signed {
    sign_as(keydir, key, digest_hex, statement, "application/vnd.in-toto+json")
}

fn sign_as(keydir: &Path, key: &str, digest_hex: &str, statement: &Path, payload_type: &str) -> Signed {
    let python = tool(
        "PROVGATE_TEST_PYTHON",
        "python3",
        "run ./scripts/test, which creates a venv with PyPI cryptography and securesystemslib",
    );
    let out = keydir.join(format!("{key}-{}-{}.json", &digest_hex[..12], payload_type.len()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signers/e2e_sign.py");
    let status = std::process::Command::new(python)
        .arg(script)
        .arg(keydir)
        .arg(key)
        .arg(digest_hex)
        .arg(statement)
        .arg(&out)
        .arg(payload_type)
        .output()
        .unwrap();
    assert!(status.status.success(), "e2e_sign.py: {}", String::from_utf8_lossy(&status.stderr));
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    Signed {
        payload: b64.decode(v["payload"].as_str().unwrap()).unwrap(),
        signature: v["signature"].as_str().unwrap().to_owned(),
        envelope: serde_json::to_vec(&v["envelope"]).unwrap(),
    }
}

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

fn attach(layout: &mut Layout, image: &Desc, suffix: &str, layer: (&str, Vec<u8>, Value)) {
    let manifest = layout.cosign_manifest(&[layer]);
    layout.tag(&format!("sha256-{}.{suffix}", image.hex()), &manifest);
}

fn world() -> World {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let chains = seed("chains-kaniko-slsa-v0.2-statement.json");
    let mut digests = std::collections::HashMap::new();
    let mut tags = Vec::new();
    for tag in ["signed", "unsigned", "wrongkey", "replayed", "subject", "tampered", "payloadtype"] {
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
            _ => signed.envelope,
        };
        attach(&mut layout, image, "att", (DSSE, envelope, json!({SIG_ANNOTATION: ""})));
    }
    let index_tags: Vec<String> = layout_tags(&layout);
    for tag in index_tags {
        registry.push(&layout, &tag, "team/app", &tag);
    }
    World { registry, keys, digests }
}

fn layout_tags(layout: &Layout) -> Vec<String> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.dir.path().join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap().to_owned())
        .collect()
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

    let table = [
        ("unsigned", "unsigned", "no signatures found for"),
        ("wrongkey", "wrong-key", "signature does not verify with"),
        ("replayed", "digest-mismatch", "replayed from another digest"),
        ("tampered", "wrong-key", "signature does not verify"),
        ("subject", "subject-mismatch", "subject digest does not match"),
        ("payloadtype", "wrong-payload-type", "payloadType"),
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
    assert_eq!(hook.review(&pod(&pinned)).await["allowed"], true);
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
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/vectors/tekton-chains/cosign.pub");
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
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/vectors/tekton-chains/cosign.pub");
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

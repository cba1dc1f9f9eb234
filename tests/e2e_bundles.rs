//! End to end: Sigstore bundles v0.3 (cosign v3 / Chains `sigstore-bundle` shape) made at test time by npm
//! `@sigstore/sign` (+ `@sigstore/mock` Fulcio/Rekor for keyless) for the digest of an image pushed with skopeo,
//! attached as OCI 1.1 referrers by npm `@sigstore/oci` `attachArtifactToImage`, and judged through the real HTTPS
//! `/validate` endpoint. On ferro-oci-server the library uses the referrers API; on Debian docker-registry (no
//! referrers API) it maintains the `sha256-<hex>` tag-schema index, which provgate must read instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use provgate::registry::HostConfig;
use serde_json::{Value, json};
use support::registry::{Auth, Desc, DockerRegistry, Ferro, Layout, OCI_INDEX, tool};
use support::webhook::{Webhook, review};

const BUILDER: &str = "https://tekton.dev/chains/v2";
const ISSUER: &str = "https://token.actions.githubusercontent.com";
const UNTRUSTED: &str = "certificate is not trusted: not issued by any certificate authority in the trusted root";

fn signers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signers")
}

/// `node` and the npm modules `scripts/deps/20-signers.sh` installs.
fn node() -> (PathBuf, PathBuf) {
    let node = tool("PROVGATE_TEST_NODE", "node", "apt-get install nodejs npm");
    let install = "export PROVGATE_CACHE=~/.cache/provgate; source scripts/deps/00-common.sh; \
                   source scripts/deps/20-signers.sh (npm @sigstore/sign @sigstore/oci @sigstore/mock promise-retry)";
    let modules = match std::env::var_os("PROVGATE_TEST_NODE_MODULES") {
        Some(p) if Path::new(&p).join("@sigstore/oci").is_dir() => PathBuf::from(p),
        _ => panic!("PROVGATE_TEST_NODE_MODULES is unset or lacks @sigstore/oci: {install}; scripts/test does this"),
    };
    (node, modules)
}

fn run_node(script: &str, args: &[&str]) -> String {
    let (node, modules) = node();
    let out = Command::new(node).arg(signers_dir().join(script)).args(args).env("NODE_PATH", modules).output().unwrap();
    assert!(
        out.status.success(),
        "node {script} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Bundles for `image` by `tests/signers/bundles.js`, with a fresh key, a fresh mock CA and its trusted roots.
struct Bundles {
    dir: tempfile::TempDir,
}

impl Bundles {
    fn for_image(image: &Desc) -> Self {
        let dir = tempfile::tempdir().unwrap();
        run_node("bundles.js", &[dir.path().to_str().unwrap(), image.hex()]);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name` with its DSSE statement rewritten by `edit`, keeping the signatures made over the original.
    fn tampered(&self, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut bundle: Value = serde_json::from_slice(&std::fs::read(self.path(name)).unwrap()).unwrap();
        let payload = b64.decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap()).unwrap();
        let mut statement: Value = serde_json::from_slice(&payload).unwrap();
        edit(&mut statement);
        bundle["dsseEnvelope"]["payload"] = b64.encode(serde_json::to_vec(&statement).unwrap()).into();
        let out = self.path(&format!("tampered-{name}"));
        std::fs::write(&out, serde_json::to_vec(&bundle).unwrap()).unwrap();
        out
    }
}

/// The two registries the bundles travel through.
enum Registry {
    /// ferro-oci-server: OCI 1.1 referrers API.
    Ferro(Ferro),
    /// Debian docker-registry: no referrers API, so the `sha256-<hex>` tag schema.
    Docker(Box<DockerRegistry>),
}

impl Registry {
    fn addr(&self) -> &str {
        match self {
            Self::Ferro(f) => &f.addr,
            Self::Docker(d) => &d.addr,
        }
    }

    /// Pushes the layout's `tag` to `repo:dest`.
    fn push(&self, layout: &Layout, tag: &str, repo: &str, dest: &str) {
        match self {
            Self::Ferro(f) => f.push(layout, tag, repo, dest),
            Self::Docker(d) => d.push(layout, tag, repo, dest),
        }
    }

    /// Attaches bundle files to `repo@image` with npm `@sigstore/oci`; returns the referrer manifest digests.
    fn attach(&self, repo: &str, image: &Desc, bundles: &[PathBuf]) -> Vec<String> {
        let name = format!("{}/{repo}", self.addr());
        let mut args = vec![name.as_str(), image.digest.as_str()];
        args.extend(bundles.iter().map(|p| p.to_str().unwrap()));
        let out = run_node("attach_bundle.js", &args);
        let descriptors: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(descriptors.len(), bundles.len(), "{out}");
        descriptors.iter().map(|d| d["digest"].as_str().unwrap().to_owned()).collect()
    }

    /// GET `/v2/<repo>/<what>` as an OCI index: (HTTP status, the `manifests[].digest` listed).
    async fn list(&self, repo: &str, what: &str) -> (u16, Vec<String>) {
        let url = format!("http://{}/v2/{repo}/{what}", self.addr());
        let resp = reqwest::Client::new().get(&url).header("accept", OCI_INDEX).send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let digests = body["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["digest"].as_str().unwrap_or_default().to_owned())
            .collect();
        (status, digests)
    }
}

/// A Pod CREATE review whose only container runs `image`.
fn pod(image: &str) -> Value {
    let mut r = review("pod-create");
    r["request"]["object"]["spec"] = json!({"containers": [{"name": "app", "image": image}]});
    r
}

/// Every policy here: a verified signature, SLSA provenance, and the Chains builder.
fn require() -> String {
    format!(
        r#"  require:
    signature: true
    attestations:
      - name: provenance
        predicateType: slsa
  validations:
    - expression: provenance.builder.id == "{BUILDER}"
      messageExpression: '"built by " + provenance.builder.id'
"#
    )
}

fn key_policy(key: &Path) -> String {
    format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: bundles\nspec:\n  match:\n    images: [\"**\"]\n  authorities:\n    - name: chains\n      key: {}\n{}",
        key.display(),
        require()
    )
}

fn keyless_policy(root: &Path, subject_regexp: &str) -> String {
    format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: bundles\nspec:\n  match:\n    images: [\"**\"]\n  authorities:\n    - name: github\n      keyless:\n        trustedRoot: {}\n        identities:\n          - issuer: {ISSUER}\n            subjectRegExp: '{subject_regexp}'\n{}",
        root.display(),
        require()
    )
}

async fn hook(registry: &Registry, policy: String) -> Webhook {
    let host = registry.addr().to_owned();
    Webhook::start(&[("bundles.yaml", policy)], move |c| {
        c.registries.hosts.insert(host, HostConfig { insecure: true, ..HostConfig::default() });
    })
    .await
}

async fn admitted(hook: &Webhook, image: &str) -> Value {
    let response = hook.review(&pod(image)).await;
    assert_eq!(response["allowed"], true, "{image} should be admitted: {response}");
    response
}

/// Asserts a 403 denial whose first reason is `code` and whose message names the policy and contains `needle`;
/// returns the message.
async fn denied(hook: &Webhook, image: &str, code: &str, needle: &str) -> String {
    let response = hook.review(&pod(image)).await;
    assert_eq!(response["allowed"], false, "{image} should be denied: {response}");
    assert_eq!(response["status"]["code"], 403, "{response}");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("spec.containers[0].image"), "{message}");
    assert!(message.contains("policy \"bundles\""), "{message}");
    assert!(message.contains(needle), "{image}: {message:?} should contain {needle:?}");
    let reasons = response["auditAnnotations"]["reasons"].as_str().unwrap();
    assert_eq!(reasons.split(',').next(), Some(code), "{image}: {message}");
    message.to_owned()
}

/// Key-signed bundles (a cosign/sign/v1 signature and a SLSA v1 provenance attestation) on `registry`:
/// - `team/app:signed` carries the bundles for its digest; `team/app:unsigned` carries nothing;
/// - `team/tampered:signed` is the same image, whose provenance bundle had its builder id changed after signing;
/// - `team/replayed:v1` is another image carrying the bundles made for `team/app:signed`;
/// - `team/multi:v1` is a two-platform index whose index digest carries the bundles; its platforms carry none.
async fn key_signed_bundles_through(registry: Registry) {
    let repos = ["team/app", "team/tampered", "team/replayed", "team/multi"];
    let mut layout = Layout::new();
    let signed = layout.image("signed", "amd64");
    layout.tag("signed", &signed);
    let unsigned = layout.image("unsigned", "amd64");
    layout.tag("unsigned", &unsigned);
    let other = layout.image("replayed", "amd64");
    layout.tag("replayed", &other);
    let (index, amd, _arm) = layout.index("multi");
    layout.tag("multi", &index);
    registry.push(&layout, "signed", repos[0], "signed");
    registry.push(&layout, "unsigned", repos[0], "unsigned");
    registry.push(&layout, "signed", repos[1], "signed");
    registry.push(&layout, "replayed", repos[2], "v1");
    registry.push(&layout, "multi", repos[3], "v1");

    let bundles = Bundles::for_image(&signed);
    let sig = bundles.path("key-signature.bundle.json");
    let att = bundles.path("key-attestation.bundle.json");
    let attached = registry.attach(repos[0], &signed, &[sig.clone(), att.clone()]);
    let tampered = bundles.tampered("key-attestation.bundle.json", |s| {
        s["predicate"]["runDetails"]["builder"]["id"] = "https://evil.example/builder".into();
    });
    registry.attach(repos[1], &signed, &[sig.clone(), tampered]);
    registry.attach(repos[2], &other, &[sig, att]);
    // The index's bundles come from another bundles.js run (a fresh key): the policy names that key.
    let index_bundles = Bundles::for_image(&index);
    registry.attach(
        repos[3],
        &index,
        &[index_bundles.path("key-signature.bundle.json"), index_bundles.path("key-attestation.bundle.json")],
    );

    // Where the library put the referrers: the API on ferro, the tag-schema index on docker-registry.
    let (api, mut by_api) = registry.list(repos[0], &format!("referrers/{}", signed.digest)).await;
    let (tag, mut by_tag) = registry.list(repos[0], &format!("manifests/sha256-{}", signed.hex())).await;
    let mut attached = attached;
    for list in [&mut by_api, &mut by_tag, &mut attached] {
        list.sort();
    }
    match &registry {
        Registry::Ferro(_) => {
            assert_eq!((api, &by_api), (200, &attached), "ferro lists both referrers");
            assert_eq!(tag, 404, "with the referrers API, no tag-schema index is written");
        }
        Registry::Docker(_) => {
            assert_eq!(api, 404, "docker-registry has no referrers API");
            assert_eq!((tag, &by_tag), (200, &attached), "the tag-schema index lists both referrers");
        }
    }

    let a = registry.addr().to_owned();
    let hook1 = hook(&registry, key_policy(&bundles.path("key.pub.pem"))).await;
    let response = admitted(&hook1, &format!("{a}/team/app:signed")).await;
    assert!(response["auditAnnotations"]["reasons"].is_null(), "{response}");
    let record = hook1.audit_records().pop().unwrap();
    assert_eq!(record["images"][0]["digest"], signed.digest, "the audit names the verified digest: {record}");
    admitted(&hook1, &format!("{a}/team/app@{}", signed.digest)).await;
    let none = format!("no signatures found for {}", unsigned.digest);
    denied(&hook1, &format!("{a}/team/app:unsigned"), "unsigned", &none).await;
    // Only the provenance bundle was changed: the signature bundle still verifies, the attestation does not.
    let message = denied(&hook1, &format!("{a}/team/tampered:signed"), "wrong-key", "signature does not verify").await;
    assert!(message.contains(r#"attestation "provenance" (slsa) not satisfied"#), "{message}");
    assert!(!message.contains("no valid signature"), "the signature bundle is intact: {message}");
    let replayed = format!("subject digest does not match image (subjects: {})", signed.digest);
    denied(&hook1, &format!("{a}/team/replayed:v1"), "subject-mismatch", &replayed).await;

    let hook2 = hook(&registry, key_policy(&index_bundles.path("key.pub.pem"))).await;
    admitted(&hook2, &format!("{a}/team/multi:v1")).await;
    let record = hook2.audit_records().pop().unwrap();
    assert_eq!(record["images"][0]["digest"], index.digest, "a multi-arch tag is verified at its index digest");
    // A platform manifest pinned by digest has no bundle of its own.
    let none = format!("no signatures found for {}", amd.digest);
    denied(&hook2, &format!("{a}/team/multi@{}", amd.digest), "unsigned", &none).await;
    // The index's bundles under the single image's key (another bundles.js run): not verified.
    denied(&hook1, &format!("{a}/team/multi:v1"), "wrong-key", "signature does not verify with key").await;

    // A policy that says its signer stores in referrers reads them; one that says cosign tags does not, and says so.
    let storing = |places: &str| {
        let policy = key_policy(&bundles.path("key.pub.pem"));
        policy.replace("  require:", &format!("  signatures: {{storage: {places}}}\n  require:"))
    };
    let referrers = hook(&registry, storing("[referrers]")).await;
    admitted(&referrers, &format!("{a}/team/app@{}", signed.digest)).await;
    let tags = hook(&registry, storing("[tags]")).await;
    let only_tags = "only its cosign tags: signatures.storage names no referrers";
    denied(&tags, &format!("{a}/team/app@{}", signed.digest), "unsigned", only_tags).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_signed_bundles_through_the_referrers_api_on_ferro() {
    key_signed_bundles_through(Registry::Ferro(Ferro::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_signed_bundles_through_the_tag_schema_on_docker_registry() {
    key_signed_bundles_through(Registry::Docker(Box::new(DockerRegistry::start(Auth::None)))).await;
}

/// Keyless bundles (mock Fulcio certificate for a GitHub Actions identity with an SCT from the mock CT log, mock
/// Rekor `intoto` entry): admitted under the trusted root bundles.js wrote and the right identity; denied for another
/// identity, under roots whose CAs did not issue the certificate (the public-good root, and another mock CA), and
/// under a root that lists another CT log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_bundles_need_the_identity_and_the_trusted_root() {
    let registry = Registry::Ferro(Ferro::start());
    let mut layout = Layout::new();
    let image = layout.image("keyless", "amd64");
    layout.tag("v1", &image);
    registry.push(&layout, "v1", "team/keyless", "v1");
    let bundles = Bundles::for_image(&image);
    registry.attach(
        "team/keyless",
        &image,
        &[bundles.path("keyless-signature.bundle.json"), bundles.path("keyless-attestation.bundle.json")],
    );
    let reference = format!("{}/team/keyless:v1", registry.addr());
    let root = bundles.path("keyless.trusted_root.json");

    let right = hook(&registry, keyless_policy(&root, r"^https://github\.com/acme/app/.*$")).await;
    admitted(&right, &reference).await;
    let record = right.audit_records().pop().unwrap();
    assert_eq!(record["images"][0]["digest"], image.digest, "{record}");

    let wrong = hook(&registry, keyless_policy(&root, r"^https://github\.com/evil/.*$")).await;
    let message = denied(&wrong, &reference, "identity-mismatch", "matches none of the allowed identities").await;
    let identity =
        r#"certificate identity "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main""#;
    assert!(message.contains(identity), "the denial names the certificate's identity: {message}");

    let public_good =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vectors/sigstore-public-good/trusted_root.json");
    let public = hook(&registry, keyless_policy(&public_good, ".*")).await;
    denied(&public, &reference, "untrusted-certificate", UNTRUSTED).await;

    let other = hook(&registry, keyless_policy(&bundles.path("other.trusted_root.json"), ".*")).await;
    denied(&other, &reference, "untrusted-certificate", UNTRUSTED).await;

    // The right CA, but the trusted root lists another CT log than the one whose SCT the mock Fulcio embedded.
    let read = |name: &str| serde_json::from_slice::<Value>(&std::fs::read(bundles.path(name)).unwrap()).unwrap();
    let mut swapped = read("keyless.trusted_root.json");
    swapped["ctlogs"] = read("other.trusted_root.json")["ctlogs"].clone();
    let swapped_path = bundles.path("swapped-ctlog.trusted_root.json");
    std::fs::write(&swapped_path, swapped.to_string()).unwrap();
    let unlogged = hook(&registry, keyless_policy(&swapped_path, ".*")).await;
    denied(&unlogged, &reference, "sct-unknown-log", "no embedded SCT is from a CT log in the trusted root").await;
}

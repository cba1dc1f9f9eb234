//! Attacks on the decision path (issue: adversarial hardening), each driven through the real HTTPS `/validate`
//! against a real docker-registry holding crafted content, or a loopback server answering crafted bytes. Each test
//! failed on the code before its fix; every way to pass has its twin that must fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::registry::{
    Auth, Canned, CannedServer, DSSE, Desc, DockerRegistry, Layout, OCI_INDEX, OCI_MANIFEST, SIMPLE_SIGNING,
};
use support::signing::{SIG_ANNOTATION, attach, seed, sign, sign_image};
use support::webhook::{Webhook, review};

fn pod(images: &[&str]) -> Value {
    let mut r = review("pod-create");
    let containers: Vec<Value> =
        images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect();
    r["request"]["object"]["spec"] = json!({"containers": containers});
    r
}

fn reasons(response: &Value) -> String {
    response["auditAnnotations"]["reasons"].as_str().unwrap_or_default().to_owned()
}

fn message(response: &Value) -> String {
    response["status"]["message"].as_str().unwrap_or_default().to_owned()
}

fn keyed_policy(key: &Path, require: &str, validations: &str) -> String {
    format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: chains\nspec:\n  match:\n    images: [\"**\"]\n  authorities:\n    - name: chains\n      key: {}\n{require}{validations}",
        key.display()
    )
}

async fn hook_for(registry: &DockerRegistry, policy: String) -> Webhook {
    let host = registry.addr.clone();
    let config = registry.host_config();
    Webhook::start(&[("p.yaml", policy)], move |c| {
        c.registries.hosts.insert(host, config);
    })
    .await
}

fn push_all(registry: &DockerRegistry, layout: &Layout, repo: &str, tags: &[&str]) {
    for tag in tags {
        registry.push(layout, tag, repo, tag);
    }
}

/// Cosign's `.sig`/`.att` tags of every `Desc` a test attaches to live in the layout under their own names.
fn push_cosign_tags(registry: &DockerRegistry, layout: &Layout, repo: &str, of: &[&Desc]) {
    for d in of {
        for suffix in ["sig", "att"] {
            let tag = format!("sha256-{}.{suffix}", d.hex());
            let index: Value =
                serde_json::from_slice(&std::fs::read(layout.dir.path().join("index.json")).unwrap()).unwrap();
            let present = index["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag.as_str());
            if present {
                registry.push(layout, &tag, repo, &tag);
            }
        }
    }
}

/// Item 1: an index an attacker wrote, listing a legitimately attested manifest next to their own, with the
/// legitimate `.att` copied beside it. The statement's subject is a platform of the index, but nobody verified the
/// index, so nothing vouches that its platform list belongs together.
#[tokio::test]
async fn an_unverified_index_gets_no_credit_from_its_platforms() {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let legit = layout.image("legit", "s390x");
    let evil = layout.image("evil", "amd64");
    let index_of = |layout: &Layout, note: &str| {
        let mut a = legit.json();
        a["platform"] = json!({"os": "linux", "architecture": "s390x"});
        let mut b = evil.json();
        b["platform"] = json!({"os": "linux", "architecture": "amd64"});
        layout.json(
            OCI_INDEX,
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [a, b], "annotations": {"note": note}}),
        )
    };
    let forged = index_of(&layout, "forged");
    let vouched = index_of(&layout, "vouched");
    layout.tag("forged", &forged);
    layout.tag("vouched", &vouched);
    let statement = seed("chains-kaniko-slsa-v0.2-statement.json");
    // The legitimate attestation names the legit manifest; it is copied beside both indexes.
    let legit_att = sign(keys.path(), "chains", legit.hex(), &statement).envelope;
    for index in [&forged, &vouched] {
        attach(&mut layout, index, "att", (DSSE, legit_att.clone(), json!({SIG_ANNOTATION: ""})));
    }
    // The twin that must pass: the same platform list, in an index the authority signed.
    let signed = sign(keys.path(), "chains", vouched.hex(), &statement);
    attach(&mut layout, &vouched, "sig", (SIMPLE_SIGNING, signed.payload, json!({SIG_ANNOTATION: signed.signature})));
    push_all(&registry, &layout, "team/app", &["forged", "vouched"]);
    push_cosign_tags(&registry, &layout, "team/app", &[&forged, &vouched]);

    let require = "  require:\n    attestations:\n      - name: provenance\n        predicateType: slsa\n";
    let hook = hook_for(&registry, keyed_policy(&keys.path().join("chains.pub"), require, "")).await;
    let response = hook.review(&pod(&[&format!("{}/team/app:forged", registry.addr)])).await;
    assert_eq!(response["allowed"], false, "a forged index borrowed a platform's attestation: {response}");
    assert_eq!(reasons(&response), "subject-mismatch", "{response}");
    assert!(message(&response).contains("attestation \"provenance\""), "{response}");

    let response = hook.review(&pod(&[&format!("{}/team/app:vouched", registry.addr)])).await;
    assert_eq!(response["allowed"], true, "a signed index vouches for its platforms: {response}");
}

/// Items 2 and 11: authorities without `require` mean "must be signed by"; a `require` that asks nothing of its
/// authorities, or counts one authority twice, does not load.
#[tokio::test]
async fn authorities_without_require_demand_a_signature() {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let unsigned = layout.image("unsigned", "amd64");
    let signed = layout.image("signed", "amd64");
    layout.tag("unsigned", &unsigned);
    layout.tag("signed", &signed);
    sign_image(&mut layout, keys.path(), &signed);
    push_all(&registry, &layout, "team/app", &["unsigned", "signed"]);
    push_cosign_tags(&registry, &layout, "team/app", &[&signed]);
    let key = keys.path().join("chains.pub");

    let hook = hook_for(&registry, keyed_policy(&key, "", "")).await;
    let response = hook.review(&pod(&[&format!("{}/team/app:unsigned", registry.addr)])).await;
    assert_eq!(response["allowed"], false, "authorities with no require admitted an unsigned image: {response}");
    assert_eq!(reasons(&response), "unsigned");
    let response = hook.review(&pod(&[&format!("{}/team/app:signed", registry.addr)])).await;
    assert_eq!(response["allowed"], true, "{response}");

    let check = |policy: String| {
        let file = keys.path().join("check.yaml");
        std::fs::write(&file, policy).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_provgate"))
            .args(["policy", "check"])
            .arg(&file)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = check(keyed_policy(&key, "", ""));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("requires signature from authority chains"), "policy check shows what is required: {out}");
    for (require, needle) in [
        ("  require: {}\n", "asks for neither a signature nor an attestation"),
        ("  require:\n    signature: false\n", "unsigned images would be admitted"),
        ("  require:\n    signature: {authorities: [chains, chains], match: all}\n", "listed twice"),
    ] {
        let (code, out) = check(keyed_policy(&key, require, ""));
        assert_eq!(code, Some(1), "{require}: {out}");
        assert!(out.contains("check.yaml:") && out.contains(needle), "{require}: {out}");
    }
}

/// Item 3: a tag admitted once, then moved to an unsigned image, is resolved again at the next review.
#[tokio::test]
async fn a_moved_tag_is_resolved_at_every_review() {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let signed = layout.image("signed", "amd64");
    let unsigned = layout.image("unsigned", "amd64");
    layout.tag("signed", &signed);
    layout.tag("unsigned", &unsigned);
    sign_image(&mut layout, keys.path(), &signed);
    push_cosign_tags(&registry, &layout, "team/app", &[&signed]);
    registry.push(&layout, "signed", "team/app", "live");

    let hook = hook_for(&registry, keyed_policy(&keys.path().join("chains.pub"), "", "")).await;
    let live = format!("{}/team/app:live", registry.addr);
    let response = hook.review(&pod(&[&live])).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(hook.audit_records().pop().unwrap()["images"][0]["digest"], signed.digest);

    registry.push(&layout, "unsigned", "team/app", "live");
    let response = hook.review(&pod(&[&live])).await;
    assert_eq!(response["allowed"], false, "the tag now names an unsigned image: {response}");
    assert_eq!(reasons(&response), "unsigned");
    assert_eq!(hook.audit_records().pop().unwrap()["images"][0]["digest"], unsigned.digest);
}

/// Item 4: a Pod with thousands of containers is refused before any per-image work, with the reason.
#[tokio::test]
async fn a_pod_with_thousands_of_images_is_denied_before_any_work() {
    let policy = "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: team\nspec:\n  match:\n    images: [\"registry.example.com/team/**\"]\n  validations:\n    - expression: object.spec.containers.all(c, c.name != \"\")\n";
    let hook = Webhook::start(&[("p.yaml", policy.to_owned())], |_| {}).await;
    let images: Vec<String> = (0..2000).map(|i| format!("registry.example.com/team/app:{i}")).collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let mut r = pod(&refs);
    r["request"]["dryRun"] = json!(true);
    let response = hook.review(&r).await;
    assert_eq!(response["allowed"], false, "{}", &response.to_string()[..300]);
    assert_eq!(reasons(&response), "too-many-images");
    assert!(message(&response).contains("2000 images, more than the 256"), "{}", message(&response));
    let record = hook.audit_records().pop().unwrap();
    assert_eq!(record["reason"], "too-many-images", "the refusal is audited");

    // Within the cap, every image is judged and the object's variables reach CEL.
    let some: Vec<&str> = refs[..200].to_vec();
    assert_eq!(hook.review(&pod(&some)).await["allowed"], true);
}

/// An object over `maxObjectBytes` is denied before any work, measured as it would be written out compactly: a
/// review whose text is short enough is not measured again, and one of short numbers that grow when written out
/// (`1e15` is `1000000000000000.0`) still is.
#[tokio::test]
async fn an_object_over_max_object_bytes_is_denied_however_compactly_it_was_sent() {
    let policy = "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: team\nspec:\n  match:\n    images: [\"registry.example.com/team/**\"]\n  validations:\n    - expression: object.spec.containers.all(c, c.name != \"\")\n";
    let hook = Webhook::start(&[("p.yaml", policy.to_owned())], |c| c.max_object_bytes = 8000).await;
    let answer = |numbers: &str| {
        let mut r = pod(&["registry.example.com/team/app:1"]);
        r["request"]["object"]["metadata"]["labels"] = json!({"n": "NUMBERS"});
        let text = serde_json::to_string(&r).unwrap().replace("\"NUMBERS\"", &format!("[{numbers}]"));
        let hook = &hook;
        async move {
            let (status, body) = hook.post_raw(text.clone().into_bytes()).await;
            assert_eq!(status, 200, "{body}");
            let out: Value = serde_json::from_str(&body).unwrap();
            (text.len(), out["response"].clone())
        }
    };
    // 600 numbers sent as `1e15` (about 3 KB of text) are about 11 KB written out: over the limit.
    let grown = vec!["1e15"; 600].join(",");
    let (sent, response) = answer(&grown).await;
    assert!(sent < 8000 && sent * 5 > 8000, "{sent}");
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(reasons(&response), "object-too-large");
    assert!(message(&response).contains("more than the 8000 provgate evaluates"), "{}", message(&response));
    // Its twin: the same numbers written as small integers fit.
    let (_, response) = answer(&vec!["1"; 600].join(",")).await;
    assert_eq!(response["allowed"], true, "{response}");
    // Plainly over the limit as sent.
    let (sent, response) = answer(&vec!["1000000"; 1200].join(",")).await;
    assert!(sent > 8000, "{sent}");
    assert_eq!(reasons(&response), "object-too-large", "{response}");
}

/// Item 6: names the runtime resolves to the same registry are governed by the policy written for it.
#[tokio::test]
async fn registry_aliases_are_governed_like_their_canonical_name() {
    let policy = "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: pinned\nspec:\n  match:\n    images: [\"docker.io/library/**\", \"localhost:5000/**\", \"registry.example.com/team/**\"]\n  require:\n    digest: true\n";
    let hook = Webhook::start(&[("p.yaml", policy.to_owned())], |c| {
        c.no_match = provgate::decide::NoMatch::Allow;
    })
    .await;
    for alias in [
        "registry-1.docker.io/library/nginx:1",
        "index.docker.io/nginx:1",
        "Docker.IO/nginx:1",
        "registry.hub.docker.com/library/nginx",
        "LOCALHOST:5000/x:1",
        "Registry.Example.COM:443/team/app:1",
    ] {
        let response = hook.review(&pod(&[alias])).await;
        assert_eq!(response["allowed"], false, "{alias} escaped the policy: {response}");
        assert_eq!(reasons(&response), "tag-not-pinned", "{alias}");
    }
    assert_eq!(hook.review(&pod(&["quay.io/other/x:1"])).await["allowed"], true, "ungoverned follows noMatch");
}

/// An OCI index of `n` platform manifests that exist nowhere, served with its digest.
fn big_index(n: usize) -> (Vec<u8>, String) {
    let manifests: Vec<Value> = (0..n)
        .map(|i| {
            let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("m{i}"))));
            json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 500,
                   "platform": {"os": "linux", "architecture": "amd64", "variant": format!("v{i}")}})
        })
        .collect();
    let bytes =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})).unwrap();
    let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)));
    (bytes, digest)
}

fn manifest_routes(routes: &mut HashMap<String, Canned>, repo: &str, reference: &str, bytes: &[u8], mt: &str) {
    let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)));
    let answer = Canned::ok(mt, bytes.to_vec()).header("Docker-Content-Digest", &digest);
    routes.insert(format!("/v2/{repo}/manifests/{reference}"), answer.clone());
    routes.insert(format!("/v2/{repo}/manifests/{digest}"), answer);
}

/// Item 9: `platforms: all` over an index of many platforms. An unsigned index must not make provgate fan out to
/// its platforms; a signed one with more platforms than the cap is denied without fetching them.
#[tokio::test]
async fn platforms_are_fetched_only_for_a_verified_index_and_only_up_to_the_cap() {
    let keys = tempfile::tempdir().unwrap();
    let (bytes, digest) = big_index(100);
    let mut routes = HashMap::new();
    manifest_routes(&mut routes, "team/app", "unsigned", &bytes, OCI_INDEX);
    let unsigned = CannedServer::start(routes.clone());

    // The same index, signed by the authority, on a second server.
    let hex = &digest[7..];
    let s = sign(keys.path(), "chains", hex, &seed("chains-kaniko-slsa-v0.2-statement.json"));
    let layer_digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&s.payload)));
    let sig_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                   "digest": format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"{}")))},
        "layers": [{"mediaType": SIMPLE_SIGNING, "size": s.payload.len(), "digest": layer_digest,
                    "annotations": {SIG_ANNOTATION: s.signature}}]
    }))
    .unwrap();
    let mut signed_routes = routes;
    manifest_routes(&mut signed_routes, "team/app", "signed", &bytes, OCI_INDEX);
    manifest_routes(&mut signed_routes, "team/app", &format!("sha256-{hex}.sig"), &sig_manifest, OCI_MANIFEST);
    signed_routes.insert(
        format!("/v2/team/app/blobs/{layer_digest}"),
        Canned::ok("application/octet-stream", s.payload.clone()),
    );
    let signed = CannedServer::start(signed_routes);

    let require = "  require:\n    signature: true\n    platforms: all\n";
    let policy = keyed_policy(&keys.path().join("chains.pub"), require, "");
    let (a, b) = (unsigned.addr.clone(), signed.addr.clone());
    let (ca, cb) = (unsigned.host_config(), signed.host_config());
    let hook = Webhook::start(&[("p.yaml", policy)], move |c| {
        c.registries.hosts.insert(a, ca);
        c.registries.hosts.insert(b, cb);
    })
    .await;
    let platform_hits = |server: &CannedServer| {
        server.hits.lock().unwrap().iter().filter(|(t, _)| t.contains("sha256-") && !t.contains(hex)).count()
    };

    let response = hook.review(&pod(&[&format!("{}/team/app:unsigned", unsigned.addr)])).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(reasons(&response).starts_with("unsigned"), "{response}");
    assert_eq!(platform_hits(&unsigned), 0, "no platform of an unsigned index is fetched");
    let total: usize = unsigned.hits.lock().unwrap().values().sum();
    assert!(total <= 10, "an unsigned index cost {total} requests");

    let response = hook.review(&pod(&[&format!("{}/team/app:signed", signed.addr)])).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(reasons(&response), "too-many-platforms", "{response}");
    assert!(message(&response).contains("100 platform manifests, more than the 32"), "{response}");
    assert_eq!(platform_hits(&signed), 0, "nothing past the cap is fetched");
}

/// Item 12: UPDATE credit is given only to the same field holding the same digest; a tag is judged again, and an
/// image moved to another field is judged there.
#[tokio::test]
async fn update_credit_needs_the_same_field_and_a_digest() {
    let policy = "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: team\nspec:\n  match:\n    images: [\"registry.example.com/team/**\"]\n";
    let hook = Webhook::start(&[("p.yaml", policy.to_owned())], |_| {}).await;
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let pinned = format!("quay.io/evil/miner@{d}");
    let update = |old: Value, new: Value| {
        let mut r = review("pod-create");
        r["request"]["operation"] = json!("UPDATE");
        r["request"]["oldObject"] = r["request"]["object"].clone();
        r["request"]["oldObject"]["spec"] = old;
        r["request"]["object"]["spec"] = new;
        r
    };
    let tag = "quay.io/evil/miner:1";
    let table = [
        // The same tag in the same field: the tag may name another image now.
        (
            json!({"containers": [{"name": "a", "image": tag}]}),
            json!({"containers": [{"name": "a", "image": tag}]}),
            false,
        ),
        // A tag from an init container moved to a container.
        (
            json!({"initContainers": [{"name": "a", "image": tag}], "containers": [{"name": "b", "image": "registry.example.com/team/app:1"}]}),
            json!({"containers": [{"name": "b", "image": "registry.example.com/team/app:1"}, {"name": "a", "image": tag}]}),
            false,
        ),
        // A digest moved to another field.
        (
            json!({"initContainers": [{"name": "a", "image": pinned}], "containers": []}),
            json!({"containers": [{"name": "a", "image": pinned}]}),
            false,
        ),
        // The same digest in the same field keeps its credit.
        (
            json!({"containers": [{"name": "a", "image": pinned}]}),
            json!({"containers": [{"name": "a", "image": pinned}]}),
            true,
        ),
    ];
    for (old, new, allowed) in table {
        let response = hook.review(&update(old.clone(), new.clone())).await;
        assert_eq!(response["allowed"], allowed, "{old} -> {new}: {response}");
        if !allowed {
            assert_eq!(reasons(&response), "no-policy", "{response}");
        }
    }
}

/// Item 13: every verified statement is validated, so the decision cannot depend on the order the registry lists
/// them in; the signature's docker-reference is there for a policy to bind.
#[tokio::test]
async fn every_verified_statement_is_validated_and_the_docker_reference_can_be_bound() {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let image = layout.image("two", "amd64");
    layout.tag("two", &image);
    let good = seed("chains-kaniko-slsa-v0.2-statement.json");
    let mut other: Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    other["predicate"]["builder"]["id"] = json!("https://builder.attacker.example/");
    let other_path: PathBuf = keys.path().join("other-statement.json");
    std::fs::write(&other_path, serde_json::to_vec(&other).unwrap()).unwrap();
    let first = sign(keys.path(), "chains", image.hex(), &good);
    let second = sign(keys.path(), "chains", image.hex(), &other_path);
    let att = layout.cosign_manifest(&[
        (DSSE, first.envelope.clone(), json!({SIG_ANNOTATION: ""})),
        (DSSE, second.envelope, json!({SIG_ANNOTATION: ""})),
    ]);
    layout.tag(&format!("sha256-{}.att", image.hex()), &att);
    attach(&mut layout, &image, "sig", (SIMPLE_SIGNING, first.payload, json!({SIG_ANNOTATION: first.signature})));
    push_all(&registry, &layout, "team/app", &["two"]);
    push_cosign_tags(&registry, &layout, "team/app", &[&image]);

    let require =
        "  require:\n    signature: true\n    attestations:\n      - name: provenance\n        predicateType: slsa\n";
    let key = keys.path().join("chains.pub");
    let validations = |expr: &str| format!("  validations:\n    - expression: '{expr}'\n");
    let builder = validations(r#"provenance.builder.id == "https://tekton.dev/chains/v2""#);
    let hook = hook_for(&registry, keyed_policy(&key, require, &builder)).await;
    let response = hook.review(&pod(&[&format!("{}/team/app:two", registry.addr)])).await;
    assert_eq!(response["allowed"], false, "one of two verified statements names another builder: {response}");
    assert_eq!(reasons(&response), "validation-failed");
    assert!(message(&response).contains("provenance statement"), "{response}");

    for (reference, allowed) in [("index.docker.io/acme/app", true), ("index.docker.io/acme/other", false)] {
        let bind =
            validations(&format!(r#"size(signatures) > 0 && signatures.all(s, s.dockerReference == "{reference}")"#));
        let require = "  require:\n    signature: true\n";
        let hook = hook_for(&registry, keyed_policy(&key, require, &bind)).await;
        let response = hook.review(&pod(&[&format!("{}/team/app:two", registry.addr)])).await;
        assert_eq!(response["allowed"], allowed, "{reference}: {response}");
    }
}

/// Item 14 (and the pipeline): an image is verified once per (digest, authority), however many fields name it and
/// however many reviews ask, and each bundle or envelope is parsed in that one verification.
#[tokio::test]
async fn an_image_is_verified_once_per_authority_however_often_it_is_reviewed() {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let image = layout.image("once", "amd64");
    layout.tag("once", &image);
    let s = sign(keys.path(), "chains", image.hex(), &seed("chains-kaniko-slsa-v0.2-statement.json"));
    attach(&mut layout, &image, "sig", (SIMPLE_SIGNING, s.payload, json!({SIG_ANNOTATION: s.signature})));
    attach(&mut layout, &image, "att", (DSSE, s.envelope, json!({SIG_ANNOTATION: ""})));
    push_all(&registry, &layout, "team/app", &["once"]);
    push_cosign_tags(&registry, &layout, "team/app", &[&image]);
    let require =
        "  require:\n    signature: true\n    attestations:\n      - name: provenance\n        predicateType: slsa\n";
    let hook = hook_for(&registry, keyed_policy(&keys.path().join("chains.pub"), require, "")).await;
    let reference = format!("{}/team/app:once", registry.addr);
    let counted = || async {
        let (_, metrics) = hook.admin_get("/metrics").await;
        let n = metrics
            .lines()
            .find_map(|l| l.strip_prefix("provgate_verifications_total ")?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no provgate_verifications_total in {metrics}"));
        (n, metrics)
    };
    for _ in 0..3 {
        let response = hook.review(&pod(&[&reference, &reference, &reference])).await;
        assert_eq!(response["allowed"], true, "{response}");
    }
    let (n, metrics) = counted().await;
    assert_eq!(n, 1, "one digest, one authority: one verification for three fields and three reviews: {metrics}");
    // The exposition parses as Prometheus text, and the cache lookups add up: one miss, then hits.
    let lines = metrics.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let lookups = |cache: &str, result: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "provgate_cache_requests_total"
                    && s.labels.get("cache") == Some(cache)
                    && s.labels.get("result") == Some(result)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{s:?}"),
            })
    };
    // The artifacts and their verification are looked up once; later reviews read the image's evidence whole.
    for cache in ["artifacts", "verifications"] {
        assert_eq!((lookups(cache, "miss"), lookups(cache, "hit")), (Some(1.0), None), "{cache}: {metrics}");
    }
    assert_eq!((lookups("images", "miss"), lookups("images", "hit")), (Some(1.0), Some(2.0)), "{metrics}");
    let verified = scrape.samples.iter().find(|s| s.metric == "provgate_verification_duration_seconds_count");
    assert!(verified.is_some(), "verification time is measured: {metrics}");
}

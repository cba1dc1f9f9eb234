//! Evidence by digest (`spec.evidence`): SLSA v1 provenance names an SBOM in `runDetails.byproducts` by sha256;
//! the SBOM (real CycloneDX and SPDX JSON written by syft, `tests/fixtures/evidence/`) lives in an OCI repository of
//! a real docker-registry or in an HTTPS store on loopback (the hostile test server of `tests/support`, speaking
//! TLS under a test CA). Statements are signed at test time by PyPI `cryptography`/`securesystemslib` and pushed
//! with skopeo. Judged through `/validate` and `provgate verify`: the admitted cases and their denied twins (blob
//! swapped, blob missing, oversize, denied license, blocked purl, an SBOM named only by an untrusted statement),
//! and a hostile store (huge, endless, stalled, redirecting, failing) denied within the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest as _;
use support::registry::{Answer, Auth, Body, DSSE, Desc, DockerRegistry, Hostile, Layout, SIMPLE_SIGNING};
use support::signing::{SIG_ANNOTATION, sign};
use support::webhook::{Webhook, message, reasons, review};

const CYCLONEDX: &str = "application/vnd.cyclonedx+json";
const SPDX: &str = "application/spdx+json";
/// The evidence entries' `maxBytes` in these policies.
const MAX_BYTES: u64 = 64 << 10;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/evidence").join(name)).unwrap()
}

fn hex_of(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The SBOMs of the tests: the real ones, and twins derived from them by one change each.
fn sboms() -> HashMap<&'static str, (Vec<u8>, &'static str)> {
    let cdx = fixture("venv.cdx.json");
    let text = String::from_utf8(cdx.clone()).unwrap();
    assert!(text.contains("\"MIT-0\"") && text.contains("pkg:pypi/pycparser@3.12"));
    let mut out = HashMap::new();
    out.insert("cdx", (cdx.clone(), CYCLONEDX));
    out.insert("spdx", (fixture("venv.spdx.json"), SPDX));
    // The same document with one more byte: another digest, for the swapped-blob twin.
    out.insert("cdx2", ([cdx.as_slice(), b"\n"].concat(), CYCLONEDX));
    // And two more: named by a signed statement, published nowhere.
    out.insert("cdx3", ([cdx.as_slice(), b"\n\n"].concat(), CYCLONEDX));
    // Signed for, served as signed, and not an SBOM at all.
    out.insert("garbage", (b"not json, yet its digest is signed".to_vec(), CYCLONEDX));
    out.insert("license", (text.replacen("\"MIT-0\"", "\"AGPL-3.0-only\"", 1).into_bytes(), CYCLONEDX));
    out.insert("purl", (text.replace("pkg:pypi/pycparser@3.12", "pkg:pypi/ctx@0.1.2").into_bytes(), CYCLONEDX));
    // Still a valid SBOM, but larger than maxBytes.
    out.insert("big", ([" ".repeat(MAX_BYTES as usize).as_bytes(), cdx.as_slice()].concat(), CYCLONEDX));
    out
}

/// A SLSA v1 statement (a real Chains one) whose byproducts name `sboms` as resourceDescriptors, written to `dir`.
fn statement(dir: &Path, name: &str, sboms: &[(&[u8], &str)]) -> std::path::PathBuf {
    let seed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/statements/chains-slsa-v2alpha4-task-output-image.json");
    let mut s: Value = serde_json::from_slice(&std::fs::read(seed).unwrap()).unwrap();
    let byproducts = s["predicate"]["runDetails"]["byproducts"].as_array_mut().unwrap();
    for (bytes, media_type) in sboms {
        let hex = hex_of(bytes);
        byproducts.push(json!({"name": "sbom", "uri": format!("sbom/{}", &hex[..12]), "mediaType": media_type,
            "digest": {"sha256": hex}}));
    }
    let path = dir.join(format!("{name}.statement.json"));
    std::fs::write(&path, serde_json::to_vec(&s).unwrap()).unwrap();
    path
}

/// The registry with the images, the OCI evidence repository and the HTTPS store.
struct World {
    registry: DockerRegistry,
    store: Hostile,
    keys: tempfile::TempDir,
    digests: HashMap<&'static str, String>,
    sboms: HashMap<&'static str, (Vec<u8>, &'static str)>,
}

impl World {
    fn key(&self, name: &str) -> std::path::PathBuf {
        self.keys.path().join(format!("{name}.pub"))
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/team/app:{tag}", self.registry.addr)
    }

    fn hex(&self, sbom: &str) -> String {
        hex_of(&self.sboms[sbom].0)
    }

    /// Serves `bytes` as the document `hex` of the HTTPS store.
    fn serve(&self, hex: &str, bytes: Vec<u8>) {
        self.store.set(&format!("/cas/sha256/{hex}"), Answer::ok("application/json", bytes));
    }

    fn store_url(&self) -> String {
        format!("https://{}/cas", self.store.addr)
    }
}

/// Signs `image` (signature, and the provenance at `statement`) with `key` into `layout`; one more attestation
/// layer when `extra` is given.
fn sign_image(layout: &mut Layout, keys: &Path, image: &Desc, statement: &Path, extra: Option<(&str, &Path)>) {
    let signed = sign(keys, "chains", image.hex(), statement);
    let sig = layout.cosign_manifest(&[(SIMPLE_SIGNING, signed.payload, json!({SIG_ANNOTATION: signed.signature}))]);
    layout.tag(&format!("sha256-{}.sig", image.hex()), &sig);
    let mut layers = vec![(DSSE, signed.envelope, json!({SIG_ANNOTATION: ""}))];
    if let Some((key, other)) = extra {
        layers.push((DSSE, sign(keys, key, image.hex(), other).envelope, json!({SIG_ANNOTATION: ""})));
    }
    let att = layout.cosign_manifest(&layers);
    layout.tag(&format!("sha256-{}.att", image.hex()), &att);
}

fn world() -> World {
    let registry = DockerRegistry::start(Auth::None);
    let store = Hostile::start_tls();
    let keys = tempfile::tempdir().unwrap();
    let sboms = sboms();
    let (mut app, mut evidence) = (Layout::new(), Layout::new());
    let mut digests = HashMap::new();
    // tag -> the SBOMs its provenance names
    let cases: [(&'static str, &[&str]); 12] = [
        ("oci-cdx", &["cdx"]),
        ("oci-missing", &["spdx"]),
        ("https-spdx", &["spdx"]),
        ("https-swapped", &["cdx2"]),
        ("https-missing", &["cdx3"]),
        ("https-garbage", &["garbage"]),
        ("https-big", &["big"]),
        ("https-license", &["license"]),
        ("https-purl", &["purl"]),
        ("https-elsewhere", &["license"]),
        ("https-none", &[]),
        ("plain", &[]),
    ];
    for (tag, named) in cases {
        let image = app.image(tag, "amd64");
        app.tag(tag, &image);
        digests.insert(tag, image.digest.clone());
        let docs: Vec<(&[u8], &str)> = named.iter().map(|n| (sboms[n].0.as_slice(), sboms[n].1)).collect();
        let provenance = statement(keys.path(), tag, &docs);
        // An SBOM the image's own provenance does not name, vouched for only by a stranger's statement.
        let stranger = ["https-elsewhere", "https-none"]
            .contains(&tag)
            .then(|| ("stranger", statement(keys.path(), &format!("{tag}-stranger"), &[(&sboms["cdx"].0, CYCLONEDX)])));
        let extra = stranger.as_ref().map(|(k, p)| (*k, p.as_path()));
        sign_image(&mut app, keys.path(), &image, &provenance, extra);
    }
    // Not signed at all.
    let unsigned = app.image("https-unsigned", "amd64");
    app.tag("https-unsigned", &unsigned);
    digests.insert("https-unsigned", unsigned.digest.clone());
    // The OCI store holds the CycloneDX SBOM as the layer of an artifact (cosign's `.sbom` shape).
    let sbom = evidence.cosign_manifest(&[(CYCLONEDX, sboms["cdx"].0.clone(), json!({}))]);
    evidence.tag("sbom-cdx", &sbom);
    for tag in app.tags() {
        registry.push(&app, &tag, "team/app", &tag);
    }
    registry.push(&evidence, "sbom-cdx", "team/evidence", "sbom-cdx");
    let world = World { registry, store, keys, digests, sboms };
    for name in ["spdx", "big", "license", "purl", "cdx", "garbage"] {
        world.serve(&world.hex(name), world.sboms[name].0.clone());
    }
    // Swapped: the store answers the signed digest with other bytes.
    world.serve(&world.hex("cdx2"), world.sboms["spdx"].0.clone());
    world
}

const FROM: &str = r#"attestations.provenance.map(s, s.predicate.?runDetails.?byproducts.orValue([])).flatten().filter(b, b.?mediaType.orValue("") in ["application/vnd.cyclonedx+json", "application/spdx+json"])"#;

/// A policy like `policies/sbom-evidence.yaml`, for `images`, reading SBOMs from `store` (YAML flow map).
fn policy(name: &str, images: &str, key: &Path, store: &str) -> String {
    format!(
        r#"apiVersion: provgate.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: {name}
spec:
  match:
    images: ["{images}"]
  authorities:
    - name: chains
      key: {key}
  require:
    signature: true
    attestations:
      - name: provenance
        predicateType: slsa
  evidence:
    - name: sbom
      from: '{FROM}'
      store: {store}
      maxBytes: {MAX_BYTES}
  validations:
    - expression: size(evidence.sbom) == 1
      message: the signed provenance names no SBOM
    - expression: >-
        evidence.sbom.all(e, attestations.provenance.exists(s,
        s.predicate.runDetails.byproducts.exists(b, b.?digest.?sha256.orValue("") == e.digest.sha256)))
      message: the SBOM is not the one the signed provenance names
    - expression: >-
        evidence.sbom.all(e, e.content.components.all(c, c.licenses.all(l,
        !l.replace("(", " ").replace(")", " ").split(" ").exists(t, t in ["AGPL-3.0-only", "GPL-3.0-only", "SSPL-1.0"]))))
      messageExpression: >-
        "denied license in " + evidence.sbom.map(e, e.content.components.filter(c, c.licenses.exists(l,
        l.replace("(", " ").replace(")", " ").split(" ").exists(t, t in ["AGPL-3.0-only", "GPL-3.0-only", "SSPL-1.0"])))
        .map(c, c.purl)).flatten().join(", ")
    - expression: >-
        evidence.sbom.all(e, e.content.components.all(c, !(c.purl in ["pkg:pypi/ctx@0.1.2", "pkg:npm/event-stream@3.3.6"])))
      messageExpression: >-
        "blocked component " + evidence.sbom.map(e, e.content.components.filter(c,
        c.purl in ["pkg:pypi/ctx@0.1.2", "pkg:npm/event-stream@3.3.6"]).map(c, c.purl)).flatten().join(", ")
"#,
        key = key.display()
    )
}

fn policies(world: &World) -> Vec<(&'static str, String)> {
    let a = &world.registry.addr;
    let key = world.key("chains");
    let plain = format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: plain}}\nspec:\n  match: {{images: \
         [\"{a}/team/app:plain\"]}}\n  authorities: [{{name: chains, key: {}}}]\n",
        key.display()
    );
    vec![
        (
            "oci.yaml",
            policy("sbom-oci", &format!("{a}/team/app:oci-*"), &key, &format!("{{oci: \"{a}/team/evidence\"}}")),
        ),
        (
            "https.yaml",
            policy(
                "sbom-https",
                &format!("{a}/team/app:https-*"),
                &key,
                &format!("{{https: \"{}\"}}", world.store_url()),
            ),
        ),
        ("plain.yaml", plain),
    ]
}

async fn start_hook(world: &World, tweak: impl FnOnce(&mut provgate::config::Config)) -> Webhook {
    let hosts = vec![
        (world.registry.addr.clone(), world.registry.host_config()),
        (world.store.addr.clone(), world.store.host_config()),
    ];
    Webhook::trusting(&policies(world), hosts, tweak).await
}

fn pod(image: &str) -> Value {
    let mut r = review("pod-create");
    r["request"]["object"]["spec"] = json!({"containers": [{"name": "app", "image": image}]});
    r
}

#[tokio::test]
async fn sboms_named_by_signed_provenance_are_fetched_by_digest_checked_and_judged() {
    let world = world();
    let hook = start_hook(&world, |_| {}).await;

    // From the OCI repository, through the registry client.
    let admitted = hook.review(&pod(&world.image("oci-cdx"))).await;
    assert_eq!(admitted["allowed"], true, "{admitted}");
    let record = hook.audit_records().pop().unwrap();
    assert_eq!(record["images"][0]["digest"], world.digests["oci-cdx"]);
    let verified: Vec<&str> =
        record["images"][0]["verified"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let line = format!(
        "evidence sbom sha256:{} (cyclonedx, 12 components) from oci://{}/team/evidence",
        world.hex("cdx"),
        world.registry.addr
    );
    assert!(verified.contains(&line.as_str()), "{verified:?}");

    // From the HTTPS store, in SPDX; a second review reads the document from the cache.
    let spdx = world.hex("spdx");
    let admitted = hook.review(&pod(&world.image("https-spdx"))).await;
    assert_eq!(admitted["allowed"], true, "{admitted}");
    assert_eq!(hook.review(&pod(&world.image("https-spdx"))).await["allowed"], true);
    assert_eq!(world.store.hits(&format!("/cas/sha256/{spdx}")), 1, "cached by digest");
    let (_, metrics) = hook.admin_get("/metrics").await;
    assert!(metrics.contains(r#"provgate_cache_requests_total{cache="evidence",result="hit"} 1"#), "{metrics}");
    let verified = hook.audit_records().pop().unwrap()["images"][0]["verified"].to_string();
    assert!(
        verified.contains(&format!("evidence sbom sha256:{spdx} (spdx, 13 components) from https://")),
        "{verified}"
    );

    // An image whose policies declare no evidence, or that fails its policy's requirements, never reaches the store.
    let before = world.store.total();
    assert_eq!(hook.review(&pod(&world.image("plain"))).await["allowed"], true);
    let unsigned = hook.review(&pod(&world.image("https-unsigned"))).await;
    assert_eq!(reasons(&unsigned), "unsigned,no-attestations", "{unsigned}");
    assert_eq!(world.store.total(), before);

    let table = [
        ("oci-missing", "evidence-missing", format!("sha256:{spdx} is not in oci://")),
        (
            "https-swapped",
            "evidence-digest-mismatch",
            format!("bytes for sha256:{} that hash to sha256:{spdx}", world.hex("cdx2")),
        ),
        ("https-missing", "evidence-missing", format!("sha256:{} is not in https://", world.hex("cdx3"))),
        ("https-big", "evidence-oversize", format!("larger than its maxBytes ({MAX_BYTES} bytes)")),
        ("https-garbage", "evidence-unparsable", "cannot be read as JSON: not JSON".to_owned()),
        (
            "https-license",
            "validation-failed",
            "validations[2] failed: denied license in pkg:pypi/cffi@2.1.1".to_owned(),
        ),
        ("https-purl", "validation-failed", "validations[3] failed: blocked component pkg:pypi/ctx@0.1.2".to_owned()),
        // The signed provenance names the license SBOM; a stranger's statement naming the clean one is not read.
        ("https-elsewhere", "validation-failed", "denied license in pkg:pypi/cffi@2.1.1".to_owned()),
        // Only a stranger's statement names an SBOM: none is selected.
        ("https-none", "validation-failed", "validations[0] failed: the signed provenance names no SBOM".to_owned()),
    ];
    for (tag, code, needle) in &table {
        let denied = hook.review(&pod(&world.image(tag))).await;
        assert_eq!(denied["allowed"], false, "{tag}: {denied}");
        assert_eq!(reasons(&denied), *code, "{tag}: {denied}");
        assert!(message(&denied).contains(needle.as_str()), "{tag}: {} lacks {needle}", message(&denied));
        assert!(message(&denied).contains("policy \"sbom-"), "{denied}");
    }
    // Read once for two images (cached by digest); the stranger's SBOM was never fetched.
    assert_eq!(world.store.hits(&format!("/cas/sha256/{}", world.hex("license"))), 1);
    assert_eq!(world.store.hits(&format!("/cas/sha256/{}", world.hex("cdx"))), 0, "{:?}", world.store.total());

    // Removed from the store, then published again: an absence is never cached.
    world.store.unset(&format!("/cas/sha256/{}", world.hex("purl")));
    let missing = world.hex("purl");
    let hook2 = start_hook(&world, |_| {}).await;
    let denied = hook2.review(&pod(&world.image("https-purl"))).await;
    assert_eq!(reasons(&denied), "evidence-missing", "{denied}");
    assert!(message(&denied).contains(&format!("sha256:{missing} is not in https://")), "{denied}");
    world.serve(&missing, world.sboms["purl"].0.clone());
    assert_eq!(reasons(&hook2.review(&pod(&world.image("https-purl"))).await), "validation-failed");
}

/// The HTTPS store turns hostile: every answer is bounded and denies within the deadline.
#[tokio::test]
async fn a_hostile_store_is_bounded_and_denies_within_the_deadline() {
    let world = world();
    let deadline = Duration::from_secs(4);
    let hook = start_hook(&world, |c| {
        c.deadline = deadline;
        c.registries.call_timeout = Duration::from_secs(1);
    })
    .await;
    let target = format!("/cas/sha256/{}", world.hex("spdx"));
    let huge = || Body::Repeat { pattern: b" ".to_vec(), len: 10 << 30 };
    let table: Vec<(&str, Answer, &str, &str)> = vec![
        ("a 10 GiB declared body", Answer::ok("application/json", huge()), "evidence-oversize", "maxBytes"),
        ("an endless body", Answer::ok("application/json", huge()).no_length(), "evidence-oversize", "maxBytes"),
        ("a stalled answer", Answer::stall(), "evidence-store-timed-out", "did not answer in time"),
        (
            "a stalled body",
            Answer::ok("application/json", world.sboms["spdx"].0.clone()).body_delay(Duration::from_secs(60)),
            "evidence-store-timed-out",
            "did not answer in time",
        ),
        (
            "a redirect elsewhere",
            Answer::status(302).header("Location", "https://evil.example/sbom.json"),
            "evidence-store-error",
            "a redirect (HTTP 302) to https://evil.example/sbom.json",
        ),
        ("a failing store", Answer::status(503), "evidence-store-error", "HTTP 503"),
        (
            "another document",
            Answer::ok("application/json", "{\"bomFormat\": \"CycloneDX\"}"),
            "evidence-digest-mismatch",
            "hash to",
        ),
    ];
    for (what, answer, code, needle) in table {
        world.store.set(&target, answer);
        world.store.reset_counts();
        let started = Instant::now();
        let denied = hook.review(&pod(&world.image("https-spdx"))).await;
        let took = started.elapsed();
        assert_eq!(denied["allowed"], false, "{what}: {denied}");
        assert_eq!(reasons(&denied), code, "{what}: {denied}");
        assert!(message(&denied).contains(needle), "{what}: {}", message(&denied));
        assert!(took < deadline + Duration::from_secs(1), "{what}: took {took:?}");
        assert!(world.store.sent(&target) < 16 << 20, "{what}: {} bytes sent", world.store.sent(&target));
    }
}

/// A store whose certificate is not trusted.
#[tokio::test]
async fn a_store_outside_the_tls_trust_denies() {
    let world = world();
    // Without the store's CA among the trusted ones, TLS fails: unreachable, never read in the clear.
    let registry = vec![(world.registry.addr.clone(), world.registry.host_config())];
    let untrusting = Webhook::trusting(&policies(&world), registry, |_| {}).await;
    let denied = untrusting.review(&pod(&world.image("https-spdx"))).await;
    assert_eq!(reasons(&denied), "evidence-store-unreachable", "{denied}");
}

#[test]
fn provgate_verify_fetches_and_judges_evidence() {
    let world = world();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("provgate.yaml");
    let ca = world.store.tls.as_ref().unwrap().ca_pem.display().to_string();
    std::fs::write(
        &config,
        format!(
            "registries:\n  hosts:\n    \"{}\": {{insecure: true}}\n    \"{}\": {{caBundle: \"{ca}\"}}\n",
            world.registry.addr, world.store.addr
        ),
    )
    .unwrap();
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir(&policy_dir).unwrap();
    for (file, text) in policies(&world) {
        std::fs::write(policy_dir.join(file), text).unwrap();
    }
    let verify = |tag: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_provgate"))
            .args(["verify", "--output", "json", "--config"])
            .arg(&config)
            .arg("--policy")
            .arg(&policy_dir)
            .arg(world.image(tag))
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (code, report) = verify("oci-cdx");
    assert_eq!(code, Some(0), "{report}");
    let verified = report["images"][0]["verified"].to_string();
    assert!(
        verified.contains(&format!("evidence sbom sha256:{} (cyclonedx, 12 components)", world.hex("cdx"))),
        "{report}"
    );
    let (code, report) = verify("https-spdx");
    assert_eq!(code, Some(0), "{report}");
    for (tag, reason) in [("https-license", "validation-failed"), ("https-swapped", "evidence-digest-mismatch")] {
        let (code, report) = verify(tag);
        assert_eq!(code, Some(1), "{tag}: {report}");
        assert_eq!(report["images"][0]["reasons"], json!([reason]), "{tag}: {report}");
    }
}

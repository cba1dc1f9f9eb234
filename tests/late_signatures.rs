//! Late signatures: Tekton Chains signs after the TaskRun ends, so a deploy can race the signature. "Nothing found"
//! is reused only for `cache.missingTtl`, what was found for `cache.artifactsTtl`. Against a real docker-registry,
//! with the signature and provenance made at test time by PyPI `cryptography`/`securesystemslib` and pushed with
//! skopeo after the first denial, judged through `/validate` and `provgate verify`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::registry::{Auth, DSSE, Desc, DockerRegistry, Layout, SIMPLE_SIGNING};
use support::signing::{SIG_ANNOTATION, seed, sign};
use support::webhook::{Webhook, reasons, review};

/// How long an absence is reused in these tests.
const MISSING_TTL: Duration = Duration::from_secs(2);

fn policy(key: &std::path::Path) -> String {
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
      key: {}
  require:
    signature: true
    attestations:
      - name: provenance
        predicateType: slsa
"#,
        key.display()
    )
}

fn pod(image: &str) -> Value {
    let mut r = review("pod-create");
    r["request"]["object"]["spec"] = json!({"containers": [{"name": "app", "image": image}]});
    r
}

/// One registry and one unsigned image `team/app:TAG` per tag; the key exists before anything is signed.
struct World {
    registry: DockerRegistry,
    keys: tempfile::TempDir,
    layout: Layout,
    images: Vec<(String, Desc)>,
}

impl World {
    fn new(tags: &[&str]) -> Self {
        let registry = DockerRegistry::start(Auth::None);
        let keys = tempfile::tempdir().unwrap();
        let layout = Layout::new();
        let mut images = Vec::new();
        for tag in tags {
            let image = layout.image(tag, "amd64");
            images.push(((*tag).to_owned(), image));
        }
        let mut world = Self { registry, keys, layout, images };
        for (tag, image) in world.images.clone() {
            world.layout.tag(&tag, &image);
            world.registry.push(&world.layout, &tag, "team/app", &tag);
        }
        // Creates the key pair, signing nothing that is pushed.
        sign(world.keys.path(), "chains", &"0".repeat(64), &seed("chains-kaniko-slsa-v0.2-statement.json"));
        world
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/team/app:{tag}", self.registry.addr)
    }

    fn desc(&self, tag: &str) -> Desc {
        self.images.iter().find(|(t, _)| t == tag).unwrap().1.clone()
    }

    /// Signs `tag` now, as Chains would after the build, and pushes `.sig` and `.att`; returns the `.sig` manifest.
    fn sign_and_push(&mut self, tag: &str) -> Desc {
        let image = self.desc(tag);
        let signed = sign(self.keys.path(), "chains", image.hex(), &seed("chains-kaniko-slsa-v0.2-statement.json"));
        let sig =
            self.layout.cosign_manifest(&[(SIMPLE_SIGNING, signed.payload, json!({SIG_ANNOTATION: signed.signature}))]);
        let att = self.layout.cosign_manifest(&[(DSSE, signed.envelope, json!({SIG_ANNOTATION: ""}))]);
        for (suffix, manifest) in [("att", &att), ("sig", &sig)] {
            let tag = format!("sha256-{}.{suffix}", image.hex());
            self.layout.tag(&tag, manifest);
            self.registry.push(&self.layout, &tag, "team/app", &tag);
        }
        sig
    }

    async fn hook(&self) -> Webhook {
        let (host, config) = (self.registry.addr.clone(), self.registry.host_config());
        Webhook::start(&[("p.yaml", policy(&self.keys.path().join("chains.pub")))], move |c| {
            c.registries.hosts.insert(host, config);
            c.cache.missing_ttl = MISSING_TTL;
        })
        .await
    }
}

/// `provgate_cache_requests_total{cache, result}`.
async fn lookups(hook: &Webhook, cache: &str, result: &str) -> u64 {
    let (_, metrics) = hook.admin_get("/metrics").await;
    let line = format!("provgate_cache_requests_total{{cache=\"{cache}\",result=\"{result}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&line)?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_late_signature_is_admitted_within_the_missing_ttl_plus_one_review() {
    let mut world = World::new(&["late"]);
    let hook = world.hook().await;
    let image = world.image("late");

    let denied = hook.review(&pod(&image)).await;
    assert_eq!(denied["allowed"], false, "{denied}");
    assert_eq!(reasons(&denied), "unsigned,no-attestations", "{denied}");
    let message = denied["status"]["message"].as_str().unwrap();
    let looked = format!("looked in {}/team/app; the signature may not be published yet", world.registry.addr);
    assert!(message.contains(&looked), "{message}");
    assert!(
        message.contains("(Tekton Chains signs after the TaskRun ends): provgate looks again within 2s"),
        "{message}"
    );
    // Within the missing TTL, the absence is reused: the deny path does not ask the registry at every review.
    assert_eq!(hook.review(&pod(&image)).await["allowed"], false);
    assert_eq!((lookups(&hook, "artifacts", "miss").await, lookups(&hook, "images", "hit").await), (1, 1));

    world.sign_and_push("late");
    tokio::time::sleep(MISSING_TTL).await;
    let admitted = hook.review(&pod(&image)).await;
    assert_eq!(admitted["allowed"], true, "signed {MISSING_TTL:?} ago, one review later: {admitted}");
}

#[tokio::test]
async fn what_was_found_is_reused_for_the_artifacts_ttl_and_an_absence_only_briefly() {
    let mut world = World::new(&["kept"]);
    let sig = world.sign_and_push("kept");
    let hook = world.hook().await;
    let image = world.image("kept");
    assert_eq!(hook.review(&pod(&image)).await["allowed"], true);

    // The signature is deleted from the registry: the positive answer stands for artifactsTtl (300 s), not
    // missingTtl, so a registry hiccup or a re-push does not turn admitted images into denials.
    let url = format!("http://{}/v2/team/app/manifests/{}", world.registry.addr, sig.digest);
    let deleted = reqwest::Client::new().delete(&url).send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 202, "{url}");
    tokio::time::sleep(MISSING_TTL + Duration::from_millis(500)).await;
    let again = hook.review(&pod(&image)).await;
    assert_eq!(again["allowed"], true, "the positive entry lasts artifactsTtl: {again}");
    // Its twin: a provgate that had not seen the signature finds none now.
    let fresh = world.hook().await;
    let denied = fresh.review(&pod(&image)).await;
    assert_eq!(denied["allowed"], false, "{denied}");
    assert_eq!(reasons(&denied).split(',').next(), Some("unsigned"), "{denied}");
}

#[tokio::test]
async fn concurrent_reviews_of_a_missing_signature_share_one_fetch() {
    let world = World::new(&["crowd"]);
    let hook = world.hook().await;
    let review = pod(&world.image("crowd"));
    let answers = futures::future::join_all((0..8).map(|_| hook.review(&review))).await;
    for answer in &answers {
        assert_eq!(answer["allowed"], false, "{answer}");
    }
    // Each review found the artifacts in the cache, or (once another had put it together) the image's evidence.
    let missed = lookups(&hook, "artifacts", "miss").await;
    let hit = lookups(&hook, "artifacts", "hit").await + lookups(&hook, "images", "hit").await;
    assert_eq!((missed, hit), (1, 7), "eight reviews at once, one registry fetch");
}

#[test]
fn provgate_verify_says_when_to_look_again_and_admits_once_signed() {
    let mut world = World::new(&["cli"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("provgate.yaml");
    let text = format!(
        "registries:\n  hosts:\n    \"{}\": {{insecure: true}}\ncache:\n  missingTtl: 3s\n",
        world.registry.addr
    );
    std::fs::write(&config, text).unwrap();
    let policy_file = dir.path().join("p.yaml");
    std::fs::write(&policy_file, policy(&world.keys.path().join("chains.pub"))).unwrap();
    let verify = |image: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_provgate"))
            .args(["verify", "--output", "json", "--config"])
            .arg(&config)
            .arg("--policy")
            .arg(&policy_file)
            .arg(image)
            .output()
            .unwrap();
        (out.status.code(), serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    let (code, report) = verify(&world.image("cli"));
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["images"][0]["reasons"], json!(["unsigned", "no-attestations"]), "{report}");
    let message = report["images"][0]["message"].as_str().unwrap();
    assert!(message.contains("may not be published yet"), "{message}");
    assert!(message.contains("provgate looks again within 3s"), "{message}");
    world.sign_and_push("cli");
    let (code, report) = verify(&world.image("cli"));
    assert_eq!(code, Some(0), "{report}");
}

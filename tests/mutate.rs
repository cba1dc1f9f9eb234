//! Digest pinning through the real HTTPS `/mutate` endpoint, against a real docker-registry holding images signed at
//! test time: the JSONPatch applied with the `json-patch` crate gives the digest form in every image field of every
//! kind, and that object passes `/validate`. Every pinned case has a twin that must not be pinned (unsigned,
//! already pinned, ungoverned, denied, hostile), and a tag moved between the two calls cannot change what is
//! admitted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine as _;
use serde_json::{Value, json};
use support::registry::{Auth, DockerRegistry, Layout};
use support::signing::sign_image;
use support::webhook::{Webhook, review};

/// A docker-registry holding `team/app:signed` and `team/app:moving` (the same image, signed by the `chains` key),
/// and `team/app:unsigned`; the layout keeps the unsigned image as `unsigned` for moving tags later.
struct World {
    registry: DockerRegistry,
    layout: Layout,
    keys: tempfile::TempDir,
    signed_digest: String,
    unsigned_digest: String,
}

impl World {
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
        registry.push(&layout, "signed", "team/app", "moving");
        Self { registry, layout, keys, signed_digest: signed.digest.clone(), unsigned_digest: unsigned.digest.clone() }
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/team/app:{tag}", self.registry.addr)
    }

    /// `team/**` needs a signature by the chains key (in `mode`, with `require` added); `other/**` is governed by a
    /// policy without authorities; anything else follows `noMatch: allow`.
    async fn webhook(&self, mode: &str, require: &str) -> Webhook {
        let key = self.keys.path().join("chains.pub");
        let addr = &self.registry.addr;
        let signed = format!(
            "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: signed}}\nspec:\n  mode: {mode}\n  match: {{images: [\"{addr}/team/**\"]}}\n  authorities: [{{name: chains, key: \"{}\"}}]\n  require: {{signature: true{require}}}\n",
            key.display()
        );
        let other = format!(
            "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: other}}\nspec:\n  match: {{images: [\"{addr}/other/**\"]}}\n  validations: [{{expression: \"true\"}}]\n"
        );
        let (host, config) = (self.registry.addr.clone(), self.registry.host_config());
        Webhook::start(&[("signed.yaml", signed), ("other.yaml", other)], move |c| {
            c.registries.hosts.insert(host, config);
            c.no_match = provgate::decide::NoMatch::Allow;
        })
        .await
    }
}

/// Posts `review` to `/mutate`; the response, checked: answered with 200, same uid, always allowed, no status.
async fn mutate(hook: &Webhook, review: &Value) -> Value {
    let url = hook.url.replace("/validate", "/mutate");
    let resp = hook.client.post(&url).json(review).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let out: Value = resp.json().await.unwrap();
    assert_eq!(
        (out["apiVersion"].as_str(), out["kind"].as_str()),
        (Some("admission.k8s.io/v1"), Some("AdmissionReview"))
    );
    let response = out["response"].clone();
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true, "the mutating answer never denies: {response}");
    assert!(response.get("status").is_none(), "{response}");
    response
}

/// The JSONPatch of a `/mutate` response (empty when it carries none).
fn patch_of(response: &Value) -> Vec<Value> {
    let Some(patch) = response["patch"].as_str() else {
        assert!(response.get("patchType").is_none(), "{response}");
        assert_eq!(response["auditAnnotations"]["pinned"], "0");
        return Vec::new();
    };
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(patch).unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(response["auditAnnotations"]["pinned"], ops.len().to_string());
    ops
}

/// `review` with its object patched by `ops` (the apiserver's part, done with the json-patch crate).
fn patched(review: &Value, ops: &[Value]) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
    let mut out = review.clone();
    json_patch::patch(&mut out["request"]["object"], &patch).unwrap();
    out
}

/// A review of `fixture` (a CREATE) whose pod spec is `spec`.
fn with_spec(fixture: &str, pointer: &str, spec: Value) -> Value {
    let mut r = review(fixture);
    *r["request"]["object"].pointer_mut(pointer).unwrap() = spec;
    r
}

fn pod(images: &[&str]) -> Value {
    let containers: Vec<Value> =
        images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect();
    with_spec("pod-create", "/spec", json!({"containers": containers}))
}

#[tokio::test]
async fn signed_tags_are_pinned_in_every_kind_and_the_pinned_object_passes_validation() {
    let world = World::start();
    let hook = world.webhook("enforce", "").await;
    let signed = world.image("signed");
    let at_digest = format!("{signed}@{}", world.signed_digest);
    let ungoverned = format!("{}/other/tool:1", world.registry.addr);
    let spec = json!({
        "initContainers": [{"name": "init", "image": signed}],
        "containers": [
            {"name": "app", "image": signed},
            {"name": "pinned", "image": at_digest},
            {"name": "other", "image": ungoverned},
            {"name": "hub", "image": "nginx:1.27"},
        ],
        "volumes": [{"name": "cfg", "configMap": {"name": "x"}}, {"name": "models", "image": {"reference": signed}}],
    });
    for (fixture, at) in [
        ("pod-create", "/spec"),
        ("deployment-create", "/spec/template/spec"),
        ("cronjob-create", "/spec/jobTemplate/spec/template/spec"),
    ] {
        let review = with_spec(fixture, at, spec.clone());
        let before = hook.audit_records().len();
        let response = mutate(&hook, &review).await;
        assert_eq!(hook.audit_records().len(), before, "/mutate writes no audit record; /validate does");
        let ops = patch_of(&response);
        let want: Vec<Value> = ["initContainers/0/image", "containers/0/image", "volumes/1/image/reference"]
            .iter()
            .map(|field| json!({"op": "replace", "path": format!("{at}/{field}"), "value": at_digest}))
            .collect();
        assert_eq!(ops, want, "{fixture}: only the signed tags, in every image field, to the verified digest");

        let pinned = patched(&review, &ops);
        let object = &pinned["request"]["object"];
        let pod_spec = object.pointer(at).unwrap();
        assert_eq!(pod_spec["containers"][0]["image"], at_digest.as_str());
        assert_eq!(pod_spec["containers"][3]["image"], "nginx:1.27", "an image no policy governs is left alone");
        assert_eq!(
            pod_spec["containers"][2]["image"],
            ungoverned.as_str(),
            "a policy without authorities pins nothing"
        );
        let validated = hook.review(&pinned).await;
        assert_eq!(validated["allowed"], true, "{fixture}: {validated}");
        assert!(validated.get("warnings").is_none(), "{fixture}: pinned images cannot move: {validated}");
        let record = hook.audit_records().pop().unwrap();
        assert!(record["images"].as_array().unwrap().iter().all(|i| i["outcome"] == "allowed"), "{record}");

        // The twin as written: admitted too, but validation warns that its tags can move.
        let as_written = hook.review(&review).await;
        assert_eq!(as_written["allowed"], true);
        let warnings = as_written["warnings"].to_string();
        assert!(warnings.contains("the tag can move after verification"), "{as_written}");

        // Reinvocation: the pinned object gets no further patch.
        assert!(patch_of(&mutate(&hook, &pinned).await).is_empty(), "{fixture}: pinning is idempotent");
    }
}

#[tokio::test]
async fn what_is_unsigned_denied_pinned_or_unreadable_is_not_patched_and_a_dry_run_gets_the_same_patch() {
    let world = World::start();
    let hook = world.webhook("enforce", "").await;
    let (signed, unsigned) = (world.image("signed"), world.image("unsigned"));

    let review = pod(&[&unsigned]);
    assert!(patch_of(&mutate(&hook, &review).await).is_empty(), "an unsigned image is not pinned");
    let validated = hook.review(&review).await;
    assert_eq!(validated["allowed"], false, "validation denies it: {validated}");

    // One denied image leaves the whole request as written, for validation to deny.
    let mixed = pod(&[&signed, &unsigned]);
    assert!(patch_of(&mutate(&hook, &mixed).await).is_empty(), "a request that will be denied is not pinned");
    assert_eq!(hook.review(&mixed).await["allowed"], false);

    // A digest already written is left alone, even when another digest than the tag's.
    let pinned = pod(&[&format!("{signed}@{}", world.signed_digest)]);
    assert!(patch_of(&mutate(&hook, &pinned).await).is_empty());
    let other_digest = pod(&[&format!("{signed}@{}", world.unsigned_digest)]);
    assert!(patch_of(&mutate(&hook, &other_digest).await).is_empty());

    // dryRun: the same patch.
    let wet = mutate(&hook, &pod(&[&signed])).await;
    let mut dry_review = pod(&[&signed]);
    dry_review["request"]["dryRun"] = json!(true);
    let dry = mutate(&hook, &dry_review).await;
    assert_eq!(patch_of(&dry), patch_of(&wet));
    assert_eq!(patch_of(&dry).len(), 1);

    // UPDATE: a field the stored object holds as it is stays (no restart or rollout for an unrelated change); a
    // changed field is pinned.
    let mut update = pod(&[&signed, &world.image("moving")]);
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = pod(&[&signed, &unsigned])["request"]["object"].clone();
    let ops = patch_of(&mutate(&hook, &update).await);
    let paths: Vec<&str> = ops.iter().map(|op| op["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/spec/containers/1/image"]);
    assert_eq!(hook.review(&patched(&update, &ops)).await["allowed"], true);

    // An object of an odd shape is answered (allowed, nothing patched); validation denies it.
    for spec in [
        json!({"containers": [{"name": "a", "image": {"reference": signed}}]}),
        json!({"containers": [{"name": "a/b~c", "image": 7}]}),
        json!({"containers": {"a": {"image": signed}}}),
        json!({"containers": [signed]}),
    ] {
        let odd = with_spec("pod-create", "/spec", spec.clone());
        assert!(patch_of(&mutate(&hook, &odd).await).is_empty(), "{spec}");
        assert_eq!(hook.review(&odd).await["allowed"], false, "{spec}");
    }
    // Names with `/` and `~` (container and volume names) do not change where the patch points.
    let odd_names = with_spec(
        "pod-create",
        "/spec",
        json!({"containers": [{"name": "a/b~1c", "image": signed}],
               "volumes": [{"name": "~0/..", "image": {"reference": signed}}]}),
    );
    let ops = patch_of(&mutate(&hook, &odd_names).await);
    let paths: Vec<&str> = ops.iter().map(|op| op["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/spec/containers/0/image", "/spec/volumes/0/image/reference"]);
    let pinned = patched(&odd_names, &ops);
    assert_eq!(pinned["request"]["object"]["spec"]["containers"][0]["name"], "a/b~1c");
    assert_eq!(hook.review(&pinned).await["allowed"], true);

    // A request whose fields cannot be read is answered, unpatched; a body that is no review is refused.
    let mut unreadable = pod(&[&signed]);
    unreadable["request"]["operation"] = json!("EXPLODE");
    assert!(patch_of(&mutate(&hook, &unreadable).await).is_empty());
    let url = hook.url.replace("/validate", "/mutate");
    for (body, status, needle) in [
        (b"not json".to_vec(), 400, "not JSON"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), 400, "no request"),
        (vec![b' '; (8 << 20) + 1], 413, "limit"),
    ] {
        let resp = hook.client.post(&url).body(body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert!(resp.text().await.unwrap().contains(needle));
    }
}

#[tokio::test]
async fn a_tag_moved_between_mutation_and_validation_is_judged_at_the_pinned_digest() {
    let world = World::start();
    let hook = world.webhook("enforce", "").await;
    let review = pod(&[&world.image("moving")]);
    let ops = patch_of(&mutate(&hook, &review).await);
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["value"], format!("{}@{}", world.image("moving"), world.signed_digest));

    // Someone moves the tag to the unsigned image before validation.
    world.registry.push(&world.layout, "unsigned", "team/app", "moving");
    let pinned = patched(&review, &ops);
    let validated = hook.review(&pinned).await;
    assert_eq!(validated["allowed"], true, "the pinned digest is what is verified: {validated}");
    let record = hook.audit_records().pop().unwrap();
    assert_eq!(record["images"][0]["digest"], world.signed_digest.as_str(), "{record}");

    // The twin as written now names the unsigned image: denied, and not pinned either.
    let denied = hook.review(&review).await;
    assert_eq!(denied["allowed"], false, "{denied}");
    assert!(denied["status"]["message"].as_str().unwrap().contains("no signatures found"), "{denied}");
    assert!(patch_of(&mutate(&hook, &review).await).is_empty());
}

#[tokio::test]
async fn require_digest_is_met_by_pinning_and_warn_mode_pins_only_what_verified() {
    let world = World::start();
    let (signed, unsigned) = (world.image("signed"), world.image("unsigned"));

    // `require.digest: true` denies the tag as written; the pin cures it, and validation admits the pinned object.
    let hook = world.webhook("enforce", ", digest: true").await;
    let review = pod(&[&signed]);
    let denied = hook.review(&review).await;
    assert_eq!(denied["allowed"], false, "{denied}");
    assert!(denied["auditAnnotations"]["reasons"].as_str().unwrap().contains("tag-not-pinned"), "{denied}");
    let ops = patch_of(&mutate(&hook, &review).await);
    assert_eq!(ops.len(), 1);
    assert_eq!(hook.review(&patched(&review, &ops)).await["allowed"], true);
    // ...but not an unsigned image: pinning does not cure that.
    assert!(patch_of(&mutate(&hook, &pod(&[&unsigned])).await).is_empty());
    let Webhook { running, .. } = hook;
    running.shutdown().await;

    // Warn mode: the signed image is pinned, the unsigned one stays as written (validation warns about it).
    let hook = world.webhook("warn", "").await;
    let review = pod(&[&signed, &unsigned]);
    let ops = patch_of(&mutate(&hook, &review).await);
    let paths: Vec<&str> = ops.iter().map(|op| op["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/spec/containers/0/image"]);
    let validated = hook.review(&patched(&review, &ops)).await;
    assert_eq!(validated["allowed"], true);
    assert!(validated["warnings"].to_string().contains("no signatures found"), "{validated}");
}

#[tokio::test]
async fn a_pod_with_256_images_gets_one_bounded_patch_and_257_get_none() {
    let world = World::start();
    let hook = world.webhook("enforce", "").await;
    let signed = world.image("signed");
    let many = pod(&vec![signed.as_str(); 256]);
    let response = mutate(&hook, &many).await;
    let encoded = response["patch"].as_str().unwrap().len();
    let ops = patch_of(&response);
    assert_eq!(ops.len(), 256, "one operation per field, no more");
    // Each operation is its path and the reference with its digest (and a comma): a fixed overhead per image.
    let per_op = r#"{"op":"replace","path":"/spec/containers/255/image","value":"@"},"#.len() + signed.len() + 71;
    assert!(encoded <= (256 * per_op + 2).div_ceil(3) * 4, "{encoded} bytes of base64");
    assert_eq!(hook.review(&patched(&many, &ops)).await["allowed"], true);

    // Over `maxImagesPerReview` (256): not pinned, and validation denies it.
    let too_many = pod(&vec![signed.as_str(); 257]);
    assert!(patch_of(&mutate(&hook, &too_many).await).is_empty());
    let denied = hook.review(&too_many).await;
    assert_eq!(denied["allowed"], false);
    assert!(denied["auditAnnotations"]["reasons"].as_str().unwrap().contains("too-many-images"), "{denied}");
}

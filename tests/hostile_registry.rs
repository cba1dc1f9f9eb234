//! The registry client against a hostile registry: crafted manifests, blobs, headers and token answers, driven
//! through `provgate verify` (the library's one-shot engine) or the registry module's public API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use provgate::config::Config;
use provgate::images::{Digest, ImageRef};
use provgate::registry::{Credentials, Head, Registry, RegistryClient, RegistryConfig, Wanted};
use serde_json::{Value, json};
use support::registry::*;
use support::webhook::{Webhook, review};
use tokio::time::Instant;

/// The hostile server itself: it serves what was put, by tag and digest, counts, and can be bent while running.
#[tokio::test]
async fn the_hostile_server_serves_counts_and_changes_while_running() {
    let h = Hostile::start();
    let http = reqwest::Client::new();
    let base = format!("http://{}", h.addr);
    let first = h.put_image("team/app", "one");
    let second = h.put_image("team/app", "two");
    h.tag("team/app", "v1", &first);

    assert_eq!(http.get(format!("{base}/v2/")).send().await.unwrap().status(), 200);
    let head = http.head(format!("{base}/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["docker-content-digest"], first.as_str());
    assert_eq!(head.headers()["content-type"], OCI_MANIFEST);
    let body = http.get(format!("{base}/v2/team/app/manifests/{first}")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256_digest(&body), first);
    let blob = h.put_blob("team/app", b"payload".to_vec());
    let got = http.get(format!("{base}/v2/team/app/blobs/{blob}")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"payload");
    assert_eq!(http.get(format!("{base}/v2/team/other/blobs/{blob}")).send().await.unwrap().status(), 404);

    // Re-tagged while running.
    h.tag("team/app", "v1", &second);
    let head = http.head(format!("{base}/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(head.headers()["docker-content-digest"], second.as_str());
    assert_eq!(h.hits("/v2/team/app/manifests/v1"), 2);

    // Overrides, a generated body, a delay, and the challenge with its token endpoint.
    h.set("/v2/team/app/manifests/v1", Answer::status(429).header("Retry-After", "7"));
    let r = http.get(format!("{base}/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (429, "7"));
    h.set("/big", Answer::ok("text/plain", Body::Repeat { pattern: b"ab".to_vec(), len: 1 << 20 }));
    let big = http.get(format!("{base}/big")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!((big.len(), &big[..4]), (1 << 20, &b"abab"[..]));
    assert_eq!(h.sent("/big"), 1 << 20);
    h.set("/slow", Answer::status(204).delay(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    assert_eq!(http.get(format!("{base}/slow")).send().await.unwrap().status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(300));
    h.unset("/v2/team/app/manifests/v1");
    h.challenge(Some(Challenge::default()));
    let r = http.get(format!("{base}/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains(&h.own_realm()) && challenge.contains("repository:team/app:pull"), "{challenge}");
    let token: serde_json::Value =
        http.get(format!("{base}/token?service=hostile")).send().await.unwrap().json().await.unwrap();
    let r = http
        .get(format!("{base}/v2/team/app/manifests/v1"))
        .bearer_auth(token["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.hits("/token"), 1);

    // Many connections at once.
    let many = (0..100).map(|_| http.get(format!("{base}/v2/")).send());
    let answers = futures::future::join_all(many).await;
    assert!(answers.iter().all(|a| a.as_ref().unwrap().status() == 401));
    assert_eq!(h.hits("/v2/"), 101);
    assert_eq!(h.total(), 112);
}

// ---------------------------------------------------------------- through /validate

const SIG_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The webhook with one policy: every image must carry a signature by a fresh key, and `h` is a configured host.
async fn webhook(h: &Hostile, tweak: impl FnOnce(&mut Config)) -> (Webhook, tempfile::TempDir) {
    webhook_with(h, "", tweak).await
}

/// [`webhook`], its policy's spec ending with `extra` (YAML lines indented by two).
async fn webhook_with(h: &Hostile, extra: &str, tweak: impl FnOnce(&mut Config)) -> (Webhook, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key.pub");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().public_key_pem()).unwrap();
    let policy = format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: signed}}\nspec:\n  match: {{images: [\"**\"]}}\n  authorities: [{{name: key, key: {}}}]\n  require: {{signature: true}}\n{extra}",
        key.display()
    );
    let (addr, host) = (h.addr.clone(), h.host_config());
    let hook = Webhook::start(&[("signed.yaml", policy)], move |c| {
        c.registries.hosts.insert(addr, host);
        tweak(c);
    })
    .await;
    (hook, keys)
}

/// A Pod CREATE review whose only container runs `image`.
fn pod(image: &str) -> Value {
    let mut r = review("pod-create");
    r["request"]["object"]["spec"] = json!({"containers": [{"name": "app", "image": image}]});
    r
}

fn message(response: &Value) -> String {
    response["status"]["message"].as_str().unwrap_or_default().to_owned()
}

/// `repo:v1` names a fresh image; returns its digest.
fn image(h: &Hostile, repo: &str, tag: &str) -> String {
    let digest = h.put_image(repo, &format!("{repo}:{tag}"));
    h.tag(repo, tag, &digest);
    digest
}

/// Stores a `.sig` manifest for `subject` in `repo` listing `layers`.
fn sign_with(h: &Hostile, repo: &str, subject: &str, layers: &[Value]) {
    let sig = h.put_cosign(repo, layers);
    h.tag(repo, &format!("sha256-{}.sig", &subject[7..]), &sig);
}

#[tokio::test]
async fn a_retry_after_beyond_any_clock_is_a_rate_limit_denial_not_a_panic() {
    let h = Hostile::start();
    image(&h, "team/app", "v1");
    h.set("/v2/team/app/manifests/v1", Answer::status(429).header("Retry-After", "18446744073709551615"));
    let (hook, _keys) = webhook(&h, |c| c.registries.retries = 3).await;
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).contains("rate limiting"), "{response}");
    assert_eq!(h.hits("/v2/team/app/manifests/v1"), 1, "a wait past the deadline is not waited for");
    assert_eq!(hook.audit_records().len(), 1);
}

#[tokio::test]
async fn a_blob_listed_64_times_is_fetched_once() {
    let h = Hostile::start();
    let subject = image(&h, "team/app", "v1");
    let blob = vec![b'x'; 16 << 20];
    let digest = h.put_blob("team/app", blob);
    let layers: Vec<Value> = (0..64)
        .map(|i| descriptor(SIMPLE_SIGNING, &digest, 16 << 20, Some(json!({SIG_ANNOTATION: format!("MEUC{i}")}))))
        .collect();
    sign_with(&h, "team/app", &subject, &layers);
    let (hook, _keys) = webhook(&h, |_| {}).await;
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(h.hits(&format!("/v2/team/app/blobs/{digest}")), 1, "one fetch for 64 listings");
}

#[tokio::test]
async fn distinct_blobs_beyond_the_image_budget_are_a_clear_denial() {
    let h = Hostile::start();
    let subject = image(&h, "team/app", "v1");
    let digests: Vec<String> = (0..3u8).map(|i| h.put_blob("team/app", vec![b'a' + i; 16 << 20])).collect();
    let layers: Vec<Value> = digests
        .iter()
        .map(|d| descriptor(SIMPLE_SIGNING, d, 16 << 20, Some(json!({SIG_ANNOTATION: "MEUC"}))))
        .collect();
    sign_with(&h, "team/app", &subject, &layers);
    let (hook, _keys) = webhook(&h, |_| {}).await;
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert_eq!(response["allowed"], false, "{response}");
    let text = message(&response);
    assert!(text.contains("registries.maxImageBytes"), "{text}");
    for d in &digests {
        assert_eq!(h.hits(&format!("/v2/team/app/blobs/{d}")), 0, "refused before any download");
    }
}

#[tokio::test]
async fn a_token_realm_on_another_host_is_refused() {
    let h = Hostile::start();
    let elsewhere = Hostile::start();
    image(&h, "team/app", "v1");
    h.challenge(Some(Challenge { realm: Some(elsewhere.own_realm()), ..Challenge::default() }));
    let (hook, _keys) = webhook(&h, |_| {}).await;
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert_eq!(response["allowed"], false, "{response}");
    let text = message(&response);
    assert!(text.contains("token realm") && text.contains(&elsewhere.addr), "{text}");
    assert!(text.contains("tokenRealms"), "the denial says how to allow it: {text}");
    assert_eq!(elsewhere.total(), 0, "the foreign realm is never contacted");
}

#[tokio::test]
async fn a_huge_token_answer_is_cut_at_the_cap_and_never_quoted() {
    let h = Hostile::start();
    image(&h, "team/app", "v1");
    image(&h, "team/app", "v2");
    h.challenge(Some(Challenge::default()));
    let secret = b"SECRET-BODY-TEXT ".to_vec();
    h.set("/token", Answer::ok("application/json", Body::Repeat { pattern: secret.clone(), len: 600 << 20 }));
    let (hook, _keys) = webhook(&h, |_| {}).await;
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert_eq!(response["allowed"], false, "{response}");
    let text = message(&response);
    assert!(text.contains("token") && !text.contains("SECRET"), "{text}");
    assert!(h.sent("/token") < 16 << 20, "read stopped at the cap: {} bytes sent", h.sent("/token"));
    // A refusal's body is not quoted either.
    h.set("/token", Answer { status: 403, body: Body::from("SECRET-BODY-TEXT in a refusal"), ..Answer::default() });
    let response = hook.review(&pod(&format!("{}/team/app:v2", h.addr))).await;
    assert_eq!(response["allowed"], false, "{response}");
    let text = message(&response);
    assert!(text.contains("403") && !text.contains("SECRET"), "{text}");
}

#[tokio::test]
async fn a_token_is_reused_only_for_the_lifetime_it_was_given() {
    let h = Hostile::start();
    image(&h, "team/app", "v1");
    image(&h, "team/app", "v2");
    h.challenge(Some(Challenge::default()));
    h.set("/token", Answer::ok("application/json", r#"{"token": "hostile-token", "expires_in": 1}"#));
    let (hook, _keys) = webhook(&h, |_| {}).await;
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert!(message(&response).contains("no signature"), "{response}");
    assert_eq!(h.hits("/token"), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = hook.review(&pod(&format!("{}/team/app:v2", h.addr))).await;
    assert!(message(&response).contains("no signature"), "{response}");
    assert_eq!(h.hits("/token"), 2, "the expired token was not reused");
}

#[tokio::test]
async fn a_plain_http_realm_of_a_tls_registry_is_refused_even_when_listed() {
    let h = Hostile::start_tls();
    let plain = Hostile::start();
    plain.challenge(Some(Challenge::default()));
    image(&h, "team/app", "v1");
    h.challenge(Some(Challenge { realm: Some(plain.own_realm()), ..Challenge::default() }));
    let (listed, addr) = (plain.addr.clone(), h.addr.clone());
    let (hook, _keys) =
        webhook(&h, move |c| c.registries.hosts.get_mut(&addr).unwrap().token_realms = vec![listed]).await;
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert_eq!(response["allowed"], false, "{response}");
    let text = message(&response);
    assert!(text.contains("token realm") && text.contains("only https"), "{text}");
    assert_eq!(plain.total(), 0, "the http realm is never contacted");
    // The registry's own https realm is fine: the review gets past authentication to the missing signature.
    h.challenge(Some(Challenge::default()));
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert!(message(&response).contains("no signature"), "{response}");
    assert_eq!(h.hits("/token"), 1);
}

/// Peak RSS of `provgate verify` against a `.sig` listing one 16 MiB blob 64 times (1 GiB if each were kept).
#[tokio::test]
async fn provgate_verify_stays_small_against_a_blob_listed_64_times() {
    let h = Hostile::start();
    let subject = image(&h, "team/app", "v1");
    let digest = h.put_blob("team/app", vec![b'x'; 16 << 20]);
    let layers: Vec<Value> = (0..64)
        .map(|i| descriptor(SIMPLE_SIGNING, &digest, 16 << 20, Some(json!({SIG_ANNOTATION: format!("MEUC{i}")}))))
        .collect();
    sign_with(&h, "team/app", &subject, &layers);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pub");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().public_key_pem()).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("registries:\n  hosts:\n    \"{}\": {{insecure: true}}\n", h.addr)).unwrap();
    let time = tool("PROVGATE_TEST_TIME", "time", "apt-get install time");
    let image = format!("{}/team/app:v1", h.addr);
    let out = tokio::process::Command::new(time)
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_provgate"))
        .args(["verify", "--output", "json", "--key"])
        .arg(&key)
        .arg("--config")
        .arg(&config)
        .arg(&image)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "denied: {stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["images"][0]["outcome"], "denied", "{report}");
    let kib: u64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): "))
        .unwrap_or_else(|| panic!("no RSS in {stderr}"))
        .parse()
        .unwrap();
    println!("provgate verify peak RSS: {} MiB", kib / 1024);
    assert!(kib < 160 << 10, "peak RSS {} MiB", kib / 1024);
    assert_eq!(h.hits(&format!("/v2/team/app/blobs/{digest}")), 1, "verify judges and reports from one fetch");
}

// ---------------------------------------------------------------- through the registry module

fn client(h: &Hostile, tweak: impl FnOnce(&mut RegistryConfig)) -> Arc<dyn Registry> {
    let mut cfg = RegistryConfig::default();
    cfg.hosts.insert(h.addr.clone(), h.host_config());
    tweak(&mut cfg);
    Arc::new(RegistryClient::new(cfg).unwrap())
}

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

/// The tag-swap half the registry owns: a tag's digest is asked anew at every call (one HEAD), while what a digest
/// names is read by digest.
#[tokio::test]
async fn head_asks_the_tag_every_time_and_manifest_reads_by_digest() {
    let h = Hostile::start();
    let r = client(&h, |_| {});
    let anon = Credentials::Anonymous;
    let first = image(&h, "team/app", "v1");
    let img = ImageRef::parse(&format!("{}/team/app:v1", h.addr)).unwrap();
    let bytes = r.budget();
    let head = r.head(&img, &anon, &bytes, soon(5000)).await.unwrap();
    assert_eq!(head, Head { digest: Digest::parse(&first).unwrap(), media_type: Some(OCI_MANIFEST.into()) });
    assert!(!head.needs_manifest());
    let second = image(&h, "team/app", "v1");
    let head = r.head(&img, &anon, &bytes, soon(5000)).await.unwrap();
    assert_eq!(head.digest.to_string(), second, "the re-tag is seen at once");
    assert_eq!(h.hits("/v2/team/app/manifests/v1"), 2, "one HEAD per call, nothing else");
    assert_eq!(h.total(), 3, "the /v2/ challenge once, then the two HEADs");

    // An index: the head says so; the manifest, read by digest, lists its platforms.
    let entry = |d: &str, arch: &str| json!({"mediaType": OCI_MANIFEST, "digest": d, "size": 1, "platform": {"os": "linux", "architecture": arch}});
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&first, "amd64"), entry(&second, "arm64")]}))
    .unwrap();
    let index = h.put_manifest("team/app", index, OCI_INDEX);
    h.tag("team/app", "multi", &index);
    let multi = ImageRef::parse(&format!("{}/team/app:multi", h.addr)).unwrap();
    let head = r.head(&multi, &anon, &bytes, soon(5000)).await.unwrap();
    assert!(head.needs_manifest(), "{head:?}");
    let resolved = r.manifest(&multi, &head.digest, &anon, &bytes, soon(5000)).await.unwrap();
    let platforms: Vec<String> =
        resolved.platforms.iter().map(|p| format!("{}:{}", p.architecture, p.digest)).collect();
    assert_eq!(platforms, vec![format!("amd64:{first}"), format!("arm64:{second}")]);
    assert_eq!(h.hits(&format!("/v2/team/app/manifests/{index}")), 1);

    // A digest reference needs no request to name its digest.
    let before = h.total();
    let pinned = ImageRef::parse(&format!("{}/team/app@{first}", h.addr)).unwrap();
    let head = r.head(&pinned, &anon, &bytes, soon(5000)).await.unwrap();
    assert_eq!((head.digest.to_string(), head.media_type), (first, None));
    assert_eq!(h.total(), before);
    assert!(bytes.used() > 0, "the manifest read counts against the review");
}

/// The process-wide pool: while one review holds its bytes, another's read waits, then fails at its deadline.
#[tokio::test]
async fn reads_beyond_the_bytes_in_flight_wait_then_fail_clearly() {
    let h = Hostile::start();
    let subject = image(&h, "team/app", "v1");
    let payload = vec![b'p'; 1 << 20];
    let digest = h.put_blob("team/app", payload.clone());
    sign_with(&h, "team/app", &subject, &[descriptor(SIMPLE_SIGNING, &digest, 1 << 20, None)]);
    // No length, so the whole cap is set aside; the body comes a second later.
    let blob = format!("/v2/team/app/blobs/{digest}");
    h.set(&blob, Answer::ok("application/octet-stream", payload).no_length().body_delay(Duration::from_millis(1500)));
    let r = client(&h, |c| {
        c.max_manifest_bytes = 64 << 10;
        c.max_blob_bytes = 1 << 20;
        c.max_image_bytes = 5 << 18;
        c.max_review_bytes = 5 << 18;
        c.max_bytes_in_flight = 3 << 19;
    });
    let img = ImageRef::parse(&format!("{}/team/app:v1", h.addr)).unwrap();
    let d = Digest::parse(&subject).unwrap();
    let anon = Credentials::Anonymous;
    let (first, second) = (r.budget(), r.budget());
    let slow = r.artifacts(&img, &d, &anon, Wanted::ALL, &first, soon(10_000));
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let result = r.artifacts(&img, &d, &anon, Wanted::ALL, &second, soon(1000)).await;
        (result, started.elapsed())
    };
    let (slow, (waited, took)) = futures::join!(slow, waiting);
    assert_eq!(slow.unwrap().signatures.len(), 1);
    let err = waited.unwrap_err();
    assert_eq!(err.code(), "registry-busy", "{err}");
    assert!(err.to_string().contains("registries.maxBytesInFlight"), "{err}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    drop(first);
    let third = r.artifacts(&img, &d, &anon, Wanted::ALL, &r.budget(), soon(10_000)).await.unwrap();
    assert_eq!(third.signatures[0].data.len(), 1 << 20, "room again once the first review let go");
}

#[tokio::test]
async fn images_beyond_the_review_budget_are_a_clear_denial() {
    let h = Hostile::start();
    let mut containers = Vec::new();
    for (i, tag) in ["a", "b", "c"].into_iter().enumerate() {
        let subject = image(&h, "team/app", tag);
        // 24 MiB per image fits the image budget (32 MiB); three of them do not fit one review (48 MiB).
        let layers: Vec<Value> = (0..2u8)
            .map(|j| {
                let d = h.put_blob("team/app", vec![b'a' + i as u8 * 2 + j; 12 << 20]);
                descriptor(SIMPLE_SIGNING, &d, 12 << 20, Some(json!({SIG_ANNOTATION: "MEUC"})))
            })
            .collect();
        sign_with(&h, "team/app", &subject, &layers);
        containers.push(json!({"name": tag, "image": format!("{}/team/app:{tag}", h.addr)}));
    }
    let (hook, _keys) = webhook(&h, |_| {}).await;
    let mut review = pod("unused");
    review["request"]["object"]["spec"] = json!({"containers": containers});
    let response = hook.review(&review).await;
    assert_eq!(response["allowed"], false, "{response}");
    let text = message(&response);
    assert!(text.contains("registries.maxReviewBytes"), "{text}");
}

/// Fetch only what is needed: a signature-only policy never reads the `.att` tag, and a registry without the
/// referrers API is asked for it once, then its tag-schema fallback is read directly.
#[tokio::test]
async fn a_signature_only_policy_reads_no_attestations_and_the_missing_referrers_api_is_remembered() {
    let h = Hostile::start();
    let (one, two) = (image(&h, "team/app", "v1"), image(&h, "team/app", "v2"));
    for d in [&one, &two] {
        sign_with(&h, "team/app", d, &[]);
    }
    let (hook, _keys) = webhook(&h, |_| {}).await;
    let att = |d: &str| format!("/v2/team/app/manifests/sha256-{}.att", &d[7..]);
    let api = |d: &str| format!("/v2/team/app/referrers/{d}");
    let schema = |d: &str| format!("/v2/team/app/manifests/sha256-{}", &d[7..]);
    hook.review(&pod(&format!("{}/team/app@{one}", h.addr))).await;
    assert_eq!(h.hits(&att(&one)), 0, "no policy requires an attestation");
    assert_eq!((h.hits(&api(&one)), h.hits(&schema(&one))), (1, 1), "the API answered 404; the fallback was read");
    let before = h.total();
    hook.review(&pod(&format!("{}/team/app@{two}", h.addr))).await;
    assert_eq!(h.hits(&api(&two)), 0, "the registry is known to lack the referrers API");
    assert_eq!(h.hits(&format!("/v2/team/app/manifests/{two}")), 0, "a signature binds the digest: no manifest read");
    assert_eq!(h.total() - before, 2, "the .sig manifest and the referrers index, nothing else");
    assert_eq!(h.hits(&schema(&two)), 1);
    assert_eq!(h.hits(&att(&two)), 0);
}

/// `signatures.storage` narrows where an image's signatures are read. Under `[tags]` neither the referrers API nor
/// its tag-schema fallback is asked, so an unsigned image by digest costs one request, and what a hostile registry
/// answers there (garbage that denies an image read in both places) is never read; under `[referrers]` neither
/// cosign tag is asked.
#[tokio::test]
async fn a_policy_naming_one_storage_place_never_asks_the_other() {
    let h = Hostile::start();
    let unsigned: Vec<String> = (0..4).map(|i| image(&h, "team/app", &format!("v{i}"))).collect();
    let garbage = || Answer::ok(OCI_INDEX, "{not an index");
    let (sig, att, api, schema) = (
        |d: &str| format!("/v2/team/app/manifests/sha256-{}.sig", &d[7..]),
        |d: &str| format!("/v2/team/app/manifests/sha256-{}.att", &d[7..]),
        |d: &str| format!("/v2/team/app/referrers/{d}"),
        |d: &str| format!("/v2/team/app/manifests/sha256-{}", &d[7..]),
    );
    for d in &unsigned {
        h.set(&api(d), garbage());
        h.set(&schema(d), garbage());
    }
    let by_digest = |d: &str| pod(&format!("{}/team/app@{d}", h.addr));

    // Both places (the default): the referrers answer is read, and it denies as malformed.
    let (hook, _keys) = webhook(&h, |_| {}).await;
    let response = hook.review(&by_digest(&unsigned[0])).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).contains("referrers of team/app@"), "{response}");
    assert_eq!((h.hits(&sig(&unsigned[0])), h.hits(&api(&unsigned[0]))), (1, 1));

    // Tags only: once the webhook has met the registry (a first review), an unsigned image costs one request, the
    // `.sig` tag; the denial says where provgate looked and what it left out.
    let (hook, _keys) = webhook_with(&h, "  signatures: {storage: [tags]}\n", |_| {}).await;
    hook.review(&by_digest(&unsigned[3])).await;
    let before = h.total();
    let response = hook.review(&by_digest(&unsigned[1])).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).contains("only its cosign tags: signatures.storage names no referrers"), "{response}");
    assert_eq!(h.total() - before, 1, "the .sig tag alone");
    assert_eq!(h.hits(&sig(&unsigned[1])), 1);
    assert_eq!((h.hits(&api(&unsigned[1])), h.hits(&schema(&unsigned[1]))), (0, 0), "no referrer is asked for");

    // Referrers only: no cosign tag is asked.
    let (hook, _keys) = webhook_with(&h, "  signatures: {storage: [referrers]}\n", |_| {}).await;
    let response = hook.review(&by_digest(&unsigned[2])).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(h.hits(&api(&unsigned[2])), 1);
    assert_eq!((h.hits(&sig(&unsigned[2])), h.hits(&att(&unsigned[2]))), (0, 0), "no cosign tag is asked for");
}

/// A policy's `spec.signatures.repository` is read through the same guarded client as the image's own: a huge
/// `.sig` manifest there is cut at the manifest cap, and a stalled one ends at the deadline, each a denial.
#[tokio::test]
async fn a_hostile_signature_repository_is_bounded_like_the_image_registry() {
    let h = Hostile::start();
    let subject = image(&h, "team/app", "v1");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key.pub");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().public_key_pem()).unwrap();
    let policy = format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: signed}}\nspec:\n  match: {{images: [\"**\"]}}\n  authorities: [{{name: key, key: {}}}]\n  signatures: {{repository: \"{}/sigs/app\"}}\n",
        key.display(),
        h.addr
    );
    let (addr, host) = (h.addr.clone(), h.host_config());
    let hook = Webhook::start(&[("signed.yaml", policy)], move |c| {
        c.registries.hosts.insert(addr, host);
        c.deadline = Duration::from_secs(3);
    })
    .await;
    let sig = format!("/v2/sigs/app/manifests/sha256-{}.sig", &subject[7..]);

    let huge = 600u64 << 20;
    h.set(&sig, Answer::ok(OCI_MANIFEST, Body::Repeat { pattern: b"{}".to_vec(), len: huge }));
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(h.hits(&sig) >= 1, "the named repository was read");
    // Counted once the server has stopped writing: 0 when the declared length was refused before the body,
    // otherwise what was read up to the cap (and what the socket buffers held).
    let sent = h.sent(&sig);
    assert!(sent < 64 << 20, "read cut at the cap, not {sent} bytes of {huge}");

    h.set(&sig, Answer::stall());
    let started = std::time::Instant::now();
    let response = hook.review(&pod(&format!("{}/team/app:v1", h.addr))).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(started.elapsed() < Duration::from_secs(8), "answered within the deadline, not the stall");
    assert_eq!(hook.audit_records().len(), 2);
}

/// A signed JSON release list in `releases/app` of `h` pinning `entries` (made distinct by `marker`); returns the
/// list's digest and its blob's. The signature and provenance are real (PyPI `cryptography`/`securesystemslib`).
fn signed_list(h: &Hostile, keys: &std::path::Path, marker: &str, entries: &[String]) -> (String, String) {
    let repo = "releases/app";
    let mut written = entries.to_vec();
    written.push(format!("{}/team/{marker}@sha256:{}", h.addr, "0".repeat(64)));
    let blob = serde_json::to_vec(&written).unwrap();
    let blob_digest = h.put_blob(repo, blob.clone());
    let config = h.put_blob(repo, b"{}".to_vec());
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.release-list.v1+json",
        "config": descriptor(OCI_EMPTY, &config, 2, None),
        "layers": [descriptor("application/json", &blob_digest, blob.len(), None)]}))
    .unwrap();
    let list = h.put_manifest(repo, manifest, OCI_MANIFEST);
    let seed = support::signing::seed("chains-kaniko-slsa-v0.2-statement.json");
    let signed = support::signing::sign(keys, "chains", &list[7..], &seed);
    let payload = h.put_blob(repo, signed.payload.clone());
    let sig =
        descriptor(SIMPLE_SIGNING, &payload, signed.payload.len(), Some(json!({SIG_ANNOTATION: signed.signature})));
    sign_with(h, repo, &list, &[sig]);
    let envelope = h.put_blob(repo, signed.envelope.clone());
    let att =
        h.put_cosign(repo, &[descriptor(DSSE, &envelope, signed.envelope.len(), Some(json!({SIG_ANNOTATION: ""})))]);
    h.tag(repo, &format!("sha256-{}.att", &list[7..]), &att);
    (list, blob_digest)
}

/// A release list is read only within `cache.maxListBytes`, whatever the registry declares or sends, and a stalled
/// one ends at the deadline: each is a denial of the images it would cover, never a wait or a download.
#[tokio::test]
async fn a_hostile_release_list_is_cut_at_the_list_cap_and_a_stalled_one_at_the_deadline() {
    let h = Hostile::start();
    let app = image(&h, "team/app", "v1");
    let keys = tempfile::tempdir().unwrap();
    let entries = [format!("{}/team/app@{app}", h.addr)];
    let cases = ["fine", "declared", "unbounded", "manifest", "stalled"];
    let lists: Vec<(String, String)> = cases.iter().map(|m| signed_list(&h, keys.path(), m, &entries)).collect();
    let policies: Vec<(String, String)> = cases
        .iter()
        .zip(&lists)
        .map(|(ns, (list, _))| {
            let text = format!(
                "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: {ns}}}\nspec:\n  match: {{images: \
                 [\"{addr}/team/**\"], namespaces: [{ns}]}}\n  authorities: [{{name: chains, key: {key}}}]\n  require:\n    \
                 attestations: [{{name: release, predicateType: slsa, via: {{list: \"{addr}/releases/app@{list}\"}}}}]\n",
                addr = h.addr,
                key = keys.path().join("chains.pub").display()
            );
            (format!("{ns}.yaml"), text)
        })
        .collect();
    let files: Vec<(&str, String)> = policies.iter().map(|(f, t)| (f.as_str(), t.clone())).collect();
    let (addr, host) = (h.addr.clone(), h.host_config());
    let hook = Webhook::start(&files, move |c| {
        c.registries.hosts.insert(addr, host);
        c.deadline = Duration::from_secs(3);
        // Caps far above the list's, so that a read not cut at cache.maxListBytes would show.
        c.registries.max_manifest_bytes = 64 << 20;
        c.registries.max_blob_bytes = 64 << 20;
        c.registries.max_image_bytes = 128 << 20;
        c.registries.max_review_bytes = 128 << 20;
        c.registries.max_bytes_in_flight = 256 << 20;
    })
    .await;
    let review_in = |ns: &str| {
        let mut r = pod(&format!("{}/team/app:v1", h.addr));
        r["request"]["namespace"] = json!(ns);
        r
    };
    let response = hook.review(&review_in("fine")).await;
    assert_eq!(response["allowed"], true, "the hostile server serves a good list: {response}");

    let huge = 600u64 << 20;
    let blob = |i: usize| format!("/v2/releases/app/blobs/{}", lists[i].1);
    h.set(&blob(1), Answer::ok("application/json", Body::Repeat { pattern: b"[]".to_vec(), len: huge }));
    h.set(&blob(2), Answer::ok("application/json", Body::Repeat { pattern: b"[]".to_vec(), len: huge }).no_length());
    let manifest = format!("/v2/releases/app/manifests/{}", lists[3].0);
    h.set(&manifest, Answer::ok(OCI_MANIFEST, Body::Repeat { pattern: b"{}".to_vec(), len: huge }));
    for (ns, target) in [("declared", blob(1)), ("unbounded", blob(2)), ("manifest", manifest)] {
        let response = hook.review(&review_in(ns)).await;
        assert_eq!(response["allowed"], false, "{ns}: {response}");
        assert_eq!(response["auditAnnotations"]["reasons"], "list-too-large", "{ns}: {response}");
        assert!(message(&response).contains("larger than the 1048576-byte limit (cache.maxListBytes)"), "{response}");
        assert!(h.hits(&target) >= 1, "{ns}: the list was asked for");
        // Counted once the server stopped writing: 0 when the declared length was refused before the body,
        // otherwise the 1 MiB read and what the loopback socket buffers held; far below the 64 MiB registry caps.
        let sent = h.sent(&target);
        assert!(sent < 32 << 20, "{ns}: read cut at the list cap, not {sent} bytes of {huge}");
    }

    // A cut read is never kept: the registry serving the list's real bytes again admits at the next review.
    h.unset(&blob(1));
    let response = hook.review(&review_in("declared")).await;
    assert_eq!(response["allowed"], true, "{response}");

    h.set(&blob(4), Answer::stall());
    let started = std::time::Instant::now();
    let response = hook.review(&review_in("stalled")).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["auditAnnotations"]["reasons"], "deadline-exceeded", "{response}");
    assert!(started.elapsed() < Duration::from_secs(8), "answered within the deadline, not the stall");
}

/// Layer coverage reads the layers of the manifest at the pinned digest, checked against it: a registry serving,
/// for another digest, the bytes of a manifest whose layers are all attested is denied, never covered.
#[tokio::test]
async fn a_mounted_artifact_is_covered_only_by_the_layers_of_the_manifest_its_digest_names() {
    let h = Hostile::start();
    let repo = "models/llm";
    let manifest_of = |marker: &str| {
        let layers: Vec<Value> = (0..2)
            .map(|i| {
                let data = format!("{marker} shard {i}").into_bytes();
                descriptor(
                    "application/vnd.example.model.layer.v1.tar",
                    &h.put_blob(repo, data.clone()),
                    data.len(),
                    None,
                )
            })
            .collect();
        let config = h.put_blob(repo, b"{}".to_vec());
        let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.model.v1", "config": descriptor(OCI_EMPTY, &config, 2, None),
            "layers": layers}))
        .unwrap();
        (h.put_manifest(repo, manifest.clone(), OCI_MANIFEST), manifest, layers)
    };
    let (attested, attested_bytes, layers) = manifest_of("attested");
    let (other, _, _) = manifest_of("other");
    let keys = tempfile::tempdir().unwrap();
    let subjects: Vec<&str> = layers.iter().map(|l| &l["digest"].as_str().unwrap()[7..]).collect();
    let signed = support::signing::sign(
        keys.path(),
        "chains",
        &subjects.join(","),
        &support::signing::seed("chains-kaniko-slsa-v0.2-statement.json"),
    );
    let envelope = h.put_blob(repo, signed.envelope.clone());
    let att =
        h.put_cosign(repo, &[descriptor(DSSE, &envelope, signed.envelope.len(), Some(json!({SIG_ANNOTATION: ""})))]);
    // The statement about the attested layers is stored for both digests.
    for d in [&attested, &other] {
        h.tag(repo, &format!("sha256-{}.att", &d[7..]), &att);
    }
    let policy = format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: models}}\nspec:\n  match: {{images: \
         [\"{}/models/**\"]}}\n  authorities: [{{name: chains, key: {}}}]\n  require:\n    attestations: [{{name: \
         build, predicateType: slsa, coverLayers: true}}]\n",
        h.addr,
        keys.path().join("chains.pub").display()
    );
    let (addr, host) = (h.addr.clone(), h.host_config());
    let hook = Webhook::start(&[("models.yaml", policy)], move |c| {
        c.registries.hosts.insert(addr, host);
    })
    .await;
    let mount = |digest: &str| {
        let mut r = pod("unused");
        r["request"]["object"]["spec"] = json!({"containers": [],
            "volumes": [{"name": "m", "image": {"reference": format!("{}/{repo}@{digest}", h.addr)}}]});
        r
    };
    let response = hook.review(&mount(&attested)).await;
    assert_eq!(response["allowed"], true, "{response}");
    // The other digest's manifest swapped for the attested one's bytes.
    h.set(&format!("/v2/{repo}/manifests/{other}"), Answer::ok(OCI_MANIFEST, attested_bytes));
    let response = hook.review(&mount(&other)).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["auditAnnotations"]["reasons"], "registry-digest-mismatch", "{response}");
    assert!(message(&response).contains(&format!("expected {other}")), "{response}");
}

/// A `.sig` descriptor naming the digest of cosign's default payload for the image is taken as that text only when
/// its size agrees too. With another size (one byte more, or 10 GiB) the blob is read like any other blob: refused
/// by the image's byte budget before any download, or, where the registry does not hold it, not found. Listed 1,000 times, it is cut
/// at the layer cap.
#[tokio::test]
async fn a_descriptor_naming_the_default_payload_is_taken_as_it_only_with_its_size() {
    let h = Hostile::start();
    let r = client(&h, |_| {});
    let digest = Digest::parse(&h.put_image("team/app", "app")).unwrap();
    let at = ImageRef::parse(&format!("{}/team/app@{digest}", h.addr)).unwrap();
    let payload = provgate::artifact::default_payload(&at.name(), &digest);
    let payload_digest = sha256_digest(&payload);
    let blob = format!("/v2/team/app/blobs/{payload_digest}");
    let sig_tag = format!("sha256-{}.sig", digest.hex());
    let layer = |size: usize| {
        descriptor(SIMPLE_SIGNING, &payload_digest, size, Some(json!({"dev.cosignproject.cosign/signature": "MEUC"})))
    };
    let no_att = Wanted { attestations: false, ..Wanted::ALL };
    for (layers, want) in [
        (vec![layer(payload.len())], Ok(1)),
        (vec![layer(payload.len() + 1)], Err("registry-not-found")),
        (vec![layer(10 << 30)], Err("registry-over-budget")),
        (vec![layer(payload.len()); 1000], Err("registry-too-large")),
    ] {
        let sig = h.put_cosign("team/app", &layers);
        h.tag("team/app", &sig_tag, &sig);
        h.reset_counts();
        let got = r.artifacts(&at, &digest, &Credentials::Anonymous, no_att, &r.budget(), soon(5000)).await;
        let size = layers[0]["size"].clone();
        match want {
            Ok(n) => {
                let got = got.unwrap();
                assert_eq!(got.signatures.len(), n);
                assert_eq!(&got.signatures[0].data[..], &payload[..]);
                assert_eq!(h.hits(&blob), 0, "size {size}: the blob is not asked for");
            }
            Err(code) => {
                let err = got.unwrap_err();
                assert_eq!(err.code(), code, "{} layers of size {size}: {err}", layers.len());
                let asked = if code == "registry-not-found" { 1 } else { 0 };
                assert_eq!(h.hits(&blob), asked, "size {size}: read only when it may fit");
            }
        }
    }
}

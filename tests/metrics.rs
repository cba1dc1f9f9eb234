//! The admin port's `/metrics`, scraped over HTTP after known reviews through the real HTTPS server against a real
//! docker-registry, with keys from Secrets served by a loopback Kubernetes API, and parsed as Prometheus text by a
//! parser (not a regex): registry requests by kind and status for one cold signed image, decisions by verdict,
//! reason and mode, cache hits of a warm review, per-image time, fetches in flight, policy load errors and
//! generation across a broken and a fixed edit, and the state of each watched key Secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::kube_api::serve;
use support::registry::{Auth, DockerRegistry, Layout};
use support::signing::sign_image_named;
use support::webhook::{Webhook, review};

fn pod(images: &[&str]) -> Value {
    let mut r = review("pod-create");
    let containers: Vec<Value> =
        images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect();
    r["request"]["object"]["spec"] = json!({"containers": containers});
    r
}

/// A policy in `mode` for `images`, trusting the keys of these Secrets and requiring a signature.
fn policy(name: &str, mode: &str, images: &str, secrets: &[&str]) -> String {
    let authorities: String =
        secrets.iter().map(|s| format!("    - name: {s}\n      key: k8s://provgate-system/{s}\n")).collect();
    format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: {mode}\n  \
         match:\n    images: [\"{images}\"]\n  authorities:\n{authorities}  require:\n    signature: true\n"
    )
}

/// One scrape of `/metrics`, parsed.
struct Scrape {
    parsed: prometheus_parse::Scrape,
    text: String,
}

impl Scrape {
    async fn of(hook: &Webhook) -> Self {
        let (status, text) = hook.admin_get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        Self { parsed, text }
    }

    /// The value of the one sample of `metric` carrying these labels (and maybe others); None when absent.
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .parsed
            .samples
            .iter()
            .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{metric}: {other:?}"),
            })
            .collect();
        assert!(found.len() <= 1, "{metric} {labels:?} matches {} samples:\n{}", found.len(), self.text);
        found.first().copied()
    }

    /// Every (label values...) -> value of `metric`, for the labels `keys`, sorted.
    fn table(&self, metric: &str, keys: &[&str]) -> Vec<(Vec<String>, f64)> {
        let mut rows: Vec<(Vec<String>, f64)> = self
            .parsed
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .map(|s| {
                let labels = keys.iter().map(|k| s.labels.get(k).unwrap_or_default().to_owned()).collect();
                let value = match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    ref other => panic!("{metric}: {other:?}"),
                };
                (labels, value)
            })
            .collect();
        rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
        rows
    }

    /// The `_count` of histogram `metric`.
    fn count(&self, metric: &str) -> Option<u64> {
        self.parsed.samples.iter().find(|s| s.metric == metric).map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0, |b| b.count as u64),
            other => panic!("{metric}: {other:?}"),
        })
    }
}

fn row(labels: &[&str], value: f64) -> (Vec<String>, f64) {
    (labels.iter().map(|s| (*s).to_owned()).collect(), value)
}

/// Scrapes until `done` holds (the policy files are polled every 100 ms), at most 10 s.
async fn scrape_until(hook: &Webhook, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..100 {
        let scrape = Scrape::of(hook).await;
        if done(&scrape) {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never showed on /metrics:\n{}", Scrape::of(hook).await.text);
}

#[tokio::test]
async fn metrics_follow_known_reviews_policy_reloads_and_key_watches() {
    let registry = DockerRegistry::start(Auth::None);
    let keys = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    let signed = layout.image("signed", "amd64");
    let unsigned = layout.image("unsigned", "amd64");
    layout.tag("signed", &signed);
    layout.tag("unsigned", &unsigned);
    // Signed as cosign signs: the payload names the repository, so it is known by its digest and never read.
    sign_image_named(&mut layout, keys.path(), &signed, &format!("{}/team/signed", registry.addr));
    registry.push(&layout, "signed", "team/signed", "1");
    registry.push(
        &layout,
        &format!("sha256-{}.sig", signed.hex()),
        "team/signed",
        &format!("sha256-{}.sig", signed.hex()),
    );
    registry.push(&layout, "unsigned", "team/unsigned", "1");
    registry.push(&layout, "unsigned", "trial/app", "1");

    let (api, kube) = serve().await;
    let public = std::fs::read_to_string(keys.path().join("chains.pub")).unwrap();
    api.put("provgate-system", "signer", &[("cosign.pub", &public)]);
    api.put("provgate-system", "garbage", &[("cosign.pub", "not a key")]);
    let addr = registry.addr.clone();
    let policies = [
        ("team.yaml", policy("team", "enforce", &format!("{addr}/team/**"), &["signer"])),
        ("trial.yaml", policy("trial", "warn", &format!("{addr}/trial/**"), &["signer"])),
        ("unused.yaml", policy("unused", "audit", &format!("{addr}/unused/**"), &["absent", "garbage"])),
    ];
    let host = registry.host_config();
    let hook = Webhook::start_with(&policies, Some(kube), |c| {
        c.registries.hosts.insert(addr.clone(), host);
        c.policy_poll = Duration::from_millis(100);
    })
    .await;

    // The families without labels (and the state of policies and keys) are exported before any review; those with
    // labels appear with their first sample, below.
    let scrape = Scrape::of(&hook).await;
    for name in [
        "provgate_admission_duration_seconds",
        "provgate_image_verification_duration_seconds",
        "provgate_fetches_in_flight",
        "provgate_policy_load_errors",
        "provgate_policy_last_load_successful",
        "provgate_policy_set",
        "provgate_key_watch_state",
        "provgate_serving_certificate_expiry_timestamp_seconds",
    ] {
        assert!(scrape.text.contains(&format!("# TYPE {name} ")), "{name} is not exported:\n{}", scrape.text);
    }
    assert_eq!(scrape.value("provgate_fetches_in_flight", &[]), Some(0.0));
    assert_eq!(scrape.value("provgate_policy_load_errors_total", &[]), Some(0.0));
    assert_eq!(scrape.value("provgate_policy_last_load_successful", &[]), Some(1.0));
    let generation = hook.running.policies.current().unwrap().generation().to_owned();
    assert_eq!(scrape.value("provgate_policy_set_info", &[("generation", &generation)]), Some(1.0));

    // The key Secrets the policies name: one loaded, one missing, one whose key does not parse.
    let states = scrape.table("provgate_key_watch_state", &["namespace", "secret", "key", "state"]);
    let mut want = Vec::new();
    for (secret, now) in [("absent", "missing"), ("garbage", "error"), ("signer", "loaded")] {
        for state in ["error", "loaded", "missing", "pending"] {
            want.push(row(&["provgate-system", secret, "cosign.pub", state], f64::from(u8::from(state == now))));
        }
    }
    want.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(states, want, "{}", scrape.text);

    // A signed image, cold: each request it takes, by kind and status.
    let signed_ref = format!("{addr}/team/signed:1");
    let response = hook.review(&pod(&[&signed_ref])).await;
    assert_eq!(response["allowed"], true, "{response}");
    let scrape = Scrape::of(&hook).await;
    let requests = |scrape: &Scrape| scrape.table("provgate_registry_requests_total", &["registry", "kind", "status"]);
    assert_eq!(
        requests(&scrape),
        vec![
            row(&[&addr, "manifest", "200"], 1.0), // the .sig tag (its payload is cosign's default: not read)
            row(&[&addr, "manifest", "404"], 1.0), // the referrers tag schema (sha256-<hex>)
            row(&[&addr, "ping", "200"], 1.0),     // GET /v2/: no challenge, anonymous
            row(&[&addr, "referrers", "404"], 1.0), // distribution 2.8 has no referrers API
            row(&[&addr, "tag-head", "200"], 1.0), // what :1 names now
        ],
        "{}",
        scrape.text
    );
    assert_eq!(scrape.value("provgate_verifications_total", &[]), Some(1.0));
    assert_eq!(scrape.count("provgate_image_verification_duration_seconds"), Some(1));
    assert_eq!(scrape.value("provgate_fetches_in_flight", &[]), Some(0.0), "the fetch slot was given back");

    // Warm: only the tag is asked again; the artifacts and their verification come from the caches.
    let response = hook.review(&pod(&[&signed_ref])).await;
    assert_eq!(response["allowed"], true, "{response}");
    let scrape = Scrape::of(&hook).await;
    assert_eq!(scrape.value("provgate_registry_requests_total", &[("kind", "tag-head"), ("status", "200")]), Some(2.0));
    assert_eq!(scrape.value("provgate_registry_requests_total", &[("kind", "blob"), ("status", "200")]), None);
    let cache = |cache: &str, result: &str| {
        scrape.value("provgate_cache_requests_total", &[("cache", cache), ("result", result)])
    };
    assert_eq!((cache("artifacts", "miss"), cache("artifacts", "hit")), (Some(1.0), None), "{}", scrape.text);
    assert_eq!((cache("verifications", "miss"), cache("verifications", "hit")), (Some(1.0), None));
    assert_eq!((cache("images", "miss"), cache("images", "hit")), (Some(1.0), Some(1.0)), "read whole");
    assert_eq!(scrape.value("provgate_verifications_total", &[]), Some(1.0));
    assert_eq!(scrape.count("provgate_image_verification_duration_seconds"), Some(2));

    // Unsigned under the enforce policy, unsigned under the warn policy, and an image no policy matches.
    let response = hook.review(&pod(&[&format!("{addr}/team/unsigned:1")])).await;
    assert_eq!(response["allowed"], false, "{response}");
    let response = hook.review(&pod(&[&format!("{addr}/trial/app:1")])).await;
    assert_eq!(response["allowed"], true, "{response}");
    let response = hook.review(&pod(&[&format!("{addr}/elsewhere/app:1")])).await;
    assert_eq!(response["allowed"], false, "{response}");
    let scrape = Scrape::of(&hook).await;
    println!("{}", scrape.text); // shown with --nocapture: the README's example scrape
    assert_eq!(
        scrape.table("provgate_admission_decisions_total", &["decision", "reason", "mode"]),
        vec![
            row(&["allow", "none", "none"], 2.0),
            row(&["deny", "no-policy", "enforce"], 1.0),
            row(&["deny", "unsigned", "enforce"], 1.0),
            row(&["warn", "unsigned", "warn"], 1.0),
        ],
        "{}",
        scrape.text
    );
    assert_eq!(scrape.count("provgate_admission_duration_seconds"), Some(5));
    assert_eq!(
        scrape.count("provgate_image_verification_duration_seconds"),
        Some(4),
        "the unmatched image is not gathered"
    );
    // Each unsigned image: its tag, its missing .sig tag and its missing referrers tag (the registry is now known to
    // lack the referrers API, so that is not asked again).
    assert_eq!(
        requests(&scrape),
        vec![
            row(&[&addr, "manifest", "200"], 1.0),
            row(&[&addr, "manifest", "404"], 5.0),
            row(&[&addr, "ping", "200"], 1.0),
            row(&[&addr, "referrers", "404"], 1.0),
            row(&[&addr, "tag-head", "200"], 4.0),
        ],
        "{}",
        scrape.text
    );
    assert_eq!(scrape.value("provgate_fetches_in_flight", &[]), Some(0.0));

    // A broken edit is counted and the previous set stays; the fix loads a new generation.
    let dir = hook.dir.path().join("policies");
    std::fs::write(dir.join("broken.yaml"), "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nspec: [\n").unwrap();
    let scrape =
        scrape_until(&hook, "the load error", |s| s.value("provgate_policy_load_errors_total", &[]) == Some(1.0)).await;
    assert_eq!(scrape.value("provgate_policy_last_load_successful", &[]), Some(0.0));
    assert_eq!(scrape.value("provgate_policy_set_info", &[("generation", &generation)]), Some(1.0), "{}", scrape.text);
    std::fs::write(dir.join("broken.yaml"), policy("fixed", "audit", &format!("{addr}/fixed/**"), &["signer"]))
        .unwrap();
    let scrape = scrape_until(&hook, "the new generation", |s| {
        s.value("provgate_policy_last_load_successful", &[]) == Some(1.0)
    })
    .await;
    let now = hook.running.policies.current().unwrap().generation().to_owned();
    assert_ne!(now, generation);
    assert_eq!(scrape.value("provgate_policy_set_info", &[("generation", &now)]), Some(1.0), "{}", scrape.text);
    assert_eq!(scrape.table("provgate_policy_set_info", &["generation"]).len(), 1, "one generation at a time");
    assert_eq!(scrape.value("provgate_policy_load_errors_total", &[]), Some(1.0));
}

/// Registry requests that do not go well, through the real server against a hostile registry with a Bearer
/// challenge: the challenge and each repository's token, a tag answered 503 (retried), a tag that never answers
/// (timeout), and a host nobody listens on, labelled by name as one of the first hosts seen outside the config.
#[tokio::test]
async fn registry_requests_count_challenges_tokens_retries_timeouts_and_unreachable_hosts() {
    use support::registry::{Answer, Challenge, Hostile};
    let hostile = Hostile::start();
    hostile.challenge(Some(Challenge::default()));
    let digest = hostile.put_image("team/app", "app");
    hostile.tag("team/app", "1", &digest);
    hostile.set("/v2/team/flaky/manifests/1", Answer::status(503));
    hostile.set("/v2/team/slow/manifests/1", Answer::stall());
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let key = support::webhook::fixtures_dir().join("vectors/sigstore-rs/key-signed-busybox.pub.pem");
    let policy = format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: all\nspec:\n  match:\n    images: \
         [\"**\"]\n  authorities:\n    - name: a\n      key: {}\n",
        key.display()
    );
    let (addr, host) = (hostile.addr.clone(), hostile.host_config());
    let hook = Webhook::start(&[("all.yaml", policy)], |c| {
        c.registries.hosts.insert(addr.clone(), host);
        c.registries.call_timeout = Duration::from_secs(1);
    })
    .await;
    for (image, reason) in [
        (format!("{addr}/team/app:1"), "unsigned"),
        (format!("{addr}/team/flaky:1"), "registry-server-error"),
        (format!("{addr}/team/slow:1"), "registry-timed-out"),
        (format!("{closed}/team/app:1"), "registry-unreachable"),
    ] {
        let response = hook.review(&pod(&[&image])).await;
        assert_eq!(response["allowed"], false, "{image}: {response}");
        let reasons = response["auditAnnotations"]["reasons"].as_str().unwrap_or_default();
        assert_eq!(reasons, reason, "{image}: {response}");
    }
    let scrape = Scrape::of(&hook).await;
    let mut want = vec![
        row(&[&closed, "ping", "error"], 1.0),     // nobody listens
        row(&[&addr, "manifest", "404"], 2.0),     // no .sig tag, no referrers tag
        row(&[&addr, "ping", "401"], 1.0),         // the Bearer challenge, asked once per session
        row(&[&addr, "referrers", "404"], 1.0),    // no referrers API
        row(&[&addr, "tag-head", "200"], 1.0),     // team/app:1
        row(&[&addr, "tag-head", "503"], 3.0),     // team/flaky:1, and its two retries
        row(&[&addr, "tag-head", "timeout"], 1.0), // team/slow:1, not retried
        row(&[&addr, "token", "200"], 3.0),        // one token per repository
    ];
    want.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let got = scrape.table("provgate_registry_requests_total", &["registry", "kind", "status"]);
    assert_eq!(got, want, "{}", scrape.text);
    assert_eq!(scrape.value("provgate_fetches_in_flight", &[]), Some(0.0));

    // The review's deadline (shorter than the call timeout) cuts the stalled request short: it is still counted,
    // as a timeout, and its fetch slot is given back.
    let policy = std::fs::read_to_string(hook.dir.path().join("policies/all.yaml")).unwrap();
    let (addr, host) = (hostile.addr.clone(), hostile.host_config());
    let hook = Webhook::start(&[("all.yaml", policy)], |c| {
        c.registries.hosts.insert(addr.clone(), host);
        // Shorter than the 10 s call timeout, with room for the token and challenge before the stall on a busy machine.
        c.deadline = Duration::from_secs(5);
        c.registries.call_timeout = Duration::from_secs(10);
    })
    .await;
    // A first review opens the session (its clients, the challenge), so the deadline is spent on the stalled tag.
    hook.review(&pod(&[&format!("{addr}/team/app:1")])).await;
    let response = hook.review(&pod(&[&format!("{addr}/team/slow:1")])).await;
    assert_eq!(response["auditAnnotations"]["reasons"], "deadline-exceeded", "{response}");
    let scrape = Scrape::of(&hook).await;
    let timed_out = scrape.value("provgate_registry_requests_total", &[("kind", "tag-head"), ("status", "timeout")]);
    assert!(timed_out >= Some(1.0), "{}", scrape.text);
    assert_eq!(scrape.value("provgate_fetches_in_flight", &[]), Some(0.0), "{}", scrape.text);
}

//! The real webhook over real HTTPS with real AdmissionReview JSON: every kind and image field, bad input,
//! modes, noMatch, DELETE/CONNECT, dryRun, readiness and metrics; and the edge under hostile clients and failures:
//! panics inside a review, the review and connection limits, silent connections, client certificates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use provgate::decide::NoMatch;
use serde_json::{Value, json};
use support::registry::{Canned, CannedServer};
use support::webhook::{ClientCa, Webhook, https_client, https_client_with_identity, message, policy, review};

const KINDS: [&str; 7] = ["pod", "deployment", "replicaset", "statefulset", "daemonset", "job", "cronjob"];

fn team_policy() -> Vec<(&'static str, String)> {
    vec![("team.yaml", policy("team", "enforce", &["registry.example.com/team/**"]))]
}

/// Points the object's pod-spec field at `path` (dot-separated, with list indexes) to `image`.
fn set_image(review: &mut Value, path: &str, image: &str) {
    let mut at = &mut review["request"]["object"];
    for part in path.split('.') {
        at = match part.split_once('[') {
            Some((key, index)) => &mut at[key][index.trim_end_matches(']').parse::<usize>().unwrap()],
            None => &mut at[part],
        };
    }
    *at = json!(image);
}

fn spec_prefix(kind: &str) -> &'static str {
    match kind {
        "pod" => "spec",
        "cronjob" => "spec.jobTemplate.spec.template.spec",
        _ => "spec.template.spec",
    }
}

#[tokio::test]
async fn every_kind_is_admitted_when_every_image_is_governed() {
    let hook = Webhook::start(&team_policy(), |_| {}).await;
    for kind in KINDS {
        let response = hook.review(&review(&format!("{kind}-create"))).await;
        assert_eq!(response["allowed"], true, "{kind}: {response}");
        assert!(response.get("status").is_none(), "{kind}");
        assert_eq!(response["auditAnnotations"]["decision"], "allow");
    }
    assert_eq!(hook.audit_records().len(), KINDS.len());
}

#[tokio::test]
async fn every_image_field_of_every_kind_is_judged() {
    let hook = Webhook::start(&team_policy(), |_| {}).await;
    let fields = [
        "initContainers[0].image",
        "initContainers[1].image",
        "containers[0].image",
        "containers[1].image",
        "volumes[1].image.reference",
    ];
    for kind in KINDS {
        for field in fields {
            let path = format!("{}.{field}", spec_prefix(kind));
            let mut r = review(&format!("{kind}-create"));
            set_image(&mut r, &path, "quay.io/evil/miner:latest");
            let response = hook.review(&r).await;
            assert_eq!(response["allowed"], false, "{kind} {path}");
            assert_eq!(response["status"]["code"], 403);
            assert_eq!(response["status"]["reason"], "Forbidden");
            let msg = message(&response);
            assert!(msg.starts_with(&format!("{path} \"quay.io/evil/miner:latest\": no ImagePolicy matches")), "{msg}");
            assert!(msg.contains("namespace \"team-a\""), "{msg}");
            assert_eq!(msg.matches("no ImagePolicy").count(), 1, "only the ungoverned image is named: {msg}");
        }
    }
}

#[tokio::test]
async fn ephemeral_containers_added_by_kubectl_debug_are_judged() {
    let hook = Webhook::start(&team_policy(), |_| {}).await;
    let r = review("pod-ephemeral-update");
    assert_eq!(r["request"]["subResource"], "ephemeralcontainers");
    let response = hook.review(&r).await;
    assert_eq!(response["allowed"], false, "{response}");
    let msg = message(&response);
    assert!(msg.starts_with("spec.ephemeralContainers[0].image \"busybox:1.36\""), "{msg}");
    assert!(!msg.contains("containers[0]"), "images unchanged since the old object are not re-judged: {msg}");

    let mut governed = r.clone();
    set_image(&mut governed, "spec.ephemeralContainers[0].image", "registry.example.com/team/debug:1");
    assert_eq!(hook.review(&governed).await["allowed"], true);
}

#[tokio::test]
async fn invalid_references_are_denied_naming_the_field() {
    let hook = Webhook::start(&team_policy(), |c| c.no_match = NoMatch::Allow).await;
    for bad in ["registry.example.com/team/App:1", "", "registry.example.com/team/app@sha256:abc"] {
        let mut r = review("deployment-create");
        set_image(&mut r, "spec.template.spec.containers[1].image", bad);
        let response = hook.review(&r).await;
        assert_eq!(response["allowed"], false, "{bad:?} with noMatch allow is still denied");
        let msg = message(&response);
        assert!(msg.starts_with(&format!("spec.template.spec.containers[1].image {bad:?}: ")), "{msg}");
        assert_eq!(response["auditAnnotations"]["reasons"], "invalid-reference");
    }
}

#[tokio::test]
async fn warn_mode_admits_with_warnings() {
    let policies = vec![
        ("team.yaml", policy("team", "enforce", &["registry.example.com/team/**"])),
        ("canary.yaml", policy("canary", "warn", &["registry.example.com/canary/**"])),
    ];
    let hook = Webhook::start(&policies, |c| c.no_match = NoMatch::Warn).await;
    let mut r = review("pod-create");
    set_image(&mut r, "spec.containers[1].image", "quay.io/other/tool:1");
    let response = hook.review(&r).await;
    assert_eq!(response["allowed"], true, "{response}");
    let warnings = response["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].as_str().unwrap().contains("spec.containers[1].image \"quay.io/other/tool:1\""));
    assert_eq!(response["auditAnnotations"]["decision"], "warn");
    assert!(response.get("status").is_none());
}

#[tokio::test]
async fn no_match_follows_the_config() {
    for (no_match, allowed, warned) in
        [(NoMatch::Deny, false, false), (NoMatch::Warn, true, true), (NoMatch::Allow, true, false)]
    {
        let hook = Webhook::start(&[], |c| c.no_match = no_match).await;
        let response = hook.review(&review("job-create")).await;
        assert_eq!(response["allowed"], allowed, "{no_match:?}");
        assert_eq!(response.get("warnings").is_some(), warned, "{no_match:?}: {response}");
    }
}

#[tokio::test]
async fn namespaces_scope_policies() {
    let scoped = "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: prod}\nspec:\n  match:\n    images: [\"**\"]\n    namespaces: [\"prod-*\"]\n";
    let hook = Webhook::start(&[("prod.yaml", scoped.into())], |_| {}).await;
    let mut r = review("pod-create");
    assert_eq!(hook.review(&r).await["allowed"], false, "team-a is not prod-*");
    r["request"]["namespace"] = json!("prod-eu");
    assert_eq!(hook.review(&r).await["allowed"], true);
}

#[tokio::test]
async fn delete_and_connect_are_admitted_without_work() {
    let hook = Webhook::start(&[], |_| {}).await;
    for name in ["pod-delete", "pod-exec-connect"] {
        let response = hook.review(&review(name)).await;
        assert_eq!(response["allowed"], true, "{name}");
    }
}

#[tokio::test]
async fn dry_run_is_judged_like_any_request() {
    let hook = Webhook::start(&[], |_| {}).await;
    let mut r = review("statefulset-create");
    r["request"]["dryRun"] = json!(true);
    let response = hook.review(&r).await;
    assert_eq!(response["allowed"], false);
    let records = hook.audit_records();
    assert_eq!(records.last().unwrap()["dryRun"], true);
}

#[tokio::test]
async fn bodies_that_are_not_reviews_get_clear_4xx_errors() {
    let hook = Webhook::start(&team_policy(), |c| c.max_request_bytes = 64 * 1024).await;
    let mut no_uid = review("pod-create");
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut huge = review("pod-create");
    huge["request"]["object"]["metadata"]["annotations"] = json!({"blob": "x".repeat(100 * 1024)});
    let table: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "not JSON"),
        (b"".to_vec(), 400, "not JSON"),
        (
            br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#.to_vec(),
            400,
            "not an admission.k8s.io/v1 AdmissionReview",
        ),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), 400, "has no request"),
        (serde_json::to_vec(&no_uid).unwrap(), 400, "has no uid"),
        (serde_json::to_vec(&huge).unwrap(), 413, "exceeds the 65536-byte limit"),
    ];
    for (body, status, needle) in table {
        let (got, text) = hook.post_raw(body).await;
        assert_eq!(got, status, "{text}");
        assert!(text.contains(needle), "{text:?} should contain {needle:?}");
    }
    assert!(hook.audit_records().is_empty(), "nothing was judged");
}

#[tokio::test]
async fn requests_whose_object_cannot_be_read_are_denied_with_the_reason() {
    let hook = Webhook::start(&team_policy(), |_| {}).await;
    let mut bad_shape = review("deployment-create");
    bad_shape["request"]["object"]["spec"]["template"]["spec"]["containers"] = json!("nginx");
    let mut no_object = review("pod-create");
    no_object["request"]["object"] = Value::Null;
    let mut bad_operation = review("pod-create");
    bad_operation["request"]["operation"] = json!("PATCH");
    let mut other_kind = review("pod-create");
    other_kind["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let table = [
        (bad_shape, "spec.template.spec.containers: not a list", "unreadable-object"),
        (no_object, "carries no object", "unreadable-object"),
        (bad_operation, "unknown variant `PATCH`", "unreadable-request"),
        (other_kind, "judges Pods and pod controllers only", "unreadable-object"),
    ];
    for (r, needle, code) in table {
        let response = hook.review(&r).await;
        assert_eq!(response["allowed"], false, "{response}");
        assert_eq!(response["status"]["code"], 403);
        assert!(message(&response).contains(needle), "{} should contain {needle}", message(&response));
        assert_eq!(response["auditAnnotations"]["reasons"], code);
    }
}

#[tokio::test]
async fn broken_policies_deny_everything_and_report_not_ready() {
    let broken = policy("team", "enforce", &["**"]).replace("mode: enforce", "mode: enforce\n  colour: red");
    let hook = Webhook::start(&[("team.yaml", broken)], |c| c.no_match = NoMatch::Allow).await;
    let response = hook.review(&review("pod-create")).await;
    assert_eq!(response["allowed"], false);
    assert!(message(&response).contains("no valid policy set"), "{response}");
    assert!(
        message(&response).contains("team.yaml:7: spec: unknown field `colour`"),
        "the denial quotes why: {response}"
    );
    let (status, body) = hook.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("team.yaml:7: spec: unknown field `colour`"), "{body}");
}

#[tokio::test]
async fn a_key_file_that_cannot_be_read_is_named_in_the_denial() {
    let missing = "/nonexistent/provgate-test/cosign.pub";
    let text = format!(
        "{}  authorities:\n    - name: chains\n      key: {missing}\n",
        policy("team", "enforce", &["registry.example.com/team/**"])
    );
    let hook = Webhook::start(&[("team.yaml", text)], |_| {}).await;
    let response = hook.review(&review("pod-create")).await;
    assert_eq!(response["allowed"], false, "{response}");
    // Key files are read when policies load: the set does not load, and the denial quotes the policy's file and
    // line and the key file.
    let said = message(&response);
    assert!(
        said.contains("team.yaml:10: authorities[chains]: file /nonexistent/provgate-test/cosign.pub: cannot read"),
        "the denial names the policy and the key file: {said}"
    );
    let record = hook.audit_records().pop().unwrap();
    assert_eq!(record["reason"], "policies-not-loaded", "{record}");
}

#[tokio::test]
async fn admin_port_reports_health_readiness_and_metrics() {
    let hook = Webhook::start(&team_policy(), |_| {}).await;
    assert_eq!(hook.admin_get("/healthz").await.0, 200);
    let (status, body) = hook.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("1 policies"), "{body}");
    hook.review(&review("pod-create")).await;
    let mut denied = review("pod-create");
    set_image(&mut denied, "spec.containers[0].image", "nginx");
    hook.review(&denied).await;
    let (_, metrics) = hook.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"provgate_admission_decisions_total{decision="allow",reason="none",mode="none"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"provgate_admission_decisions_total{decision="deny",reason="no-policy",mode="enforce"} 1"#),
        "{metrics}"
    );
    // The serving certificate's expiry, as the certificate says (the harness issues it for a year or more).
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("provgate_serving_certificate_expiry_timestamp_seconds ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no certificate expiry in {metrics}"));
    let now = chrono::Utc::now().timestamp();
    assert!(expiry > now + 300 * 86_400, "expires at {expiry}, now {now}");
}

#[tokio::test]
async fn every_decision_is_audited() {
    let hook = Webhook::start(&team_policy(), |_| {}).await;
    let mut r = review("cronjob-create");
    set_image(&mut r, "spec.jobTemplate.spec.template.spec.initContainers[0].image", "nginx");
    hook.review(&r).await;
    let records = hook.audit_records();
    let rec = records.last().unwrap();
    assert_eq!(rec["uid"], r["request"]["uid"]);
    assert_eq!(
        (rec["namespace"].as_str(), rec["kind"].as_str(), rec["name"].as_str()),
        (Some("team-a"), Some("CronJob"), Some("nightly"))
    );
    assert_eq!((rec["operation"].as_str(), rec["decision"].as_str()), (Some("CREATE"), Some("deny")));
    assert_eq!(rec["user"], "kubernetes-admin");
    let images = rec["images"].as_array().unwrap();
    assert_eq!(images.len(), 5);
    let denied: Vec<&Value> = images.iter().filter(|i| i["outcome"] == "denied").collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["field"], "spec.jobTemplate.spec.template.spec.initContainers[0].image");
    assert_eq!(denied[0]["ref"], "docker.io/library/nginx:latest");
    assert_eq!(denied[0]["reason"], "no-policy");
    let pinned = images.iter().find(|i| i["field"].as_str().unwrap().ends_with("containers[0].image")).unwrap();
    assert_eq!(pinned["digest"], "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    assert_eq!(pinned["policies"], json!(["team"]));
}

// ---------------------------------------------------------------- hostile clients and failures inside a review

/// A policy that needs registry evidence for every image: a signature by the Tekton Chains fixture key.
fn signed_policy() -> Vec<(&'static str, String)> {
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vectors/tekton-chains/cosign.pub");
    let text = format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: signed}}\nspec:\n  match: {{images: [\"**\"]}}\n  authorities: [{{name: chains, key: {}}}]\n  require: {{signature: true}}\n",
        key.display()
    );
    vec![("signed.yaml", text)]
}

/// A Pod review running `image`, with a uid of its own.
fn pod(image: &str) -> Value {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut r = review("pod-create");
    r["request"]["uid"] = json!(format!("00000000-0000-4000-8000-{n:012}"));
    r["request"]["object"]["spec"] = json!({"containers": [{"name": "app", "image": image}]});
    r
}

/// The audit record of the review with `uid`.
fn audit_record(hook: &Webhook, uid: &Value) -> Value {
    let records = hook.audit_records();
    records.into_iter().find(|r| r["uid"] == *uid).unwrap_or_else(|| panic!("no audit record for {uid}"))
}

#[tokio::test]
async fn a_registry_answer_that_panics_the_review_is_still_a_denial_with_an_audit_record() {
    // A Retry-After of u64::MAX seconds overflowed the retry arithmetic. Whatever fails inside the review, the
    // apiserver must get an answer and the audit log a record.
    let hostile = CannedServer::start(
        [
            ("/v2/".to_owned(), Canned::status(200)),
            ("/v2/team/app/manifests/1".to_owned(), Canned::status(429).header("Retry-After", "18446744073709551615")),
        ]
        .into_iter()
        .collect(),
    );
    let (host, config) = (hostile.addr.clone(), hostile.host_config());
    let hook = Webhook::start(&signed_policy(), move |c| {
        c.registries.hosts.insert(host, config);
    })
    .await;
    let r = pod(&format!("{}/team/app:1", hostile.addr));
    let response = hook.review(&r).await;
    assert_eq!(response["allowed"], false, "{response}");
    // internal-error while the overflow is there; the registry's own reason once it is fixed.
    assert!(!response["auditAnnotations"]["reasons"].as_str().unwrap_or_default().is_empty(), "{response}");
    let record = audit_record(&hook, &r["request"]["uid"]);
    assert_eq!(record["decision"], "deny", "{record}");
    // The server is still answering.
    assert_eq!(hook.review(&review("pod-create")).await["allowed"], false);
}

#[tokio::test]
async fn a_panic_while_judging_is_an_internal_error_denial_with_an_audit_record() {
    const BOOM: &str = "provgate-test-panics-here";
    let hook = Webhook::start(&team_policy(), |c| c.test_hooks.panic_in_namespace = Some(BOOM.into())).await;
    let mut r = pod("registry.example.com/team/app:1");
    r["request"]["namespace"] = json!(BOOM);
    let response = hook.review(&r).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 403);
    assert_eq!(response["auditAnnotations"]["reasons"], "internal-error", "{response}");
    let msg = message(&response);
    assert!(msg.contains("provgate failed") && msg.contains("report"), "{msg}");
    assert!(!msg.contains("test hook") && !msg.contains(".rs"), "internals are not shown: {msg}");
    let record = audit_record(&hook, &r["request"]["uid"]);
    assert_eq!((record["decision"].as_str(), record["reason"].as_str()), (Some("deny"), Some("internal-error")));
    assert_eq!(record["namespace"], BOOM);
    // Other reviews go on as before.
    assert_eq!(hook.review(&review("pod-create")).await["allowed"], true);
}

#[tokio::test]
async fn reviews_beyond_the_concurrency_limit_are_denied_overloaded_and_a_gone_client_frees_its_slot() {
    let stall = CannedServer::start([("/v2/".to_owned(), Canned::stall())].into_iter().collect());
    let (host, config) = (stall.addr.clone(), stall.host_config());
    let hook = Webhook::start(&signed_policy(), move |c| {
        c.deadline = Duration::from_secs(20);
        c.server.max_concurrent_reviews = 1;
        c.server.review_queue_timeout = Duration::from_millis(500);
        c.registries.hosts.insert(host, config);
    })
    .await;
    let hook = std::sync::Arc::new(hook);
    let stuck = pod(&format!("{}/team/app:1", stall.addr));

    // The first review holds the only slot, waiting on a registry that never answers.
    let first = {
        let (hook, stuck) = (hook.clone(), stuck.clone());
        let client = https_client(hook.ca_pem.as_bytes());
        tokio::spawn(async move { hook.post_raw_with(&client, serde_json::to_vec(&stuck).unwrap()).await })
    };
    let started = Instant::now();
    while stall.hits("/v2/") == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the first review never reached the registry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second one is denied at once, with the reason, and audited.
    let started = Instant::now();
    let second = pod(&format!("{}/team/other:1", stall.addr));
    let response = tokio::time::timeout(Duration::from_secs(10), hook.review(&second))
        .await
        .expect("a review beyond the limit must be answered, not queued behind the stuck one");
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["auditAnnotations"]["reasons"], "overloaded", "{response}");
    let msg = message(&response);
    assert!(msg.contains("1 review") && msg.contains("server.maxConcurrentReviews"), "{msg}");
    assert_eq!(audit_record(&hook, &second["request"]["uid"])["reason"], "overloaded");

    // The first client goes away: its review is dropped and its slot freed long before the 20 s deadline.
    first.abort();
    let started = Instant::now();
    loop {
        let response = hook.review(&review("pod-delete")).await;
        if response["auditAnnotations"]["reasons"] != "overloaded" {
            assert_eq!(response["allowed"], true, "{response}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the abandoned review still holds its slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = hook.audit_records();
    let finished = records.iter().find(|r| r["uid"] == stuck["request"]["uid"]);
    assert!(finished.is_none(), "the abandoned review was not judged to the end: {finished:?}");
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS connection to `hook` on a blocking socket (with ALPN `alpn`), handshake done. Blocks: call it off the
/// runtime's threads.
fn tls_connection(hook: &(String, std::net::SocketAddr), alpn: &[u8]) -> TlsStream {
    let (ca_pem, addr) = hook;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls_pemfile::certs(&mut ca_pem.as_bytes()).next().unwrap().unwrap();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(conn, tcp)
}

/// Whether the server closes `stream` within `within`: reads until EOF or a reset, failing on anything else.
fn closed_within(stream: &mut impl std::io::Read, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(format!("still open after {:?}", started.elapsed()));
            }
            Err(_) => return Ok(started.elapsed()),
        }
        if started.elapsed() > within {
            return Err(format!("still sending after {:?}", started.elapsed()));
        }
    }
}

#[tokio::test]
async fn silent_and_slow_connections_are_closed_and_do_not_hold_up_reviews() {
    use std::io::Write as _;
    let hook = Webhook::start(&team_policy(), |c| {
        c.server.header_read_timeout = Duration::from_secs(1);
        c.server.max_connections = 8;
    })
    .await;
    // Three silent TCP connections to the HTTPS port and one to the admin port.
    let addrs = [hook.running.https, hook.running.https, hook.running.https, hook.running.admin];
    let mut tcp: Vec<std::net::TcpStream> = addrs
        .iter()
        .map(|addr| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
            s
        })
        .collect();
    let target = (hook.ca_pem.clone(), hook.running.https);
    let (mut silent_h1, mut silent_h2, mut partial_head, mut partial_body) = tokio::task::spawn_blocking(move || {
        let silent_h1 = tls_connection(&target, b"http/1.1");
        let silent_h2 = tls_connection(&target, b"h2");
        let mut partial_head = tls_connection(&target, b"http/1.1");
        partial_head.write_all(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/").unwrap();
        let mut partial_body = tls_connection(&target, b"http/1.1");
        partial_body
            .write_all(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4096\r\n\r\n{\"apiVersion\":")
            .unwrap();
        (silent_h1, silent_h2, partial_head, partial_body)
    })
    .await
    .unwrap();
    for s in [&mut silent_h1, &mut silent_h2, &mut partial_head, &mut partial_body] {
        s.sock.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    }

    // Seven connections to the HTTPS port are open and silent or stalled; a review is answered as usual.
    let started = Instant::now();
    assert_eq!(hook.review(&review("pod-create")).await["allowed"], true);
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());

    let (partial_body, outcome) = tokio::task::spawn_blocking(move || {
        let mut outcomes = Vec::new();
        for (i, s) in tcp.iter_mut().enumerate() {
            outcomes.push((format!("tcp {i}"), closed_within(s, Duration::from_secs(5))));
        }
        outcomes.push(("TLS http/1.1, nothing sent".into(), closed_within(&mut silent_h1, Duration::from_secs(5))));
        outcomes.push(("TLS h2, nothing sent".into(), closed_within(&mut silent_h2, Duration::from_secs(5))));
        outcomes.push(("half a request head".into(), closed_within(&mut partial_head, Duration::from_secs(5))));
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut partial_body, &mut answer);
        (answer, outcomes)
    })
    .await
    .unwrap();
    for (what, closed) in outcome {
        let took = closed.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(took < Duration::from_secs(4), "{what}: closed after {took:?}");
    }
    assert!(partial_body.starts_with("HTTP/1.1 408"), "a body that never arrives is answered 408: {partial_body:?}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_a_slot_frees() {
    let hook = Webhook::start(&team_policy(), |c| {
        c.server.header_read_timeout = Duration::from_secs(2);
        c.server.max_connections = 3;
    })
    .await;
    let held: Vec<std::net::TcpStream> =
        (0..3).map(|_| std::net::TcpStream::connect(hook.running.https).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), hook.review(&review("pod-create"))).await.unwrap();
    let took = started.elapsed();
    assert_eq!(response["allowed"], true);
    assert!(took > Duration::from_millis(1200), "answered after {took:?} while 3 of 3 connections were held");
    drop(held);
}

// ---------------------------------------------------------------- client certificates

#[tokio::test]
async fn with_a_client_ca_only_clients_presenting_its_certificates_are_served() {
    let apiserver_ca = ClientCa::new("apiserver client CA");
    let other_ca = ClientCa::new("someone else's CA");
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, &apiserver_ca.ca_pem).unwrap();
    let file = ca_file.clone();
    let hook = Webhook::start(&team_policy(), move |c| {
        c.tls.client_ca_file = Some(file);
        c.tls.reload_interval = Some(Duration::from_millis(200));
    })
    .await;
    let r = serde_json::to_vec(&review("pod-create")).unwrap();

    let anonymous = https_client(hook.ca_pem.as_bytes());
    let err = hook.post_raw_with(&anonymous, r.clone()).await.expect_err("no client certificate: refused");
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
    let stranger = https_client_with_identity(hook.ca_pem.as_bytes(), &other_ca.identity("kube-apiserver"));
    assert!(hook.post_raw_with(&stranger, r.clone()).await.is_err(), "a certificate from another CA: refused");
    assert!(hook.audit_records().is_empty(), "nothing was judged for unauthenticated clients");

    let apiserver = https_client_with_identity(hook.ca_pem.as_bytes(), &apiserver_ca.identity("kube-apiserver"));
    assert_eq!(hook.review_with(&apiserver, &review("pod-create")).await["allowed"], true);

    // The CA file is rotated: the new CA's clients are served, the old one's refused, without a restart.
    let rotated = ClientCa::new("rotated client CA");
    std::fs::write(&ca_file, &rotated.ca_pem).unwrap();
    let fresh = https_client_with_identity(hook.ca_pem.as_bytes(), &rotated.identity("kube-apiserver"));
    let started = Instant::now();
    while hook.post_raw_with(&fresh, r.clone()).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the rotated client CA was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old = https_client_with_identity(hook.ca_pem.as_bytes(), &apiserver_ca.identity("kube-apiserver"));
    assert!(hook.post_raw_with(&old, r).await.is_err(), "the replaced CA's certificates are refused");
}

#[tokio::test]
async fn request_bodies_in_flight_are_bounded_by_a_byte_budget() {
    use std::io::Write as _;
    let hook = Webhook::start(&team_policy(), |c| {
        c.max_request_bytes = 64 * 1024;
        c.server.max_request_bytes_in_flight = 64 * 1024;
        c.server.review_queue_timeout = Duration::from_millis(500);
        c.server.header_read_timeout = Duration::from_secs(3);
    })
    .await;
    // A client sends most of a large body and stalls: what it sent is held, and counted.
    let target = (hook.ca_pem.clone(), hook.running.https);
    let mut stalled = tokio::task::spawn_blocking(move || {
        let mut s = tls_connection(&target, b"http/1.1");
        let head = "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 65500\r\n\r\n";
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&[b' '; 65_400]).unwrap();
        s.flush().unwrap();
        s
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Another review does not fit in what is left: refused with 503 once it has waited, not buffered.
    let started = Instant::now();
    let (status, text) = hook.post_raw(serde_json::to_vec(&review("pod-create")).unwrap()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("server.maxRequestBytesInFlight"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3), "refused after {:?}", started.elapsed());

    // The stalled body times out and its bytes are released.
    let answer = tokio::task::spawn_blocking(move || {
        stalled.sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut stalled, &mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(hook.review(&review("pod-create")).await["allowed"], true);
}

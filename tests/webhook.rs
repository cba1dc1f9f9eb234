//! The real webhook over real HTTPS with real AdmissionReview JSON: every kind and image field, bad input,
//! modes, noMatch, DELETE/CONNECT, dryRun, readiness and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use provgate::decide::NoMatch;
use serde_json::{Value, json};
use support::webhook::{Webhook, policy, review};

const KINDS: [&str; 7] = ["pod", "deployment", "replicaset", "statefulset", "daemonset", "job", "cronjob"];

fn team_policy() -> Vec<(&'static str, String)> {
    vec![("team.yaml", policy("team", "enforce", &["registry.example.com/team/**"]))]
}

fn message(response: &Value) -> &str {
    response["status"]["message"].as_str().unwrap_or_default()
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
    let (status, body) = hook.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("team.yaml:7: spec: unknown field `colour`"), "{body}");
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
    assert!(metrics.contains(r#"provgate_admission_decisions_total{decision="allow",reason="none"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"provgate_admission_decisions_total{decision="deny",reason="no-policy"} 1"#),
        "{metrics}"
    );
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

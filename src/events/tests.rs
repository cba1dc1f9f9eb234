use serde_json::{Value, json};

use super::*;
use crate::decide::ImageDecision;
use crate::reason::Reason;

fn request(value: Value) -> Request {
    serde_json::from_value(value).unwrap()
}

fn create(object: Value) -> Request {
    request(json!({"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "team-a",
                   "operation": "CREATE", "object": object}))
}

fn owner(controller: bool, name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": "rs-uid-1", "controller": controller})
}

fn namespace_target(ns: &str) -> Target {
    Target { api_version: "v1".into(), kind: "Namespace".into(), name: ns.into(), namespace: ns.into(), uid: None }
}

#[test]
fn an_update_is_about_the_object_itself() {
    let update = request(json!({
        "uid": "u", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"}, "namespace": "team-a",
        "name": "web", "operation": "UPDATE",
        "object": {"metadata": {"name": "web", "uid": "d-uid"}}, "oldObject": {"metadata": {"name": "web", "uid": "d-uid"}}
    }));
    let want = Target {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "web".into(),
        namespace: "team-a".into(),
        uid: Some("d-uid".into()),
    };
    assert_eq!(target(&update), Some(want));
}

#[test]
fn an_ephemeral_container_update_is_about_its_pod() {
    let update = request(json!({
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "EphemeralContainers"}, "namespace": "team-a",
        "name": "web-1", "subResource": "ephemeralcontainers", "operation": "UPDATE",
        "oldObject": {"metadata": {"name": "web-1", "uid": "p-uid"}}
    }));
    let t = target(&update).unwrap();
    assert_eq!((t.api_version.as_str(), t.kind.as_str(), t.name.as_str()), ("v1", "Pod", "web-1"));
    assert_eq!(t.uid.as_deref(), Some("p-uid"));
}

#[test]
fn a_create_is_about_its_controller_else_its_namespace() {
    let by_rs = create(
        json!({"metadata": {"generateName": "web-", "ownerReferences": [owner(false, "other"), owner(true, "web-5d4")]}}),
    );
    let want = Target {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: "web-5d4".into(),
        namespace: "team-a".into(),
        uid: Some("rs-uid-1".into()),
    };
    assert_eq!(target(&by_rs), Some(want), "the controller, not the first owner");
    // A named CREATE: the object does not exist yet, so its Namespace.
    let named = create(json!({"metadata": {"name": "web"}}));
    assert_eq!(target(&named), Some(namespace_target("team-a")));
    let not_controller = create(json!({"metadata": {"name": "web", "ownerReferences": [owner(false, "rs")]}}));
    assert_eq!(target(&not_controller), Some(namespace_target("team-a")));
}

#[test]
fn hostile_references_fall_back_to_the_namespace_or_to_nothing() {
    let long = "a".repeat(254);
    for bad in [
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "UPPER", "uid": "x", "controller": true}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": long, "uid": "x", "controller": true}),
        json!({"apiVersion": "apps/v1", "kind": "Replica Set", "name": "rs", "uid": "x", "controller": true}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "", "controller": true}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "x\ny", "controller": true}),
        json!({"apiVersion": "", "kind": "ReplicaSet", "name": "rs", "uid": "x", "controller": true}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": 7, "uid": "x", "controller": true}),
        json!("not an object"),
    ] {
        let req = create(json!({"metadata": {"ownerReferences": [bad]}}));
        assert_eq!(target(&req), Some(namespace_target("team-a")), "{:?}", req.object);
    }
    let bad_update = request(json!({"uid": "u", "kind": {"version": "v1", "kind": "Pod"}, "namespace": "team-a",
        "name": "-bad-", "operation": "UPDATE"}));
    assert_eq!(target(&bad_update), Some(namespace_target("team-a")));
    for ns in [json!(null), json!(""), json!("Team"), json!("a.b"), json!("x".repeat(64))] {
        let req = request(json!({"uid": "u", "kind": {"kind": "Pod"}, "namespace": ns, "operation": "CREATE"}));
        assert_eq!(target(&req), None, "namespace {ns}");
    }
}

#[test]
fn the_note_names_image_policy_code_message_and_the_decision() {
    let n = note(EventReason::Denied, "uid-1", Some("reg/app:1"), Some("signed"), "no-signatures", "no signatures");
    assert_eq!(n, "image reg/app:1 denied by policy signed (no-signatures): no signatures (provgate audit show uid-1)");
    let n = note(EventReason::Warned, "uid-2", None, None, "policies-not-loaded", "fix them");
    assert_eq!(n, "request admitted with a warning (policies-not-loaded): fix them (provgate audit show uid-2)");
}

#[test]
fn the_note_fits_an_event_and_keeps_its_command() {
    let image = format!("reg/{}:1", "é".repeat(600));
    let message = "ü".repeat(2000);
    let n = note(EventReason::Denied, &"u".repeat(500), Some(&image), Some(&"p".repeat(500)), "code", &message);
    assert!(n.len() <= MAX_NOTE_BYTES, "{}", n.len());
    assert!(n.ends_with(&format!("(provgate audit show {}…)", "u".repeat(MAX_UID_BYTES - 3))), "{n}");
    assert!(n.contains("é… denied by policy p"), "the image is cut and marked: {n}");
    assert!(n.contains("p… (code): ü"), "the policy is cut and marked: {n}");
    assert!(n.contains("ü…"), "the message is cut and marked: {n}");
    let short = note(EventReason::Denied, "u", Some("i"), None, "c", &"m".repeat(900));
    assert_eq!(short.len(), MAX_NOTE_BYTES.min(short.len()));
}

fn image(raw: &str, outcome: Outcome, failures: Vec<Failure>) -> ImageDecision {
    ImageDecision {
        field: "spec.containers[0].image".into(),
        raw: raw.into(),
        image: None,
        policies: vec![],
        outcome,
        failures,
        verified: vec![],
        written_with_digest: false,
    }
}

fn failure(policy: &str, mode: Mode) -> Failure {
    Failure { policy: Some(policy.into()), mode, reason: Reason::ShuttingDown }
}

#[test]
fn a_denial_raises_one_occurrence_per_denied_image_with_its_enforcing_policy() {
    let decision = Decision {
        request_failure: None,
        images: vec![
            image("reg/ok:1", Outcome::Allowed, vec![]),
            image("reg/bad:1", Outcome::Denied, vec![failure("w", Mode::Warn), failure("e", Mode::Enforce)]),
            image("reg/warned:1", Outcome::Warned, vec![failure("w", Mode::Warn)]),
        ],
    };
    let n = notice("uid-9", &create(json!({"metadata": {"name": "web"}})), &decision).unwrap();
    assert_eq!(n.target, namespace_target("team-a"));
    assert_eq!(n.occurrences.len(), 1, "only denied images, as the request is denied");
    let o = &n.occurrences[0];
    assert_eq!((o.reason, o.image.as_str(), o.code), (EventReason::Denied, "reg/bad:1", "shutting-down"));
    assert!(
        o.note.starts_with("image reg/bad:1 denied by policy e (shutting-down): provgate is shutting down"),
        "{}",
        o.note
    );
    assert!(o.note.ends_with("(provgate audit show uid-9)"), "{}", o.note);
}

#[test]
fn a_warning_raises_warned_occurrences_and_an_admission_or_audit_none() {
    let req = create(json!({"metadata": {"name": "web"}}));
    let warned = Decision {
        request_failure: None,
        images: vec![image("reg/w:1", Outcome::Warned, vec![failure("a", Mode::Audit), failure("w", Mode::Warn)])],
    };
    let n = notice("u", &req, &warned).unwrap();
    assert_eq!(n.occurrences[0].reason, EventReason::Warned);
    assert!(n.occurrences[0].note.contains("admitted with a warning by policy w"), "{}", n.occurrences[0].note);
    let audited = Decision {
        request_failure: None,
        images: vec![image("reg/a:1", Outcome::Audited, vec![failure("a", Mode::Audit)])],
    };
    assert_eq!(notice("u", &req, &audited), None);
    assert_eq!(notice("u", &req, &Decision::allow_without_images()), None);
}

#[test]
fn a_request_denied_as_a_whole_raises_one_occurrence_without_image() {
    let req = create(json!({"metadata": {"name": "web"}}));
    let n =
        notice("u", &req, &Decision::deny_request(Reason::PoliciesNotLoaded { why: "x.yaml:3: bad".into() })).unwrap();
    assert_eq!(n.occurrences.len(), 1);
    assert_eq!((n.occurrences[0].image.as_str(), n.occurrences[0].code), ("", "policies-not-loaded"));
    assert!(n.occurrences[0].note.contains("x.yaml:3: bad"), "{}", n.occurrences[0].note);
}

#[test]
fn a_dry_run_raises_no_event() {
    let mut req = create(json!({"metadata": {"name": "web"}}));
    req.dry_run = Some(true);
    assert_eq!(notice("u", &req, &Decision::deny_request(Reason::ShuttingDown)), None);
    req.dry_run = Some(false);
    assert!(notice("u", &req, &Decision::deny_request(Reason::ShuttingDown)).is_some());
}

#[test]
fn a_decision_with_many_denied_images_raises_a_bounded_number() {
    let images = (0..100).map(|i| image(&format!("reg/{i}:1"), Outcome::Denied, vec![failure("e", Mode::Enforce)]));
    let decision = Decision { request_failure: None, images: images.collect() };
    let n = notice("u", &create(json!({"metadata": {"name": "web"}})), &decision).unwrap();
    assert_eq!(n.occurrences.len(), MAX_IMAGES_PER_DECISION);
}

#[test]
fn without_a_cluster_or_when_the_queue_is_full_nothing_waits_and_drops_are_counted() {
    let req = create(json!({"metadata": {"name": "web"}}));
    let denied = Decision::deny_request(Reason::ShuttingDown);
    let disabled = Events::disabled();
    disabled.notify("u", Some(&req), &denied);
    assert_eq!(disabled.dropped().get(), 0, "no cluster: nothing sent, nothing dropped");

    let (sender, mut receiver) = mpsc::channel(2);
    let events = Events::new(sender, Counter::default());
    for _ in 0..5 {
        events.notify("u", Some(&req), &denied);
    }
    events.notify("u", Some(&req), &Decision::allow_without_images());
    assert_eq!(events.dropped().get(), 3);
    assert!(receiver.try_recv().is_ok() && receiver.try_recv().is_ok());
    assert!(receiver.try_recv().is_err(), "an admission sends nothing");
}

//! Digest pinning (`POST /mutate`): each tag that a policy with authorities verified is rewritten, by a JSONPatch,
//! to `tag@digest`, the digest that verified. The answer always allows; validation decides.
//!
//! Mutation agrees with validation: the object as pinned is judged again (the verifications are cached), and a
//! field is pinned only when that judgement admits it with no failure in any mode. When the pinned object would be
//! denied, nothing is pinned and validation denies the request as written. Digests already written, images that
//! no policy with authorities governs, and images that fail a policy (in warn or audit mode too) stay as written;
//! so does, on UPDATE, a field the stored object holds as it is (see [`kept`]).
//! Nothing is written to the audit log here: the validating call that follows records the decision.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use json_patch::jsonptr::PointerBuf;
use json_patch::{Patch, PatchOperation, ReplaceOperation};
use serde_json::Value;

use super::review::Request;
use super::{Webhook, response};
use crate::decide::{Decision, ImageDecision, Outcome, Verdict};
use crate::images::{self, ImageRef};
use crate::reason::Reason;
use crate::request::Operation;

/// One image field rewritten to the digest that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The field as users read it, e.g. `spec.containers[0].image`.
    pub field: String,
    /// Where the field is (RFC 6901).
    pub pointer: PointerBuf,
    /// The reference as written.
    pub written: String,
    /// The reference as written with `@digest` appended, e.g. `registry.example.com/app:1.0@sha256:…`.
    pub value: String,
}

/// `POST /mutate`: the same body limits and refusals as `/validate`; a review that can be answered is always
/// allowed, with the patch pinning what [`pins`] finds.
#[tracing::instrument(level = "debug", skip_all, fields(uid, namespace, kind, operation, pinned))]
pub(super) async fn handle(State(webhook): State<Arc<Webhook>>, request: axum::extract::Request) -> Response {
    let started = tokio::time::Instant::now();
    let (incoming, _budget) = match webhook.receive(request).await {
        Ok(received) => received,
        Err(refusal) => return refusal,
    };
    let found = match &incoming.request {
        Ok(request) => pins(&webhook, request, started).await,
        Err(reason) => {
            tracing::debug!(%reason, "an unreadable request is not pinned; validation denies it");
            Vec::new()
        }
    };
    tracing::Span::current().record("pinned", found.len());
    for pin in &found {
        tracing::debug!(field = pin.field, value = pin.value, "pinned to the verified digest");
    }
    response::json(&response::build_mutation(&incoming.uid, &patch(&found)))
}

/// The fields of `request`'s object to pin: the candidates of the review as written, kept only where the review of
/// the object as pinned admits them. Both reviews count from `started`, within the same deadline.
pub(super) async fn pins(webhook: &Webhook, request: &Request, started: tokio::time::Instant) -> Vec<Pin> {
    let Some(object) = request.object.as_ref() else { return Vec::new() };
    let as_written = webhook.judge(request, started).await;
    let old = match request.operation {
        Operation::Update => request.old_object.as_ref(),
        _ => None,
    };
    let candidates: Vec<Pin> = candidates(&as_written, object).into_iter().filter(|pin| !kept(pin, old)).collect();
    if candidates.is_empty() {
        return candidates;
    }
    let mut pinned = request.clone();
    let mut candidate_object = object.clone();
    if let Err(e) = json_patch::patch(&mut candidate_object, &patch(&candidates).0) {
        tracing::error!(error = %e, "a pin did not apply to the object it was made for; nothing is pinned");
        return Vec::new();
    }
    pinned.object = Some(candidate_object);
    let judged = webhook.judge(&pinned, started).await;
    admitted(candidates, &judged)
}

/// The image fields worth pinning, from the decision on `object` as written: none when the request could not be
/// judged or some image is denied for a reason pinning cannot cure; otherwise each field written by tag whose tag
/// resolved to a digest for a policy with authorities (only those gather evidence) and whose only failures, if
/// any, are `require.digest`'s.
pub fn candidates(decision: &Decision, object: &Value) -> Vec<Pin> {
    if decision.request_failure.is_some() || decision.images.iter().any(incurable) {
        return Vec::new();
    }
    decision.images.iter().filter_map(|image| candidate(image, object)).collect()
}

/// Denied for something other than being written by tag.
fn incurable(image: &ImageDecision) -> bool {
    image.outcome == Outcome::Denied && !image.failures.iter().all(|f| pinning_cures(&f.reason))
}

fn pinning_cures(reason: &Reason) -> bool {
    matches!(reason, Reason::TagNotPinned { .. })
}

fn candidate(image: &ImageDecision, object: &Value) -> Option<Pin> {
    if image.written_with_digest || !image.failures.iter().all(|f| pinning_cures(&f.reason)) {
        return None;
    }
    let verified = image.image.as_ref()?;
    let digest = verified.digest()?;
    let pointer = images::json_pointer(&image.field)?;
    // The pointer must name the very string that was judged, or the patch would write somewhere else.
    if object.pointer(pointer.as_str()).and_then(Value::as_str) != Some(&*image.raw) {
        tracing::error!(field = &*image.field, "the field path does not lead to the judged image; not pinned");
        return None;
    }
    let value = format!("{}@{digest}", image.raw);
    let reread = ImageRef::parse(&value).ok()?;
    (reread.name() == verified.name() && reread.digest() == Some(digest)).then(|| Pin {
        field: image.field.to_string(),
        pointer,
        written: image.raw.to_string(),
        value,
    })
}

/// Whether an UPDATE leaves `pin`'s field as the stored object has it: the same string at the same place. Such a
/// field is not pinned, so an unrelated update (a label, a scale) never restarts a Pod's container or rolls out a
/// Deployment; every Pod is pinned when it is created, which is when its images are pulled.
fn kept(pin: &Pin, old: Option<&Value>) -> bool {
    old.and_then(|o| o.pointer(pin.pointer.as_str())).and_then(Value::as_str) == Some(pin.written.as_str())
}

/// The candidates that the decision on the pinned object admits: none if it denies; otherwise each whose field
/// holds the pinned value and was admitted with no failure (or kept an UPDATE's credit).
pub fn admitted(candidates: Vec<Pin>, pinned: &Decision) -> Vec<Pin> {
    if pinned.verdict() == Verdict::Deny {
        return Vec::new();
    }
    candidates
        .into_iter()
        .filter(|pin| {
            pinned.images.iter().any(|i| {
                *i.field == *pin.field
                    && *i.raw == *pin.value
                    && i.written_with_digest
                    && matches!(i.outcome, Outcome::Allowed | Outcome::Unchanged)
            })
        })
        .collect()
}

/// The JSONPatch writing `pins`: one `replace` per field.
pub fn patch(pins: &[Pin]) -> Patch {
    Patch(
        pins.iter()
            .map(|pin| {
                PatchOperation::Replace(ReplaceOperation {
                    path: pin.pointer.clone(),
                    value: Value::String(pin.value.clone()),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Failure;
    use crate::images::{Digest, ImageField, PodKind, extract};
    use crate::policy::Mode;
    use serde_json::json;

    fn digest() -> Digest {
        Digest::sha256_of(b"app")
    }

    /// The decision on every image field of `object`: each verified to `digest()` with `outcome`.
    fn decided(object: &Value, outcome: Outcome, failures: Vec<Failure>) -> Decision {
        let fields = extract(PodKind::Pod, object).unwrap();
        let images = fields.into_iter().map(|f: ImageField| image(f, outcome, failures.clone())).collect();
        Decision { request_failure: None, images }
    }

    fn image(field: ImageField, outcome: Outcome, failures: Vec<Failure>) -> ImageDecision {
        let written_with_digest = field.image.as_ref().is_ok_and(|i| i.digest().is_some());
        ImageDecision {
            image: field.image.as_ref().ok().map(|i| i.with_digest(digest())),
            field: field.path,
            raw: field.raw,
            policies: vec!["p".into()],
            outcome,
            failures,
            verified: Vec::new(),
            written_with_digest,
        }
    }

    fn pod(images: &[&str]) -> Value {
        let containers: Vec<Value> = images.iter().map(|i| json!({"name": "c", "image": i})).collect();
        json!({"spec": {"containers": containers}})
    }

    fn failure(mode: Mode, reason: Reason) -> Failure {
        Failure { policy: Some("p".into()), mode, reason }
    }

    #[test]
    fn a_verified_tag_is_pinned_to_its_digest_keeping_what_was_written() {
        let object = pod(&["registry.example.com/team/app:1.0", "nginx"]);
        let pins = candidates(&decided(&object, Outcome::Allowed, Vec::new()), &object);
        let got: Vec<(&str, &str, String)> =
            pins.iter().map(|p| (p.field.as_str(), p.pointer.as_str(), p.value.clone())).collect();
        assert_eq!(
            got,
            vec![
                (
                    "spec.containers[0].image",
                    "/spec/containers/0/image",
                    format!("registry.example.com/team/app:1.0@{}", digest())
                ),
                ("spec.containers[1].image", "/spec/containers/1/image", format!("nginx@{}", digest())),
            ]
        );
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &patch(&pins).0).unwrap();
        assert_eq!(patched["spec"]["containers"][1]["image"], format!("nginx@{}", digest()));
    }

    #[test]
    fn only_what_verified_and_is_written_by_tag_is_a_candidate() {
        let pinned = format!("registry.example.com/team/app:1.0@{}", Digest::sha256_of(b"other"));
        let object = pod(&["registry.example.com/team/app:1.0", &pinned]);
        let mut decision = decided(&object, Outcome::Allowed, Vec::new());
        let pins = candidates(&decision, &object);
        assert_eq!(pins.len(), 1, "a digest already written is left alone");
        // No evidence (no policy with authorities, or no digest resolved): nothing to pin to.
        decision.images[0].image = decision.images[0].image.as_ref().map(|i| ImageRef::parse(&i.name()).unwrap());
        assert!(candidates(&decision, &object).is_empty());
    }

    #[test]
    fn failures_leave_the_tag_and_an_incurable_denial_leaves_everything() {
        let object = pod(&["registry.example.com/team/app:1.0", "registry.example.com/team/other:2"]);
        let unsigned = || Reason::Unmet {
            requirement: crate::reason::Requirement::NoEvidence,
            message: "no signatures found".into(),
        };
        let tag = || Reason::TagNotPinned { image: "registry.example.com/team/app:1.0".into() };
        for (mode, outcome) in [(Mode::Warn, Outcome::Warned), (Mode::Audit, Outcome::Audited)] {
            let mut decision = decided(&object, Outcome::Allowed, Vec::new());
            decision.images[1].outcome = outcome;
            decision.images[1].failures = vec![failure(mode, unsigned())];
            let pins = candidates(&decision, &object);
            assert_eq!(pins.iter().map(|p| p.field.as_str()).collect::<Vec<_>>(), ["spec.containers[0].image"]);
        }
        let mut denied = decided(&object, Outcome::Allowed, Vec::new());
        denied.images[1].outcome = Outcome::Denied;
        denied.images[1].failures = vec![failure(Mode::Enforce, unsigned())];
        assert!(candidates(&denied, &object).is_empty(), "the request is left for validation to deny");
        // `require.digest` is what pinning cures: those stay candidates, for the second review to confirm.
        let curable = decided(&object, Outcome::Denied, vec![failure(Mode::Enforce, tag())]);
        assert_eq!(candidates(&curable, &object).len(), 2);
        let whole = Decision::deny_request(Reason::InternalError);
        assert!(candidates(&whole, &object).is_empty());
    }

    #[test]
    fn a_field_path_that_does_not_lead_to_the_judged_string_is_never_patched() {
        let object = pod(&["registry.example.com/team/app:1.0"]);
        let mut decision = decided(&object, Outcome::Allowed, Vec::new());
        // Hostile or inconsistent: the path names another field, a string of another value, or cannot be a pointer.
        for path in ["spec.containers[0].name", "spec.containers[1].image", "spec.containers[0]", "spec/containers"] {
            decision.images[0].field = path.into();
            assert!(candidates(&decision, &object).is_empty(), "{path}");
        }
        // Names with `/` and `~` are escaped, so they cannot reach a neighbour.
        let odd = json!({"a/b": {"c~d": "registry.example.com/team/app:1.0"}, "a": {"b": {"c~d": "x"}}});
        decision.images[0].field = "a/b.c~d".into();
        let pins = candidates(&decision, &odd);
        assert_eq!(pins[0].pointer.as_str(), "/a~1b/c~0d");
        let mut patched = odd.clone();
        json_patch::patch(&mut patched, &patch(&pins).0).unwrap();
        assert_eq!(patched["a"]["b"]["c~d"], "x", "the neighbour is untouched");
        assert!(patched["a/b"]["c~d"].as_str().unwrap().ends_with(&digest().to_string()));
    }

    #[test]
    fn an_update_pins_only_fields_it_changes() {
        let object = pod(&["registry.example.com/team/app:1.0", "registry.example.com/team/b:2"]);
        let pins = candidates(&decided(&object, Outcome::Allowed, Vec::new()), &object);
        let stored = pod(&["registry.example.com/team/app:1.0", "registry.example.com/team/b:1"]);
        let changed: Vec<&str> = pins.iter().filter(|p| !kept(p, Some(&stored))).map(|p| p.field.as_str()).collect();
        assert_eq!(changed, ["spec.containers[1].image"]);
        assert!(pins.iter().all(|p| !kept(p, None)), "a CREATE pins every candidate");
    }

    #[test]
    fn only_pins_the_pinned_review_admits_are_kept() {
        let object = pod(&["registry.example.com/team/app:1.0", "registry.example.com/team/b:2"]);
        let pins = candidates(&decided(&object, Outcome::Allowed, Vec::new()), &object);
        let mut pinned = object.clone();
        json_patch::patch(&mut pinned, &patch(&pins).0).unwrap();
        let after = |outcome, failures| decided(&pinned, outcome, failures);
        assert_eq!(admitted(pins.clone(), &after(Outcome::Allowed, Vec::new())), pins);
        assert_eq!(admitted(pins.clone(), &after(Outcome::Unchanged, Vec::new())), pins);
        let unsigned = Reason::PoliciesNotLoaded { why: "x".into() };
        let warned = after(Outcome::Warned, vec![failure(Mode::Warn, unsigned.clone())]);
        assert!(admitted(pins.clone(), &warned).is_empty());
        let mut one_denied = after(Outcome::Allowed, Vec::new());
        one_denied.images[1].outcome = Outcome::Denied;
        one_denied.images[1].failures = vec![failure(Mode::Enforce, unsigned)];
        assert!(admitted(pins.clone(), &one_denied).is_empty(), "a pinned object that is denied is not pinned");
        // A decision about other values (the object changed in between) pins nothing.
        assert!(admitted(pins, &decided(&object, Outcome::Allowed, Vec::new())).is_empty());
    }
}

//! The pure decision core: the verdict for each planned image over verified evidence, and for the whole request. No I/O, no
//! clock, no async; deny is whatever is not positively permitted.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::check::{Checked, ReviewContext, check_once};
use crate::gather::Gathered;
use crate::images::ImageRef;
use crate::plan::{Plan, PlannedImage, Step};
use crate::policy::Mode;
use crate::reason::Reason;

/// What happens to an image that no policy matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NoMatch {
    #[default]
    Deny,
    Warn,
    Allow,
}

impl NoMatch {
    fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Warn => "warn",
            Self::Allow => "allow",
        }
    }
}

/// The verdict for the whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    /// Admitted, with warnings shown to the user.
    Warn,
    Deny,
}

impl Verdict {
    /// The label in audit records, metrics and `verify` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Warn => "warn",
            Self::Deny => "deny",
        }
    }
}

/// What became of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allowed,
    Unchanged,
    /// Admitted with a warning.
    Warned,
    /// Admitted; the failure is only recorded.
    Audited,
    Denied,
}

impl Outcome {
    /// The label in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Unchanged => "unchanged",
            Self::Warned => "warned",
            Self::Audited => "audited",
            Self::Denied => "denied",
        }
    }
}

/// One policy (or `noMatch`, when `policy` is None) that an image did not satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub policy: Option<String>,
    pub mode: Mode,
    pub reason: Reason,
}

#[derive(Debug, Clone)]
pub struct ImageDecision {
    pub field: Arc<str>,
    pub raw: Arc<str>,
    pub image: Option<ImageRef>,
    pub policies: Vec<String>,
    pub outcome: Outcome,
    pub failures: Vec<Failure>,
    /// What verified, by which authority (see [`crate::check::Checked::verified`]).
    pub verified: Vec<Arc<str>>,
    /// Whether the object named the image by digest (a tag can move after verification).
    pub written_with_digest: bool,
}

impl ImageDecision {
    /// One line naming the field, the image, and each failing policy with its reason.
    pub fn explain(&self) -> String {
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|f| match &f.policy {
                Some(p) => format!("policy {p:?}: {}", f.reason),
                None => f.reason.to_string(),
            })
            .collect();
        format!("{} {:?}: {}", self.field, self.raw, failures.join("; "))
    }
}

/// The decision on one request. Its verdict is derived from what it holds, so no Decision can admit a denied
/// image or a request that could not be judged.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Set when the request as a whole could not be judged (its object is unreadable, no policies are loaded…).
    pub request_failure: Option<Reason>,
    pub images: Vec<ImageDecision>,
}

impl Decision {
    /// Deny when the request could not be judged or any image is denied; warn when any image was admitted with a
    /// warning; allow otherwise.
    pub fn verdict(&self) -> Verdict {
        if self.request_failure.is_some() || self.images.iter().any(|i| i.outcome == Outcome::Denied) {
            Verdict::Deny
        } else if self.images.iter().any(|i| i.outcome == Outcome::Warned) {
            Verdict::Warn
        } else {
            Verdict::Allow
        }
    }

    /// A denial of the whole request, before any image was judged.
    pub fn deny_request(reason: Reason) -> Self {
        Self { request_failure: Some(reason), images: Vec::new() }
    }

    /// An admission with nothing to judge (DELETE, CONNECT, kinds without images).
    pub fn allow_without_images() -> Self {
        Self { request_failure: None, images: Vec::new() }
    }

    /// The denial message: every denied image with its field and reasons.
    pub fn denial_message(&self) -> Option<String> {
        if self.verdict() != Verdict::Deny {
            return None;
        }
        if let Some(reason) = &self.request_failure {
            return Some(reason.to_string());
        }
        let denied: Vec<String> =
            self.images.iter().filter(|i| i.outcome == Outcome::Denied).map(ImageDecision::explain).collect();
        Some(denied.join("; "))
    }

    /// Warnings for admitted images that failed a warn-mode policy (or `noMatch: warn`).
    /// and for admitted images verified by tag, whose tag can move after the check.
    pub fn warnings(&self) -> Vec<String> {
        let failed = self.images.iter().filter(|i| i.outcome == Outcome::Warned).map(ImageDecision::explain);
        let movable =
            self.images.iter().filter(|i| i.outcome != Outcome::Denied && !i.written_with_digest).filter_map(|i| {
                let verified = i.image.as_ref()?.digest()?;
                Some(format!("{}: the tag can move after verification; pin it as @{verified}", i.field))
            });
        failed.chain(movable).collect()
    }

    /// The distinct reason codes of all failures, in first-seen order.
    pub fn reason_codes(&self) -> Vec<&'static str> {
        let mut codes: Vec<&'static str> = Vec::new();
        let all =
            self.request_failure.iter().chain(self.images.iter().flat_map(|i| i.failures.iter().map(|f| &f.reason)));
        for reason in all {
            if !codes.contains(&reason.code()) {
                codes.push(reason.code());
            }
        }
        codes
    }
}

/// Judges every planned image over the gathered evidence and combines the outcomes: any enforced failure denies;
/// otherwise any warn-mode failure warns. `interrupt` is asked before each image whether to stop (the review's
/// deadline passed, or its client is gone); every image not judged then fails with the reason it gives.
/// An image written several times (the same reference with the same evidence) is judged once.
pub fn decide(
    plan: &Plan,
    gathered: &Gathered,
    context: &ReviewContext,
    no_match: NoMatch,
    interrupt: &dyn Fn() -> Option<Reason>,
) -> Decision {
    let mut memo = Memo::with_capacity_and_hasher(plan.images.len(), Default::default());
    let mut stopped: Option<Reason> = None;
    let images: Vec<ImageDecision> = plan
        .images
        .iter()
        .map(|p| {
            if stopped.is_none() {
                stopped = interrupt();
            }
            match &stopped {
                Some(reason) => interrupted(p, reason.clone()),
                None => judge_image(p, gathered, context, no_match, &mut memo),
            }
        })
        .collect();
    Decision { request_failure: None, images }
}

/// Policy checks per (image, how it is used), so repeated references are checked once per review (within a review an
/// image has one gathered evidence, or one failure).
type Memo<'a> = HashMap<(&'a ImageRef, crate::images::Use), Rc<Vec<Arc<Checked>>>, foldhash::fast::RandomState>;

/// An image left unjudged because the review stopped.
fn interrupted(planned: &PlannedImage, reason: Reason) -> ImageDecision {
    ImageDecision {
        field: planned.field.path.clone(),
        raw: planned.field.raw.clone(),
        image: planned.field.image.as_ref().ok().cloned(),
        policies: Vec::new(),
        outcome: Outcome::Denied,
        failures: vec![Failure { policy: None, mode: Mode::Enforce, reason }],
        verified: Vec::new(),
        written_with_digest: planned.field.image.as_ref().is_ok_and(|i| i.digest().is_some()),
    }
}

fn judge_image<'a>(
    planned: &'a PlannedImage,
    gathered: &Gathered,
    context: &ReviewContext,
    no_match: NoMatch,
    memo: &mut Memo<'a>,
) -> ImageDecision {
    let namespace = context.namespace.as_str();
    let mut decision = ImageDecision {
        field: planned.field.path.clone(),
        raw: planned.field.raw.clone(),
        image: planned.field.image.as_ref().ok().cloned(),
        policies: Vec::new(),
        outcome: Outcome::Allowed,
        failures: Vec::new(),
        verified: Vec::new(),
        written_with_digest: planned.field.image.as_ref().is_ok_and(|i| i.digest().is_some()),
    };
    match &planned.step {
        Step::Unchanged => decision.outcome = Outcome::Unchanged,
        Step::Invalid(e) => {
            decision.failures.push(Failure {
                policy: None,
                mode: Mode::Enforce,
                reason: Reason::InvalidReference(e.clone()),
            });
        }
        Step::Unmatched(image) => {
            let mode = match no_match {
                NoMatch::Allow => return decision,
                NoMatch::Warn => Mode::Warn,
                NoMatch::Deny => Mode::Enforce,
            };
            let reason = Reason::NoPolicy {
                image: image.to_string(),
                namespace: namespace.to_owned(),
                no_match: no_match.as_str(),
            };
            decision.failures.push(Failure { policy: None, mode, reason });
        }
        Step::Judge { image, policies } => {
            decision.policies.reserve_exact(policies.len());
            let evidence = gathered.images.get(image);
            if let Some(Ok(found)) = evidence {
                decision.image = Some(image.with_digest(found.digest.clone()));
            }
            let usage = planned.field.usage();
            let judgements = memo.entry((image, usage)).or_insert_with(|| {
                let judged = policies
                    .iter()
                    .map(|p| check_once(p, image, usage, evidence, &gathered.authorities, context))
                    .collect();
                Rc::new(judged)
            });
            for (policy, judgement) in policies.iter().zip(judgements.iter()) {
                decision.policies.push(policy.name.clone());
                for reason in &judgement.unmet {
                    decision.failures.push(Failure {
                        policy: Some(policy.name.clone()),
                        mode: policy.mode,
                        reason: reason.clone(),
                    });
                }
                for item in &judgement.verified {
                    if !decision.verified.contains(item) {
                        decision.verified.push(item.clone());
                    }
                }
            }
        }
    }
    decision.outcome = combine(&decision.failures).unwrap_or(decision.outcome);
    decision
}

/// The outcome the failures force, if any.
fn combine(failures: &[Failure]) -> Option<Outcome> {
    let has = |mode| failures.iter().any(|f| f.mode == mode);
    if has(Mode::Enforce) {
        Some(Outcome::Denied)
    } else if has(Mode::Warn) {
        Some(Outcome::Warned)
    } else if has(Mode::Audit) {
        Some(Outcome::Audited)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{ImageField, PodKind, extract};
    use crate::plan::plan;
    use crate::policy::PolicySet;
    use crate::policy::load_sources;
    use serde_json::json;
    use std::path::PathBuf;

    fn policies(specs: &[(&str, &str, &str)]) -> PolicySet {
        let text: Vec<String> = specs
            .iter()
            .map(|(name, mode, glob)| {
                format!(
                    "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: {mode}\n  match: {{images: [\"{glob}\"], namespaces: [\"team-*\"]}}\n"
                )
            })
            .collect();
        load_sources(&[(PathBuf::from("p.yaml"), text.join("---\n"))]).unwrap()
    }

    fn fields(images: &[&str]) -> Vec<ImageField> {
        let containers: Vec<_> = images.iter().map(|i| json!({"name": "c", "image": i})).collect();
        extract(PodKind::Pod, &json!({"spec": {"containers": containers}})).unwrap()
    }

    fn run(images: &[&str], previous: &[&str], ns: &str, no_match: NoMatch) -> Decision {
        let set = policies(&[
            ("team", "enforce", "registry.example.com/team/**"),
            ("canary", "warn", "registry.example.com/canary/**"),
        ]);
        let context = ReviewContext::new(&json!({}), ns, &json!({}), chrono::DateTime::UNIX_EPOCH);
        decide(&plan(fields(images), &fields(previous), &set, ns), &Gathered::default(), &context, no_match, &|| None)
    }

    #[test]
    fn verdict_table() {
        use Outcome::*;
        let (nd, nw, na) = (NoMatch::Deny, NoMatch::Warn, NoMatch::Allow);
        let (allow, warn, deny) = (Verdict::Allow, Verdict::Warn, Verdict::Deny);
        let t = "registry.example.com/team/app:1";
        let n_at_d = "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        type Row<'a> = (&'a [&'a str], &'a [&'a str], &'a str, NoMatch, Verdict, &'a [Outcome]);
        let table: &[Row] = &[
            (&[t], &[], "team-a", nd, allow, &[Allowed]),
            (&["nginx"], &[], "team-a", nd, deny, &[Denied]),
            (&["nginx"], &[], "team-a", nw, warn, &[Warned]),
            (&["nginx"], &[], "team-a", na, allow, &[Allowed]),
            (&[t, "nginx"], &[], "team-a", nd, deny, &[Allowed, Denied]),
            (&[t], &[], "other-ns", nd, deny, &[Denied]),
            (&["Bad Ref"], &[], "team-a", na, deny, &[Denied]),
            (&[""], &[], "team-a", na, deny, &[Denied]),
            // UPDATE credit: only the same field holding the same digest reference.
            (&[n_at_d], &[n_at_d], "team-a", nd, allow, &[Unchanged]),
            (&[n_at_d, "busybox"], &[n_at_d], "team-a", nd, deny, &[Unchanged, Denied]),
            (&["busybox", n_at_d], &[n_at_d], "team-a", nd, deny, &[Denied, Denied]),
            (&["nginx"], &["nginx"], "team-a", nd, deny, &[Denied]),
            (&["nginx"], &["nginx"], "team-a", nw, warn, &[Warned]),
            (&[], &[], "team-a", nd, allow, &[]),
        ];
        for (images, previous, ns, no_match, verdict, outcomes) in table {
            let d = run(images, previous, ns, *no_match);
            assert_eq!(d.verdict(), *verdict, "{images:?} in {ns} with {no_match:?}");
            let got: Vec<Outcome> = d.images.iter().map(|i| i.outcome).collect();
            assert_eq!(got, *outcomes, "{images:?}");
        }
    }

    #[test]
    fn matched_images_list_their_policies() {
        let d = run(&["registry.example.com/team/app:1"], &[], "team-a", NoMatch::Deny);
        assert_eq!(d.images[0].policies, vec!["team".to_string()]);
        assert!(d.denial_message().is_none());
        assert!(d.warnings().is_empty());
    }

    #[test]
    fn denial_message_names_field_image_and_fix() {
        let d = run(&["registry.example.com/team/app:1", "nginx"], &[], "team-a", NoMatch::Deny);
        let msg = d.denial_message().unwrap();
        assert!(msg.starts_with("spec.containers[1].image \"nginx\": no ImagePolicy matches docker.io/library/nginx:latest in namespace \"team-a\" (noMatch: deny)"), "{msg}");
        assert!(!msg.contains("containers[0]"), "admitted images are not in the denial: {msg}");
        assert_eq!(d.reason_codes(), vec!["no-policy"]);
    }

    #[test]
    fn invalid_reference_denial_names_the_field() {
        let d = run(&["Bad Ref"], &[], "team-a", NoMatch::Allow);
        let msg = d.denial_message().unwrap();
        assert!(
            msg.starts_with("spec.containers[0].image \"Bad Ref\": \"Bad Ref\" is not a valid image reference"),
            "{msg}"
        );
        assert_eq!(d.reason_codes(), vec!["invalid-reference"]);
    }

    #[test]
    fn warn_no_match_becomes_a_warning() {
        let d = run(&["nginx"], &[], "team-a", NoMatch::Warn);
        assert_eq!(d.warnings().len(), 1);
        assert!(d.warnings()[0].contains("noMatch: warn"));
    }

    #[test]
    fn a_tag_verified_to_a_digest_warns_that_it_can_move() {
        let mut d = run(&["registry.example.com/team/app:1"], &[], "team-a", NoMatch::Deny);
        assert!(d.warnings().is_empty(), "no digest was verified, nothing to pin");
        let digest = crate::images::Digest::sha256_of(b"image");
        d.images[0].image = d.images[0].image.as_ref().map(|i| i.with_digest(digest.clone()));
        assert_eq!(
            d.warnings(),
            vec![format!("spec.containers[0].image: the tag can move after verification; pin it as @{digest}")]
        );
        let pinned = format!("registry.example.com/team/app@{digest}");
        let mut p = run(&[pinned.as_str()], &[], "team-a", NoMatch::Deny);
        p.images[0].image = p.images[0].image.as_ref().map(|i| i.with_digest(digest.clone()));
        assert!(p.warnings().is_empty(), "a digest reference cannot move");
    }

    #[test]
    fn request_denial_carries_its_reason() {
        let d = Decision::deny_request(Reason::PoliciesNotLoaded { why: "x".into() });
        assert_eq!(d.verdict(), Verdict::Deny);
        assert!(d.denial_message().unwrap().contains("no valid policy set"));
        assert_eq!(d.reason_codes(), vec!["policies-not-loaded"]);
    }

    #[test]
    fn an_interrupted_review_denies_every_image_not_yet_judged() {
        let set = policies(&[("team", "enforce", "registry.example.com/team/**")]);
        let context = ReviewContext::new(&json!({}), "team-a", &json!({}), chrono::DateTime::UNIX_EPOCH);
        let images =
            ["registry.example.com/team/a:1", "registry.example.com/team/b:1", "registry.example.com/team/c:1"];
        let plan = plan(fields(&images), &[], &set, "team-a");
        let asked = std::cell::Cell::new(0);
        let interrupt = || {
            asked.set(asked.get() + 1);
            (asked.get() > 1).then(|| Reason::DeadlineExceeded(std::time::Duration::from_secs(8)))
        };
        let d = decide(&plan, &Gathered::default(), &context, NoMatch::Allow, &interrupt);
        let got: Vec<Outcome> = d.images.iter().map(|i| i.outcome).collect();
        assert_eq!(got, vec![Outcome::Allowed, Outcome::Denied, Outcome::Denied]);
        assert_eq!(d.verdict(), Verdict::Deny);
        assert_eq!(d.reason_codes(), vec!["deadline-exceeded"]);
        assert_eq!(asked.get(), 2, "once stopped, the review is not asked again");
    }

    #[test]
    fn combine_prefers_the_strictest_mode() {
        let f =
            |mode| Failure { policy: Some("p".into()), mode, reason: Reason::PoliciesNotLoaded { why: "x".into() } };
        assert_eq!(combine(&[]), None);
        assert_eq!(combine(&[f(Mode::Audit)]), Some(Outcome::Audited));
        assert_eq!(combine(&[f(Mode::Audit), f(Mode::Warn)]), Some(Outcome::Warned));
        assert_eq!(combine(&[f(Mode::Warn), f(Mode::Enforce), f(Mode::Audit)]), Some(Outcome::Denied));
    }

    /// A policy `name` in `mode` trusting `key` as authority `a`, for every image of registry.example.com.
    fn signed_by(name: &str, mode: &str, key: &crate::verify::fixtures::Key) -> String {
        let pem: String = key.pem().lines().map(|l| format!("        {l}\n")).collect();
        format!(
            "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: {mode}\n  \
             match: {{images: [\"registry.example.com/**\"]}}\n  authorities:\n    - name: a\n      key: |\n{pem}"
        )
    }

    /// The evidence branch over what a real gather made of an in-memory registry: the signed image is admitted and
    /// pinned to its digest, its tampered twin (signed by another key) is denied with the verifier's reason, a
    /// registry error denies only its image, and a warn-mode policy only warns.
    #[tokio::test]
    async fn the_evidence_branch_admits_what_verified_and_denies_its_tampered_twin() {
        use crate::gather::{CacheConfig, Gatherer};
        use crate::registry::memory::{Call, MANIFEST, MemoryRegistry};
        use crate::registry::{HostCredentials, RegistryError};
        use crate::verify::fixtures::{Key, artifacts, digest};
        use std::sync::Arc;
        use std::time::Duration;

        let (key, stranger) = (Key::new(), Key::new());
        let registry = Arc::new(MemoryRegistry::new());
        let mut digests = Vec::new();
        for (repository, signer) in [("team/app", &key), ("team/twin", &stranger), ("team/gone", &key)] {
            let (repository, d) = (format!("registry.example.com/{repository}"), digest(repository));
            registry.put_manifest(&repository, &d, MANIFEST);
            registry.tag(&repository, "1", &d);
            registry.put_artifacts(&repository, &d, artifacts(vec![signer.signature(&d)], vec![]));
            digests.push(d);
        }
        let refused = RegistryError::Unauthorized {
            registry: "registry.example.com".into(),
            repository: "team/gone".into(),
            detail: "401".into(),
        };
        registry.fail(Call::Artifacts, Some("registry.example.com/team/gone"), refused);
        let images = [
            "registry.example.com/team/app:1",
            "registry.example.com/team/twin:1",
            "registry.example.com/team/gone:1",
            "registry.example.com/team/app:1",
        ];
        let gatherer = Gatherer::new(registry.clone(), crate::keys::KeyStore::default(), CacheConfig::default());
        let context = ReviewContext::new(&json!({}), "team-a", &json!({}), chrono::DateTime::UNIX_EPOCH);
        let review = |mode: &str| load_sources(&[(PathBuf::from("p.yaml"), signed_by("team", mode, &key))]).unwrap();

        let set = review("enforce");
        let planned = plan(fields(&images), &[], &set, "team-a");
        let budget = Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + budget;
        let gathered = gatherer.gather(&planned, &HostCredentials::default(), deadline, budget).await;
        let d = decide(&planned, &gathered, &context, NoMatch::Deny, &|| None);
        let outcomes: Vec<Outcome> = d.images.iter().map(|i| i.outcome).collect();
        assert_eq!(outcomes, [Outcome::Allowed, Outcome::Denied, Outcome::Denied, Outcome::Allowed]);
        assert_eq!(d.verdict(), Verdict::Deny);
        assert_eq!(d.reason_codes(), vec!["wrong-key", "registry-unauthorized"]);
        let app = &d.images[0];
        assert_eq!(app.image.as_ref().and_then(|i| i.digest()), Some(&digests[0]), "pinned to what verified");
        assert_eq!(app.policies, vec!["team".to_string()]);
        assert!(app.verified.iter().any(|v| v.starts_with("signature by a (key sha256:")), "{:?}", app.verified);
        let twin = &d.images[1];
        assert!(twin.verified.is_empty());
        assert_eq!((twin.failures[0].policy.as_deref(), twin.failures[0].mode), (Some("team"), Mode::Enforce));
        assert!(twin.explain().contains("signature does not verify with key"), "{}", twin.explain());
        let message = d.denial_message().unwrap();
        assert!(message.contains("team/twin") && message.contains("team/gone") && !message.contains("team/app"));

        // The same evidence under a warn-mode policy: admitted, with the failures as warnings.
        let set = review("warn");
        let planned = plan(fields(&images), &[], &set, "team-a");
        let d = decide(&planned, &gathered, &context, NoMatch::Deny, &|| None);
        assert_eq!(d.verdict(), Verdict::Warn);
        let warnings = d.warnings();
        assert!(warnings.iter().any(|w| w.contains("team/twin") && w.contains("signature does not verify")));
        assert!(warnings.iter().any(|w| w.contains("pin it as @")), "{warnings:?}");
    }
}

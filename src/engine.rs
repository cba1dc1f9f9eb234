//! One review from request to [`Decision`]: scope, extract images, plan against the policy snapshot, gather
//! evidence under the deadline, decide. Shared by the webhook and `provgate verify`.
//!
//! Work is bounded per review: at most `maxImagesPerReview` image fields and a `maxObjectBytes` object; the CEL
//! variables of the object are converted at most once per review, when a validation needs them; judging with CEL
//! runs on blocking threads, at most one review per core at once, and stops at the deadline or when the review is
//! abandoned. Judging without CEL (set logic over evidence verified while gathering) runs in place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::check::ReviewContext;
use crate::credentials::PullSecrets;
use crate::decide::{self, Decision, NoMatch};
use crate::gather::Gatherer;
use crate::images::{self, PodKind};
use crate::policy::PolicyStore;
use crate::reason::Reason;
use crate::registry::HostCredentials;
use crate::request::{Operation, Request};

/// Caps on one review's work (config `maxImagesPerReview`, `maxObjectBytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewLimits {
    pub max_images: usize,
    pub max_object_bytes: usize,
}

pub struct Engine {
    pub policies: Arc<PolicyStore>,
    pub no_match: NoMatch,
    pub deadline: Duration,
    pub gatherer: Arc<Gatherer>,
    pub pull_secrets: Arc<PullSecrets>,
    pub limits: ReviewLimits,
    /// Reviews being judged on blocking threads at once: one per core, so abandoned or huge reviews cannot take
    /// every thread from the ones behind them.
    judging: Arc<tokio::sync::Semaphore>,
}

impl Engine {
    pub fn new(
        policies: Arc<PolicyStore>,
        no_match: NoMatch,
        deadline: Duration,
        gatherer: Arc<Gatherer>,
        pull_secrets: Arc<PullSecrets>,
        limits: ReviewLimits,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let judging = Arc::new(tokio::sync::Semaphore::new(cores));
        Self { policies, no_match, deadline, gatherer, pull_secrets, limits, judging }
    }

    /// Judges one admission request that arrived at `arrived`; the deadline counts from then, so time spent
    /// waiting for a review slot counts against it. Never fails: every problem is a denial with its reason.
    pub async fn review(&self, request: &Request, arrived: tokio::time::Instant) -> Decision {
        if matches!(request.operation, Operation::Delete | Operation::Connect) {
            return Decision::allow_without_images();
        }
        let Some(policies) = self.policies.current() else {
            let why = match self.policies.last_error() {
                Some(errors) => errors.to_string().replace('\n', "; "),
                None => "the policy files have not been read yet".to_owned(),
            };
            return Decision::deny_request(Reason::PoliciesNotLoaded { why });
        };
        let kind_name = &request.kind.kind;
        let Some(kind) = PodKind::from_group_kind(&request.kind.group, kind_name) else {
            return Decision::deny_request(Reason::UnreadableObject {
                kind: kind_name.clone(),
                problem: "provgate judges Pods and pod controllers only; remove this kind from the webhook's rules"
                    .into(),
            });
        };
        let unreadable = |problem: String| Reason::UnreadableObject { kind: kind_name.clone(), problem };
        let Some(object) = request.object.as_ref().filter(|o| o.is_object()) else {
            return Decision::deny_request(unreadable("the request carries no object".into()));
        };
        // A review read from text short enough cannot hold an object over the limit: it is not measured again.
        let max = self.limits.max_object_bytes;
        let small = request.read_from_bytes.is_some_and(|n| n.saturating_mul(crate::request::JSON_GROWTH) <= max);
        let size = if small { 0 } else { crate::policy::eval::json_size(object, max) };
        if size > max {
            return Decision::deny_request(Reason::ObjectTooLarge { kind: kind_name.clone(), size, max });
        }
        let fields = match images::extract(kind, object) {
            Ok(fields) => fields,
            Err(e) => return Decision::deny_request(unreadable(e.to_string())),
        };
        if fields.len() > self.limits.max_images {
            let (count, max) = (fields.len(), self.limits.max_images);
            return Decision::deny_request(Reason::TooManyImages { kind: kind_name.clone(), count, max });
        }
        // On UPDATE, digests already in the same field of the old object were judged when it was admitted. An old
        // object that cannot be read gives no such credit.
        let previous = match (request.operation, &request.old_object) {
            (Operation::Update, Some(old)) => images::extract(kind, old).unwrap_or_default(),
            _ => Vec::new(),
        };
        let namespace = request.namespace();
        let plan = crate::plan::plan(fields, &previous, &policies, namespace);
        let deadline = arrived + self.deadline;
        let credentials = if plan.needs_evidence() {
            let lookup = self.pull_secrets.credentials(namespace, images::pod_spec(kind, object));
            tokio::time::timeout_at(deadline, lookup).await.unwrap_or_default()
        } else {
            HostCredentials::default()
        };
        let gathered = self.gatherer.gather(&plan, &credentials, deadline, self.deadline).await;
        let late = Reason::DeadlineExceeded(self.deadline);
        if !plan.runs_validations() {
            // No CEL to run: what is left is set logic over what verified (signatures were checked while
            // gathering), cheaper than a hop to a blocking thread, so it is judged here.
            let interrupt = || (tokio::time::Instant::now() >= deadline).then(|| late.clone());
            let context = ReviewContext::lazy(object, namespace, &serde_json::Value::Null, chrono::Utc::now());
            return decide::decide(&plan, &gathered, &context, self.no_match, &interrupt);
        }
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, self.judging.clone().acquire_owned()).await else {
            return Decision::deny_request(late);
        };
        let abandoned = Abandoned::default();
        let stop = abandoned.flag();
        let (object, namespace) = (object.clone(), namespace.to_owned());
        let review = serde_json::json!({
            "operation": request.operation,
            "userInfo": {"username": request.user_info.username, "groups": request.user_info.groups},
            "kind": {"group": request.kind.group, "version": request.kind.version, "kind": request.kind.kind},
        });
        let no_match = self.no_match;
        let deadline = deadline.into_std();
        let judging = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let interrupt =
                || (stop.load(Ordering::Relaxed) || std::time::Instant::now() >= deadline).then(|| late.clone());
            if let Some(reason) = interrupt() {
                return Decision::deny_request(reason);
            }
            let context = ReviewContext::lazy(&object, &namespace, &review, chrono::Utc::now());
            decide::decide(&plan, &gathered, &context, no_match, &interrupt)
        });
        let decision = match judging.await {
            Ok(decision) => decision,
            Err(e) => {
                tracing::error!(uid = %request.uid, error = %e, "judging a review failed");
                Decision::deny_request(Reason::InternalError)
            }
        };
        drop(abandoned);
        decision
    }
}

/// Set when the review's future is dropped (its client went away), so blocking work stops at the next image.
#[derive(Default)]
struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

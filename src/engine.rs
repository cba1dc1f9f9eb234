//! One review from request to [`Decision`]: scope, extract images, plan against the policy snapshot, gather
//! evidence under the deadline, decide. Shared by the webhook and `provgate verify`.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::review::{Operation, Request};
use crate::credentials::PullSecrets;
use crate::decide::{self, Decision, NoMatch};
use crate::evidence::Gatherer;
use crate::images::{self, PodKind};
use crate::policy::PolicyStore;
use crate::policy::judge::ReviewContext;
use crate::reason::Reason;
use crate::registry::Keychain;

pub struct Engine {
    pub policies: Arc<PolicyStore>,
    pub no_match: NoMatch,
    pub deadline: Duration,
    pub gatherer: Arc<Gatherer>,
    pub pull_secrets: Arc<PullSecrets>,
}

impl Engine {
    /// Judges one admission request. Never fails: every problem is a denial with its reason.
    pub async fn judge(&self, request: &Request) -> Decision {
        if matches!(request.operation, Operation::Delete | Operation::Connect) {
            return Decision::allow_without_images();
        }
        let Some(policies) = self.policies.current() else {
            return Decision::deny_request(Reason::PoliciesNotLoaded);
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
        let fields = match images::extract(kind, object) {
            Ok(fields) => fields,
            Err(e) => return Decision::deny_request(unreadable(e.to_string())),
        };
        // On UPDATE, images already present in the old object were judged when it was admitted. An old object
        // that cannot be read gives no such credit.
        let previous = match (request.operation, &request.old_object) {
            (Operation::Update, Some(old)) => images::extract(kind, old).unwrap_or_default(),
            _ => Vec::new(),
        };
        let namespace = request.namespace();
        let plan = decide::plan(fields, &previous, &policies, namespace);
        let deadline = tokio::time::Instant::now() + self.deadline;
        let keychain = if plan.needs_evidence() {
            let lookup = self.pull_secrets.keychain(namespace, images::pod_spec(kind, object));
            tokio::time::timeout_at(deadline, lookup).await.unwrap_or_default()
        } else {
            Keychain::default()
        };
        let gathered = self.gatherer.gather(&plan, &keychain, deadline, self.deadline).await;
        let context = ReviewContext {
            object: object.clone(),
            namespace: namespace.to_owned(),
            request: serde_json::json!({
                "operation": request.operation,
                "userInfo": {"username": request.user_info.username, "groups": request.user_info.groups},
                "kind": {"group": request.kind.group, "version": request.kind.version, "kind": request.kind.kind},
            }),
            now: chrono::Utc::now(),
        };
        decide::decide(&plan, &gathered, &context, self.no_match)
    }
}

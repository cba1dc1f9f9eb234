//! Decision records (one JSON object per line, the `provgate audit` input); `writer` writes them off the
//! admission path.

mod writer;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decide::{Decision, Failure, ImageDecision, Outcome};
use crate::policy::Mode;
use crate::request::Request;

pub use writer::{AuditLog, AuditMetrics};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The record format's version: 1.
    #[serde(default = "version")]
    pub v: u32,
    pub time: String,
    pub uid: String,
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub operation: String,
    pub user: String,
    pub dry_run: bool,
    pub decision: String,
    pub latency_ms: u64,
    /// Set when the request as a whole was denied before images were judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub images: Vec<ImageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub field: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: Option<String>,
    pub policies: Vec<String>,
    pub outcome: String,
    /// The code of the failure that decided the outcome (the first one under the strictest mode).
    pub reason: Option<String>,
    pub message: Option<String>,
    /// What verified, by which authority and key or identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<String>,
    /// Every failure, each with the policy and mode it came under (absent when nothing failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailureRecord>,
}

/// One policy requirement an image did not meet, and what that did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    /// The policy; absent when no policy was involved (`noMatch`, an unparsable reference, an interrupted review).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The mode the failure came under: `enforce` (it denies), `warn` (it admits with a warning) or `audit` (it
    /// admits and is only recorded). For `noMatch`, the mode its setting gives.
    pub mode: String,
    /// The reason code.
    pub reason: String,
    /// The reason, for people.
    pub message: String,
}

/// The version of the record format this build writes.
pub const VERSION: u32 = 1;

fn version() -> u32 {
    VERSION
}

/// The record of one decision. `time` is RFC 3339.
pub fn record(uid: &str, request: Option<&Request>, decision: &Decision, latency: Duration, time: String) -> Record {
    let images = decision
        .images
        .iter()
        .map(|i| ImageRecord {
            field: i.field.clone(),
            reference: i.image.as_ref().map_or_else(|| i.raw.clone(), ToString::to_string),
            digest: i.image.as_ref().and_then(|r| r.digest()).map(ToString::to_string),
            policies: i.policies.clone(),
            outcome: i.outcome.as_str().to_owned(),
            reason: deciding(i).map(|f| f.reason.code().to_owned()),
            message: (i.outcome != Outcome::Allowed && i.outcome != Outcome::Unchanged).then(|| i.explain()),
            verified: i.verified.clone(),
            failures: i
                .failures
                .iter()
                .map(|f| FailureRecord {
                    policy: f.policy.clone(),
                    mode: f.mode.as_str().to_owned(),
                    reason: f.reason.code().to_owned(),
                    message: f.reason.to_string(),
                })
                .collect(),
        })
        .collect();
    Record {
        v: VERSION,
        time,
        uid: uid.to_owned(),
        namespace: request.map(|r| r.namespace().to_owned()).unwrap_or_default(),
        kind: request.map(|r| r.kind.kind.clone()).unwrap_or_default(),
        name: request.map(Request::object_name).unwrap_or_default(),
        operation: request.map(|r| r.operation.as_str().to_owned()).unwrap_or_default(),
        user: request.map(|r| r.user_info.username.clone()).unwrap_or_default(),
        dry_run: request.and_then(|r| r.dry_run).unwrap_or(false),
        decision: decision.verdict().as_str().to_owned(),
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        reason: decision.request_failure.as_ref().map(|r| r.code().to_owned()),
        message: decision.request_failure.as_ref().map(ToString::to_string),
        images,
    }
}

/// The failure that decided `image`'s outcome: the first one whose mode gives that outcome (a warn-mode failure
/// listed before an enforced one does not name the denial), else the first.
fn deciding(image: &ImageDecision) -> Option<&Failure> {
    let forced = |mode: Mode| match mode {
        Mode::Enforce => Outcome::Denied,
        Mode::Warn => Outcome::Warned,
        Mode::Audit => Outcome::Audited,
    };
    image.failures.iter().find(|f| forced(f.mode) == image.outcome).or_else(|| image.failures.first())
}

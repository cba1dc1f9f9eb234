//! Decision records (one JSON object per line, the `provgate audit` input); `writer` writes them off the
//! admission path.

mod writer;

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decide::{Decision, Failure, ImageDecision, Outcome};
use crate::images::ImageRef;
use crate::policy::Mode;
use crate::request::Request;

pub use writer::{AuditLog, AuditMetrics};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    /// The record format's version: 1.
    #[serde(default = "version")]
    pub v: u32,
    pub time: Cow<'a, str>,
    pub uid: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub operation: Cow<'a, str>,
    pub user: Cow<'a, str>,
    pub dry_run: bool,
    pub decision: Cow<'a, str>,
    pub latency_ms: u64,
    /// Set when the request as a whole was denied before images were judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Cow<'a, str>>,
    pub images: Vec<ImageRecord<'a>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord<'a> {
    pub field: Cow<'a, str>,
    #[serde(rename = "ref")]
    pub reference: Cow<'a, str>,
    pub digest: Option<Cow<'a, str>>,
    pub policies: Vec<Cow<'a, str>>,
    pub outcome: Cow<'a, str>,
    /// The code of the failure that decided the outcome (the first one under the strictest mode).
    pub reason: Option<Cow<'a, str>>,
    pub message: Option<Cow<'a, str>>,
    /// What verified, by which authority and key or identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<Cow<'a, str>>,
    /// Every failure, each with the policy and mode it came under (absent when nothing failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailureRecord<'a>>,
}

/// One policy requirement an image did not meet, and what that did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord<'a> {
    /// The policy; absent when no policy was involved (`noMatch`, an unparsable reference, an interrupted review).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Cow<'a, str>>,
    /// The mode the failure came under: `enforce` (it denies), `warn` (it admits with a warning) or `audit` (it
    /// admits and is only recorded). For `noMatch`, the mode its setting gives.
    pub mode: Cow<'a, str>,
    /// The reason code.
    pub reason: Cow<'a, str>,
    /// The reason, for people.
    pub message: Cow<'a, str>,
}

/// The version of the record format this build writes.
pub const VERSION: u32 = 1;

fn version() -> u32 {
    VERSION
}

/// The record of one decision, borrowing what it can from the request and the decision (it is written, then
/// dropped). `time` is RFC 3339.
pub fn record<'a>(
    uid: &'a str,
    request: Option<&'a Request>,
    decision: &'a Decision,
    latency: Duration,
    time: String,
) -> Record<'a> {
    let borrowed = |s: &'a str| Cow::Borrowed(s);
    let images = decision
        .images
        .iter()
        .map(|i| ImageRecord {
            field: borrowed(&i.field),
            reference: borrowed(i.image.as_ref().map_or(&i.raw, ImageRef::as_str)),
            digest: i.image.as_ref().and_then(|r| r.digest()).map(|d| borrowed(d.as_str())),
            policies: i.policies.iter().map(|p| borrowed(p)).collect(),
            outcome: borrowed(i.outcome.as_str()),
            reason: deciding(i).map(|f| borrowed(f.reason.code())),
            message: (i.outcome != Outcome::Allowed && i.outcome != Outcome::Unchanged).then(|| i.explain().into()),
            verified: i.verified.iter().map(|v| borrowed(v)).collect(),
            failures: i
                .failures
                .iter()
                .map(|f| FailureRecord {
                    policy: f.policy.as_deref().map(borrowed),
                    mode: borrowed(f.mode.as_str()),
                    reason: borrowed(f.reason.code()),
                    message: f.reason.to_string().into(),
                })
                .collect(),
        })
        .collect();
    Record {
        v: VERSION,
        time: time.into(),
        uid: borrowed(uid),
        namespace: borrowed(request.map_or("", Request::namespace)),
        kind: borrowed(request.map_or("", |r| r.kind.kind.as_str())),
        name: request.map(Request::object_name).unwrap_or_default().into(),
        operation: borrowed(request.map_or("", |r| r.operation.as_str())),
        user: borrowed(request.map_or("", |r| r.user_info.username.as_str())),
        dry_run: request.and_then(|r| r.dry_run).unwrap_or(false),
        decision: borrowed(decision.verdict().as_str()),
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        reason: decision.request_failure.as_ref().map(|r| borrowed(r.code())),
        message: decision.request_failure.as_ref().map(|r| r.to_string().into()),
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

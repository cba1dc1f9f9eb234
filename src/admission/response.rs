//! The one builder of AdmissionReview responses, from a [`Decision`]: same uid, 403 with a message on denial,
//! warnings for warn-mode failures, auditAnnotations always.

use std::collections::BTreeMap;

use serde::Serialize;

use super::review::{API_VERSION, KIND};
use crate::decide::{Decision, Verdict};

/// Kubernetes truncates longer warnings; keep each one whole instead.
const MAX_WARNING_CHARS: usize = 256;
const MAX_WARNINGS: usize = 16;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    api_version: &'static str,
    kind: &'static str,
    pub response: ResponseOut,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseOut {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub audit_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct StatusOut {
    pub code: u16,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// Builds the review answering `uid` with `decision`.
pub fn build(uid: &str, decision: &Decision) -> ReviewOut {
    let status = decision.denial_message().map(|message| StatusOut {
        code: 403,
        status: "Failure",
        reason: "Forbidden",
        message,
    });
    let warnings = decision.warnings().into_iter().take(MAX_WARNINGS).map(|w| truncate(w, MAX_WARNING_CHARS)).collect();
    let mut audit = BTreeMap::new();
    let verdict = match decision.verdict() {
        Verdict::Allow => "allow",
        Verdict::Warn => "warn",
        Verdict::Deny => "deny",
    };
    audit.insert("decision".to_owned(), verdict.to_owned());
    let codes = decision.reason_codes();
    if !codes.is_empty() {
        audit.insert("reasons".to_owned(), codes.join(","));
    }
    ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: ResponseOut {
            uid: uid.to_owned(),
            allowed: decision.verdict() != Verdict::Deny,
            status,
            warnings,
            audit_annotations: audit,
        },
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.chars().count() > max {
        s = s.chars().take(max - 1).collect();
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;
    use serde_json::json;

    #[test]
    fn denial_has_403_reason_and_message() {
        let out =
            serde_json::to_value(build("u1", &Decision::deny_request(Reason::PoliciesNotLoaded { why: "x".into() })))
                .unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        let r = &out["response"];
        assert_eq!(r["uid"], "u1");
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 403);
        assert_eq!(r["status"]["reason"], "Forbidden");
        assert!(r["status"]["message"].as_str().unwrap().contains("no valid policy set"));
        assert_eq!(r["auditAnnotations"], json!({"decision": "deny", "reasons": "policies-not-loaded"}));
        assert!(r.get("warnings").is_none());
    }

    #[test]
    fn allow_has_no_status() {
        let out = serde_json::to_value(build("u2", &Decision::allow_without_images())).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("status").is_none());
        assert_eq!(out["response"]["auditAnnotations"]["decision"], "allow");
    }

    #[test]
    fn long_warnings_are_cut() {
        assert_eq!(truncate("abc".into(), 5), "abc");
        let cut = truncate("x".repeat(300), MAX_WARNING_CHARS);
        assert_eq!(cut.chars().count(), MAX_WARNING_CHARS);
        assert!(cut.ends_with('…'));
    }
}

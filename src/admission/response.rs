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

/// `review` as an `application/json` HTTP response. Written into one buffer first: `axum::Json` writes through a
/// growing `BytesMut` piece by piece, which costs a warm review several thousand instructions more.
pub fn json(review: &impl Serialize) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut body = Vec::with_capacity(256);
    match serde_json::to_writer(&mut body, review) {
        Ok(()) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "an AdmissionReview response did not serialise (please report this)");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
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

/// The answer of `/mutate`: always allowed (validation denies), with the JSONPatch when it has operations.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MutationReviewOut {
    api_version: &'static str,
    kind: &'static str,
    pub response: MutationOut,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MutationOut {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// The patch, base64 of its JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    pub audit_annotations: BTreeMap<String, String>,
}

/// Builds the `/mutate` answer to `uid` carrying `patch`: allowed, `patchType: JSONPatch` and the base64 patch when
/// it has operations, and the number of fields pinned as the `pinned` audit annotation.
pub fn build_mutation(uid: &str, patch: &json_patch::Patch) -> MutationReviewOut {
    use base64::Engine as _;
    let encoded = match serde_json::to_vec(patch) {
        Ok(json) if !patch.0.is_empty() => Some(base64::engine::general_purpose::STANDARD.encode(json)),
        Ok(_) => None,
        Err(e) => {
            tracing::error!(error = %e, "the patch did not serialise; nothing is pinned (please report this)");
            None
        }
    };
    let pinned = if encoded.is_some() { patch.0.len() } else { 0 };
    MutationReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: MutationOut {
            uid: uid.to_owned(),
            allowed: true,
            patch_type: encoded.is_some().then_some("JSONPatch"),
            patch: encoded,
            audit_annotations: BTreeMap::from([("pinned".to_owned(), pinned.to_string())]),
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
    fn a_mutation_allows_and_carries_its_patch_in_base64() {
        use base64::Engine as _;
        let op = json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "r/app:1@sha256:00"}]);
        let patch: json_patch::Patch = serde_json::from_value(op.clone()).unwrap();
        let out = serde_json::to_value(build_mutation("u3", &patch)).unwrap();
        let r = &out["response"];
        assert_eq!((r["uid"].as_str(), r["allowed"].as_bool()), (Some("u3"), Some(true)));
        assert_eq!(r["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(r["patch"].as_str().unwrap()).unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(), op);
        assert_eq!(r["auditAnnotations"], json!({"pinned": "1"}));

        let none = serde_json::to_value(build_mutation("u4", &json_patch::Patch(Vec::new()))).unwrap();
        let r = &none["response"];
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none() && r.get("patchType").is_none(), "{r}");
        assert!(r.get("status").is_none());
        assert_eq!(r["auditAnnotations"], json!({"pinned": "0"}));
    }

    #[test]
    fn long_warnings_are_cut() {
        assert_eq!(truncate("abc".into(), 5), "abc");
        let cut = truncate("x".repeat(300), MAX_WARNING_CHARS);
        assert_eq!(cut.chars().count(), MAX_WARNING_CHARS);
        assert!(cut.ends_with('…'));
    }
}

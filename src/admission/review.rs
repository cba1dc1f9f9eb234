//! Reading an AdmissionReview v1 body: a body we cannot answer (not JSON, not a review, no request, no uid) is a
//! [`BadReview`] (HTTP 4xx); a request we can answer but not read is a denial carrying the reason.

use serde::Deserialize;
use serde_json::Value;

use crate::reason::Reason;
pub use crate::request::Request;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Why a body cannot be answered at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReview {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview (apiVersion {api_version:?}, kind {kind:?})")]
    NotAReview { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview request has no uid")]
    NoUid,
    #[error("the body exceeds the {0}-byte limit")]
    TooLarge(usize),
}

impl BadReview {
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge(_) => 413,
            _ => 400,
        }
    }
}

/// A review we can answer: its uid, and the request or why it cannot be read.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub uid: String,
    pub request: Result<Request, Reason>,
}

/// Parses a body that is already within the size limit.
pub fn parse(body: &[u8]) -> Result<Incoming, BadReview> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| BadReview::NotJson(e.to_string()))?;
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version != API_VERSION || kind != KIND {
        return Err(BadReview::NotAReview { api_version, kind });
    }
    // Taken out of the envelope, so that reading it moves the object rather than copying it.
    let request = match value.get_mut("request").map(Value::take) {
        None | Some(Value::Null) => return Err(BadReview::NoRequest),
        Some(r) => r,
    };
    let uid = match request.get("uid").and_then(Value::as_str) {
        Some(uid) if !uid.is_empty() => uid.to_owned(),
        _ => return Err(BadReview::NoUid),
    };
    let request = Request::deserialize(request).map_err(|e| Reason::UnreadableRequest(e.to_string()));
    Ok(Incoming { uid, request })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(request: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": KIND, "request": request})).unwrap()
    }

    #[test]
    fn bodies_that_cannot_be_answered() {
        let table: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not JSON"),
            (br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec(), "not an admission.k8s.io/v1"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(),
                "v1beta1",
            ),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "no request"),
            (review(json!({"operation": "CREATE"})), "no uid"),
            (review(json!({"uid": ""})), "no uid"),
        ];
        for (body, needle) in table {
            let err = parse(&body).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn a_request_with_uid_but_bad_fields_is_a_denial() {
        let incoming = parse(&review(json!({"uid": "u1", "kind": {"kind": "Pod"}, "operation": "EXPLODE"}))).unwrap();
        assert_eq!(incoming.uid, "u1");
        let reason = incoming.request.unwrap_err();
        assert_eq!(reason.code(), "unreadable-request");
        assert!(reason.to_string().contains("EXPLODE"), "{reason}");
    }

    #[test]
    fn a_good_request_parses() {
        let incoming = parse(&review(json!({
            "uid": "u2", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "team-a",
            "operation": "CREATE", "userInfo": {"username": "alice"}, "object": {"metadata": {"generateName": "web-"}},
            "oldObject": null, "dryRun": true
        })))
        .unwrap();
        let r = incoming.request.unwrap();
        assert_eq!((r.operation, r.namespace(), r.dry_run), (crate::request::Operation::Create, "team-a", Some(true)));
        assert_eq!(r.object_name(), "web-*");
        assert_eq!(r.user_info.username, "alice");
        assert!(r.old_object.is_none());
    }
}

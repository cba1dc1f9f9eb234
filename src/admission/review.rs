//! Reading an AdmissionReview v1 body: a body we cannot answer (not JSON, not a review, no request, no uid) is a
//! [`BadReview`] (HTTP 4xx); a request we can answer but not read is a denial carrying the reason.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

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

/// The envelope, its request left unread (one pass over the body finds its bounds).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default, borrow)]
    api_version: Option<&'a RawValue>,
    #[serde(default, borrow)]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow)]
    request: Option<&'a RawValue>,
}

/// The uid of a request that does not read as a [`Request`], so that its denial can still be answered.
#[derive(Deserialize)]
struct UidOnly {
    #[serde(default)]
    uid: Value,
}

/// A whole review as the API server sends it, read in one pass.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Whole {
    api_version: String,
    kind: String,
    request: Request,
}

/// Parses a body that is already within the size limit. A well-formed review is read in one pass; anything else is
/// read again step by step to say what is wrong with it ([`parse_carefully`]).
/// The text is checked as UTF-8 once, as a whole, rather than string by string.
pub fn parse(body: &[u8]) -> Result<Incoming, BadReview> {
    let whole = std::str::from_utf8(body).ok().and_then(|text| serde_json::from_str::<Whole>(text).ok());
    match whole {
        Some(mut whole) if whole.api_version == API_VERSION && whole.kind == KIND && !whole.request.uid.is_empty() => {
            whole.request.read_from_bytes = Some(body.len());
            Ok(Incoming { uid: whole.request.uid.clone(), request: Ok(whole.request) })
        }
        _ => parse_carefully(body),
    }
}

/// The envelope first (checked before anything else is read), then the request straight into [`Request`], so the
/// object is parsed once; a request that does not read keeps its uid, so its denial can be answered.
fn parse_carefully(body: &[u8]) -> Result<Incoming, BadReview> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| BadReview::NotJson(e.to_string()))?;
    let text =
        |raw: Option<&RawValue>| raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok()).unwrap_or_default();
    let (api_version, kind) = (text(envelope.api_version), text(envelope.kind));
    if api_version != API_VERSION || kind != KIND {
        return Err(BadReview::NotAReview { api_version, kind });
    }
    let request = match envelope.request {
        Some(raw) if raw.get() != "null" => raw.get(),
        _ => return Err(BadReview::NoRequest),
    };
    match serde_json::from_str::<Request>(request) {
        Ok(read) if read.uid.is_empty() => Err(BadReview::NoUid),
        Ok(mut read) => {
            read.read_from_bytes = Some(request.len());
            Ok(Incoming { uid: read.uid.clone(), request: Ok(read) })
        }
        Err(e) => match serde_json::from_str::<UidOnly>(request).map(|u| u.uid) {
            Ok(Value::String(uid)) if !uid.is_empty() => {
                Ok(Incoming { uid, request: Err(Reason::UnreadableRequest(e.to_string())) })
            }
            _ => Err(BadReview::NoUid),
        },
    }
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
            (review(json!(5)), "no uid"),
            (review(json!({"uid": 7, "operation": "CREATE"})), "no uid"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#.to_vec(), "no request"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}"#.to_vec(),
                "not JSON",
            ),
        ];
        for (body, needle) in table {
            let err = parse(&body).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn duplicated_keys_are_refused_and_reordered_keys_read_the_same() {
        // A second `request` (or `uid`) could smuggle another object past a reader that keeps the first; neither
        // reader keeps either: the body is refused.
        let twice = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a","kind":{"kind":"Pod"},"operation":"CREATE"},"request":{"uid":"b","kind":{"kind":"Pod"},"operation":"CREATE"}}"#;
        assert!(matches!(parse(twice).unwrap_err(), BadReview::NotJson(_)));
        let uid_twice = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a","uid":"b","kind":{"kind":"Pod"},"operation":"CREATE"}}"#;
        assert_eq!(parse(uid_twice).unwrap_err(), BadReview::NoUid, "a request whose uid is ambiguous is not answered");
        let reordered = br#"{"request":{"operation":"CREATE","kind":{"kind":"Pod"},"uid":"r1"},"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#;
        let incoming = parse(reordered).unwrap();
        assert_eq!(incoming.uid, "r1");
        assert_eq!(incoming.request.unwrap().operation, crate::request::Operation::Create);
    }

    #[test]
    fn a_body_that_is_not_utf8_is_refused_wherever_the_bad_byte_is() {
        let good = review(json!({"uid": "u1", "kind": {"kind": "Pod"}, "operation": "CREATE",
            "object": {"spec": {"containers": [{"name": "c", "image": "IMAGE"}]}}, "resource": {"x": "IGNORED"}}));
        assert!(parse(&good).is_ok());
        let text = String::from_utf8(good).unwrap();
        // A lone continuation byte, an overlong encoding, a surrogate: in a read field, an ignored one, and a key.
        for bad in [&[0x80u8][..], &[0xc0, 0xaf], &[0xed, 0xa0, 0x80]] {
            for place in ["IMAGE", "IGNORED", "\"uid\""] {
                let (before, after) = text.split_once(place).unwrap();
                let body = [before.as_bytes(), bad, after.as_bytes()].concat();
                let err = parse(&body).unwrap_err();
                assert!(matches!(err, BadReview::NotJson(_)), "{bad:?} at {place}: {err}");
            }
        }
    }

    #[test]
    fn a_review_says_how_long_its_text_was_so_its_object_need_not_be_measured_again() {
        let body = review(json!({"uid": "u1", "kind": {"kind": "Pod"}, "operation": "CREATE", "object": {"a": 1}}));
        assert_eq!(parse(&body).unwrap().request.unwrap().read_from_bytes, Some(body.len()));
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

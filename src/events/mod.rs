//! Kubernetes Events for denials and warnings: which object an Event is about, what its note says, and the handle
//! the admission handler hands them to without waiting (the [`publish`] task writes them in the background).

pub mod publish;
pub mod series;

use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::decide::{Decision, Failure, Outcome, Verdict};
use crate::policy::Mode;
use crate::request::{Operation, Request};

/// The Event reason of a denial.
pub const DENIED: &str = "ProvgateDenied";
/// The Event reason of an admission with a warning.
pub const WARNED: &str = "ProvgateWarned";

/// The most bytes an events.k8s.io/v1 Event note may hold.
pub const MAX_NOTE_BYTES: usize = 1024;
/// Images of one decision that raise Events (the rest are in the audit record).
pub const MAX_IMAGES_PER_DECISION: usize = 8;
const MAX_IMAGE_BYTES: usize = 256;
const MAX_POLICY_BYTES: usize = 128;
const MAX_UID_BYTES: usize = 64;

/// Why an Event is raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventReason {
    Denied,
    Warned,
}

impl EventReason {
    /// The Event's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => DENIED,
            Self::Warned => WARNED,
        }
    }
}

/// The object an Event is about (its `regarding`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// The namespace the Event is written in (for a Namespace, the namespace itself).
    pub namespace: String,
    pub uid: Option<String>,
}

/// One failing image of a decision (or the request itself): one occurrence of a series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub reason: EventReason,
    /// The image as written (empty when the request was denied before images were judged).
    pub image: String,
    pub code: &'static str,
    pub note: String,
}

/// What the handler hands to the publisher for one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub target: Target,
    pub occurrences: Vec<Occurrence>,
}

/// The object the Events of `request` are about: the object itself for UPDATE; for CREATE (the object does not
/// exist yet) the owner its controller reference names, else its Namespace. None without a namespace.
pub fn target(request: &Request) -> Option<Target> {
    let namespace = request.namespace();
    if !is_dns_label(namespace) {
        return None;
    }
    let of_namespace = || Target {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        name: namespace.to_owned(),
        namespace: namespace.to_owned(),
        uid: None,
    };
    let found = match request.operation {
        Operation::Update => updated(request),
        Operation::Create => request.object.as_ref().and_then(controller),
        Operation::Delete | Operation::Connect => None,
    };
    Some(match found {
        Some(target) => Target { namespace: namespace.to_owned(), ..target },
        None => of_namespace(),
    })
}

/// The object an UPDATE changes (a subresource's, such as `pods/ephemeralcontainers`, is its Pod).
fn updated(request: &Request) -> Option<Target> {
    let name = request.name.as_deref().filter(|n| is_dns_subdomain(n))?;
    let (api_version, kind) = match request.sub_resource.as_deref() {
        Some("ephemeralcontainers") => ("v1".to_owned(), "Pod".to_owned()),
        _ => {
            let gvk = &request.kind;
            let api_version =
                if gvk.group.is_empty() { gvk.version.clone() } else { format!("{}/{}", gvk.group, gvk.version) };
            (api_version, gvk.kind.clone())
        }
    };
    let uid = [&request.old_object, &request.object]
        .into_iter()
        .flatten()
        .find_map(|o| o.pointer("/metadata/uid").and_then(Value::as_str))
        .filter(|u| is_uid(u))
        .map(str::to_owned);
    (is_api_version(&api_version) && is_kind(&kind)).then(|| Target {
        api_version,
        kind,
        name: name.to_owned(),
        namespace: String::new(),
        uid,
    })
}

/// The owner a new object's controller reference names, if it is well formed.
fn controller(object: &Value) -> Option<Target> {
    let owners = object.pointer("/metadata/ownerReferences")?.as_array()?;
    let owner = owners.iter().find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))?;
    let field = |name: &str| owner.get(name).and_then(Value::as_str);
    let (api_version, kind, name, uid) = (field("apiVersion")?, field("kind")?, field("name")?, field("uid")?);
    (is_api_version(api_version) && is_kind(kind) && is_dns_subdomain(name) && is_uid(uid)).then(|| Target {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        namespace: String::new(),
        uid: Some(uid.to_owned()),
    })
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_subdomain(s) && !s.contains('.')
}

fn is_dns_subdomain(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    s.len() <= 253
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

fn is_kind(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_api_version(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || "./-".contains(c))
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The longest prefix of `s` within `max` bytes, ending on a character boundary, marked with `…` when cut.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An Event note, at most [`MAX_NOTE_BYTES`]: what happened to which image under which policy and why, and the
/// command that shows the whole decision. The message is cut to fit; the command never is.
pub fn note(
    reason: EventReason,
    uid: &str,
    image: Option<&str>,
    policy: Option<&str>,
    code: &str,
    message: &str,
) -> String {
    let verb = match reason {
        EventReason::Denied => "denied",
        EventReason::Warned => "admitted with a warning",
    };
    let mut head = match image {
        Some(image) => format!("image {} {verb}", bounded(image, MAX_IMAGE_BYTES)),
        None => format!("request {verb}"),
    };
    if let Some(policy) = policy {
        head.push_str(&format!(" by policy {}", bounded(policy, MAX_POLICY_BYTES)));
    }
    head.push_str(&format!(" ({code}): "));
    let tail = format!(" (provgate audit show {})", bounded(uid, MAX_UID_BYTES));
    let room = MAX_NOTE_BYTES.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", bounded(message, room))
}

/// The Events one decision raises: none for an admission without warnings, a dry run, or a request without an
/// object to attach them to; otherwise one per denied (or, when admitted, warned) image, at most
/// [`MAX_IMAGES_PER_DECISION`], or one for the request when it was denied as a whole.
pub fn notice(uid: &str, request: &Request, decision: &Decision) -> Option<Notice> {
    let (reason, outcome, mode) = match decision.verdict() {
        Verdict::Allow => return None,
        Verdict::Deny => (EventReason::Denied, Outcome::Denied, Mode::Enforce),
        Verdict::Warn => (EventReason::Warned, Outcome::Warned, Mode::Warn),
    };
    if request.dry_run == Some(true) {
        return None;
    }
    let target = target(request)?;
    let occurrences: Vec<Occurrence> = match &decision.request_failure {
        Some(failure) => vec![Occurrence {
            reason,
            image: String::new(),
            code: failure.code(),
            note: note(reason, uid, None, None, failure.code(), &failure.to_string()),
        }],
        None => decision
            .images
            .iter()
            .filter(|i| i.outcome == outcome)
            .filter_map(|i| i.failures.iter().find(|f| f.mode == mode).map(|f| (i, f)))
            .take(MAX_IMAGES_PER_DECISION)
            .map(|(i, f): (_, &Failure)| Occurrence {
                reason,
                image: bounded(&i.raw, MAX_IMAGE_BYTES),
                code: f.reason.code(),
                note: note(reason, uid, Some(&i.raw), f.policy.as_deref(), f.reason.code(), &f.reason.to_string()),
            })
            .collect(),
    };
    (!occurrences.is_empty()).then_some(Notice { target, occurrences })
}

/// Notices waiting for the publisher, at most.
pub const QUEUE: usize = 256;

/// The handler's end: hands notices to the publisher without waiting. Without a Kubernetes API it does nothing.
#[derive(Clone, Default)]
pub struct Events {
    sender: Option<mpsc::Sender<Notice>>,
    dropped: Counter,
}

impl Events {
    /// Events that go nowhere (no Kubernetes API).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// A handle sending to `sender`, counting notices it cannot hand over in `dropped`.
    fn new(sender: mpsc::Sender<Notice>, dropped: Counter) -> Self {
        Self { sender: Some(sender), dropped }
    }

    /// Notices dropped: the queue was full, or too many series were live.
    pub fn dropped(&self) -> Counter {
        self.dropped.clone()
    }

    /// Hands the Events of one decision to the publisher; never waits, drops (and counts) when the queue is full.
    pub fn notify(&self, uid: &str, request: Option<&Request>, decision: &Decision) {
        let (Some(sender), Some(request)) = (&self.sender, request) else { return };
        let Some(notice) = notice(uid, request, decision) else { return };
        match sender.try_send(notice) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.inc();
                tracing::debug!(uid, "the Event queue is full; this decision raises no Event");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(uid, "the Event publisher has stopped; this decision raises no Event");
            }
        }
    }
}

#[cfg(test)]
mod tests;

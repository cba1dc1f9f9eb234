//! Registry requests counted by registry, request kind and status, under a bounded set of registry labels: the
//! registry host comes from whoever writes a Pod, so only the hosts the config names and the first
//! [`MAX_OTHER_REGISTRIES`] others get a label of their own; every later host counts as `other`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::registry::RegistryError;
use crate::registry::auth::normalise_host;

/// Registries not named in `registries.hosts` that get a label of their own (first seen, first served).
pub const MAX_OTHER_REGISTRIES: usize = 32;

/// The label of every registry past the bound.
pub const OTHER: &str = "other";

/// Labels of `provgate_registry_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The registry host as written in image references (lowercase), or `other`.
    pub registry: String,
    /// What was asked: see [`RequestKind`].
    pub kind: &'static str,
    /// The HTTP status (a common code, else its class such as `4xx`), `timeout` or `error` (no answer).
    pub status: &'static str,
}

/// What one HTTP exchange with a registry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `GET /v2/`: the authentication challenge.
    Ping,
    /// A Bearer token from the registry's token service.
    Token,
    /// `HEAD` of a manifest by tag: what the tag names now.
    TagHead,
    /// A manifest (by tag or digest), including cosign `.sig`/`.att` tags and referrer manifests.
    Manifest,
    /// A page of the referrers API.
    Referrers,
    /// A blob (signature payload, DSSE envelope, bundle).
    Blob,
}

impl RequestKind {
    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Token => "token",
            Self::TagHead => "tag-head",
            Self::Manifest => "manifest",
            Self::Referrers => "referrers",
            Self::Blob => "blob",
        }
    }
}

/// The HTTP statuses labelled as themselves; others are labelled by class.
const COMMON_STATUSES: [(u16, &str); 23] = [
    (200, "200"),
    (202, "202"),
    (204, "204"),
    (206, "206"),
    (301, "301"),
    (302, "302"),
    (304, "304"),
    (307, "307"),
    (308, "308"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (406, "406"),
    (409, "409"),
    (416, "416"),
    (429, "429"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

/// How one exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// The registry answered with this HTTP status.
    Http(u16),
    /// No answer within the call timeout or the review's deadline.
    TimedOut,
    /// No answer: connection refused, TLS failure, too many redirects…
    Failed,
}

impl RequestStatus {
    /// How an exchange that failed with `error` ended, given the status it was answered with, if any (a reply
    /// refused afterwards, e.g. for its size, still counts under its status).
    pub fn of_error(error: &RegistryError, answered: Option<u16>) -> Self {
        match (error, answered) {
            (RegistryError::TimedOut { .. }, _) => Self::TimedOut,
            (_, Some(code)) => Self::Http(code),
            (_, None) => Self::Failed,
        }
    }

    /// The `status` label: the common codes a registry answers as themselves, any other code as its class, so
    /// that a registry answering odd codes adds at most a handful of series.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimedOut => "timeout",
            Self::Failed => "error",
            Self::Http(code) => match COMMON_STATUSES.iter().find(|(c, _)| *c == code) {
                Some((_, label)) => label,
                None => match code / 100 {
                    1 => "1xx",
                    2 => "2xx",
                    3 => "3xx",
                    4 => "4xx",
                    5 => "5xx",
                    _ => "other",
                },
            },
        }
    }
}

/// Requests to registries, by registry, kind and status, with the registry label bounded.
#[derive(Debug)]
pub struct RegistryMetrics {
    requests: Family<RequestLabels, Counter>,
    /// Hosts named in `registries.hosts` (normalised): always their own label.
    named: HashSet<String>,
    /// Other hosts given their own label, at most `max_others`.
    others: Mutex<HashSet<String>>,
    max_others: usize,
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self::new(std::iter::empty::<&str>())
    }
}

impl RegistryMetrics {
    /// Counts with the hosts of `registries.hosts` (`named`) always labelled by name.
    pub fn new<S: AsRef<str>>(named: impl IntoIterator<Item = S>) -> Self {
        Self::bounded(named, MAX_OTHER_REGISTRIES)
    }

    fn bounded<S: AsRef<str>>(named: impl IntoIterator<Item = S>, max_others: usize) -> Self {
        Self {
            requests: Family::default(),
            named: named.into_iter().map(|h| normalise_host(h.as_ref())).collect(),
            others: Mutex::default(),
            max_others,
        }
    }

    /// The counters, for the metrics endpoint.
    pub fn requests(&self) -> Family<RequestLabels, Counter> {
        self.requests.clone()
    }

    /// Starts counting one exchange of `kind` with `host`: it is counted once, when [`Counted::finish`] says how
    /// it ended, or as a timeout if it is dropped first (the review's deadline cut it short).
    pub fn start<'a>(&'a self, host: &'a str, kind: RequestKind) -> Counted<'a> {
        Counted { metrics: self, host, kind, status: None }
    }

    /// Counts one exchange with `host`.
    pub fn count(&self, host: &str, kind: RequestKind, status: RequestStatus) {
        let labels = RequestLabels { registry: self.label(host), kind: kind.as_str(), status: status.as_str() };
        self.requests.get_or_create(&labels).inc();
    }

    /// The `registry` label of `host`: its name when the config names it or it is among the first
    /// `max_others` others seen, else `other`.
    pub fn label(&self, host: &str) -> String {
        let host = normalise_host(host);
        if self.named.contains(&host) {
            return host;
        }
        let mut others = self.others.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if others.contains(&host) || others.len() < self.max_others && host != OTHER {
            others.insert(host.clone());
            return host;
        }
        OTHER.to_owned()
    }
}

/// One exchange in progress; see [`RegistryMetrics::start`].
pub struct Counted<'a> {
    metrics: &'a RegistryMetrics,
    host: &'a str,
    kind: RequestKind,
    status: Option<RequestStatus>,
}

impl Counted<'_> {
    /// Counts the exchange as ended with `status`.
    pub fn finish(mut self, status: RequestStatus) {
        self.status = Some(status);
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.metrics.count(self.host, self.kind, self.status.unwrap_or(RequestStatus::TimedOut));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_hosts_and_the_first_others_keep_their_name_the_rest_are_other() {
        let m = RegistryMetrics::bounded(["GHCR.io", "https://index.docker.io/v1/"], 2);
        assert_eq!(m.label("ghcr.io"), "ghcr.io");
        assert_eq!(m.label("docker.io"), "docker.io", "named as the config writes it, normalised");
        assert_eq!(m.label("a.example"), "a.example");
        assert_eq!(m.label("B.example:5000"), "b.example:5000");
        assert_eq!(m.label("c.example"), OTHER, "past the bound");
        assert_eq!(m.label("a.example"), "a.example", "a host keeps its label");
        assert_eq!(m.label("ghcr.io"), "ghcr.io", "named hosts never compete for a slot");
        assert_eq!(m.label("b.example:5000"), "b.example:5000");
    }

    #[test]
    fn statuses_are_a_bounded_set() {
        let labels: HashSet<&str> = (0..=1000).map(|c| RequestStatus::Http(c).as_str()).collect();
        assert!(labels.len() <= 30, "{labels:?}");
        assert_eq!(RequestStatus::Http(404).as_str(), "404");
        assert_eq!(RequestStatus::Http(418).as_str(), "4xx");
        assert_eq!(RequestStatus::Http(999).as_str(), "other");
        let timed_out = RegistryError::TimedOut { registry: "r".into(), what: "w".into() };
        assert_eq!(RequestStatus::of_error(&timed_out, Some(200)).as_str(), "timeout");
        let refused = RegistryError::Unreachable { registry: "r".into(), detail: "refused".into() };
        assert_eq!(RequestStatus::of_error(&refused, None).as_str(), "error");
        let big = RegistryError::TooLarge { registry: "r".into(), what: "w".into(), limit: 1 };
        assert_eq!(RequestStatus::of_error(&big, Some(200)).as_str(), "200");
    }

    #[test]
    fn an_exchange_is_counted_once_and_as_a_timeout_when_dropped_unfinished() {
        let m = RegistryMetrics::default();
        m.start("r.example", RequestKind::Blob).finish(RequestStatus::Http(200));
        drop(m.start("r.example", RequestKind::Blob));
        let count = |status: &'static str| {
            let labels = RequestLabels { registry: "r.example".into(), kind: "blob", status };
            m.requests.get(&labels).map(|c| c.get())
        };
        assert_eq!((count("200"), count("timeout")), (Some(1), Some(1)));
    }
}

//! HTTP to one registry as one identity: auth, per-call timeouts, bounded retries, size-capped reads, digest checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::time::Instant;

use super::auth::Credentials;
use super::budget::Budget;
use super::config::RegistryConfig;
use super::token::{self, Challenge, RealmRule};
use super::{INDEX_TYPES, MANIFEST_ACCEPT, RegistryError};
use crate::images::Digest;
use authorize::{Authz, TokenLifetime};
pub use requests::{MAX_OTHER_REGISTRIES, RegistryMetrics, RequestKind, RequestStatus};

mod authorize;
mod requests;

/// Longest a bearer token (or the finding that none is needed) is reused, whatever lifetime the token service gives.
const AUTH_TTL: Duration = Duration::from_secs(240);
/// Repositories whose authorization one session remembers.
const AUTH_ENTRIES: u64 = 512;
/// Bytes kept from an error answer, for the message.
const ERROR_BODY_CAP: u64 = 16 << 10;
/// First backoff before a retry; doubles each time, and a `Retry-After` header overrides it.
const BACKOFF: Duration = Duration::from_millis(200);

/// How long a registry that lacks the referrers API is remembered as lacking it.
pub(crate) const REFERRERS_API_TTL: Duration = Duration::from_secs(600);

/// What the transport of one host needs, prepared once from the config.
#[derive(Clone, Default)]
pub(crate) struct HostTransport {
    pub insecure: bool,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// `registries.hosts.HOST.tokenRealms`.
    pub token_realms: Vec<String>,
}

/// What a request asks for; it decides the method, the Accept header and the size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// HEAD of a manifest, full Accept list.
    ManifestHead,
    /// A manifest, full Accept list.
    Manifest,
    /// A referrers page (an image index).
    Referrers,
    /// A blob.
    Blob,
    /// A blob read with its own cap instead of `maxBlobBytes` (evidence, whose cap its policy sets).
    BlobAtMost(u64),
}

/// One answer, body read within its cap.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub url: reqwest::Url,
}

impl Reply {
    pub fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A registry host seen as one identity. Shared by all concurrent reviews through `&self`.
pub(crate) struct Session {
    host: String,
    base: String,
    http: reqwest::Client,
    /// For token realms: same trust, no redirects.
    token_http: reqwest::Client,
    realms: RealmRule,
    creds: Credentials,
    /// Per repository, bounded, each entry expiring with its token.
    auth: moka::future::Cache<String, Authz>,
    /// The challenge of `/v2/` (None: no usable challenge), and until when it is reused.
    challenge: Mutex<Option<(Option<Challenge>, Instant)>>,
    /// Until when this registry is known to lack the referrers API (it answered 404 or 405), so that the tag-schema
    /// fallback is read directly, at one request per image instead of two.
    no_referrers_api: Mutex<Option<Instant>>,
    call_timeout: Duration,
    retries: u32,
    max_manifest: u64,
    max_blob: u64,
    /// Counts every HTTP exchange.
    metrics: Arc<RegistryMetrics>,
}

impl Session {
    pub fn new(
        host: &str,
        transport: &HostTransport,
        creds: Credentials,
        cfg: &RegistryConfig,
        metrics: Arc<RegistryMetrics>,
    ) -> Result<Self, RegistryError> {
        let unreachable = |detail: String| RegistryError::Unreachable { registry: host.to_owned(), detail };
        let client = |redirect: reqwest::redirect::Policy| {
            let mut builder = reqwest::Client::builder()
                .redirect(redirect)
                .connect_timeout(cfg.connect_timeout)
                .https_only(!transport.insecure)
                .user_agent(concat!("provgate/", env!("CARGO_PKG_VERSION")));
            if let Some(pem) = &transport.ca_pem {
                let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| unreachable(error_chain(&e)))?;
                builder = builder.tls_certs_merge(certs);
            }
            builder.build().map_err(|e| unreachable(error_chain(&e)))
        };
        let http = client(reqwest::redirect::Policy::limited(cfg.max_redirects))?;
        let token_http = client(reqwest::redirect::Policy::none())?;
        let scheme = if transport.insecure { "http" } else { "https" };
        let api_host = if host == "docker.io" { "registry-1.docker.io" } else { host };
        let auth = moka::future::Cache::builder().max_capacity(AUTH_ENTRIES).expire_after(TokenLifetime).build();
        Ok(Self {
            host: host.to_owned(),
            base: format!("{scheme}://{api_host}"),
            http,
            token_http,
            realms: RealmRule::new(host, api_host, transport.insecure, &transport.token_realms),
            creds,
            auth,
            challenge: Mutex::new(None),
            no_referrers_api: Mutex::new(None),
            call_timeout: cfg.call_timeout,
            retries: cfg.retries,
            max_manifest: cfg.max_manifest_bytes,
            max_blob: cfg.max_blob_bytes,
            metrics,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the registry was seen lacking the referrers API within the last [`REFERRERS_API_TTL`].
    pub fn lacks_referrers_api(&self) -> bool {
        let known = self.no_referrers_api.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.is_some_and(|until| until > Instant::now())
    }

    /// Records that the registry answered the referrers API with 404 or 405.
    pub fn note_no_referrers_api(&self) {
        let mut known = self.no_referrers_api.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *known = Some(Instant::now() + REFERRERS_API_TTL);
    }

    /// `<scheme>://<host>/v2/<repo>/<rest>`.
    pub fn url(&self, repo: &str, rest: &str) -> String {
        format!("{}/v2/{repo}/{rest}", self.base)
    }

    /// One logical request for `repo`: authorises, retries 429/5xx within `deadline`, reads the body up to its cap
    /// and within `budget` (error answers up to a small cap). 401/403 become `Unauthorized`; other statuses are the
    /// caller's to judge.
    pub async fn request(
        &self,
        want: Want,
        repo: &str,
        url: &str,
        what: &str,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Reply, RegistryError> {
        let mut attempt = 0;
        let mut renew: Option<Option<Challenge>> = None;
        let mut renewed = false;
        loop {
            let (auth, fresh) = self.authorization(repo, what, deadline, renew.take()).await?;
            let reply = self.attempt(want, url, auth, what, budget, deadline).await?;
            let status = reply.status;
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                if !fresh && !renewed {
                    renewed = true;
                    renew = Some(token::parse_challenge(reply.headers.get_all(header::WWW_AUTHENTICATE)));
                    continue;
                }
                return Err(RegistryError::Unauthorized {
                    registry: self.host.clone(),
                    repository: repo.to_owned(),
                    detail: format!("HTTP {status} for {what}{}", error_excerpt(&reply.body)),
                });
            }
            let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if !transient {
                return Ok(reply);
            }
            let retry_after = reply.header(header::RETRY_AFTER).and_then(retry_after);
            let failure = || {
                if status == StatusCode::TOO_MANY_REQUESTS {
                    RegistryError::RateLimited { registry: self.host.clone(), retry_after }
                } else {
                    RegistryError::ServerError {
                        registry: self.host.clone(),
                        what: what.to_owned(),
                        status: status.as_u16(),
                        attempts: attempt + 1,
                    }
                }
            };
            if attempt >= self.retries {
                return Err(failure());
            }
            let wait = retry_after.unwrap_or_else(|| BACKOFF.saturating_mul(2u32.saturating_pow(attempt)));
            if !fits_before(wait, deadline) {
                return Err(failure());
            }
            tracing::debug!(registry = %self.host, %status, ?wait, what, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One HTTP exchange ([`Session::exchange`]), counted by kind and how it ended.
    async fn attempt(
        &self,
        want: Want,
        url: &str,
        auth: Option<HeaderValue>,
        what: &str,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Reply, RegistryError> {
        let kind = match want {
            Want::ManifestHead => RequestKind::TagHead,
            Want::Manifest => RequestKind::Manifest,
            Want::Referrers => RequestKind::Referrers,
            Want::Blob | Want::BlobAtMost(_) => RequestKind::Blob,
        };
        let counted = self.metrics.start(&self.host, kind);
        let mut answered = None;
        let result = self.exchange(want, url, auth, what, budget, deadline, &mut answered).await;
        counted.finish(status_of(&result, answered));
        result
    }

    /// Starts counting one exchange of `kind` (see [`RegistryMetrics::start`]).
    pub(super) fn counting(&self, kind: RequestKind) -> requests::Counted<'_> {
        self.metrics.start(&self.host, kind)
    }

    /// One HTTP exchange: the answer under `min(call_timeout, time left)`, then room for its body in `budget` (which
    /// may wait for the process-wide pool until `deadline`), then the body under a fresh `min(call_timeout, time
    /// left)`. `answered` is set to the answer's status as soon as it arrives.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        want: Want,
        url: &str,
        auth: Option<HeaderValue>,
        what: &str,
        budget: &Budget,
        deadline: Instant,
        answered: &mut Option<u16>,
    ) -> Result<Reply, RegistryError> {
        let (method, accept, cap) = match want {
            Want::ManifestHead => (Method::HEAD, MANIFEST_ACCEPT, self.max_manifest),
            Want::Manifest => (Method::GET, MANIFEST_ACCEPT, self.max_manifest),
            Want::Referrers => (Method::GET, INDEX_TYPES[0], self.max_manifest),
            Want::Blob => (Method::GET, "*/*", self.max_blob),
            Want::BlobAtMost(cap) => (Method::GET, "*/*", cap),
        };
        let head = method == Method::HEAD;
        let mut req = self.http.request(method, url).header(header::ACCEPT, accept);
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let mut resp = tokio::time::timeout(self.time_left(what, deadline)?, req.send())
            .await
            .map_err(|_| self.timed_out(what))?
            .map_err(|e| self.transport_error(&e, what))?;
        let status = resp.status();
        *answered = Some(status.as_u16());
        let (headers, final_url) = (resp.headers().clone(), resp.url().clone());
        let reply = |body: Vec<u8>| Reply { status, headers, body: body.into(), url: final_url };
        if head {
            return Ok(reply(Vec::new()));
        }
        if !status.is_success() {
            let read = self.read_body(&mut resp, ERROR_BODY_CAP, 0, what, |_| None);
            let body = tokio::time::timeout(self.time_left(what, deadline)?, read)
                .await
                .map_err(|_| self.timed_out(what))??;
            return Ok(reply(body));
        }
        let declared = resp.content_length();
        if declared.is_some_and(|n| n > cap) {
            return Err(self.too_large(what, cap));
        }
        let room = declared.unwrap_or_else(|| cap.min(budget.remaining()));
        let reservation = budget.reserve(room, &self.host, what, deadline).await?;
        let past =
            |_: usize| Some(if room == cap { self.too_large(what, cap) } else { budget.exceeded(&self.host, what) });
        let read = self.read_body(&mut resp, room, declared.unwrap_or(0), what, past);
        let body =
            tokio::time::timeout(self.time_left(what, deadline)?, read).await.map_err(|_| self.timed_out(what))??;
        reservation.settle(body.len() as u64);
        Ok(reply(body))
    }

    /// The body, at most `limit` bytes, in one allocation of `declared` bytes when its length was declared. Past the
    /// limit: the error `past` gives, or (for `None`) the body so far.
    async fn read_body(
        &self,
        resp: &mut reqwest::Response,
        limit: u64,
        declared: u64,
        what: &str,
        past: impl Fn(usize) -> Option<RegistryError>,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut body = Vec::with_capacity(usize::try_from(declared.min(limit)).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e, what))? {
            if (body.len() + chunk.len()) as u64 > limit {
                return match past(body.len() + chunk.len()) {
                    Some(err) => Err(err),
                    None => Ok(body),
                };
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// `min(call_timeout, time left before deadline)`; an error when no time is left.
    fn time_left(&self, what: &str, deadline: Instant) -> Result<Duration, RegistryError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out(what));
        }
        Ok(left.min(self.call_timeout))
    }

    fn timed_out(&self, what: &str) -> RegistryError {
        RegistryError::TimedOut { registry: self.host.clone(), what: what.to_owned() }
    }

    fn too_large(&self, what: &str, limit: u64) -> RegistryError {
        RegistryError::TooLarge { registry: self.host.clone(), what: what.to_owned(), limit }
    }

    fn transport_error(&self, e: &reqwest::Error, what: &str) -> RegistryError {
        if e.is_timeout() {
            return self.timed_out(what);
        }
        let detail = if e.is_redirect() { format!("too many redirects: {}", error_chain(e)) } else { error_chain(e) };
        RegistryError::Unreachable { registry: self.host.clone(), detail }
    }
}

/// How an exchange that gave `result` ended, after an answer with status `answered` if any.
pub(super) fn status_of<T>(result: &Result<T, RegistryError>, answered: Option<u16>) -> RequestStatus {
    match (result, answered) {
        (Ok(_), Some(code)) => RequestStatus::Http(code),
        (Ok(_), None) => RequestStatus::Failed,
        (Err(e), answered) => RequestStatus::of_error(e, answered),
    }
}

/// Whether waiting `wait` from now ends before `deadline` (a wait too long for the clock never does).
fn fits_before(wait: Duration, deadline: Instant) -> bool {
    Instant::now().checked_add(wait).is_some_and(|end| end < deadline)
}

/// A `Retry-After` value: delay seconds, or an HTTP date (a date in the past means now).
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default())
}

/// Checks that `body` hashes to `expected` (sha256, sha384 or sha512 of the exact bytes).
pub(crate) fn check_digest(registry: &str, what: &str, expected: &Digest, body: &[u8]) -> Result<(), RegistryError> {
    use sha2::Digest as _;
    let actual = match expected.algorithm() {
        "sha384" => hex::encode(sha2::Sha384::digest(body)),
        "sha512" => hex::encode(sha2::Sha512::digest(body)),
        _ => hex::encode(sha2::Sha256::digest(body)),
    };
    if actual == expected.hex() {
        return Ok(());
    }
    Err(RegistryError::DigestMismatch {
        registry: registry.to_owned(),
        what: what.to_owned(),
        expected: expected.to_string(),
        actual: format!("{}:{actual}", expected.algorithm()),
    })
}

/// The registry's error message, if the body carries one, as `: <message>`.
pub(crate) fn error_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() { String::new() } else { format!(": {}", truncate(text, 200)) }
}

/// An error with its causes, each once: `error sending request: … invalid peer certificate: UnknownIssuer`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_http_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO), "past dates mean now");
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let got = retry_after(&later).unwrap();
        assert!(got > Duration::from_secs(100) && got <= Duration::from_secs(120), "{got:?}");
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn waits_too_long_for_the_clock_never_fit() {
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(fits_before(Duration::from_secs(1), deadline));
        assert!(!fits_before(Duration::from_secs(5), deadline));
        let forever = retry_after("18446744073709551615").unwrap();
        assert!(!fits_before(forever, deadline));
        assert!(!fits_before(Duration::MAX, deadline));
    }

    #[test]
    fn digests_are_checked_over_the_exact_bytes() {
        let d = Digest::sha256_of(b"abc");
        assert!(check_digest("r", "blob", &d, b"abc").is_ok());
        let err = check_digest("r", "blob", &d, b"abd").unwrap_err();
        assert_eq!(err.code(), "registry-digest-mismatch");
        let d512 = Digest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        assert!(check_digest("r", "blob", &d512, b"abc").is_err());
    }
}

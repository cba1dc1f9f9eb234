//! HTTP to one registry as one identity: auth, per-call timeouts, bounded retries, size-capped reads, digest checks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::time::Instant;

use super::auth::Credentials;
use super::config::RegistryConfig;
use super::{INDEX_TYPES, MANIFEST_ACCEPT, RegistryError};
use crate::images::Digest;

/// How long a bearer token (or the finding that none is needed) is reused before asking again.
const AUTH_TTL: Duration = Duration::from_secs(240);
/// Bytes kept from an error answer, for the message.
const ERROR_BODY_CAP: u64 = 16 << 10;
/// First backoff before a retry; doubles each time, and a `Retry-After` header overrides it.
const BACKOFF: Duration = Duration::from_millis(200);

/// What the transport of one host needs, prepared once from the config.
#[derive(Clone, Default)]
pub(crate) struct HostTransport {
    pub insecure: bool,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
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
    oci: oci_client::Client,
    creds: Credentials,
    auth: Mutex<HashMap<String, (Option<HeaderValue>, Instant)>>,
    call_timeout: Duration,
    retries: u32,
    max_manifest: u64,
    max_blob: u64,
}

impl Session {
    pub fn new(
        host: &str,
        transport: &HostTransport,
        creds: Credentials,
        cfg: &RegistryConfig,
    ) -> Result<Self, RegistryError> {
        let unreachable = |detail: String| RegistryError::Unreachable { registry: host.to_owned(), detail };
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(cfg.max_redirects))
            .connect_timeout(cfg.connect_timeout)
            .https_only(!transport.insecure)
            .user_agent(concat!("provgate/", env!("CARGO_PKG_VERSION")));
        let mut oci_certs = Vec::new();
        if let Some(pem) = &transport.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| unreachable(error_chain(&e)))?;
            builder = builder.tls_certs_merge(certs);
            oci_certs.push(Certificate { encoding: CertificateEncoding::Pem, data: pem.clone() });
        }
        let http = builder.build().map_err(|e| unreachable(error_chain(&e)))?;
        let oci = oci_client::Client::try_from(ClientConfig {
            protocol: if transport.insecure {
                ClientProtocol::HttpsExcept(vec![host.to_owned()])
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: oci_certs,
            connect_timeout: Some(cfg.connect_timeout),
            read_timeout: Some(cfg.call_timeout),
            ..Default::default()
        })
        .map_err(|e| unreachable(e.to_string()))?;
        let scheme = if transport.insecure { "http" } else { "https" };
        let api_host = if host == "docker.io" { "registry-1.docker.io" } else { host };
        Ok(Self {
            host: host.to_owned(),
            base: format!("{scheme}://{api_host}"),
            http,
            oci,
            creds,
            auth: Mutex::new(HashMap::new()),
            call_timeout: cfg.call_timeout,
            retries: cfg.retries,
            max_manifest: cfg.max_manifest_bytes,
            max_blob: cfg.max_blob_bytes,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `<scheme>://<host>/v2/<repo>/<rest>`.
    pub fn url(&self, repo: &str, rest: &str) -> String {
        format!("{}/v2/{repo}/{rest}", self.base)
    }

    /// One logical request for `repo`: authorises, retries 429/5xx within `deadline`, reads the body up to `cap`
    /// (error answers up to a small cap). 401/403 become `Unauthorized`; other statuses are the caller's to judge.
    pub async fn request(
        &self,
        want: Want,
        repo: &str,
        url: &str,
        what: &str,
        deadline: Instant,
    ) -> Result<Reply, RegistryError> {
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            let (auth, fresh) = self.authorization(repo, what, deadline, refreshed).await?;
            let reply = self.attempt(want, url, auth, what, deadline).await?;
            let status = reply.status;
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                if !fresh && !refreshed {
                    refreshed = true;
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
            let wait = retry_after.unwrap_or(BACKOFF * 2u32.saturating_pow(attempt));
            if Instant::now() + wait >= deadline {
                return Err(failure());
            }
            tracing::debug!(registry = %self.host, %status, ?wait, what, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One HTTP exchange, send and body, under `min(call_timeout, time left)`.
    async fn attempt(
        &self,
        want: Want,
        url: &str,
        auth: Option<HeaderValue>,
        what: &str,
        deadline: Instant,
    ) -> Result<Reply, RegistryError> {
        let budget = self.budget(what, deadline)?;
        let (method, accept, cap) = match want {
            Want::ManifestHead => (Method::HEAD, MANIFEST_ACCEPT, self.max_manifest),
            Want::Manifest => (Method::GET, MANIFEST_ACCEPT, self.max_manifest),
            Want::Referrers => (Method::GET, INDEX_TYPES[0], self.max_manifest),
            Want::Blob => (Method::GET, "*/*", self.max_blob),
        };
        let mut req = self.http.request(method, url).header(header::ACCEPT, accept);
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let exchange = async {
            let mut resp = req.send().await.map_err(|e| self.transport_error(&e, what))?;
            let status = resp.status();
            let cap = if status.is_success() { cap } else { ERROR_BODY_CAP };
            if status.is_success() && resp.content_length().is_some_and(|n| n > cap) {
                return Err(self.too_large(what, cap));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e, what))? {
                if (body.len() + chunk.len()) as u64 > cap {
                    if status.is_success() {
                        return Err(self.too_large(what, cap));
                    }
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Reply { status, headers: resp.headers().clone(), body: body.into(), url: resp.url().clone() })
        };
        tokio::time::timeout(budget, exchange).await.map_err(|_| self.timed_out(what))?
    }

    /// The `Authorization` header for `repo`, and whether it was just obtained (rather than cached).
    async fn authorization(
        &self,
        repo: &str,
        what: &str,
        deadline: Instant,
        refresh: bool,
    ) -> Result<(Option<HeaderValue>, bool), RegistryError> {
        if !refresh && let Some(hit) = self.cached_auth(repo) {
            return Ok((hit, false));
        }
        let budget = self.budget(what, deadline)?;
        let reference = Reference::with_tag(self.host.clone(), repo.to_owned(), "latest".to_owned());
        let auth = match &self.creds {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
            Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        };
        let token = tokio::time::timeout(budget, self.oci.auth(&reference, &auth, RegistryOperation::Pull))
            .await
            .map_err(|_| self.timed_out(&format!("the token request for {repo}")))?
            .map_err(|e| self.auth_error(e, repo))?;
        let value = match (token, &self.creds) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Credentials::Basic { username, password }) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            (None, _) => None,
        };
        let value = value
            .map(|v| HeaderValue::from_str(&v))
            .transpose()
            .map_err(|_| self.auth_error(OciDistributionError::GenericError(Some("token is not ASCII".into())), repo))?
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        if let Ok(mut cache) = self.auth.lock() {
            cache.insert(repo.to_owned(), (value.clone(), Instant::now() + AUTH_TTL));
        }
        Ok((value, true))
    }

    fn cached_auth(&self, repo: &str) -> Option<Option<HeaderValue>> {
        let cache = self.auth.lock().ok()?;
        cache.get(repo).filter(|(_, until)| *until > Instant::now()).map(|(v, _)| v.clone())
    }

    fn budget(&self, what: &str, deadline: Instant) -> Result<Duration, RegistryError> {
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

    fn auth_error(&self, e: OciDistributionError, repo: &str) -> RegistryError {
        match e {
            OciDistributionError::RequestError(e) => self.transport_error(&e, &format!("the token request for {repo}")),
            other => RegistryError::Unauthorized {
                registry: self.host.clone(),
                repository: repo.to_owned(),
                detail: format!("token request failed: {}", truncate(&other.to_string(), 200)),
            },
        }
    }
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

fn error_chain(e: &dyn std::error::Error) -> String {
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

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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
    fn digests_are_checked_over_the_exact_bytes() {
        let d = Digest::sha256_of(b"abc");
        assert!(check_digest("r", "blob", &d, b"abc").is_ok());
        let err = check_digest("r", "blob", &d, b"abd").unwrap_err();
        assert_eq!(err.code(), "registry-digest-mismatch");
        let d512 = Digest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        assert!(check_digest("r", "blob", &d512, b"abc").is_err());
    }
}

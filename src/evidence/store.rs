//! Reading documents from an HTTPS content-addressable store: https only, with the registry client's TLS trust for
//! the host (system roots plus `registries.hosts.HOST.caBundle`), no redirects followed, each call within
//! `registries.callTimeout` and the review's deadline, the body hashed as it arrives and cut at the entry's
//! `maxBytes`, and its bytes counted against the review's byte budget like a registry read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{StatusCode, header};
use sha2::Digest as _;
use tokio::time::Instant;

use super::document::EvidenceError;
use super::spec::Store;
use crate::registry::{Budget, RegistryConfig};

/// Clients kept, one per store host (hosts come from policies).
const MAX_CLIENTS: usize = 64;

/// The HTTPS stores' client side, shared by every review.
pub struct HttpsStores {
    /// Extra trusted CAs (PEM) per `host[:port]`, from `registries.hosts`.
    ca: HashMap<String, Vec<u8>>,
    connect_timeout: Duration,
    call_timeout: Duration,
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

/// `host[:port]` as the registries settings and store URLs write it, compared without case and without `:443`.
fn normalise(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    host.strip_suffix(":443").map(str::to_owned).unwrap_or(host)
}

impl HttpsStores {
    /// Reads the CA bundles `registries.hosts` names (the registry client has already checked them).
    pub fn new(config: &RegistryConfig) -> Result<Self, String> {
        let mut ca = HashMap::new();
        for (host, hc) in &config.hosts {
            if let Some(path) = &hc.ca_bundle {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("registries.hosts.{host}.caBundle: cannot read {}: {e}", path.display()))?;
                ca.insert(normalise(host), pem);
            }
        }
        Ok(Self {
            ca,
            connect_timeout: config.connect_timeout,
            call_timeout: config.call_timeout,
            clients: Mutex::new(HashMap::new()),
        })
    }

    fn client(&self, host: &str, store: &str) -> Result<reqwest::Client, EvidenceError> {
        let host = normalise(host);
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&host) {
            return Ok(c.clone());
        }
        let unreachable = |e: reqwest::Error| EvidenceError::StoreUnreachable {
            store: store.to_owned(),
            detail: crate::registry::error_chain(&e),
        };
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("provgate/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = self.ca.get(&host) {
            builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem).map_err(unreachable)?);
        }
        let client = builder.build().map_err(unreachable)?;
        if clients.len() < MAX_CLIENTS {
            clients.insert(host, client.clone());
        }
        Ok(client)
    }

    /// The document `sha256` from the store at `template` (on `host`): its bytes, which hash to `sha256`.
    pub async fn get(
        &self,
        template: &str,
        host: &str,
        sha256: &str,
        max_bytes: u64,
        budget: &Budget,
        deadline: Instant,
    ) -> Result<Vec<u8>, EvidenceError> {
        let store = template;
        let client = self.client(host, store)?;
        let timed_out = || EvidenceError::StoreTimedOut { store: store.to_owned(), sha256: sha256.to_owned() };
        let left = || {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() { Err(timed_out()) } else { Ok(left.min(self.call_timeout)) }
        };
        let request = client.get(Store::url(template, sha256)).header(header::ACCEPT, "application/json, */*");
        let mut response = tokio::time::timeout(left()?, request.send())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| if e.is_timeout() { timed_out() } else { unreachable(store, &e) })?;
        let status = response.status();
        let refused =
            |detail: String| EvidenceError::StoreError { store: store.to_owned(), sha256: sha256.to_owned(), detail };
        match status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Err(EvidenceError::Missing { store: store.to_owned(), sha256: sha256.to_owned() });
            }
            s if s.is_redirection() => {
                let to = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
                let to: String = to.chars().take(200).collect();
                return Err(refused(format!(
                    "a redirect (HTTP {}) to {to}: evidence stores are read without following redirects; name the \
                     store that serves the documents",
                    s.as_u16()
                )));
            }
            s => return Err(refused(format!("HTTP {}", s.as_u16()))),
        }
        let oversize =
            || EvidenceError::Oversize { store: store.to_owned(), sha256: sha256.to_owned(), limit: max_bytes };
        let declared = response.content_length();
        if declared.is_some_and(|n| n > max_bytes) {
            return Err(oversize());
        }
        let room = declared.unwrap_or_else(|| max_bytes.min(budget.remaining()));
        let what = format!("evidence sha256:{sha256}");
        let reservation = budget.reserve(room, host, &what, deadline).await.map_err(EvidenceError::Registry)?;
        let read = async {
            let mut body: Vec<u8> = Vec::with_capacity(usize::try_from(room.min(1 << 20)).unwrap_or(0));
            let mut hasher = sha2::Sha256::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(store, &e))? {
                if (body.len() + chunk.len()) as u64 > room {
                    return Err(if room == max_bytes {
                        oversize()
                    } else {
                        EvidenceError::Registry(budget.exceeded(host, &what))
                    });
                }
                hasher.update(&chunk);
                body.extend_from_slice(&chunk);
            }
            Ok((body, hex::encode(hasher.finalize())))
        };
        let (body, actual) = tokio::time::timeout(left()?, read).await.map_err(|_| timed_out())??;
        reservation.settle(body.len() as u64);
        if actual != sha256 {
            return Err(EvidenceError::DigestMismatch { store: store.to_owned(), expected: sha256.to_owned(), actual });
        }
        Ok(body)
    }
}

fn unreachable(store: &str, e: &reqwest::Error) -> EvidenceError {
    EvidenceError::StoreUnreachable { store: store.to_owned(), detail: crate::registry::error_chain(e) }
}

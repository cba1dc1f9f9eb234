//! How a session authorises a request: cached per repository for the token's lifetime, the `/v2/` challenge, and
//! the token request under the realm rule.

use std::time::Duration;

use reqwest::header::{self, HeaderValue};
use tokio::time::Instant;

use super::{AUTH_TTL, RequestKind, Session, status_of};
use crate::registry::RegistryError;
use crate::registry::auth::Credentials;
use crate::registry::token::{self, Challenge};

/// The `Authorization` a repository is read with (none for anonymous access), and for how long.
#[derive(Clone)]
pub(super) struct Authz {
    pub header: Option<HeaderValue>,
    pub lifetime: Duration,
}

/// Entries live as long as the token they hold (at most [`AUTH_TTL`]).
pub(super) struct TokenLifetime;

impl moka::Expiry<String, Authz> for TokenLifetime {
    fn expire_after_create(&self, _repo: &String, authz: &Authz, _at: std::time::Instant) -> Option<Duration> {
        Some(authz.lifetime)
    }
}

impl Session {
    /// The `Authorization` header for `repo`, and whether it was just obtained (rather than cached). `renew` asks for
    /// a new one, with the challenge of the answer that refused the old one when it carried one.
    pub(super) async fn authorization(
        &self,
        repo: &str,
        what: &str,
        deadline: Instant,
        renew: Option<Option<Challenge>>,
    ) -> Result<(Option<HeaderValue>, bool), RegistryError> {
        if renew.is_none()
            && let Some(hit) = self.auth.get(repo).await
        {
            return Ok((hit.header, false));
        }
        let authz = match &self.creds {
            Credentials::Bearer(token) => {
                let mut header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    self.unauthorized(repo, "the configured registry token is not a valid header value".to_owned())
                })?;
                header.set_sensitive(true);
                Authz { header: Some(header), lifetime: AUTH_TTL }
            }
            _ => {
                let challenge = match renew.flatten() {
                    Some(c) => Some(c),
                    None => self.ping(what, deadline).await?,
                };
                match challenge {
                    Some(Challenge::Bearer { realm, service, scope }) => {
                        let scope = scope.unwrap_or_else(|| format!("repository:{repo}:pull"));
                        let token = self.token(repo, &realm, service.as_deref(), &scope, what, deadline).await;
                        let token = token.inspect_err(|_| self.forget_challenge())?;
                        Authz { header: Some(token.header), lifetime: token.lifetime.min(AUTH_TTL) }
                    }
                    Some(Challenge::Basic) | None => {
                        Authz { header: token::basic_header(&self.creds), lifetime: AUTH_TTL }
                    }
                }
            }
        };
        self.auth.insert(repo.to_owned(), authz.clone()).await;
        Ok((authz.header, true))
    }

    /// The challenge `/v2/` answers without credentials (cached for [`AUTH_TTL`]).
    async fn ping(&self, what: &str, deadline: Instant) -> Result<Option<Challenge>, RegistryError> {
        if let Ok(cached) = self.challenge.lock()
            && let Some((challenge, until)) = cached.as_ref()
            && *until > Instant::now()
        {
            return Ok(challenge.clone());
        }
        let url = format!("{}/v2/", self.base);
        let what = format!("the authentication challenge of {} (for {what})", self.host);
        let time = self.time_left(&what, deadline)?;
        let counted = self.counting(RequestKind::Ping);
        let mut answered = None;
        let exchange = async {
            let resp = self.http.get(&url).send().await.map_err(|e| self.transport_error(&e, &what))?;
            answered = Some(resp.status().as_u16());
            Ok::<_, RegistryError>(token::parse_challenge(resp.headers().get_all(header::WWW_AUTHENTICATE)))
        };
        let challenge = tokio::time::timeout(time, exchange).await.map_err(|_| self.timed_out(&what)).flatten();
        counted.finish(status_of(&challenge, answered));
        let challenge = challenge?;
        if let Ok(mut cached) = self.challenge.lock() {
            *cached = Some((challenge.clone(), Instant::now() + AUTH_TTL));
        }
        Ok(challenge)
    }

    /// Asks `/v2/` again next time (after a failed token request the challenge may have changed).
    fn forget_challenge(&self) {
        if let Ok(mut cached) = self.challenge.lock() {
            *cached = None;
        }
    }

    async fn token(
        &self,
        repo: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        what: &str,
        deadline: Instant,
    ) -> Result<token::Token, RegistryError> {
        let url = self.realms.check(realm)?;
        let what = format!("the token request for {repo} (for {what})");
        let request =
            token::Request { url, service, scope, creds: &self.creds, time: self.time_left(&what, deadline)? };
        let counted = self.counting(RequestKind::Token);
        let mut answered = None;
        let token = request.send(&self.token_http, &mut answered).await.map_err(|failure| match failure {
            token::Failure::Refused(detail) => self.unauthorized(repo, detail),
            token::Failure::TimedOut => self.timed_out(&what),
            token::Failure::Transport(e) => self.transport_error(&e, &what),
        });
        counted.finish(status_of(&token, answered));
        token
    }

    fn unauthorized(&self, repo: &str, detail: String) -> RegistryError {
        RegistryError::Unauthorized { registry: self.host.clone(), repository: repo.to_owned(), detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::config::RegistryConfig;
    use crate::registry::transport::{AUTH_ENTRIES, HostTransport};

    #[tokio::test]
    async fn the_auth_cache_is_bounded_and_entries_expire_with_their_token() {
        let cfg = RegistryConfig::default();
        let metrics = std::sync::Arc::default();
        let s = Session::new("r.example", &HostTransport::default(), Credentials::Anonymous, &cfg, metrics).unwrap();
        for i in 0..AUTH_ENTRIES * 4 {
            s.auth.insert(format!("team/repo{i}"), Authz { header: None, lifetime: AUTH_TTL }).await;
        }
        s.auth.run_pending_tasks().await;
        assert!(s.auth.entry_count() <= AUTH_ENTRIES, "{}", s.auth.entry_count());
        let short = Authz { header: None, lifetime: Duration::from_millis(100) };
        s.auth.insert("team/short".to_owned(), short).await;
        assert!(s.auth.get("team/short").await.is_some());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(s.auth.get("team/short").await.is_none(), "gone with its token");
    }
}

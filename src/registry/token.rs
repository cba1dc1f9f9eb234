//! The Docker token flow, narrowly: the `WWW-Authenticate` challenge, the realm rule (https, and only the registry's
//! own host or hosts its config lists), and one capped, timed token request whose answer is never quoted.

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{self, HeaderValue};

use super::RegistryError;
use super::auth::Credentials;

/// Largest token answer read; a token document is a few KiB at most.
pub(crate) const TOKEN_BODY_CAP: usize = 64 << 10;
/// Lifetime of a token whose answer names none (the Docker token specification's default).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// What a `WWW-Authenticate` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses the first usable challenge of `WWW-Authenticate` values (`Bearer realm="..",service="..",scope=".."` or
/// `Basic realm=".."`). Unknown schemes and Bearer without a realm are ignored.
pub(crate) fn parse_challenge<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Option<Challenge> {
    let mut basic = false;
    for value in values {
        let Ok(text) = value.to_str() else { continue };
        let text = text.trim();
        let (scheme, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let params = parse_params(rest);
            let get = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
            if let Some(realm) = get("realm").filter(|r| !r.is_empty()) {
                return Some(Challenge::Bearer { realm, service: get("service"), scope: get("scope") });
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// `k=v, k="quoted \" value", ...` → pairs.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned();
        }
        out.push((key.trim().to_owned(), value));
    }
    out
}

/// Who may serve tokens for one registry.
#[derive(Debug, Clone)]
pub(crate) struct RealmRule {
    /// The registry as written in image references, for messages.
    pub registry: String,
    /// Plain http allowed (the host is configured `insecure`).
    pub insecure: bool,
    /// Authorities (`host` or `host:port`, lowercase, default port left out) allowed as realm hosts.
    pub allowed: Vec<String>,
}

impl RealmRule {
    /// `api_host` is where the registry is reached; `listed` is `registries.hosts.HOST.tokenRealms`.
    pub fn new(registry: &str, api_host: &str, insecure: bool, listed: &[String]) -> Self {
        let scheme = if insecure { "http" } else { "https" };
        let mut allowed: Vec<String> = [registry, api_host].iter().map(|h| authority(h, scheme)).collect();
        if registry == "docker.io" {
            allowed.push("auth.docker.io".to_owned());
        }
        for h in listed {
            allowed.push(authority(h, "https"));
            allowed.push(authority(h, scheme));
        }
        allowed.sort();
        allowed.dedup();
        Self { registry: registry.to_owned(), insecure, allowed }
    }

    /// The realm as a URL, if the rule allows it.
    pub fn check(&self, realm: &str) -> Result<reqwest::Url, RegistryError> {
        let shown: String = realm.chars().take(200).collect();
        let refuse = |detail: String| RegistryError::TokenRealm {
            registry: self.registry.clone(),
            realm: shown.clone(),
            detail,
        };
        let url = reqwest::Url::parse(realm).map_err(|e| refuse(format!("not a URL ({e})")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.insecure => {}
            other => {
                return Err(refuse(format!(
                    "only https token realms are accepted (plain http only for a host configured insecure), not {other}"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("a realm must not carry credentials".to_owned()));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let at = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        if !self.allowed.contains(&at) {
            return Err(refuse(format!(
                "{at} is not {registry}; if {at} is {registry}'s token service, list it in \
                 registries.hosts.\"{registry}\".tokenRealms",
                registry = self.registry
            )));
        }
        Ok(url)
    }
}

/// `host[:port]` lowercased, without the scheme's default port.
fn authority(host: &str, scheme: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    host.strip_suffix(default).map(str::to_owned).unwrap_or(host)
}

/// A token and how long it may be used.
pub(crate) struct Token {
    pub header: HeaderValue,
    pub lifetime: Duration,
}

#[derive(serde::Deserialize)]
struct TokenDocument {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Why a token request failed.
pub(crate) enum Failure {
    /// The token service refused or answered something unusable; the text names status and size, never content.
    Refused(String),
    TimedOut,
    Transport(reqwest::Error),
}

/// One token request: `url` is a realm that passed [`RealmRule::check`].
pub(crate) struct Request<'a> {
    pub url: reqwest::Url,
    pub service: Option<&'a str>,
    pub scope: &'a str,
    pub creds: &'a Credentials,
    /// Time allowed for the whole exchange.
    pub time: Duration,
}

impl Request<'_> {
    /// GETs the realm with `service` and `scope` (and Basic credentials if any), reading at most
    /// [`TOKEN_BODY_CAP`] bytes within `time`. `answered` is set to the answer's status when it arrives.
    pub async fn send(self, http: &reqwest::Client, answered: &mut Option<u16>) -> Result<Token, Failure> {
        let mut url = self.url;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = self.service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", self.scope);
        }
        let server = url.host_str().unwrap_or_default().to_owned();
        let mut req = http.get(url).header(header::ACCEPT, "application/json");
        if let Credentials::Basic { username, password } = self.creds {
            req = req.basic_auth(username, Some(password));
        }
        let too_big =
            || Failure::Refused(format!("the token service at {server} answered more than {TOKEN_BODY_CAP} bytes"));
        let exchange = async {
            let mut resp = req.send().await.map_err(Failure::Transport)?;
            let status = resp.status();
            *answered = Some(status.as_u16());
            if resp.content_length().is_some_and(|n| n > TOKEN_BODY_CAP as u64) {
                return Err(too_big());
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(Failure::Transport)? {
                if body.len() + chunk.len() > TOKEN_BODY_CAP {
                    return Err(too_big());
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(self.time, exchange).await.map_err(|_| Failure::TimedOut)??;
        if !status.is_success() {
            return Err(Failure::Refused(format!(
                "the token service at {server} answered HTTP {status} ({} bytes)",
                body.len()
            )));
        }
        parse_token(&body, &server).map_err(Failure::Refused)
    }
}

/// The token of a token document (`token`, else `access_token`) and its lifetime (`expires_in`, default 60 s).
fn parse_token(body: &[u8], server: &str) -> Result<Token, String> {
    let unusable = || format!("the token service at {server} answered {} bytes without a token", body.len());
    let doc: TokenDocument = serde_json::from_slice(body).map_err(|_| unusable())?;
    let token = doc.token.filter(|t| !t.is_empty()).or(doc.access_token.filter(|t| !t.is_empty()));
    let token = token.ok_or_else(unusable)?;
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| format!("the token service at {server} answered a token that is not a header value"))?;
    header.set_sensitive(true);
    let lifetime = doc.expires_in.map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok(Token { header, lifetime })
}

/// `Authorization: Basic` for `creds`, when they are Basic.
pub(crate) fn basic_header(creds: &Credentials) -> Option<HeaderValue> {
    let Credentials::Basic { username, password } = creds else { return None };
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(v: &str) -> Option<Challenge> {
        parse_challenge([&HeaderValue::from_str(v).unwrap()])
    }

    #[test]
    fn challenges_parse_with_quotes_commas_and_case() {
        assert_eq!(
            challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            challenge(r#"bearer  Realm=https://r.example/t , service="s \"q\"""#),
            Some(Challenge::Bearer {
                realm: "https://r.example/t".into(),
                service: Some(r#"s "q""#.into()),
                scope: None
            })
        );
        assert_eq!(challenge(r#"Basic realm="registry""#), Some(Challenge::Basic));
        assert_eq!(challenge(r#"Bearer service="no realm""#), None);
        assert_eq!(challenge("Negotiate"), None);
        assert_eq!(challenge(""), None);
    }

    #[test]
    fn realms_must_be_https_on_the_registry_or_a_listed_host() {
        let rule = RealmRule::new("reg.example", "reg.example", false, &["auth.example:8443".to_owned()]);
        for ok in ["https://reg.example/token", "https://REG.example:443/t", "https://auth.example:8443/x?y=1"] {
            assert!(rule.check(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://reg.example/token", "only https"),
            ("https://evil.example/token", "tokenRealms"),
            ("https://reg.example:8443/token", "tokenRealms"),
            ("https://auth.example/token", "tokenRealms"),
            ("ftp://reg.example/token", "only https"),
            ("https://user:pw@reg.example/token", "credentials"),
            ("/token", "not a URL"),
        ] {
            let err = rule.check(bad).unwrap_err();
            assert_eq!(err.code(), "registry-token-realm");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let insecure = RealmRule::new("127.0.0.1:5000", "127.0.0.1:5000", true, &[]);
        assert!(insecure.check("http://127.0.0.1:5000/token").is_ok());
        assert!(insecure.check("http://127.0.0.1:5001/token").is_err());
        let hub = RealmRule::new("docker.io", "registry-1.docker.io", false, &[]);
        assert!(hub.check("https://auth.docker.io/token").is_ok());
        assert!(hub.check("https://registry-1.docker.io/token").is_ok());
    }

    #[test]
    fn token_documents_give_a_token_and_a_lifetime_and_are_never_quoted() {
        let t = parse_token(br#"{"token": "abc", "access_token": "xyz", "expires_in": 7}"#, "s").unwrap();
        assert_eq!((t.header.to_str().unwrap(), t.lifetime), ("Bearer abc", Duration::from_secs(7)));
        let t = parse_token(br#"{"access_token": "xyz"}"#, "s").unwrap();
        assert_eq!((t.header.to_str().unwrap(), t.lifetime), ("Bearer xyz", DEFAULT_LIFETIME));
        for bad in [&br#"{"token": ""}"#[..], b"SECRET not json", br#"{"token": "a\nb"}"#, br#"{"token": 5}"#] {
            let err = parse_token(bad, "s").err().unwrap();
            assert!(!err.contains("SECRET") && err.contains("token service at s"), "{err}");
        }
    }
}

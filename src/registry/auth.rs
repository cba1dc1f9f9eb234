//! Pull credentials: identities, dockerconfigjson parsing, and the host → credentials credentials.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use sha2::Digest as _;

/// Who a registry call is made as. Two different identities never share a session or a token.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry token used as is (`Authorization: Bearer`), e.g. an identity token.
    Bearer(String),
}

impl Credentials {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::Basic { username: username.into(), password: password.into() }
    }

    /// A short, non-reversible label for this identity, for cache keys and logs.
    pub fn fingerprint(&self) -> String {
        let mut h = sha2::Sha256::new();
        match self {
            Self::Anonymous => return "anonymous".to_owned(),
            Self::Basic { username, password } => {
                h.update(b"basic\0");
                h.update(username.as_bytes());
                h.update(b"\0");
                h.update(password.as_bytes());
            }
            Self::Bearer(token) => {
                h.update(b"bearer\0");
                h.update(token.as_bytes());
            }
        }
        hex::encode(&h.finalize()[..12])
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// A dockerconfigjson document could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("dockerconfigjson is not valid JSON of the form {{\"auths\":{{HOST:{{...}}}}}}: {0}")]
    Json(String),
    #[error("dockerconfigjson entry for {0}: the \"auth\" field is not base64 of user:password")]
    BadAuth(String),
    #[error("dockerconfigjson entry for {0} has neither \"auth\", \"username\"/\"password\" nor \"identitytoken\"")]
    Empty(String),
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    auths: Option<BTreeMap<String, AuthEntry>>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

/// Credentials per registry host. Hosts are normalised the way image references are (`docker.io` for Docker Hub).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCredentials {
    hosts: BTreeMap<String, Credentials>,
}

impl HostCredentials {
    /// Parses a `.dockerconfigjson` (`{"auths":{...}}`) or legacy `.dockercfg` (the map alone) document.
    pub fn from_docker_config(bytes: &[u8]) -> Result<Self, CredentialsError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| CredentialsError::Json(e.to_string()))?;
        let entries: BTreeMap<String, AuthEntry> = if value.get("auths").is_some() {
            let doc: DockerConfig = serde_json::from_value(value).map_err(|e| CredentialsError::Json(e.to_string()))?;
            doc.auths.unwrap_or_default()
        } else {
            serde_json::from_value(value).map_err(|e| CredentialsError::Json(e.to_string()))?
        };
        let mut hosts = BTreeMap::new();
        for (key, entry) in entries {
            let host = normalise_host(&key);
            let creds = entry_credentials(&host, entry)?;
            hosts.insert(host, creds);
        }
        Ok(Self { hosts })
    }

    /// Adds or replaces the credentials for `host`.
    pub fn insert(&mut self, host: &str, creds: Credentials) {
        self.hosts.insert(normalise_host(host), creds);
    }

    /// Adds every entry of `other` not already present (earlier sources win, as the kubelet orders pull secrets).
    pub fn merge(&mut self, other: HostCredentials) {
        for (host, creds) in other.hosts {
            self.hosts.entry(host).or_insert(creds);
        }
    }

    /// The credentials for a registry host, anonymous when none are known.
    pub fn for_host(&self, host: &str) -> Credentials {
        if self.hosts.is_empty() {
            return Credentials::default();
        }
        self.hosts.get(&normalise_host(host)).cloned().unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

fn entry_credentials(host: &str, e: AuthEntry) -> Result<Credentials, CredentialsError> {
    if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| CredentialsError::BadAuth(host.to_owned()))?;
        let text = String::from_utf8(raw).map_err(|_| CredentialsError::BadAuth(host.to_owned()))?;
        let (user, pass) = text.split_once(':').ok_or_else(|| CredentialsError::BadAuth(host.to_owned()))?;
        return Ok(Credentials::basic(user, pass));
    }
    if let (Some(u), Some(p)) = (e.username.filter(|u| !u.is_empty()), e.password) {
        return Ok(Credentials::basic(u, p));
    }
    match e.registrytoken.or(e.identitytoken).filter(|t| !t.is_empty()) {
        Some(token) => Ok(Credentials::Bearer(token)),
        None => Err(CredentialsError::Empty(host.to_owned())),
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `https://reg:5000/path` → `reg:5000`.
pub(crate) fn normalise_host(key: &str) -> String {
    let no_scheme = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = no_scheme.split('/').next().unwrap_or_default().to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auth_username_password_and_tokens() {
        let doc = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "reg.example:5000":{"username":"bob","password":"pw"},
            "ghcr.io":{"identitytoken":"tok"}}}"#;
        let k = HostCredentials::from_docker_config(doc).unwrap();
        assert_eq!(k.for_host("docker.io"), Credentials::basic("user", "pa:ss"));
        assert_eq!(k.for_host("REG.example:5000"), Credentials::basic("bob", "pw"));
        assert_eq!(k.for_host("ghcr.io"), Credentials::Bearer("tok".into()));
        assert_eq!(k.for_host("quay.io"), Credentials::Anonymous);
        let legacy = HostCredentials::from_docker_config(br#"{"quay.io":{"auth":"YTpi"}}"#).unwrap();
        assert_eq!(legacy.for_host("quay.io"), Credentials::basic("a", "b"));
    }

    #[test]
    fn bad_documents_are_errors() {
        assert!(matches!(HostCredentials::from_docker_config(b"nope"), Err(CredentialsError::Json(_))));
        let bad = br#"{"auths":{"r":{"auth":"!!"}}}"#;
        assert_eq!(HostCredentials::from_docker_config(bad), Err(CredentialsError::BadAuth("r".into())));
        let empty = br#"{"auths":{"r":{}}}"#;
        assert_eq!(HostCredentials::from_docker_config(empty), Err(CredentialsError::Empty("r".into())));
    }

    #[test]
    fn merge_keeps_first_and_fingerprints_differ_per_identity() {
        let mut a = HostCredentials::default();
        a.insert("r", Credentials::basic("a", "1"));
        let mut b = HostCredentials::default();
        b.insert("r", Credentials::basic("b", "2"));
        b.insert("s", Credentials::basic("b", "2"));
        a.merge(b);
        assert_eq!(a.for_host("r"), Credentials::basic("a", "1"));
        assert_eq!(a.for_host("s"), Credentials::basic("b", "2"));
        let f1 = Credentials::basic("a", "1").fingerprint();
        assert_ne!(f1, Credentials::basic("a", "2").fingerprint());
        assert_eq!(f1, Credentials::basic("a", "1").fingerprint());
        assert!(!format!("{:?}", Credentials::basic("a", "secret")).contains("secret"));
    }
}

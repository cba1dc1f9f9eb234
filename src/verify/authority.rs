//! Who is trusted: named authorities holding either a non-empty key set or a keyless trust root with identities.

use std::sync::Arc;

use super::key::PublicKey;
use super::trusted_root::TrustedRoot;

/// A key set was built from no keys; an empty set must never "verify".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key set is empty: an authority needs at least one public key")]
pub struct EmptyKeySet;

/// One or more public keys. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

impl KeySet {
    pub fn new(keys: Vec<PublicKey>) -> Result<Self, EmptyKeySet> {
        if keys.is_empty() { Err(EmptyKeySet) } else { Ok(Self { keys }) }
    }

    /// A set of one key.
    pub fn one(key: PublicKey) -> Self {
        Self { keys: vec![key] }
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The sorted fingerprints joined by `,`: a cache-key component that changes when any key rotates.
    pub fn fingerprint(&self) -> String {
        let mut fps: Vec<&str> = self.keys.iter().map(PublicKey::fingerprint).collect();
        fps.sort_unstable();
        fps.join(",")
    }
}

/// A keyless authority was given no identities; "anyone Fulcio certified" is not a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("keyless authority needs at least one identity (certificate subject and issuer)")]
pub struct NoIdentities;

/// How a string from policy is compared with a certificate field.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityMatcher {
    Exact(String),
    /// Built by [`IdentityMatcher::regex`]: always anchored at both ends.
    Regex(Pattern),
}

/// A regular expression anchored at both ends (`^(?:…)$`), so `https://github.com/acme/.*` cannot match a
/// longer value that merely contains it.
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Pattern {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl IdentityMatcher {
    /// A regular expression matched against the whole value.
    pub fn regex(pattern: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(&format!("^(?:{pattern})$")).map(|re| Self::Regex(Pattern(re)))
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(want) => want == value,
            Self::Regex(re) => re.0.is_match(value),
        }
    }
}

/// An allowed keyless signer: certificate SAN (email or URI) and OIDC issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub subject: IdentityMatcher,
    pub issuer: IdentityMatcher,
}

impl Identity {
    pub fn matches(&self, subject: &str, issuer: &str) -> bool {
        self.subject.matches(subject) && self.issuer.matches(issuer)
    }
}

/// Keyless trust: Fulcio CAs and Rekor keys from a trusted root, and the identities allowed to sign.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyless {
    trusted_root: Arc<TrustedRoot>,
    identities: Vec<Identity>,
}

impl Keyless {
    /// Fails on an empty identity list: "any identity Fulcio ever certified" is not a policy.
    pub fn new(trusted_root: Arc<TrustedRoot>, identities: Vec<Identity>) -> Result<Self, NoIdentities> {
        if identities.is_empty() { Err(NoIdentities) } else { Ok(Self { trusted_root, identities }) }
    }

    pub fn trusted_root(&self) -> &TrustedRoot {
        &self.trusted_root
    }

    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }
}

/// What an authority trusts.
#[derive(Debug, Clone, PartialEq)]
pub enum Trust {
    Keys(KeySet),
    Keyless(Keyless),
}

/// A named source of trust, as a policy's `authorities` entry lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Authority {
    name: String,
    trust: Trust,
    /// [`Authority::cache_key`], computed once.
    cache_key: Arc<str>,
}

impl Authority {
    pub fn new(name: impl Into<String>, trust: Trust) -> Self {
        let name = name.into();
        let cache_key = cache_key(&name, &trust).into();
        Self { name, trust, cache_key }
    }

    pub fn keys(name: impl Into<String>, keys: KeySet) -> Self {
        Self::new(name, Trust::Keys(keys))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Everything a verification result under this authority depends on (name, key fingerprints, or trusted root
    /// digest and identities): include it in cache keys so a rotated key or root invalidates cached answers.
    pub fn cache_key(&self) -> Arc<str> {
        self.cache_key.clone()
    }

    /// [`Authority::cache_key`], borrowed.
    pub fn cache_key_str(&self) -> &str {
        &self.cache_key
    }
}

fn cache_key(name: &str, trust: &Trust) -> String {
    match trust {
        Trust::Keys(keys) => format!("{name}|keys|{}", keys.fingerprint()),
        Trust::Keyless(k) => {
            let ids: Vec<String> = k
                .identities
                .iter()
                .map(|i| format!("{}@{}", matcher_key(&i.subject), matcher_key(&i.issuer)))
                .collect();
            format!("{name}|keyless|{}|{}", k.trusted_root.digest(), ids.join(","))
        }
    }
}

fn matcher_key(m: &IdentityMatcher) -> String {
    match m {
        IdentityMatcher::Exact(s) => format!("={s}"),
        IdentityMatcher::Regex(r) => format!("~{}", r.as_str()),
    }
}

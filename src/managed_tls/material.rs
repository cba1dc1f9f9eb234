//! The managed Secret's contents: read with caps, checked (each key matches its certificate, the serving
//! certificate chains to the signing CA, the bundle holds that CA) and written back.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::certs::CaPair;

/// The serving certificate chain (PEM).
pub const TLS_CRT: &str = "tls.crt";
/// The serving key (PEM).
pub const TLS_KEY: &str = "tls.key";
/// Every CA a client should trust (PEM): the published `caBundle`.
pub const BUNDLE: &str = "ca.crt";
/// The CA that signed `tls.crt`, and its key.
pub const CA_CRT: &str = "ca-signing.crt";
pub const CA_KEY: &str = "ca-signing.key";
/// A CA published in the bundle ahead of signing with it (a CA rollover in progress), its key, and since when
/// (Unix seconds).
pub const NEXT_CRT: &str = "ca-next.crt";
pub const NEXT_KEY: &str = "ca-next.key";
pub const NEXT_SINCE: &str = "ca-next.since";

/// Largest value read from the Secret; larger ones make it invalid.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most CAs in a bundle: the signing one, the next one and the previous one.
pub const MAX_BUNDLE: usize = 3;

/// What the managed Secret holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca: CaPair,
    /// The next CA and when it entered the bundle (Unix seconds).
    pub next: Option<(CaPair, i64)>,
    /// Each trusted CA's PEM, the signing CA first.
    pub bundle: Vec<String>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("cert_pem", &self.cert_pem)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

/// Why the Secret's contents cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaterialError {
    #[error("key {0} is missing")]
    Missing(&'static str),
    #[error("key {0} is larger than {MAX_VALUE_BYTES} bytes")]
    TooLarge(&'static str),
    #[error("key {key}: {problem}")]
    Pem { key: &'static str, problem: String },
    #[error("key {key} is not the private key of {cert}")]
    KeyMismatch { key: &'static str, cert: &'static str },
    #[error("{TLS_CRT} is not a valid serving certificate signed by {CA_CRT}: {0}")]
    NotSigned(String),
    #[error("{BUNDLE} does not hold {0}")]
    NotInBundle(&'static str),
    #[error("{BUNDLE} holds more than {MAX_BUNDLE} certificates")]
    BundleTooLarge,
}

/// What a valid Secret's certificates say, for the renewal decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The serving certificate's notAfter (Unix seconds).
    pub leaf_not_after: i64,
    /// The signing CA's notAfter.
    pub ca_not_after: i64,
    /// When the next CA entered the bundle, during a rollover.
    pub next_since: Option<i64>,
    /// Whether the serving certificate covers every wanted name.
    pub names_ok: bool,
}

impl Material {
    /// Reads the Secret's data (each value at most [`MAX_VALUE_BYTES`]).
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, MaterialError> {
        let text = |key: &'static str| -> Result<Option<String>, MaterialError> {
            let Some(bytes) = data.get(key) else { return Ok(None) };
            if bytes.len() > MAX_VALUE_BYTES {
                return Err(MaterialError::TooLarge(key));
            }
            String::from_utf8(bytes.clone())
                .map(Some)
                .map_err(|_| MaterialError::Pem { key, problem: "not UTF-8 text".into() })
        };
        let required = |key: &'static str| text(key)?.ok_or(MaterialError::Missing(key));
        let next = match (text(NEXT_CRT)?, text(NEXT_KEY)?, text(NEXT_SINCE)?) {
            (None, None, None) => None,
            (Some(cert_pem), Some(key_pem), Some(since)) => {
                let since = since
                    .trim()
                    .parse()
                    .map_err(|_| MaterialError::Pem { key: NEXT_SINCE, problem: "not a Unix time".into() })?;
                Some((CaPair { cert_pem, key_pem }, since))
            }
            (None, ..) => return Err(MaterialError::Missing(NEXT_CRT)),
            (_, None, _) => return Err(MaterialError::Missing(NEXT_KEY)),
            (_, _, None) => return Err(MaterialError::Missing(NEXT_SINCE)),
        };
        let bundle_pem = required(BUNDLE)?;
        let bundle = pem_certs(BUNDLE, &bundle_pem)?.iter().map(|der| pem_of(der.as_ref())).collect::<Vec<_>>();
        Ok(Self {
            cert_pem: required(TLS_CRT)?,
            key_pem: required(TLS_KEY)?,
            ca: CaPair { cert_pem: required(CA_CRT)?, key_pem: required(CA_KEY)? },
            next,
            bundle,
        })
    }

    /// The Secret's data for this material.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::from([
            (TLS_CRT.to_owned(), self.cert_pem.clone().into_bytes()),
            (TLS_KEY.to_owned(), self.key_pem.clone().into_bytes()),
            (CA_CRT.to_owned(), self.ca.cert_pem.clone().into_bytes()),
            (CA_KEY.to_owned(), self.ca.key_pem.clone().into_bytes()),
            (BUNDLE.to_owned(), self.bundle_pem().into_bytes()),
        ]);
        if let Some((next, since)) = &self.next {
            data.insert(NEXT_CRT.to_owned(), next.cert_pem.clone().into_bytes());
            data.insert(NEXT_KEY.to_owned(), next.key_pem.clone().into_bytes());
            data.insert(NEXT_SINCE.to_owned(), since.to_string().into_bytes());
        }
        data
    }

    /// The bundle as one PEM text (what `caBundle` carries, base64-encoded).
    pub fn bundle_pem(&self) -> String {
        self.bundle.concat()
    }

    /// Checks the material at `now` (Unix seconds): every key matches its certificate, the serving certificate
    /// is valid now and chains to the signing CA, and the bundle holds the signing CA (and the next one).
    pub fn check(&self, now: i64, dns_names: &[String], ips: &[IpAddr]) -> Result<Facts, MaterialError> {
        let leaf = one_cert(TLS_CRT, &self.cert_pem)?;
        key_matches(TLS_KEY, &self.key_pem, TLS_CRT, &leaf)?;
        let ca = one_cert(CA_CRT, &self.ca.cert_pem)?;
        key_matches(CA_KEY, &self.ca.key_pem, CA_CRT, &ca)?;
        if self.bundle.len() > MAX_BUNDLE {
            return Err(MaterialError::BundleTooLarge);
        }
        let in_bundle = |der: &CertificateDer<'_>| self.bundle.iter().any(|pem| pem == &pem_of(der.as_ref()));
        if !in_bundle(&ca) {
            return Err(MaterialError::NotInBundle(CA_CRT));
        }
        let next_since = match &self.next {
            Some((next, since)) => {
                let der = one_cert(NEXT_CRT, &next.cert_pem)?;
                key_matches(NEXT_KEY, &next.key_pem, NEXT_CRT, &der)?;
                if !in_bundle(&der) {
                    return Err(MaterialError::NotInBundle(NEXT_CRT));
                }
                Some(*since)
            }
            None => None,
        };
        let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| MaterialError::NotSigned(e.to_string()))?;
        serves_under(&ee, &ca, now)?;
        let names_ok = dns_names.iter().all(|name| {
            ServerName::try_from(name.as_str()).is_ok_and(|n| ee.verify_is_valid_for_subject_name(&n).is_ok())
        }) && ips
            .iter()
            .all(|ip| ee.verify_is_valid_for_subject_name(&ServerName::IpAddress((*ip).into())).is_ok());
        Ok(Facts { leaf_not_after: not_after(&leaf)?, ca_not_after: not_after(&ca)?, next_since, names_ok })
    }
}

/// Whether `leaf` is a serving certificate `ca` signed, valid at `now` (Unix seconds): what a client trusting `ca`
/// checks.
pub(super) fn serves_under(
    leaf: &webpki::EndEntityCert<'_>,
    ca: &CertificateDer<'_>,
    now: i64,
) -> Result<(), MaterialError> {
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(|e| MaterialError::NotSigned(e.to_string()))?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(u64::try_from(now).unwrap_or(0)));
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        at,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| MaterialError::NotSigned(format!("{e:?}")))
}

/// The certificates of a PEM text (at most [`MAX_BUNDLE`] + 1 read).
fn pem_certs(key: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .take(MAX_BUNDLE + 1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MaterialError::Pem { key, problem: format!("not PEM certificates: {e}") })?;
    if certs.is_empty() {
        return Err(MaterialError::Pem { key, problem: "holds no PEM certificate".into() });
    }
    if certs.len() > MAX_BUNDLE {
        return Err(MaterialError::BundleTooLarge);
    }
    Ok(certs)
}

/// The only certificate of a PEM text.
fn one_cert(key: &'static str, pem: &str) -> Result<CertificateDer<'static>, MaterialError> {
    let mut certs = pem_certs(key, pem)?;
    match (certs.pop(), certs.is_empty()) {
        (Some(cert), true) => Ok(cert),
        _ => Err(MaterialError::Pem { key, problem: "holds more than one certificate".into() }),
    }
}

/// One certificate as PEM, in the one canonical form (so bundles compare by text).
pub fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The certificate's SubjectPublicKeyInfo equals the key's public half.
fn key_matches(
    key: &'static str,
    key_pem: &str,
    cert_key: &'static str,
    cert: &CertificateDer<'_>,
) -> Result<(), MaterialError> {
    use x509_cert::der::Decode as _;
    let pair = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|e| MaterialError::Pem { key, problem: format!("not a PEM private key: {e}") })?;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| MaterialError::Pem { key: cert_key, problem: format!("not an X.509 certificate: {e}") })?;
    let public = parsed.tbs_certificate().subject_public_key_info().subject_public_key.raw_bytes();
    if public != pair.public_key_raw() {
        return Err(MaterialError::KeyMismatch { key, cert: cert_key });
    }
    Ok(())
}

/// A certificate's notAfter, Unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> Result<i64, MaterialError> {
    use x509_cert::der::Decode as _;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| MaterialError::Pem { key: TLS_CRT, problem: format!("not an X.509 certificate: {e}") })?;
    let secs = parsed.tbs_certificate().validity().not_after.to_unix_duration().as_secs();
    Ok(i64::try_from(secs).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::managed_tls::plan::{Lifetimes, Names, Step, material_for};
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000;

    type Data = BTreeMap<String, Vec<u8>>;

    fn names() -> Names {
        Names {
            dns: crate::certs::service_names("provgate", "provgate-system"),
            ips: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    fn fresh() -> Material {
        let l = Lifetimes {
            validity: Duration::from_secs(90 * 86_400),
            renew_before: Duration::from_secs(30 * 86_400),
            ca_validity: Duration::from_secs(3650 * 86_400),
            ca_renew_before: Duration::from_secs(365 * 86_400),
            ca_handover: Duration::from_secs(300),
        };
        let now = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        material_for(&Step::Create, None, now, &names(), &l).unwrap().unwrap()
    }

    fn check(m: &Material) -> Result<Facts, MaterialError> {
        m.check(NOW, &names().dns, &names().ips)
    }

    #[test]
    fn what_is_written_reads_back_and_checks() {
        let m = fresh();
        let back = Material::from_data(&m.to_data()).unwrap();
        assert!(back == m);
        let facts = check(&back).unwrap();
        assert!(facts.names_ok);
        let other = ["elsewhere.example".to_owned()];
        assert!(!m.check(NOW, &other, &[]).unwrap().names_ok, "a name the certificate lacks is noticed");
    }

    #[test]
    fn hostile_or_broken_secrets_are_refused_with_the_reason() {
        let m = fresh();
        let other = fresh();
        let mut table: Vec<(&str, Data, &str)> = Vec::new();
        let edit = |f: &dyn Fn(&mut Data)| {
            let mut d = m.to_data();
            f(&mut d);
            d
        };
        table.push(("garbage cert", edit(&|d| drop(d.insert(TLS_CRT.into(), b"garbage".to_vec()))), "tls.crt"));
        table.push(("no key", edit(&|d| drop(d.remove(TLS_KEY))), "key tls.key is missing"));
        table.push((
            "another key",
            edit(&|d| drop(d.insert(TLS_KEY.into(), other.key_pem.clone().into_bytes()))),
            "not the private key of tls.crt",
        ));
        table.push((
            "huge value",
            edit(&|d| drop(d.insert(TLS_CRT.into(), vec![b'A'; MAX_VALUE_BYTES + 1]))),
            "larger than",
        ));
        // Someone else's CA, with its own key, in place of the signing CA: it does not sign the leaf.
        table.push((
            "a CA that does not sign the leaf",
            edit(&|d| {
                d.insert(CA_CRT.into(), other.ca.cert_pem.clone().into_bytes());
                d.insert(CA_KEY.into(), other.ca.key_pem.clone().into_bytes());
                d.insert(BUNDLE.into(), other.bundle_pem().into_bytes());
            }),
            "not a valid serving certificate signed by ca-signing.crt",
        ));
        table.push((
            "a bundle without the signing CA",
            edit(&|d| drop(d.insert(BUNDLE.into(), other.bundle_pem().into_bytes()))),
            "ca.crt does not hold ca-signing.crt",
        ));
        let many = [m.bundle_pem(), other.bundle_pem(), m.bundle_pem(), other.bundle_pem()].concat();
        table.push((
            "a long bundle",
            edit(&|d| drop(d.insert(BUNDLE.into(), many.clone().into_bytes()))),
            "more than 3",
        ));
        table.push((
            "half a rollover",
            edit(&|d| drop(d.insert(NEXT_CRT.into(), other.ca.cert_pem.clone().into_bytes()))),
            "ca-next.key is missing",
        ));
        for (name, data, needle) in table {
            let e = Material::from_data(&data).and_then(|m| check(&m).map(|_| m)).err();
            let e = e.unwrap_or_else(|| panic!("{name}: accepted")).to_string();
            assert!(e.contains(needle), "{name}: {e} should contain {needle:?}");
        }
        // A serving certificate that expired is not servable either.
        let e = m.check(NOW + 200 * 86_400, &names().dns, &names().ips).unwrap_err().to_string();
        assert!(e.contains("Expired"), "{e}");
    }

    #[test]
    fn which_webhooks_get_the_bundle() {
        use serde_json::json;
        let object = json!({"metadata": {"name": "provgate", "resourceVersion": "42"}, "webhooks": [
            {"name": "a.provgate.dev", "clientConfig": {"caBundle": "NEW"}},
            {"name": "b.provgate.dev", "clientConfig": {"caBundle": "OLD"}},
            {"name": "c.provgate.dev", "clientConfig": {}},
        ]});
        let patch = crate::managed_tls::bundle_patch(&object, "NEW").unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "42"}, "webhooks": [
                {"name": "b.provgate.dev", "clientConfig": {"caBundle": "NEW"}},
                {"name": "c.provgate.dev", "clientConfig": {"caBundle": "NEW"}},
            ]})
        );
        assert_eq!(
            crate::managed_tls::bundle_patch(&object, "OLD").map(|p| p["webhooks"].as_array().unwrap().len()),
            Some(2)
        );
        let current = json!({"metadata": {"resourceVersion": "1"}, "webhooks": [{"name": "a", "clientConfig": {"caBundle": "X"}}]});
        assert_eq!(crate::managed_tls::bundle_patch(&current, "X"), None, "nothing to write: no request");
    }
}

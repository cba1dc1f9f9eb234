//! Serving certificates for the webhook: a CA and a leaf for the Service's DNS names (`provgate certs generate`),
//! and the self-signed loopback pair the embedded default creates on first start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA certificate and a serving certificate + key it signed, all PEM.
pub struct Generated {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Generated {
    /// The `caBundle` value for a webhook configuration: base64 of the CA PEM.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes())
    }
}

/// The DNS names the API server may use to reach `service` in `namespace`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A CA certificate and the key that signs with it, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPair").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// How far back certificates are dated, so a peer whose clock lags still accepts them.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// A fresh self-signed CA valid from `now` (backdated an hour) for `validity`. Its name carries the time it was
/// made, so the CAs of a rollover are told apart in a bundle.
pub fn new_ca(now: time::OffsetDateTime, validity: time::Duration) -> Result<CaPair, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, format!("provgate webhook CA {}", now.unix_timestamp()));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - BACKDATE;
    ca.not_after = now + validity;
    let cert = ca.self_signed(&key)?;
    Ok(CaPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A serving certificate for `dns_names` and `ips` signed by `ca`, valid from `now` (backdated an hour) for
/// `validity` but never past `ca_not_after`: `(certificate PEM, key PEM)`.
pub fn issue_serving(
    ca: &CaPair,
    ca_not_after: time::OffsetDateTime,
    dns_names: &[String],
    ips: &[IpAddr],
    now: time::OffsetDateTime,
    validity: time::Duration,
) -> Result<(String, String), rcgen::Error> {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.subject_alt_names.extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    leaf.distinguished_name.push(DnType::CommonName, dns_names.first().map_or("provgate", String::as_str));
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - BACKDATE;
    leaf.not_after = (now + validity).min(ca_not_after);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A fresh CA (10 years) and a serving certificate (1 year) for `dns_names` and `ips`.
pub fn generate(dns_names: &[String], ips: &[IpAddr]) -> Result<Generated, rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    let ca_validity = time::Duration::days(3650);
    let ca = new_ca(now, ca_validity)?;
    let (cert_pem, key_pem) = issue_serving(&ca, now + ca_validity, dns_names, ips, now, time::Duration::days(365))?;
    Ok(Generated { ca_pem: ca.cert_pem, cert_pem, key_pem })
}

/// File names inside a certificate directory.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"))
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`, creating it.
pub fn write(dir: &Path, generated: &Generated) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir)?;
    let (ca, cert, key) = paths(dir);
    std::fs::write(ca, &generated.ca_pem)?;
    std::fs::write(cert, &generated.cert_pem)?;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(key)?;
    std::io::Write::write_all(&mut file, generated.key_pem.as_bytes())
}

/// The embedded default's serving pair: `dir/tls.crt` and `dir/tls.key`, created for localhost, 127.0.0.1 and ::1
/// when absent. Returns the cert and key paths and whether they were just created.
pub fn ensure_loopback_pair(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, bool)> {
    let (_, cert, key) = paths(dir);
    if cert.exists() && key.exists() {
        return Ok((cert, key, false));
    }
    let ips = [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)];
    let generated = generate(&["localhost".to_owned()], &ips)?;
    write(dir, &generated)?;
    Ok((cert, key, true))
}

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

/// A fresh CA (10 years) and a serving certificate (1 year) for `dns_names` and `ips`.
pub fn generate(dns_names: &[String], ips: &[IpAddr]) -> Result<Generated, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "provgate webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    // Backdated a little so a peer whose clock lags still accepts it.
    let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    ca.not_before = now;
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.subject_alt_names.extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    leaf.distinguished_name.push(DnType::CommonName, dns_names.first().map_or("provgate", String::as_str));
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now;
    leaf.not_after = now + time::Duration::days(365);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Generated { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
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

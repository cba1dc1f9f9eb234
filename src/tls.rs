//! The HTTPS server's rustls configuration: the serving pair and, when configured, the CA that client certificates
//! must chain to. Reloaded when any of the files changes (polled by content, so a Secret volume's `..data` symlink
//! swap is seen; new handshakes use the new configuration).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// The files the TLS configuration is built from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Serving certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates must chain to; `None` serves clients without certificates.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", .file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{}: {problem}", .file.display())]
    Invalid { file: PathBuf, problem: String },
    #[error("{} / {}: {source}", .cert.display(), .key.display())]
    Pair { cert: PathBuf, key: PathBuf, source: rustls::Error },
}

/// The server's current rustls configuration, swapped whole on reload.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<ArcSwap<ServerConfig>>,
    /// The serving certificate's notAfter, in Unix seconds (`provgate_serving_certificate_expiry_timestamp_seconds`).
    expiry: prometheus_client::metrics::gauge::Gauge,
}

impl ServerTls {
    /// Builds the configuration from `files`.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let material = Material::read(files)?;
        let config = build(&material, files)?;
        let tls = Self { current: Arc::new(ArcSwap::from_pointee(config)), expiry: Default::default() };
        tls.note_expiry(&material, files);
        Ok(tls)
    }

    /// The gauge holding the serving certificate's expiry, for the metrics endpoint.
    pub fn expiry(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.expiry.clone()
    }

    /// Records when the serving certificate expires, and says so in the log (a warning within 30 days).
    fn note_expiry(&self, material: &Material, files: &TlsFiles) {
        let Some(not_after) = not_after(&material.cert) else {
            tracing::warn!(cert = %files.cert.display(), "cannot read the serving certificate's expiry");
            return;
        };
        self.expiry.set(not_after);
        let left = not_after - chrono::Utc::now().timestamp();
        let at = chrono::DateTime::from_timestamp(not_after, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
        if left < 30 * 24 * 3600 {
            tracing::warn!(cert = %files.cert.display(), expires = %at, days_left = left / 86_400, "the serving certificate expires soon; renew it");
        } else {
            tracing::info!(cert = %files.cert.display(), expires = %at, "serving certificate loaded");
        }
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Every `period`, re-reads the files and swaps in a new configuration when their bytes changed. Files that
    /// fail to read or to load are logged and the previous configuration stays in use. Runs until dropped.
    pub async fn watch(self, files: TlsFiles, period: Duration) {
        let mut loaded = Material::read(&files).ok();
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let Ok(material) = Material::read(&files) else { continue };
            if loaded.as_ref() == Some(&material) {
                continue;
            }
            match build(&material, &files) {
                Ok(config) => {
                    self.current.store(Arc::new(config));
                    self.note_expiry(&material, &files);
                    tracing::info!(cert = %files.cert.display(), client_ca = ?files.client_ca, "TLS configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "new TLS files rejected; keeping the previous configuration")
                }
            }
            loaded = Some(material);
        }
    }
}

/// A serving pair held in memory (PEM), from a source other than files: the managed Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair").field("cert", &String::from_utf8_lossy(&self.cert)).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Builds the configuration from an in-memory `pair` (named `source` in errors and logs) and the client CA
    /// file, when set.
    pub fn from_pair(pair: &Pair, source: &str, client_ca: Option<PathBuf>) -> Result<Self, TlsError> {
        let files = pair_files(source, client_ca);
        let material = Material::of_pair(pair, &files)?;
        let config = build(&material, &files)?;
        let tls = Self { current: Arc::new(ArcSwap::from_pointee(config)), expiry: Default::default() };
        tls.note_expiry(&material, &files);
        Ok(tls)
    }

    /// Swaps in each pair `pairs` delivers (new handshakes use it; open connections keep theirs), and re-reads
    /// the client CA file every `period`. A pair or file that does not load is logged and the previous
    /// configuration stays in use. Runs until dropped or the sender is gone.
    pub async fn follow(
        self,
        mut pairs: tokio::sync::watch::Receiver<Pair>,
        source: String,
        client_ca: Option<PathBuf>,
        period: Duration,
    ) {
        let files = pair_files(&source, client_ca);
        let mut loaded = Material::of_pair(&pairs.borrow_and_update(), &files).ok();
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                changed = pairs.changed() => if changed.is_err() { return },
                _ = ticks.tick() => {}
            }
            let pair = pairs.borrow_and_update().clone();
            let Ok(material) = Material::of_pair(&pair, &files) else { continue };
            if loaded.as_ref() == Some(&material) {
                continue;
            }
            match build(&material, &files) {
                Ok(config) => {
                    self.current.store(Arc::new(config));
                    self.note_expiry(&material, &files);
                    tracing::info!(source = %source, client_ca = ?files.client_ca, "TLS configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "new serving pair rejected; keeping the previous configuration")
                }
            }
            loaded = Some(material);
        }
    }
}

/// Labels standing for an in-memory pair's "files" in errors and logs.
fn pair_files(source: &str, client_ca: Option<PathBuf>) -> TlsFiles {
    TlsFiles { cert: format!("{source} tls.crt").into(), key: format!("{source} tls.key").into(), client_ca }
}

impl Material {
    fn of_pair(pair: &Pair, files: &TlsFiles) -> Result<Self, TlsError> {
        let client_ca = files
            .client_ca
            .as_deref()
            .map(|p| std::fs::read(p).map_err(|source| TlsError::Read { file: p.into(), source }))
            .transpose()?;
        Ok(Self { cert: pair.cert.clone(), key: pair.key.clone(), client_ca })
    }
}

/// The files' bytes.
#[derive(PartialEq, Eq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { file: p.into(), source });
        Ok(Self {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

/// The notAfter of the first certificate of a PEM chain, in Unix seconds.
fn not_after(pem: &[u8]) -> Option<i64> {
    use x509_cert::der::Decode as _;
    let der = rustls_pemfile::certs(&mut &pem[..]).next()?.ok()?;
    let cert = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
    i64::try_from(cert.tbs_certificate().validity().not_after.to_unix_duration().as_secs()).ok()
}

fn build(material: &Material, files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let invalid = |file: &Path, problem: String| TlsError::Invalid { file: file.into(), problem };
    let certs = rustls_pemfile::certs(&mut material.cert.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(&files.cert, "holds no PEM certificate".into()));
    }
    let key = rustls_pemfile::private_key(&mut material.key.as_slice())
        .map_err(|e| invalid(&files.key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| invalid(&files.key, "holds no PEM private key".into()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Pair { cert: files.cert.clone(), key: files.key.clone(), source })?;
    let builder = match (&files.client_ca, &material.client_ca) {
        (Some(file), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| invalid(file, format!("not a PEM certificate bundle: {e}")))?;
                roots.add(cert).map_err(|e| invalid(file, format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid(file, "holds no PEM CA certificate".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(file, format!("cannot verify client certificates with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|source| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, client_ca: Option<&str>) -> TlsFiles {
        let generated = crate::certs::generate(&["localhost".into()], &[]).unwrap();
        crate::certs::write(dir, &generated).unwrap();
        let (_, cert, key) = crate::certs::paths(dir);
        let client_ca = client_ca.map(|pem| {
            let path = dir.join("client-ca.crt");
            std::fs::write(&path, pem).unwrap();
            path
        });
        TlsFiles { cert, key, client_ca }
    }

    #[test]
    fn a_client_ca_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = ServerTls::load(&files(dir.path(), Some("not a certificate\n"))).err().unwrap().to_string();
        assert!(e.contains("client-ca.crt") && e.contains("no PEM CA certificate"), "{e}");
    }
}

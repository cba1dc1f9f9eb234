//! The HTTPS server's rustls configuration, reloaded when the certificate or key files change (polled by content,
//! so a Secret volume's `..data` symlink swap is seen; new handshakes use the new pair).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

/// Loads the PEM pair into a reloadable server config.
pub async fn load(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    let (cert_pem, key_pem) = read_pair(cert, key)?;
    RustlsConfig::from_pem(cert_pem, key_pem)
        .await
        .map_err(|e| anyhow::anyhow!("{} / {}: {e}", cert.display(), key.display()))
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
    Ok((read(cert)?, read(key)?))
}

/// Every `period`, re-reads the pair and swaps it in when the bytes changed. A pair that fails to load is logged
/// and the previous one stays in use. Runs until dropped.
pub async fn watch(config: RustlsConfig, cert: PathBuf, key: PathBuf, period: Duration) {
    let mut current = read_pair(&cert, &key).ok();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let Ok(pair) = read_pair(&cert, &key) else { continue };
        if current.as_ref() == Some(&pair) {
            continue;
        }
        match config.reload_from_pem(pair.0.clone(), pair.1.clone()).await {
            Ok(()) => tracing::info!(cert = %cert.display(), "serving certificate reloaded"),
            Err(e) => {
                tracing::error!(cert = %cert.display(), error = %e, "new serving certificate rejected; keeping the old one")
            }
        }
        current = Some(pair);
    }
}

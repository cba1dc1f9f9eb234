//! The `provgate` binary as users run it: `serve` on the embedded default, `certs generate`, `policy check`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::webhook::{Webhook, https_client, policy, review};

const BIN: &str = env!("CARGO_BIN_EXE_provgate");

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `provgate serve` in `dir` and returns it with the HTTPS address it printed.
fn serve_in(dir: &std::path::Path) -> (Killed, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Standard error is not a terminal, so log lines are JSON; the "serving" one names the addresses.
            let Ok(logged) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if logged["message"] == "serving" {
                let _ = tx.send(logged["https"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("provgate serve did not start within 30 s");
    (child, addr)
}

#[tokio::test]
async fn serve_runs_on_the_embedded_default_with_a_self_signed_cert() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/team.yaml"), policy("team", "enforce", &["registry.example.com/team/**"]))
        .unwrap();
    let (_child, addr) = serve_in(dir.path());
    let ca = std::fs::read(dir.path().join("certs/ca.crt")).expect("the embedded default writes certs/ca.crt");
    assert!(dir.path().join("certs/tls.key").exists());
    let port = addr.rsplit(':').next().unwrap();
    let client = https_client(&ca);
    let r = review("deployment-create");
    let out: serde_json::Value =
        client.post(format!("https://localhost:{port}/validate")).json(&r).send().await.unwrap().json().await.unwrap();
    assert_eq!(out["response"]["allowed"], true, "{out}");
    assert_eq!(out["response"]["uid"], r["request"]["uid"]);
}

#[tokio::test]
async fn generated_certs_serve_the_service_dns_names_under_the_printed_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["certs", "generate", "--service", "provgate", "--namespace", "provgate-system", "--out"])
        .arg(dir.path().join("tls"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bundle = String::from_utf8(out.stdout).unwrap();
    let ca = base64::engine::general_purpose::STANDARD.decode(bundle.trim()).unwrap();
    assert_eq!(ca, std::fs::read(dir.path().join("tls/ca.crt")).unwrap(), "caBundle is the CA PEM");

    let tls = dir.path().join("tls");
    let hook = Webhook::start(&[], |c| {
        c.tls.cert_file = Some(tls.join("tls.crt"));
        c.tls.key_file = Some(tls.join("tls.key"));
    })
    .await;
    let port = hook.running.https.port();
    for name in ["provgate.provgate-system.svc", "provgate.provgate-system.svc.cluster.local"] {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .resolve(name, hook.running.https)
            .build()
            .unwrap();
        let resp = client.post(format!("https://{name}:{port}/validate")).json(&review("pod-delete")).send().await;
        assert_eq!(resp.unwrap().status(), 200, "{name}");
    }
    let wrong = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .resolve("other.example.com", hook.running.https)
        .build()
        .unwrap();
    let err = wrong.post(format!("https://other.example.com:{port}/validate")).send().await;
    assert!(err.is_err(), "a name outside the SANs must not verify");
}

#[tokio::test]
async fn a_rotated_serving_certificate_is_used_without_restart() {
    let hook = Webhook::start(&[], |c| c.tls.reload_interval = Some(Duration::from_millis(100))).await;
    let certs = hook.dir.path().join("certs");
    let rotated = provgate::certs::generate(&["localhost".into()], &["127.0.0.1".parse().unwrap()]).unwrap();
    let new_client = https_client(rotated.ca_pem.as_bytes());
    let url = hook.url.clone();
    let first = new_client.post(&url).json(&review("pod-delete")).send().await;
    assert!(first.is_err(), "before rotation the new CA does not verify the server");
    provgate::certs::write(&certs, &rotated).unwrap();
    let started = Instant::now();
    loop {
        // New connections only: a fresh client each try.
        let client = https_client(rotated.ca_pem.as_bytes());
        if let Ok(resp) = client.post(&url).json(&review("pod-delete")).send().await {
            assert_eq!(resp.status(), 200);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the rotated certificate was not picked up in 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn policy_check_reports_file_and_line_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.yaml"), policy("good", "enforce", &["**"])).unwrap();
    let ok = Command::new(BIN).args(["policy", "check"]).arg(dir.path()).output().unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok  good ("));

    std::fs::write(dir.path().join("bad.yaml"), policy("bad", "enforce", &["**"]).replace("enforce", "enforse"))
        .unwrap();
    let bad = Command::new(BIN).args(["policy", "check"]).arg(dir.path()).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(stdout.contains("bad.yaml:6: spec.mode: unknown variant `enforse`"), "{stdout}");
}

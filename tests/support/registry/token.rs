//! A Docker token server for docker-registry's token auth, over TLS: Basic credentials in, ES256 JWTs with a libtrust
//! `kid` out.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SigningKey};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::Tls;
use super::canned::{http_answer, read_head};
use super::hostile::server_config;

pub const SERVICE: &str = "provgate-test-registry";
pub const ISSUER: &str = "provgate-test-issuer";

/// A Docker token server: checks Basic credentials and issues ES256 JWTs whose `kid` is the libtrust key id of the
/// certificate docker-registry trusts. Anonymous requests get a token with no access.
pub struct TokenServer {
    pub port: u16,
    pub cert: PathBuf,
    /// Users seen, in order (`""` for anonymous).
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Serves HTTPS with `tls`'s certificate (the registry's, valid for 127.0.0.1).
    pub fn start(users: Vec<(String, String, Vec<String>)>, dir: &Path, tls: &Tls) -> Self {
        let acceptor = server_config(tls);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "provgate test token issuer");
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join("token.crt");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let kid = libtrust_kid(&key.subject_public_key_info());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // A non-blocking accept loop, polled until the owner drops the server.
            while matches!(stopped.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                        let Ok(session) = rustls::ServerConnection::new(acceptor.clone()) else { continue };
                        let mut conn = rustls::StreamOwned::new(session, conn);
                        let Some(head) = read_head(&mut conn) else { continue };
                        let answer = token_answer(&head, &users, &key, &kid, &seen);
                        let _ = conn.write_all(answer.as_bytes());
                        let _ = conn.flush();
                        conn.conn.send_close_notify();
                        let _ = conn.flush();
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, cert: cert_path, requests, stop: Some(stop), thread: Some(thread) }
    }

    pub fn realm(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }

    pub fn users_seen(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn token_answer(
    head: &str,
    users: &[(String, String, Vec<String>)],
    key: &KeyPair,
    kid: &str,
    seen: &Mutex<Vec<String>>,
) -> String {
    let target = head.split_whitespace().nth(1).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let mut scopes = Vec::new();
    for pair in query.split('&') {
        if let Some(("scope", v)) = pair.split_once('=') {
            scopes.push(percent_decode(v));
        }
    }
    let basic = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.eq_ignore_ascii_case("authorization") {
            return None;
        }
        let b64 = value.trim().strip_prefix("Basic ")?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let text = String::from_utf8(raw).ok()?;
        text.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned()))
    });
    let (user, allowed) = match &basic {
        None => (String::new(), Vec::new()),
        Some((u, p)) => match users.iter().find(|(uu, pp, _)| uu == u && pp == p) {
            Some((_, _, repos)) => (u.clone(), repos.clone()),
            None => {
                seen.lock().unwrap().push(format!("rejected:{u}"));
                return http_answer(401, "application/json", br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#, &[]);
            }
        },
    };
    seen.lock().unwrap().push(user.clone());
    let mut access = Vec::new();
    for scope in scopes.iter().flat_map(|s| s.split(' ')) {
        let parts: Vec<&str> = scope.split(':').collect();
        if parts.len() == 3 && parts[0] == "repository" && allowed.iter().any(|r| r == parts[1]) {
            access.push(json!({"type": "repository", "name": parts[1], "actions": ["pull", "push"]}));
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let header = json!({"typ": "JWT", "alg": "ES256", "kid": kid});
    let claims = json!({"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", access.len()), "access": access});
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
    let der = key.sign(signing_input.as_bytes()).unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ecdsa_der_to_raw(&der));
    let token = format!("{signing_input}.{sig}");
    let body = serde_json::to_vec(&json!({"token": token, "access_token": token, "expires_in": 300})).unwrap();
    http_answer(200, "application/json", &body, &[])
}

/// libtrust key id: base32 of the first 30 bytes of sha256(SPKI DER), in 12 groups of 4 joined by `:`.
fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = sha2::Sha256::digest(spki_der);
    let mut bits = 0u64;
    let mut nbits = 0;
    let mut out = String::new();
    for &b in &hash[..30] {
        bits = (bits << 8) | u64::from(b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            out.push(ALPHABET[((bits >> nbits) & 31) as usize] as char);
        }
    }
    out.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":")
}

/// An ASN.1 DER ECDSA signature as the fixed 64-byte r||s that JWS ES256 wants.
fn ecdsa_der_to_raw(der: &[u8]) -> Vec<u8> {
    let mut i = if der[1] & 0x80 != 0 { 2 + usize::from(der[1] & 0x7f) } else { 2 };
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 2, "INTEGER expected");
        let len = usize::from(der[i + 1]);
        let int = &der[i + 2..i + 2 + len];
        let int = &int[int.iter().take_while(|&&b| b == 0).count()..];
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

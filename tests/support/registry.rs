//! Registry harness: docker-registry, ferro-oci-server, a token server, OCI layouts pushed by skopeo, canned answers.
//!
//! docker-registry runs plain HTTP, TLS + Basic, or TLS + Bearer tokens (the token server here signs ES256 JWTs);
//! ferro-oci-server has the referrers API; a canned-answer server stands in for faults and pagination. Every process
//! is killed on drop; everything listens on loopback; every wait is bounded.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use provgate::registry::HostConfig;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData, SigningKey};
use serde_json::{Value, json};
use sha2::Digest as _;
use tempfile::TempDir;

// ---------------------------------------------------------------- tools and processes

/// A test tool from its `PROVGATE_TEST_*` variable or PATH; panics with how to install it.
pub fn tool(var: &str, name: &str, install: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "{var}={} does not exist; {install}", p.display());
        return p;
    }
    let extra = std::env::var("HOME").map(|h| format!("{h}/.cache/provgate/cargo/bin")).unwrap_or_default();
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').chain([extra.as_str()]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is required by the registry tests and was not found ({var} unset, not on PATH): {install}; scripts/test does this"
    );
}

pub fn docker_registry_bin() -> PathBuf {
    tool("PROVGATE_TEST_DOCKER_REGISTRY", "docker-registry", "apt-get install docker-registry")
}
pub fn skopeo_bin() -> PathBuf {
    tool("PROVGATE_TEST_SKOPEO", "skopeo", "apt-get install skopeo")
}
pub fn htpasswd_bin() -> PathBuf {
    tool("PROVGATE_TEST_HTPASSWD", "htpasswd", "apt-get install apache2-utils")
}
pub fn ferro_bin() -> PathBuf {
    tool(
        "PROVGATE_TEST_FERRO",
        "ferro-oci-server",
        "cargo install ferro-oci-server --version 1.0.0 --locked --root ~/.cache/provgate/cargo",
    )
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed and reaped on drop.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Self { child, log }
    }

    /// Waits (at most 15 s) until `addr` accepts TCP connections.
    fn wait_listening(&mut self, addr: &str) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited with {status}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not listen on {addr} in 15 s: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- TLS material

/// A CA and a serving certificate for 127.0.0.1 / localhost, written as PEM files.
pub struct Tls {
    pub ca_pem: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A directory holding `ca.crt`, the form skopeo's `--dest-cert-dir` reads.
    pub certs_dir: PathBuf,
}

impl Tls {
    pub fn new(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "provgate test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let cert = params.signed_by(&key, &issuer).unwrap();
        let certs_dir = dir.join("certs.d");
        std::fs::create_dir_all(&certs_dir).unwrap();
        let tls = Self {
            ca_pem: dir.join("ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            certs_dir: certs_dir.clone(),
        };
        std::fs::write(&tls.ca_pem, ca_cert.pem()).unwrap();
        std::fs::write(certs_dir.join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(&tls.cert, cert.pem()).unwrap();
        std::fs::write(&tls.key, key.serialize_pem()).unwrap();
        tls
    }
}

// ---------------------------------------------------------------- docker-registry

/// How a docker-registry instance authenticates.
pub enum Auth {
    None,
    /// TLS + htpasswd Basic auth.
    Basic(Vec<(String, String)>),
    /// TLS + Bearer tokens: user, password, repositories that user may pull and push.
    Token(Vec<(String, String, Vec<String>)>),
}

/// A Debian docker-registry (distribution 2.8) on a loopback port, with its own storage.
pub struct DockerRegistry {
    pub addr: String,
    pub tls: Option<Tls>,
    /// Credentials skopeo pushes with.
    push_creds: Option<(String, String)>,
    pub tokens: Option<TokenServer>,
    _proc: Proc,
    dir: TempDir,
}

impl DockerRegistry {
    pub fn start(auth: Auth) -> Self {
        let bin = docker_registry_bin();
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let root = dir.path().join("data");
        let mut config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n  secret: provgate-test\n",
            root.display()
        );
        let (mut tls, mut push_creds, mut tokens) = (None, None, None);
        match &auth {
            Auth::None => {}
            Auth::Basic(users) => {
                let t = Tls::new(dir.path());
                let htpasswd = dir.path().join("htpasswd");
                for (i, (user, pass)) in users.iter().enumerate() {
                    let flags = if i == 0 { "-Bbc" } else { "-Bb" };
                    let status =
                        Command::new(htpasswd_bin()).args([flags]).arg(&htpasswd).args([user, pass]).output().unwrap();
                    assert!(status.status.success(), "htpasswd: {}", String::from_utf8_lossy(&status.stderr));
                }
                config.push_str(&format!(
                    "  tls: {{certificate: {}, key: {}}}\nauth:\n  htpasswd: {{realm: provgate-test, path: {}}}\n",
                    t.cert.display(),
                    t.key.display(),
                    htpasswd.display()
                ));
                push_creds = users.first().cloned();
                tls = Some(t);
            }
            Auth::Token(users) => {
                let t = Tls::new(dir.path());
                let server = TokenServer::start(users.clone(), dir.path());
                config.push_str(&format!(
                    "  tls: {{certificate: {}, key: {}}}\nauth:\n  token: {{realm: \"{}\", service: {SERVICE}, issuer: {ISSUER}, rootcertbundle: {}}}\n",
                    t.cert.display(),
                    t.key.display(),
                    server.realm(),
                    server.cert.display()
                ));
                push_creds = users.first().map(|(u, p, _)| (u.clone(), p.clone()));
                tls = Some(t);
                tokens = Some(server);
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&config_path);
        let mut proc = Proc::spawn(cmd, dir.path().join("registry.log"));
        proc.wait_listening(&addr);
        Self { addr, tls, push_creds, tokens, _proc: proc, dir }
    }

    /// The provgate host settings that reach this registry.
    pub fn host_config(&self) -> HostConfig {
        HostConfig {
            insecure: self.tls.is_none(),
            ca_bundle: self.tls.as_ref().map(|t| t.ca_pem.clone()),
            docker_config_json: None,
        }
    }

    /// Pushes `tag` of `layout` byte for byte to `repo:dest_tag`.
    pub fn push(&self, layout: &Layout, tag: &str, repo: &str, dest_tag: &str) {
        let mut args: Vec<String> = Vec::new();
        match &self.tls {
            None => args.push("--dest-tls-verify=false".into()),
            Some(t) => args.push(format!("--dest-cert-dir={}", t.certs_dir.display())),
        }
        if let Some((u, p)) = &self.push_creds {
            args.push(format!("--dest-creds={u}:{p}"));
        }
        let source = format!("oci:{}:{tag}", layout.dir.path().display());
        skopeo_copy(&source, &format!("{}/{repo}:{dest_tag}", self.addr), &args);
    }

    /// Pushes a Docker manifest list (or any manifest) byte for byte through skopeo's `dir:` transport; the OCI
    /// layout transport only lists OCI media types.
    pub fn push_docker(&self, layout: &Layout, top: &Desc, repo: &str, dest_tag: &str) {
        assert!(self.tls.is_none(), "push_docker is for the plain-HTTP registry");
        let dir = layout.export_dir(top);
        let source = format!("dir:{}", dir.path().display());
        skopeo_copy(&source, &format!("{}/{repo}:{dest_tag}", self.addr), &["--dest-tls-verify=false".into()]);
    }
}

fn skopeo_copy(source: &str, dest: &str, extra: &[String]) {
    let auth_dir = TempDir::new().unwrap();
    let out = Command::new(skopeo_bin())
        .args(["--insecure-policy", "copy", "--all", "--preserve-digests", "--quiet"])
        .args(extra)
        .arg(source)
        .arg(format!("docker://{dest}"))
        .env("REGISTRY_AUTH_FILE", auth_dir.path().join("auth.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy {source} -> {dest}: {}", String::from_utf8_lossy(&out.stderr));
}

/// ferro-oci-server on a loopback port: plain HTTP, no auth, with the OCI 1.1 referrers API.
pub struct Ferro {
    pub addr: String,
    _proc: Proc,
    _dir: TempDir,
}

impl Ferro {
    pub fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(ferro_bin());
        cmd.env("FERRO_OCI_LISTEN", &addr)
            .env("FERRO_OCI_STORAGE_DIR", dir.path().join("data"))
            .env("RUST_LOG", "warn");
        let mut proc = Proc::spawn(cmd, dir.path().join("ferro.log"));
        proc.wait_listening(&addr);
        Self { addr, _proc: proc, _dir: dir }
    }

    pub fn push(&self, layout: &Layout, tag: &str, repo: &str, dest_tag: &str) {
        let source = format!("oci:{}:{tag}", layout.dir.path().display());
        skopeo_copy(&source, &format!("{}/{repo}:{dest_tag}", self.addr), &["--dest-tls-verify=false".into()]);
    }
}

// ---------------------------------------------------------------- token server

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
    fn start(users: Vec<(String, String, Vec<String>)>, dir: &Path) -> Self {
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
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                        let Some(head) = read_head(&mut conn) else { continue };
                        let answer = token_answer(&head, &users, &key, &kid, &seen);
                        let _ = conn.write_all(answer.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, cert: cert_path, requests, stop: Some(stop), thread: Some(thread) }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
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

/// Reads an HTTP request head (bounded to 64 KiB); `None` when the peer sent nothing usable.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 << 10 {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn http_answer(status: u16, content_type: &str, body: &[u8], headers: &[(String, String)]) -> String {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&String::from_utf8_lossy(body));
    out
}

// ---------------------------------------------------------------- canned-answer server

/// One canned answer.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Accept and read the request, then never answer.
    pub stall: bool,
    /// Omit Content-Length and stream the body until the connection closes.
    pub no_length: bool,
}

impl Canned {
    pub fn ok(content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
            stall: false,
            no_length: false,
        }
    }
    pub fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: br#"{"errors":[]}"#.to_vec(), stall: false, no_length: false }
    }
    pub fn stall() -> Self {
        Self { stall: true, ..Self::status(200) }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A loopback HTTP/1.1 server answering request targets (path and query) from a table, counting hits; unknown
/// targets get 404. It stands in for misbehaving registries that no real registry can be made to imitate.
pub struct CannedServer {
    pub addr: String,
    pub hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CannedServer {
    pub fn start(routes: HashMap<String, Canned>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let counter = hits.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let live = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while matches!(stopped.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let Some(head) = read_head(&mut conn) else { continue };
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or_default().to_owned();
                let target = words.next().unwrap_or_default().to_owned();
                *counter.lock().unwrap().entry(target.clone()).or_insert(0) += 1;
                let answer = routes.get(&target).cloned().unwrap_or_else(|| Canned::status(404));
                if answer.stall {
                    live.fetch_add(1, Ordering::SeqCst);
                    held.push(conn);
                    continue;
                }
                let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", answer.status);
                if !answer.no_length {
                    out.push_str(&format!("Content-Length: {}\r\n", answer.body.len()));
                }
                for (k, v) in &answer.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = conn.write_all(out.as_bytes());
                if method != "HEAD" {
                    let _ = conn.write_all(&answer.body);
                }
            }
        });
        Self { addr, hits, stop: Some(stop), thread: Some(thread) }
    }

    pub fn hits(&self, target: &str) -> usize {
        self.hits.lock().unwrap().get(target).copied().unwrap_or(0)
    }

    pub fn host_config(&self) -> HostConfig {
        HostConfig { insecure: true, ..HostConfig::default() }
    }
}

impl Drop for CannedServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- OCI layouts and fixtures

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
pub const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const BUNDLE_OLD: &str = "application/vnd.dev.sigstore.bundle+json;version=0.2";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
    pub bytes: Vec<u8>,
}

impl Desc {
    pub fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
    pub fn hex(&self) -> &str {
        &self.digest[7..]
    }
}

/// An OCI image layout on disk, written as blobs are added.
pub struct Layout {
    pub dir: TempDir,
    refs: Vec<Value>,
}

impl Default for Layout {
    fn default() -> Self {
        Self::new()
    }
}

impl Layout {
    pub fn new() -> Self {
        let dir = TempDir::new().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = Self { dir, refs: Vec::new() };
        l.write_index();
        l
    }

    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Desc {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(self.dir.path().join("blobs/sha256").join(&hex), bytes).unwrap();
        Desc {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{hex}"),
            size: bytes.len(),
            bytes: bytes.to_vec(),
        }
    }

    pub fn json(&self, media_type: &str, value: &Value) -> Desc {
        self.blob(media_type, &serde_json::to_vec(value).unwrap())
    }

    /// Names `desc` as `tag` in `index.json`.
    pub fn tag(&mut self, tag: &str, desc: &Desc) {
        let mut entry = desc.json();
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.push(entry);
        self.write_index();
    }

    /// `top` (a manifest, or an index/list and its manifests) with the blobs they name, in skopeo's `dir:` layout.
    pub fn export_dir(&self, top: &Desc) -> TempDir {
        let out = TempDir::new().unwrap();
        let blobs = self.dir.path().join("blobs/sha256");
        std::fs::write(out.path().join("version"), "Directory Transport Version: 1.1\n").unwrap();
        std::fs::write(out.path().join("manifest.json"), &top.bytes).unwrap();
        let top_json: Value = serde_json::from_slice(&top.bytes).unwrap();
        let mut manifests = vec![top_json.clone()];
        for child in top_json["manifests"].as_array().into_iter().flatten() {
            let hex = &child["digest"].as_str().unwrap()[7..];
            let bytes = std::fs::read(blobs.join(hex)).unwrap();
            std::fs::write(out.path().join(format!("{hex}.manifest.json")), &bytes).unwrap();
            manifests.push(serde_json::from_slice(&bytes).unwrap());
        }
        for m in &manifests {
            for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten()) {
                if let Some(digest) = d["digest"].as_str() {
                    std::fs::copy(blobs.join(&digest[7..]), out.path().join(&digest[7..])).unwrap();
                }
            }
        }
        out
    }

    fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs});
        std::fs::write(self.dir.path().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// A single-platform OCI image whose content is fixed by `marker`.
    pub fn image(&self, marker: &str, arch: &str) -> Desc {
        let layer = self.blob(OCI_LAYER, format!("provgate test layer {marker}").as_bytes());
        let config = self.json(
            OCI_CONFIG,
            &json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}),
        );
        self.json(
            OCI_MANIFEST,
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.json(), "layers": [layer.json()]}),
        )
    }

    /// A two-platform OCI index (linux/amd64 and linux/arm64/v8).
    pub fn index(&self, marker: &str) -> (Desc, Desc, Desc) {
        let amd = self.image(&format!("{marker}-amd64"), "amd64");
        let arm = self.image(&format!("{marker}-arm64"), "arm64");
        let mut a = amd.json();
        a["platform"] = json!({"os": "linux", "architecture": "amd64"});
        let mut b = arm.json();
        b["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        let index = self.json(OCI_INDEX, &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [a, b]}));
        (index, amd, arm)
    }

    /// A two-platform Docker manifest list (linux/amd64, linux/arm/v7) of Docker schema 2 manifests.
    pub fn docker_list(&self, marker: &str) -> (Desc, Desc, Desc) {
        let manifest = |arch: &str| {
            let layer = self.blob(DOCKER_LAYER, format!("provgate docker layer {marker}-{arch}").as_bytes());
            let config = self.json(
                DOCKER_CONFIG,
                &json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}),
            );
            self.json(
                DOCKER_MANIFEST,
                &json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config.json(), "layers": [layer.json()]}),
            )
        };
        let amd = manifest("amd64");
        let arm = manifest("arm");
        let mut a = amd.json();
        a["platform"] = json!({"os": "linux", "architecture": "amd64"});
        let mut b = arm.json();
        b["platform"] = json!({"os": "linux", "architecture": "arm", "variant": "v7"});
        let list = self.json(DOCKER_LIST, &json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [a, b]}));
        (list, amd, arm)
    }

    /// A cosign-style artifact manifest (the `.sig`/`.att` shape): one layer per `(media type, bytes, annotations)`.
    pub fn cosign_manifest(&self, layers: &[(&str, Vec<u8>, Value)]) -> Desc {
        let descs: Vec<Desc> = layers.iter().map(|(mt, bytes, _)| self.blob(mt, bytes)).collect();
        let config = self.json(
            OCI_CONFIG,
            &json!({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": descs.iter().map(|d| d.digest.clone()).collect::<Vec<_>>()}}),
        );
        let layer_json: Vec<Value> = descs
            .iter()
            .zip(layers)
            .map(|(d, (_, _, ann))| {
                let mut j = d.json();
                j["annotations"] = ann.clone();
                j
            })
            .collect();
        self.json(
            OCI_MANIFEST,
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.json(), "layers": layer_json}),
        )
    }

    /// An OCI 1.1 referrer of `subject` with one layer.
    pub fn referrer(&self, subject: &Desc, artifact_type: &str, layer_type: &str, layer: &[u8], note: &str) -> Desc {
        let layer = self.blob(layer_type, layer);
        let config = self.blob(OCI_EMPTY, b"{}");
        self.json(
            OCI_MANIFEST,
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                "config": config.json(), "layers": [layer.json()], "subject": subject.json(),
                "annotations": {"org.example.note": note}}),
        )
    }

    /// The referrers tag-schema index listing `referrers`. Entries carry no `artifactType`: skopeo 1.9 (Debian 12)
    /// cannot push such an index byte for byte, so the client must read the type from the manifest itself.
    pub fn referrers_index(&self, referrers: &[&Desc]) -> Desc {
        let manifests: Vec<Value> = referrers.iter().map(|d| d.json()).collect();
        self.json(OCI_INDEX, &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
    }
}

/// A simple-signing payload for `digest`, as cosign writes it.
pub fn simple_signing_payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"critical": {"identity": {"docker-reference": reference},
        "image": {"docker-manifest-digest": digest}, "type": "cosign container image signature"}, "optional": null}))
    .unwrap()
}

/// A DSSE envelope around an in-toto statement for `hex` (the signature is not checked by the registry module).
pub fn dsse_envelope(hex: &str) -> Vec<u8> {
    let statement = json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "x", "digest": {"sha256": hex}}],
        "predicateType": "https://slsa.dev/provenance/v1", "predicate": {}});
    let payload = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&statement).unwrap());
    serde_json::to_vec(&json!({"payloadType": "application/vnd.in-toto+json", "payload": payload,
        "signatures": [{"keyid": "", "sig": "MEUCIQ=="}]}))
    .unwrap()
}

/// A Sigstore bundle v0.3 document (content opaque to the registry module).
pub fn bundle(hex: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"mediaType": BUNDLE, "verificationMaterial": {"publicKey": {"hint": "test"}},
        "dsseEnvelope": {"payloadType": "application/vnd.in-toto+json", "payload": hex, "signatures": []}}))
    .unwrap()
}

//! Registry harness: docker-registry, ferro-oci-server, a token server, OCI layouts pushed by skopeo, canned answers.
//!
//! docker-registry runs plain HTTP, TLS + Basic, or TLS + Bearer tokens (the token server here signs ES256 JWTs);
//! ferro-oci-server has the referrers API; a canned-answer server stands in for faults and pagination. Every process
//! is killed on drop; everything listens on loopback; every wait is bounded.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use provgate::registry::HostConfig;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tempfile::TempDir;

mod canned;
mod hostile;
mod layout;
mod token;

pub use canned::*;
pub use hostile::*;
pub use layout::*;
pub use token::*;

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
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Self { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the process's log when it has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{what} exited with {status}: {}", self.log_text());
        }
    }

    /// What the process wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 15 s) until `addr` accepts TCP connections.
    pub fn wait_listening(&mut self, addr: &str) {
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
                let server = TokenServer::start(users.clone(), dir.path(), &t);
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

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self._proc.pid()
    }

    /// The provgate host settings that reach this registry (with its token server, on another port, as an allowed
    /// token realm).
    pub fn host_config(&self) -> HostConfig {
        HostConfig {
            insecure: self.tls.is_none(),
            ca_bundle: self.tls.as_ref().map(|t| t.ca_pem.clone()),
            docker_config_json: None,
            token_realms: self.tokens.iter().map(|t| format!("127.0.0.1:{}", t.port)).collect(),
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

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self._proc.pid()
    }

    pub fn push(&self, layout: &Layout, tag: &str, repo: &str, dest_tag: &str) {
        let source = format!("oci:{}:{tag}", layout.dir.path().display());
        skopeo_copy(&source, &format!("{}/{repo}:{dest_tag}", self.addr), &["--dest-tls-verify=false".into()]);
    }
}

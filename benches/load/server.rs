//! provgate as a separate process (the binary cargo built for this bench), its files, and what /proc says of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA that issues provgate's serving certificates (for a rotation: a new leaf from the same CA).
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "provgate bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A serving certificate for localhost / 127.0.0.1: (certificate PEM, its DER, key PEM).
    pub fn leaf(&self) -> (String, Vec<u8>, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "provgate bench");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), cert.der().to_vec(), key.serialize_pem())
    }
}

/// What one provgate instance is configured with.
pub struct Setup<'a> {
    /// Registry hosts (`host:port`, plain HTTP) provgate may reach.
    pub hosts: &'a [&'a str],
    /// The policy files: (file name, YAML).
    pub policies: &'a [(&'a str, String)],
    /// Extra top-level YAML (e.g. a `cache:` section), appended to the config.
    pub extra: &'a str,
}

pub struct Provgate {
    child: Child,
    pub dir: PathBuf,
    pub url_host: String,
    pub admin: String,
    pub ca_pem: String,
    pub ca: Ca,
    /// DER of the serving certificate written last.
    pub leaf_der: Vec<u8>,
    pub pid: u32,
}

/// provgate serving on `port` and `admin_port`, with the policies and certificate in `dir`.
fn spawn(dir: &Path, setup: &Setup, port: u16, admin_port: u16) -> Child {
    let mut hosts = String::new();
    for h in setup.hosts {
        hosts.push_str(&format!("    \"{h}\": {{insecure: true}}\n"));
    }
    let config = format!(
        "listen: 127.0.0.1:{port}\nadminListen: 127.0.0.1:{admin_port}\ntls:\n  certFile: {d}/tls.crt\n  \
         keyFile: {d}/tls.key\n  reloadInterval: 1s\npolicies: {d}/policies\npolicyPoll: 1s\naudit:\n  log: \
         {d}/audit.jsonl\nregistries:\n  hosts:\n{hosts}{extra}",
        d = dir.display(),
        extra = setup.extra
    );
    std::fs::write(dir.join("provgate.yaml"), config).unwrap();
    let log = std::fs::File::create(dir.join("provgate.log")).unwrap();
    // `PROVGATE_BENCH_WRAP="valgrind --tool=callgrind"` runs provgate under a tool (to count instructions).
    let wrap = std::env::var("PROVGATE_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(words).arg(env!("CARGO_BIN_EXE_provgate"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_provgate")),
    };
    command
        .arg("serve")
        .arg("--config")
        .arg(dir.join("provgate.yaml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits until provgate answers `/readyz` on `admin`; its log (`log`) when it exits or is not ready in 120 s.
fn wait_ready(child: &mut Child, admin: &str, log: &Path) -> Result<(), String> {
    let start = Instant::now();
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    while start.elapsed() < Duration::from_secs(120) {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("provgate exited with {status}: {}", log()));
        }
        if http_get(admin, "/readyz").is_some_and(|(status, _)| status == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Err(format!("provgate was not ready in 120 s: {}", log()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Provgate {
    pub fn start(dir: &Path, setup: &Setup) -> Self {
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        for (file, text) in setup.policies {
            std::fs::write(dir.join("policies").join(file), text).unwrap();
        }
        let ca = Ca::new();
        let (cert, leaf_der, key) = ca.leaf();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        // A port found free can be taken before provgate binds it (as the local end of an outgoing connection):
        // then provgate is started again on other ports.
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let mut child = spawn(dir, setup, port, admin_port);
            let admin = format!("127.0.0.1:{admin_port}");
            match wait_ready(&mut child, &admin, &dir.join("provgate.log")) {
                Ok(()) => {
                    let (dir, url_host, ca_pem, pid) =
                        (dir.to_owned(), format!("127.0.0.1:{port}"), ca.pem.clone(), child.id());
                    return Self { child, dir, url_host, admin, ca_pem, ca, leaf_der, pid };
                }
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("{log}"),
            }
        }
        panic!("provgate found no free ports in 5 tries");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("provgate.log")).unwrap_or_default()
    }

    /// Writes a new serving certificate from the same CA over the files provgate watches.
    pub fn rotate_certificate(&mut self) {
        let (cert, der, key) = self.ca.leaf();
        let tmp = self.dir.join("tls.key.new");
        std::fs::write(&tmp, key).unwrap();
        std::fs::rename(&tmp, self.dir.join("tls.key")).unwrap();
        let tmp = self.dir.join("tls.crt.new");
        std::fs::write(&tmp, cert).unwrap();
        std::fs::rename(&tmp, self.dir.join("tls.crt")).unwrap();
        self.leaf_der = der;
    }

    /// Replaces the policy file `file`.
    pub fn write_policy(&self, file: &str, text: &str) {
        let tmp = self.dir.join(format!("{file}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("policies").join(file)).unwrap();
    }

    /// Resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// CPU time of every live thread (ns, from `/proc/PID/task/*/schedstat`).
    pub fn cpu(&self) -> CpuSample {
        CpuSample::of(self.pid)
    }

    pub fn metrics(&self) -> String {
        http_get(&self.admin, "/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("provgate exited with {status}: {}", self.log());
        }
    }
}

impl Drop for Provgate {
    fn drop(&mut self) {
        if std::env::var_os("PROVGATE_BENCH_WRAP").is_some() {
            // A tool around provgate writes its results when provgate exits: ask it to stop, and give it time.
            let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per-thread CPU counters at one moment.
pub struct CpuSample {
    threads: HashMap<String, u64>,
}

impl CpuSample {
    /// CPU time of every live thread of process `pid` (ns, from `/proc/PID/task/*/schedstat`).
    pub fn of(pid: u32) -> Self {
        let mut threads = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for entry in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else { continue };
                if let Some(ns) = text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()) {
                    threads.insert(entry.file_name().to_string_lossy().into_owned(), ns);
                }
            }
        }
        Self { threads }
    }

    /// CPU time spent since `earlier`, in ns (threads that ended in between are not counted).
    pub fn since(&self, earlier: &CpuSample) -> u64 {
        self.threads.iter().map(|(tid, ns)| ns.saturating_sub(earlier.threads.get(tid).copied().unwrap_or(0))).sum()
    }
}

/// A plain HTTP GET (admin port): status and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

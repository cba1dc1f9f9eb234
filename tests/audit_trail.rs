//! The decision log as operators meet it: reviews through the real HTTPS server, the log rotated by size and read
//! back by the real `provgate audit`; a full queue that drops (and counts) records instead of holding up
//! admission; warn- and audit-mode records that say so; log lines as JSON or text, never with ANSI codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::webhook::{Webhook, https_client, review};

const EVIL: &str = "quay.io/evil/miner:latest";
const PINNED_TAG: &str = "registry.example.com/pinned/api:2";
const PINNED_DIGEST: &str =
    "registry.example.com/pinned/api@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const CANARY: &str = "registry.example.com/canary/web:1";
const SHADOW: &str = "registry.example.com/shadow/batch:3";
const CANARY_STRICT: &str = "registry.example.com/canary/strict/db:5";

/// A policy in `mode` over `images`, with `extra` appended under `spec` (YAML, indented by two spaces).
fn policy_with(name: &str, mode: &str, images: &str, extra: &str) -> String {
    format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: {mode}\n  match:\n    images: [{images:?}]\n{extra}"
    )
}

/// Governed images of the pod fixture pass `team`; `pinned` wants digests (enforced); `canary` (warn) and `shadow`
/// (audit) fail a validation; `strict` (enforce) wants digests under canary/strict, which `canary` matches too.
fn policies() -> Vec<(&'static str, String)> {
    let failing = "  validations:\n    - expression: image.tag == \"vetted\"\n      message: only vetted tags\n";
    vec![
        ("team.yaml", policy_with("team", "enforce", "registry.example.com/team/**", "")),
        (
            "pinned.yaml",
            policy_with("pinned", "enforce", "registry.example.com/pinned/**", "  require:\n    digest: true\n"),
        ),
        ("a-canary.yaml", policy_with("canary", "warn", "registry.example.com/canary/**", failing)),
        ("shadow.yaml", policy_with("shadow", "audit", "registry.example.com/shadow/**", failing)),
        (
            "z-strict.yaml",
            policy_with("strict", "enforce", "registry.example.com/canary/strict/**", "  require:\n    digest: true\n"),
        ),
    ]
}

/// A pod review with its own uid, in `namespace`, with `image` (if any) as its first container.
fn pod(uid: &str, namespace: &str, image: Option<&str>) -> Value {
    let mut r = review("pod-create");
    r["request"]["uid"] = json!(uid);
    r["request"]["namespace"] = json!(namespace);
    r["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    if let Some(image) = image {
        r["request"]["object"]["spec"]["containers"][0]["image"] = json!(image);
    }
    r
}

/// What a review of `image` must come to: the decision and, for a denial, its summary key (policy, reason).
fn expected(image: Option<&str>) -> (&'static str, Option<(Option<&'static str>, &'static str)>) {
    match image {
        Some(EVIL) => ("deny", Some((None, "no-policy"))),
        Some(PINNED_TAG) => ("deny", Some((Some("pinned"), "tag-not-pinned"))),
        // Governed by canary (warn) and strict (enforce): the denial is summarised under the policy that enforced it.
        Some(CANARY_STRICT) => ("deny", Some((Some("strict"), "tag-not-pinned"))),
        Some(CANARY) => ("warn", None),
        _ => ("allow", None),
    }
}

/// The real binary's exit code, standard output and standard error.
fn provgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_provgate")).args(args).stdin(Stdio::null()).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// `audit.jsonl` and its rotations, oldest first.
fn logs(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let n = p.file_name()?.to_str()?.strip_prefix("audit.jsonl.")?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    rotated.into_iter().map(|(_, p)| p).chain([dir.join("audit.jsonl")]).collect()
}

type Key = (String, String, Option<String>, String);

#[tokio::test]
async fn a_log_rotated_by_size_reads_back_exactly() {
    let hook = Webhook::start(&policies(), |c| {
        c.audit.max_bytes = 4096;
        c.audit.keep = 100;
    })
    .await;
    let cycle: [(&str, Option<&str>); 8] = [
        ("team-a", Some(EVIL)),
        ("team-b", Some(PINNED_TAG)),
        ("team-b", Some(PINNED_DIGEST)),
        ("team-a", Some(CANARY)),
        ("team-c", Some(SHADOW)),
        ("team-a", None),
        ("team-c", Some(CANARY_STRICT)),
        ("team-a", Some(EVIL)),
    ];
    let mut want: BTreeMap<Key, u64> = BTreeMap::new();
    let mut decisions: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sent = Vec::new();
    for i in 0..30 {
        let (namespace, image) = cycle[i % cycle.len()];
        let uid = format!("r-{i:02}");
        let response = hook.review(&pod(&uid, namespace, image)).await;
        let (decision, denial) = expected(image);
        assert_eq!(response["allowed"], decision != "deny", "{uid} {image:?}: {response}");
        *decisions.entry(decision).or_default() += 1;
        if let Some((policy, reason)) = denial {
            let image = image.unwrap().to_owned();
            *want.entry((namespace.into(), image, policy.map(str::to_owned), reason.into())).or_default() += 1;
        }
        sent.push(uid);
    }
    assert!(hook.running.audit.settle(Duration::from_secs(10)));

    let files = logs(hook.dir.path());
    assert!(files.len() >= 3, "rotated at least twice: {files:?}");
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        let lines = std::fs::read_to_string(f).unwrap().lines().count() as u64;
        assert!(size <= 4096 || lines == 1, "{} holds {size} bytes in {lines} records", f.display());
    }
    let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();

    let (code, out, err) = provgate(&[&["audit", "--output", "json"], &args[..]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "nothing skipped: {err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let uids: Vec<&str> = report["records"].as_array().unwrap().iter().map(|r| r["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, sent, "every review once, in order, across the rotated files");
    let got: BTreeMap<Key, u64> = report["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = (
                r["namespace"].as_str().unwrap().to_owned(),
                r["image"].as_str().unwrap().to_owned(),
                r["policy"].as_str().map(str::to_owned),
                r["reason"].as_str().unwrap().to_owned(),
            );
            (key, r["count"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(got, want);

    let (code, table, err) = provgate(&[&["audit"], &args[..]].concat());
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE  IMAGE  "), "{table}");
    let rows: BTreeMap<Key, u64> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let policy = (cells[2] != "-").then(|| cells[2].to_owned());
            ((cells[0].into(), cells[1].into(), policy, cells[3].into()), cells[4].parse().unwrap())
        })
        .collect();
    assert_eq!(rows, want, "{table}");
    let denials: u64 = want.values().sum();
    assert_eq!(
        *lines.last().unwrap(),
        format!(
            "30 decisions matched ({} allow, {} warn, {} deny); {denials} denials in {} groups",
            decisions["allow"],
            decisions["warn"],
            decisions["deny"],
            want.len()
        )
    );
}

#[tokio::test]
async fn rotation_keeps_only_the_newest_files() {
    let hook = Webhook::start(&policies(), |c| {
        c.audit.max_bytes = 1024;
        c.audit.keep = 2;
    })
    .await;
    for i in 0..6 {
        hook.review(&pod(&format!("k-{i}"), "team-a", Some(EVIL))).await;
    }
    assert!(hook.running.audit.settle(Duration::from_secs(10)));
    let files = logs(hook.dir.path());
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]);
    // Each record is larger than maxBytes, so each file holds one: the newest three.
    let uids: Vec<String> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let record: Value = serde_json::from_str(text.trim_end()).unwrap();
            record["uid"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(uids, ["k-3", "k-4", "k-5"]);
}

/// One metric's value from a `/metrics` scrape, read with a Prometheus text-format parser.
fn metric(scrape: &str, name: &str) -> f64 {
    let lines = scrape.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
    let sample = parsed.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no {name} in {scrape}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

/// A FIFO at `path` and a handle on it that reads (opened read-write, so that opening it does not block and
/// provgate's writes land in the pipe until it is full).
fn fifo(path: &Path) -> std::fs::File {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success());
    std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
}

/// Reads `reader` on a thread until `lines` newlines came by; the lines, or a panic after 30 s.
fn read_lines(mut reader: std::fs::File, lines: usize) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 8192];
        while text.iter().filter(|b| **b == b'\n').count() < lines {
            let n = reader.read(&mut buf).unwrap();
            text.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(String::from_utf8(text).unwrap());
    });
    let text = rx.recv_timeout(Duration::from_secs(30)).expect("the stalled records arrive once the pipe is read");
    text.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_drops_and_counts_records_and_never_holds_up_admission() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.fifo");
    let reader = fifo(&path);
    let queue = 8;
    let hook = Webhook::start(&policies(), |c| {
        c.audit.log = Some(path.clone());
        c.audit.queue_size = queue;
    })
    .await;
    let (_, scrape) = hook.admin_get("/metrics").await;
    assert_eq!(metric(&scrape, "provgate_audit_records_dropped_total"), 0.0, "exported from the start");
    assert_eq!(metric(&scrape, "provgate_audit_records_written_total"), 0.0);

    // Nobody reads the pipe: once it (64 KiB) is full, the writer blocks, the queue fills, records are dropped.
    let sent = 300;
    let mut latencies = Vec::new();
    for i in 0..sent {
        let started = Instant::now();
        let response = hook.review(&pod(&format!("s-{i:03}"), "team-a", Some(EVIL))).await;
        latencies.push(started.elapsed());
        assert_eq!(response["allowed"], false);
    }
    // Figures only (not asserted): the reviews before the pipe filled against those while records were dropped.
    let median = |mut l: Vec<Duration>| {
        l.sort();
        l[l.len() / 2]
    };
    println!(
        "{sent} reviews, audit log stalled from about the 40th: median {:?} of reviews 1-30, {:?} of reviews 201-300, max {:?}",
        median(latencies[..30].to_vec()),
        median(latencies[200..].to_vec()),
        latencies.iter().max().unwrap()
    );
    let (_, scrape) = hook.admin_get("/metrics").await;
    let dropped = metric(&scrape, "provgate_audit_records_dropped_total") as usize;
    let written_while_stalled = metric(&scrape, "provgate_audit_records_written_total") as usize;
    assert!(dropped > 0 && dropped < sent - queue, "dropped {dropped} of {sent}");
    assert!(!hook.running.audit.settle(Duration::from_millis(200)), "the writer is stalled");

    // Draining the pipe lets the writer finish: every record not counted as dropped arrives, whole.
    let lines = read_lines(reader, sent - dropped);
    assert_eq!(lines.len(), sent - dropped);
    assert!(hook.running.audit.settle(Duration::from_secs(10)));
    let uids: Vec<String> =
        lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["uid"].as_str().unwrap().to_owned()).collect();
    assert!(uids.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {uids:?}");
    let (_, scrape) = hook.admin_get("/metrics").await;
    assert_eq!(metric(&scrape, "provgate_audit_records_dropped_total") as usize, dropped);
    let written = metric(&scrape, "provgate_audit_records_written_total") as usize;
    assert_eq!(written, sent - dropped);
    assert!(written >= written_while_stalled + queue, "the queued records were written after the stall");
}

/// The records of the reviews sent so far, by uid.
fn records_by_uid(hook: &Webhook) -> BTreeMap<String, Value> {
    hook.audit_records().into_iter().map(|r| (r["uid"].as_str().unwrap().to_owned(), r)).collect()
}

/// The record's image in `containers[0]`.
fn first_container(record: &Value) -> &Value {
    record["images"].as_array().unwrap().iter().find(|i| i["field"] == "spec.containers[0].image").unwrap()
}

#[tokio::test]
async fn warn_and_audit_mode_records_name_the_mode_and_policy_of_each_failure() {
    let hook = Webhook::start(&policies(), |c| c.no_match = provgate::decide::NoMatch::Warn).await;
    let cases = [
        ("w", Some(CANARY)),
        ("a", Some(SHADOW)),
        ("d", Some(PINNED_TAG)),
        ("ok", Some(PINNED_DIGEST)),
        ("mixed", Some(CANARY_STRICT)),
        ("nomatch", Some(EVIL)),
    ];
    for (uid, image) in cases {
        hook.review(&pod(uid, "team-a", image)).await;
    }
    let records = records_by_uid(&hook);
    let failures = |uid: &str| first_container(&records[uid])["failures"].clone();
    let outcome = |uid: &str| {
        let i = first_container(&records[uid]);
        (records[uid]["decision"].as_str().unwrap(), i["outcome"].as_str().unwrap(), i["reason"].clone())
    };

    assert_eq!(outcome("w"), ("warn", "warned", json!("validation-failed")));
    let f = failures("w");
    assert_eq!(
        (&f[0]["policy"], &f[0]["mode"], &f[0]["reason"]),
        (&json!("canary"), &json!("warn"), &json!("validation-failed"))
    );
    assert!(f[0]["message"].as_str().unwrap().contains("only vetted tags"), "{f}");

    assert_eq!(outcome("a"), ("allow", "audited", json!("validation-failed")));
    let f = failures("a");
    assert_eq!((&f[0]["policy"], &f[0]["mode"]), (&json!("shadow"), &json!("audit")));
    assert_eq!(f.as_array().unwrap().len(), 1);

    assert_eq!(outcome("d"), ("deny", "denied", json!("tag-not-pinned")));
    let f = failures("d");
    assert_eq!(
        (&f[0]["policy"], &f[0]["mode"], &f[0]["reason"]),
        (&json!("pinned"), &json!("enforce"), &json!("tag-not-pinned"))
    );

    // The twin pinned by digest passes: no failures, nothing said.
    assert_eq!(outcome("ok"), ("allow", "allowed", Value::Null));
    assert!(first_container(&records["ok"]).get("failures").is_none(), "{}", records["ok"]);

    // A warn-mode failure listed first does not name the denial: the enforced one decides the outcome.
    assert_eq!(outcome("mixed"), ("deny", "denied", json!("tag-not-pinned")));
    let modes: Vec<(Value, Value, Value)> = failures("mixed")
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["policy"].clone(), f["mode"].clone(), f["reason"].clone()))
        .collect();
    assert_eq!(
        modes,
        [
            (json!("canary"), json!("warn"), json!("validation-failed")),
            (json!("strict"), json!("enforce"), json!("tag-not-pinned"))
        ]
    );

    // noMatch: warn is a warning under no policy.
    assert_eq!(outcome("nomatch"), ("warn", "warned", json!("no-policy")));
    let f = failures("nomatch");
    assert!(f[0].get("policy").is_none(), "{f}");
    assert_eq!((&f[0]["mode"], &f[0]["reason"]), (&json!("warn"), &json!("no-policy")));
}

// ---------------------------------------------------------------- log lines of the binary

/// `provgate serve` with the fixture policies, its stderr piped; returns the child and its first log lines up to the
/// one saying it serves (raw bytes, as written), and the CA and webhook URL.
struct Served {
    child: std::process::Child,
    stderr: BufReader<std::process::ChildStderr>,
    _dir: tempfile::TempDir,
    ca_pem: String,
}

impl Served {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with_audit(args, env, None)
    }

    /// [`Served::start`] with `audit` (YAML) as the config's `audit` section (default: a file in its directory).
    fn start_with_audit(args: &[&str], env: &[(&str, &str)], audit: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir(&policy_dir).unwrap();
        for (file, text) in policies() {
            std::fs::write(policy_dir.join(file), text).unwrap();
        }
        let generated = provgate::certs::generate(&["localhost".into()], &["127.0.0.1".parse().unwrap()]).unwrap();
        provgate::certs::write(&dir.path().join("certs"), &generated).unwrap();
        let (_, cert, key) = provgate::certs::paths(&dir.path().join("certs"));
        let config = dir.path().join("provgate.yaml");
        let text = format!(
            "listen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\npolicies: {}\ntls: {{certFile: {}, keyFile: {}}}\naudit: {}\n",
            policy_dir.display(),
            cert.display(),
            key.display(),
            audit.map_or_else(|| format!("{{log: {}}}", dir.path().join("audit.jsonl").display()), str::to_owned)
        );
        std::fs::write(&config, text).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_provgate"));
        command.arg("serve").arg("--config").arg(&config).args(args).env_remove("RUST_LOG");
        command.env_remove("PROVGATE_LOG_FORMAT");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        Self { child, stderr, _dir: dir, ca_pem: generated.ca_pem }
    }

    /// Lines of standard error up to and including the first containing `needle`.
    fn lines_until(&mut self, needle: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(self.stderr.read_line(&mut line).unwrap() > 0, "stderr ended before {needle:?}: {lines:?}");
            let done = line.contains(needle);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Stops the server (SIGKILL) and returns the rest of its standard error.
    fn stop(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        rest
    }
}

#[test]
fn log_lines_are_json_when_piped_and_never_carry_ansi_codes() {
    const JSON_SERVING: &str = r#""message":"serving""#;
    const TEXT_SERVING: &str = ": serving https=";
    for (args, env, json) in [
        (vec![], vec![], true),
        (vec!["--log-format", "json"], vec![], true),
        (vec![], vec![("PROVGATE_LOG_FORMAT", "text")], false),
        (vec!["--log-format", "text"], vec![], false),
    ] {
        let mut served = Served::start(&args, &env);
        let lines = served.lines_until(if json { JSON_SERVING } else { TEXT_SERVING });
        let rest = served.stop();
        let all: Vec<&str> = lines.iter().map(String::as_str).chain(rest.lines()).collect();
        assert!(all.len() >= 2, "{args:?} {env:?}: {all:?}");
        for line in &all {
            assert!(!line.contains('\u{1b}'), "{args:?} {env:?}: ANSI in {line:?}");
            if json {
                let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{args:?}: {line:?}: {e}"));
                assert!(value["level"].is_string() && value["message"].is_string(), "{line}");
            } else {
                assert!(serde_json::from_str::<Value>(line).is_err(), "{args:?} {env:?}: {line}");
            }
        }
        let serving = lines.last().unwrap();
        if json {
            let value: Value = serde_json::from_str(serving).unwrap();
            assert_eq!((value["level"].as_str(), value["message"].as_str()), (Some("INFO"), Some("serving")));
            assert!(value["https"].as_str().unwrap().starts_with("127.0.0.1:"), "{value}");
        } else {
            assert!(serving.contains(" INFO ") && serving.contains(": serving https=127.0.0.1:"), "{serving}");
        }
    }
}

#[tokio::test]
async fn a_review_logs_nothing_at_the_default_level_and_a_line_at_debug() {
    for (rust_log, logged) in [(None, false), (Some("provgate=debug"), true)] {
        let env: Vec<(&str, &str)> = rust_log.map(|l| ("RUST_LOG", l)).into_iter().collect();
        let mut served = Served::start(&[], &env);
        let serving: Value =
            serde_json::from_str(served.lines_until(r#""message":"serving""#).last().unwrap()).unwrap();
        let client = https_client(served.ca_pem.as_bytes());
        let url =
            format!("https://localhost:{}/validate", serving["https"].as_str().unwrap().rsplit(':').next().unwrap());
        let uid = "log-probe-0001";
        let sent = serde_json::to_vec(&pod(uid, "team-a", Some(EVIL))).unwrap();
        let response = client.post(&url).header("content-type", "application/json").body(sent).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let rest = served.stop();
        assert_eq!(rest.contains(uid), logged, "RUST_LOG={rust_log:?}: {rest}");
        for line in rest.lines().filter(|l| l.contains(uid)) {
            let value: Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["level"], "DEBUG", "only debug lines name a review: {line}");
        }
    }
}

#[tokio::test]
async fn a_full_queue_is_logged_once_per_ten_seconds_not_once_per_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.fifo");
    let _reader = fifo(&path);
    let audit = format!("{{log: {}, queueSize: 1}}", path.display());
    let mut served = Served::start_with_audit(&[], &[], Some(&audit));
    let serving: Value = serde_json::from_str(served.lines_until(r#""message":"serving""#).last().unwrap()).unwrap();
    let client = https_client(served.ca_pem.as_bytes());
    let port = serving["https"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}/validate");
    let started = Instant::now();
    let sent = 200;
    for i in 0..sent {
        let body = serde_json::to_vec(&pod(&format!("f-{i:03}"), "team-a", Some(EVIL))).unwrap();
        let response = client.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let elapsed = started.elapsed();
    let admin = serving["admin"].as_str().unwrap();
    let scrape = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    let dropped = metric(&scrape, "provgate_audit_records_dropped_total");
    let rest = served.stop();
    let full: Vec<Value> = rest
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["message"].as_str().unwrap_or_default().starts_with("audit queue full"))
        .collect();
    let most = 1 + elapsed.as_secs() / 10;
    assert!(dropped >= 100.0, "the 64 KiB pipe and a queue of one hold well under 100 records: {dropped}");
    assert!(!full.is_empty() && full.len() as u64 <= most, "{} lines in {elapsed:?}: {full:?}", full.len());
    assert_eq!((full[0]["level"].as_str(), full[0]["dropped"].as_u64()), (Some("WARN"), Some(1)), "{}", full[0]);
    assert_eq!((full[0]["queue_size"].as_u64()), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_log_and_does_not_hang_on_a_stalled_one() {
    let hook = Webhook::start(&policies(), |_| {}).await;
    for i in 0..20 {
        hook.review(&pod(&format!("x-{i:02}"), "team-a", Some(EVIL))).await;
    }
    let Webhook { running, dir, .. } = hook;
    tokio::time::timeout(Duration::from_secs(30), running.shutdown()).await.unwrap();
    let written = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(written.lines().count(), 20, "every record is written by the end of shutdown");

    let fifo_dir = tempfile::tempdir().unwrap();
    let path = fifo_dir.path().join("audit.fifo");
    let _reader = fifo(&path);
    let hook = Webhook::start(&policies(), |c| c.audit.log = Some(path.clone())).await;
    for i in 0..200 {
        hook.review(&pod(&format!("y-{i:03}"), "team-a", Some(EVIL))).await;
    }
    assert!(!hook.running.audit.settle(Duration::from_millis(200)), "the writer is stalled");
    tokio::time::timeout(Duration::from_secs(30), hook.running.shutdown()).await.expect("shutdown gives up on the log");
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_with_every_record_written() {
    let mut served = Served::start(&[], &[]);
    let serving: Value = serde_json::from_str(served.lines_until(r#""message":"serving""#).last().unwrap()).unwrap();
    let client = https_client(served.ca_pem.as_bytes());
    let url = format!("https://localhost:{}/validate", serving["https"].as_str().unwrap().rsplit(':').next().unwrap());
    let uids: Vec<String> = (0..5).map(|i| format!("term-probe-{i}")).collect();
    for uid in &uids {
        let sent = serde_json::to_vec(&pod(uid, "team-a", Some(EVIL))).unwrap();
        let response = client.post(&url).header("content-type", "application/json").body(sent).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let pid = served.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "provgate did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    served.stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "a SIGTERM is a clean stop (exit 0), not a death by signal: {status:?}\n{rest}");
    assert!(rest.contains(r#""signal":"SIGTERM""#), "{rest}");
    let written = std::fs::read_to_string(served._dir.path().join("audit.jsonl")).unwrap();
    for uid in &uids {
        assert!(written.contains(uid.as_str()), "{uid} is in the log after the stop: {written}");
    }
}

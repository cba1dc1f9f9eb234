//! `provgate audit` on a log the real webhook wrote: reviews go through real HTTPS, then the real binary reads the
//! log (plain, gzip-rotated, on standard input) and its table, JSON and `show` are checked exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::webhook::{Webhook, policy, review};

const EVIL: &str = "quay.io/evil/miner:latest";

/// The binary's exit code, standard output and standard error.
fn audit(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_provgate"))
        .arg("audit")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// A review with its own uid, in `namespace`, with `image` (if any) as its first container.
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

/// The table's rows as their whitespace-separated cells, without the header and the closing line.
fn table_rows(out: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE  IMAGE"), "{out}");
    lines[1..lines.len() - 1].iter().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Drives six reviews: two allowed, three denials of the ungoverned image in team-a, one in team-b.
async fn produce_log() -> (Webhook, Vec<u8>) {
    let policies = vec![("team.yaml", policy("team", "enforce", &["registry.example.com/team/**"]))];
    let hook = Webhook::start(&policies, |_| {}).await;
    let reviews = [
        (pod("a-1", "team-a", None), true),
        (pod("d-1", "team-a", Some(EVIL)), false),
        (pod("d-2", "team-a", Some(EVIL)), false),
        (pod("a-2", "team-b", None), true),
        (pod("d-3", "team-a", Some(EVIL)), false),
        (pod("d-4", "team-b", Some(EVIL)), false),
    ];
    for (r, allowed) in &reviews {
        let response = hook.review(r).await;
        assert_eq!(response["allowed"], *allowed, "{response}");
    }
    assert_eq!(hook.audit_records().len(), reviews.len());
    let log = std::fs::read(hook.dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(log.iter().filter(|b| **b == b'\n').count(), reviews.len());
    (hook, log)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn audit_reads_what_the_webhook_wrote() {
    let (hook, log) = produce_log().await;
    let plain = hook.dir.path().join("audit.jsonl");
    // A copy for the README session.
    let _ = std::fs::write(std::env::temp_dir().join("provgate-audit-demo.jsonl"), &log);

    // The summary: denials grouped by namespace, image, policy and reason, the most frequent first.
    let (code, out, err) = audit(&[path(&plain)], None);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0][..5], ["team-a", EVIL, "-", "no-policy", "3"], "{out}");
    assert_eq!(rows[1][..5], ["team-b", EVIL, "-", "no-policy", "1"], "{out}");
    assert!(out.ends_with("6 decisions matched (2 allow, 0 warn, 4 deny); 4 denials in 2 groups\n"), "{out}");

    // The same as JSON, from a gzip-rotated copy and the live log together: every count doubles.
    let gz = hook.dir.path().join("audit.jsonl.1.gz");
    std::fs::write(&gz, gzip(&log)).unwrap();
    let (code, out, err) = audit(&["--output", "json", "--log", path(&gz), "--log", path(&plain)], None);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let json: Value = serde_json::from_str(&out).unwrap();
    let summary: Vec<(&str, &str, u64)> = json["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["namespace"].as_str().unwrap(), r["reason"].as_str().unwrap(), r["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(summary, [("team-a", "no-policy", 6), ("team-b", "no-policy", 2)]);
    assert_eq!(json["summary"][0]["image"], EVIL);
    assert_eq!(json["summary"][0]["policy"], Value::Null);
    assert!(json["summary"][0]["firstSeen"].as_str().unwrap() <= json["summary"][0]["lastSeen"].as_str().unwrap());
    assert_eq!(json["records"].as_array().unwrap().len(), 12);
    assert!(json["records"].as_array().unwrap().iter().all(|r| r["v"] == 1));

    // Standard input, with filters, and a truncated last line that is skipped with one warning.
    let mut cut = log.clone();
    cut.extend_from_slice(&log[..log.len() / 12]);
    let (code, out, err) = audit(&["-", "--namespace", "team-a", "--denied", "--output", "json"], Some(&cut));
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "provgate: warning: skipped 1 line that is not a decision record (truncated, or other output)\n");
    let json: Value = serde_json::from_str(&out).unwrap();
    let uids: Vec<&str> = json["records"].as_array().unwrap().iter().map(|r| r["uid"].as_str().unwrap()).collect();
    assert_eq!(uids, ["d-1", "d-2", "d-3"]);
    assert_eq!(json["summary"].as_array().unwrap().len(), 1);
    assert_eq!(json["summary"][0]["count"], 3);
    // A gzip stream on standard input works too.
    let (code, out, _) = audit(&["-", "--decision", "allow", "--output", "json"], Some(&gzip(&log)));
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["records"].as_array().unwrap().len(), 2);
    assert_eq!(json["summary"], json!([]));
    let (code, out, _) = audit(&[path(&plain), "--image", "registry.example.com/team/*", "--output", "json"], None);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["records"].as_array().unwrap().len(), 6);

    // One decision in full.
    let (code, out, err) = audit(&["show", "d-4", "--log", path(&plain)], None);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert!(out.starts_with("decision d-4: deny at "), "{out}");
    assert!(out.contains("  request:  CREATE Pod team-b/web-7d9c5b6f4-x2k8q by kubernetes-admin\n"), "{out}");
    assert!(out.contains(&format!("  image {EVIL}\n    field:    spec.containers[0].image\n")), "{out}");
    assert!(out.contains("    outcome:  denied (no-policy)\n"), "{out}");
    assert!(
        out.contains("    failed:   spec.containers[0].image \"quay.io/evil/miner:latest\": no ImagePolicy matches"),
        "{out}"
    );
    let record: Value = std::str::from_utf8(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["uid"] == "d-4")
        .unwrap();
    let images = record["images"].as_array().unwrap();
    assert!(images.len() > 1);
    assert_eq!(out.matches("\n  image ").count(), images.len(), "every image of the pod is shown: {out}");
    for image in images {
        assert!(out.contains(&format!("  image {}\n", image["ref"].as_str().unwrap())), "{image}: {out}");
    }

    // The log may also come before `show`, and `show` answers in JSON too.
    let (code, json, _) = audit(&[path(&plain), "show", "d-4", "--output", "json"], None);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), json!([record]));

    // Usage errors and unreadable logs exit with 2.
    assert_eq!(audit(&["show", "nope", "--log", path(&plain)], None).0, 2);
    assert_eq!(audit(&[path(&plain), "--since", "soon"], None).0, 2);
    assert_eq!(audit(&[path(&hook.dir.path().join("missing.jsonl"))], None).0, 2);
    assert_eq!(audit(&[], None).0, 2);
}

//! provgate's load benchmark and soak, against a real Debian docker-registry (and ferro-oci-server, whose own CPU
//! stays off provgate's cores, for the cold images, the burst and the 10-image Pod) and provgate run as its own
//! process.
//!
//! - `cargo bench --bench load`: every figure of the performance issue, each beside its target; exits non-zero when
//!   a target is missed. `-- --duration SECS` sets the length of each throughput run (default 5).
//! - `cargo bench --bench load -- --soak SECS [--rate N]`: a bounded mix of signed, unsigned and tag references at
//!   N reviews/s (default 1000), with a certificate rotation and a policy reload half way; reports errors, p99 and
//!   RSS over time, and fails on any error or on RSS growth.
//! - Without `--bench` (as `cargo test --all-targets` runs it): a smoke run of a few checked reviews.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/support/mod.rs"]
mod support;

mod client;
mod fixtures;
mod proxy;
mod server;
mod soak;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use client::{Expect, Target, closed_loop, quantile_ms};
use fixtures::{Pusher, REPO, Signer};
use proxy::Proxy;
use server::{CpuSample, Provgate, Setup};

/// Options from the command line.
struct Options {
    full: bool,
    soak: Option<u64>,
    rate: u64,
    duration: Duration,
    entries: usize,
    /// `--only a,b`: run only these parts of the bench (warm, deny, cold, rounds, flight, burst, pod10, rss,
    /// uncached); all when absent.
    only: Option<Vec<String>>,
}

impl Options {
    fn runs(&self, part: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|p| p == part))
    }
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str);
    Options {
        full: args.iter().any(|a| a == "--bench"),
        soak: value("--soak").map(|s| s.parse().expect("--soak SECONDS")),
        rate: value("--rate").map_or(1000, |s| s.parse().expect("--rate REVIEWS_PER_SECOND")),
        duration: Duration::from_secs_f64(value("--duration").map_or(5.0, |s| s.parse().expect("--duration SECONDS"))),
        entries: value("--entries").map_or(10_000, |s| s.parse().expect("--entries N")),
        only: value("--only").map(|s| s.split(',').map(str::to_owned).collect()),
    }
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let opts = options();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ok = runtime.block_on(async {
        match (opts.soak, opts.full) {
            (Some(secs), _) => soak::run(Duration::from_secs(secs), opts.rate).await,
            (None, true) => bench(&opts).await,
            (None, false) => smoke().await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    if !ok {
        std::process::exit(1);
    }
}

/// The policy every bench instance serves: a signature by the bench key on every image.
pub fn policy(name: &str, key: &Path, images: &str) -> String {
    format!(
        "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: enforce\n  \
         match:\n    images: [\"{images}\"]\n  authorities:\n    - name: bench\n      key: {}\n  require:\n    \
         signature: true\n",
        key.display()
    )
}

/// A Pod CREATE review running `images`, as a body.
pub fn pod(images: &[String]) -> Bytes {
    static TEMPLATE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let mut review = TEMPLATE
        .get_or_init(|| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission/pod-create.json");
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        })
        .clone();
    let containers: Vec<Value> =
        images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect();
    review["request"]["object"]["spec"] = json!({"containers": containers});
    Bytes::from(serde_json::to_vec(&review).unwrap())
}

/// `host/bench/app@digest`.
pub fn by_digest(host: &str, digest: &str) -> String {
    format!("{host}/{REPO}@{digest}")
}

/// `host/bench/app:tag`.
pub fn by_tag(host: &str, tag: &str) -> String {
    format!("{host}/{REPO}:{tag}")
}

/// Writes the bench key next to provgate's files.
pub fn key_file(dir: &Path, signer: &Signer) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("cosign.pub");
    std::fs::write(&path, signer.public_pem()).unwrap();
    path
}

/// One line of the table: what, the figure, its target, and whether it is met (`None`: no target).
struct Row {
    figure: String,
    measured: String,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn row(&mut self, figure: impl Into<String>, measured: impl Into<String>, target: &str, met: Option<bool>) {
        let row = Row { figure: figure.into(), measured: measured.into(), target: target.to_owned(), met };
        eprintln!("  {} | {} | {}", row.figure, row.measured, row.target);
        self.0.push(row);
    }

    fn print(&self) -> bool {
        println!("| figure | measured | target | |");
        println!("|---|---|---|---|");
        for r in &self.0 {
            let mark = match r.met {
                Some(true) => "ok",
                Some(false) => "**MISSED**",
                None => "",
            };
            println!("| {} | {} | {} | {} |", r.figure, r.measured, r.target, mark);
        }
        let missed: Vec<&str> = self.0.iter().filter(|r| r.met == Some(false)).map(|r| r.figure.as_str()).collect();
        if missed.is_empty() {
            println!("\nevery target met");
        } else {
            println!("\n{} target(s) missed: {}", missed.len(), missed.join("; "));
        }
        missed.is_empty()
    }
}

/// Alternating rounds of the 1-image and 3-image Pods over which server CPU per review is measured.
const CPU_ROUNDS: usize = 5;

/// Rounds of the uncached deny.
const UNCACHED_ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("{cores} cores, {cpu}; load average {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

const MB: f64 = 1024.0 * 1024.0;

/// Timed review of one body on a fresh connection; (latency ms, requests the proxy saw).
async fn cold(target: &Target, proxy: &Proxy, body: Bytes, expect: Expect) -> (f64, u64) {
    let (mut conn, _) = target.connect().await.unwrap();
    let before = proxy.count();
    let t = Instant::now();
    conn.review(body, expect).await.unwrap();
    (t.elapsed().as_secs_f64() * 1000.0, proxy.count() - before)
}

/// A connection for each of `n` reviews, opened (TLS handshake and all) before a burst.
async fn connections(target: &Target, n: usize) -> Vec<client::Conn> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(target.connect().await.unwrap().0);
    }
    conns
}

/// Reviews every body at once, each on its own connection of `conns` (opened before); the wall time in ms.
async fn burst(conns: Vec<client::Conn>, bodies: Vec<Bytes>, expect: Expect) -> f64 {
    let t = Instant::now();
    let jobs = conns.into_iter().zip(bodies).map(|(mut c, b)| async move { c.review(b, expect).await });
    for r in futures::future::join_all(jobs).await {
        r.unwrap();
    }
    t.elapsed().as_secs_f64() * 1000.0
}

async fn smoke() -> bool {
    let registry = support::registry::DockerRegistry::start(support::registry::Auth::None);
    let pusher = Pusher::new(&registry.addr);
    let signer = Signer::new();
    let counting = Proxy::start(&registry.addr, Duration::ZERO).await;
    let through = signer.at(&counting.addr);
    let signed = pusher.images("smoke-signed", 2, Some(through)).await;
    let annotated = pusher.images("smoke-annotated", 1, Some(through.annotated())).await;
    let unsigned = pusher.images("smoke-unsigned", 1, None).await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), &signer);
    let policies = [("bench.yaml", policy("bench", &key, "**"))];
    let hosts = [registry.addr.as_str(), counting.addr.as_str()];
    let pg = Provgate::start(dir.path(), &Setup { hosts: &hosts, policies: &policies, extra: "" });
    let target = Target::new(&pg.url_host, &pg.ca_pem);
    let mut table = Table::default();
    // The first image through a registry also learns that it has no referrers API.
    cold(&target, &counting, pod(&[by_digest(&counting.addr, &signed[0])]), Expect::Allow).await;
    counting.take_log();
    // cosign's default payload is known by its digest; an annotated one is read.
    for (what, image, most) in [("", &signed[1], 2), (", annotated payload", &annotated[0], 3)] {
        let (ms, requests) = cold(&target, &counting, pod(&[by_digest(&counting.addr, image)]), Expect::Allow).await;
        eprintln!("registry requests of a cold signed image{what}: {:?}", counting.take_log());
        table.row(
            format!("cold signed image by digest{what}: registry requests"),
            format!("{requests} ({ms:.1} ms)"),
            &format!("≤ {most}"),
            Some(requests <= most),
        );
    }
    let allowed = closed_loop(
        &target,
        1,
        Duration::from_secs(5),
        5,
        pod(&[by_digest(&registry.addr, &signed[0])]),
        Expect::Allow,
    )
    .await;
    let denied = closed_loop(
        &target,
        1,
        Duration::from_secs(5),
        5,
        pod(&[by_digest(&registry.addr, &unsigned[0])]),
        Expect::Deny("unsigned"),
    )
    .await;
    for (what, run) in [("signed image admitted", &allowed), ("unsigned image denied", &denied)] {
        let fine = run.errors == 0 && run.ok == 5;
        table.row(what, format!("{} of 5 ({:?})", run.ok, run.first_error), "5 of 5", Some(fine));
    }
    println!("smoke run (`cargo bench --bench load` runs the benchmark):");
    table.print()
}

async fn bench(opts: &Options) -> bool {
    let started = Instant::now();
    let dur = opts.duration;
    println!("machine: {}", machine());
    let registry = support::registry::DockerRegistry::start(support::registry::Auth::None);
    let pusher = Pusher::new(&registry.addr);
    let signer = Signer::new();
    let counting = Proxy::start(&registry.addr, Duration::ZERO).await;
    let delayed = Proxy::start(&registry.addr, Duration::from_millis(20)).await;
    // A registry whose own CPU stays off provgate's cores: ferro-oci-server spends tens of µs of CPU on a request where
    // docker-registry spends 1 to 1.5 ms (3 ms on a blob), which on these two cores would set the pace of a cold
    // image and of a burst. Reached directly (counted) and with each answer held 20 ms.
    let ferro = support::registry::Ferro::start();
    let remote = Proxy::start(&ferro.addr, Duration::from_millis(20)).await;
    let ferro_counting = Proxy::start(&ferro.addr, Duration::ZERO).await;
    let t = Instant::now();
    // Each image is signed as cosign signs it, naming the registry as provgate reaches it (directly, through the
    // counting proxy or through the delaying one).
    let (direct, counted, far) = (signer.at(&registry.addr), signer.at(&counting.addr), signer.at(&delayed.addr));
    let warm = pusher.images("warm", 3, Some(direct)).await;
    let unsigned = pusher.images("unsigned", 1, None).await;
    let primer = pusher.images("primer-d", 1, Some(far)).await;
    let nearby = [
        Nearby::push(&Pusher::new(&ferro.addr), ferro_counting, ferro.pid(), &signer, "ferro-oci-server", true).await,
        Nearby::push(&pusher, counting.clone(), registry.pid(), &signer, "docker-registry", false).await,
    ];
    let round_d = pusher.images("round-d", 3, Some(far)).await;
    let round_t = pusher.images("round-t", 3, Some(far)).await;
    let flight = pusher.images("flight", 1, Some(counted)).await;
    let distant = [
        Distant::push(&Pusher::new(&ferro.addr), remote, &signer, "ferro-oci-server", true).await,
        Distant::push(&pusher, delayed.clone(), &signer, "docker-registry", false).await,
    ];
    let pushed = [&warm, &unsigned, &primer, &round_d, &round_t, &flight].iter().map(|set| set.len()).sum::<usize>()
        + nearby.iter().map(Nearby::images).sum::<usize>()
        + distant.iter().map(Distant::images).sum::<usize>();
    eprintln!("pushed {pushed} images in {:.1} s", t.elapsed().as_secs_f64());

    let work = tempfile::tempdir().unwrap();
    let key = key_file(work.path(), &signer);
    let policies = [("bench.yaml", policy("bench", &key, "**"))];
    let hosts = [
        registry.addr.as_str(),
        counting.addr.as_str(),
        delayed.addr.as_str(),
        distant[0].proxy.addr.as_str(),
        nearby[0].proxy.addr.as_str(),
    ];
    let mut pg = Provgate::start(&work.path().join("a"), &Setup { hosts: &hosts, policies: &policies, extra: "" });
    let target = Target::new(&pg.url_host, &pg.ca_pem);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = pg.rss() as f64 / MB;
    let mut table = Table::default();
    // The requests of one cold image by digest (measured by the `cold` part).
    let mut cold_requests = 2;

    // Warm: every image verified and cached; digests, so no registry request at all.
    if opts.runs("warm") {
        let one = pod(&[by_digest(&registry.addr, &warm[0])]);
        let three = pod(&warm.iter().map(|d| by_digest(&registry.addr, d)).collect::<Vec<_>>());
        for (label, body) in [("1-image", &one), ("3-image", &three)] {
            closed_loop(&target, 1, dur, 200, body.clone(), Expect::Allow).await;
            for conns in [1usize, 16, 64] {
                let mut run = closed_loop(&target, conns, dur, u64::MAX, body.clone(), Expect::Allow).await;
                assert_eq!(run.errors, 0, "{label} at {conns}: {:?}", run.first_error);
                let (p50, p99, rate) = (run.quantile(0.5), run.quantile(0.99), run.rate());
                let measured = format!("{rate:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
                let figure = format!("warm reviews/s, {label} Pod, {conns} conn{}", if conns == 1 { "" } else { "s" });
                if conns == 16 && label == "1-image" {
                    table.row(figure, measured, "≥ 10,000/s, p99 ≤ 4 ms", Some(rate >= 10_000.0 && p99 <= 4.0));
                } else {
                    table.row(figure, measured, "", None);
                }
            }
        }
        // Server CPU per review, the two Pods measured in alternating rounds at 16 connections: on a shared machine
        // the CPU a review costs drifts from one second to the next, and a ratio of two runs far apart measures
        // the drift. The median round is reported.
        let mut cpu_one = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..CPU_ROUNDS {
            let mut per = [0.0f64; 2];
            for (i, body) in [&one, &three].into_iter().enumerate() {
                let cpu0 = pg.cpu();
                let run = closed_loop(&target, 16, dur / 2, u64::MAX, body.clone(), Expect::Allow).await;
                assert_eq!(run.errors, 0, "CPU round: {:?}", run.first_error);
                per[i] = pg.cpu().since(&cpu0) as f64 / 1e6 / run.ok as f64;
            }
            cpu_one.push(per[0]);
            ratios.push(per[1] / per[0]);
        }
        let spread =
            |v: &[f64]| (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max));
        let ((cpu_lo, cpu_hi), (ratio_lo, ratio_hi)) = (spread(&cpu_one), spread(&ratios));
        let (cpu, ratio) = (median(cpu_one), median(ratios));
        table.row(
            "server CPU per cached review (1-image, 16 conns)",
            format!("{cpu:.3} ms (median of {CPU_ROUNDS} rounds, {cpu_lo:.3}–{cpu_hi:.3})"),
            "≤ 0.05 ms",
            Some(cpu <= 0.05),
        );
        table.row(
            "warm 3-image Pod ÷ 1-image Pod (server CPU per review)",
            format!("{ratio:.2}× (median of {CPU_ROUNDS} alternating rounds, {ratio_lo:.2}–{ratio_hi:.2})"),
            "≤ 1.2×",
            Some(ratio <= 1.2),
        );
    }

    // The unsigned-image deny path (the negative answer cached).
    if opts.runs("deny") {
        let deny = pod(&[by_digest(&registry.addr, &unsigned[0])]);
        closed_loop(&target, 1, dur, 10, deny.clone(), Expect::Deny("unsigned")).await;
        let mut run = closed_loop(&target, 16, dur, u64::MAX, deny.clone(), Expect::Deny("unsigned")).await;
        assert_eq!(run.errors, 0, "unsigned: {:?}", run.first_error);
        let rate = run.rate();
        table.row(
            "unsigned-image deny, 16 conns",
            format!("{rate:.0}/s, p99 {:.2} ms", run.quantile(0.99)),
            "≥ 3,000/s",
            Some(rate >= 3000.0),
        );
    }

    // Cold, sequential, through a counting proxy (after one image taught provgate the registry's API), on each
    // registry: the latency target is read on ferro-oci-server, whose own CPU per request is tens of microseconds;
    // docker-registry's figures are printed beside, with the CPU docker-registry itself spent on each image.
    if opts.runs("cold") {
        for near in &nearby {
            let name = near.name;
            cold(&target, &near.proxy, pod(&[by_digest(&near.proxy.addr, &near.primer)]), Expect::Allow).await;
            near.proxy.take_log();
            let addr = &near.proxy.addr;
            for (what, refs, max_requests) in [
                ("digest", near.digest.iter().map(|d| by_digest(addr, d)).collect::<Vec<_>>(), 3u64),
                ("digest, annotated payload", near.annotated.iter().map(|d| by_digest(addr, d)).collect(), 3),
                ("tag", (0..near.tagged).map(|i| by_tag(addr, &format!("cold-t-{i}"))).collect(), 4),
            ] {
                let mut latencies = Vec::new();
                let mut requests = Vec::new();
                let registry_cpu = CpuSample::of(near.pid);
                for image in &refs {
                    let (ms, n) = cold(&target, &near.proxy, pod(std::slice::from_ref(image)), Expect::Allow).await;
                    latencies.push((ms * 1000.0) as u32);
                    requests.push(n);
                }
                let registry_ms = CpuSample::of(near.pid).since(&registry_cpu) as f64 / 1e6 / refs.len() as f64;
                let log = near.proxy.take_log();
                eprintln!(
                    "registry requests of one cold image by {what} ({name}): {:?}",
                    &log[..log.len().min(requests[0] as usize)]
                );
                let most = *requests.iter().max().unwrap();
                if what == "digest" && !near.targets {
                    cold_requests = most;
                }
                let p50 = quantile_ms(&mut latencies, 0.5);
                let (goal, met) = if near.targets {
                    (format!("≤ 5 ms, ≤ {max_requests} requests"), p50 <= 5.0 && most <= max_requests)
                } else {
                    (format!("≤ {max_requests} requests"), most <= max_requests)
                };
                table.row(
                    format!("cold image by {what}, sequential ({name}): p50 latency, registry requests"),
                    format!("{p50:.1} ms, {most} requests ({name} itself: {registry_ms:.1} ms of CPU per image)"),
                    &goal,
                    Some(met),
                );
            }
        }
    }

    // Sequential rounds: each registry answer held 20 ms.
    if opts.runs("rounds") {
        cold(&target, &delayed, pod(&[by_digest(&delayed.addr, &primer[0])]), Expect::Allow).await;
        for (what, refs, max_rounds) in [
            ("digest", round_d.iter().map(|d| by_digest(&delayed.addr, d)).collect::<Vec<_>>(), 2.0),
            ("tag", (0..round_t.len()).map(|i| by_tag(&delayed.addr, &format!("round-t-{i}"))).collect(), 3.0),
        ] {
            let mut ms = Vec::new();
            for image in refs {
                ms.push(cold(&target, &delayed, pod(&[image]), Expect::Allow).await.0);
            }
            let rounds = (median(ms.clone()) / 20.0).floor();
            table.row(
                format!("cold image by {what}: sequential registry rounds (20 ms each)"),
                format!("{rounds} ({:.1} ms)", median(ms)),
                &format!("≤ {max_rounds}"),
                Some(rounds <= max_rounds),
            );
        }
    }

    // 100 concurrent reviews of one new image: one fetch per artifact.
    if opts.runs("flight") {
        let before = counting.count();
        burst(connections(&target, 100).await, vec![pod(&[by_digest(&counting.addr, &flight[0])]); 100], Expect::Allow)
            .await;
        let n = counting.count() - before;
        table.row(
            "registry requests for 100 concurrent reviews of one new image",
            format!("{n}"),
            &format!("= one cold image's ({cold_requests})"),
            Some(n == cold_requests),
        );
    }

    // 20 distinct cold images at once, against one alone; registry answers held 20 ms.
    if opts.runs("burst") {
        for far in &distant {
            far.prime(&target).await;
            let mut ratios = Vec::new();
            let mut cpu_per_image = Vec::new();
            let mut cpu_per_handshake = Vec::new();
            let mut walls = Vec::new();
            for (r, images) in far.bursts.iter().enumerate() {
                let (alone_ms, _) = cold(&target, &far.proxy, far.pod(&far.alone[r..=r]), Expect::Allow).await;
                let bodies = images.iter().map(|d| far.pod(std::slice::from_ref(d))).collect();
                // The API server keeps its connections to a webhook open: a connection's TLS handshake is counted
                // on its own, not as part of the images reviewed over it.
                let cpu0 = pg.cpu();
                let conns = connections(&target, images.len()).await;
                let cpu1 = pg.cpu();
                cpu_per_handshake.push(cpu1.since(&cpu0) as f64 / 1e6 / images.len() as f64);
                let wall = burst(conns, bodies, Expect::Allow).await;
                cpu_per_image.push(pg.cpu().since(&cpu1) as f64 / 1e6 / images.len() as f64);
                ratios.push((images.len() as f64 / wall) / (1.0 / alone_ms));
                walls.push(wall);
            }
            let (ratio, cpu, name) = (median(ratios), median(cpu_per_image), far.name);
            let (target_ratio, target_cpu) = if far.targets { ("≥ 8×", "≤ 1 ms") } else { ("", "") };
            table.row(
                format!("20 distinct cold images in a burst ({name}, 20 ms): rate ÷ one image alone"),
                format!("{ratio:.1}× ({:.0} ms for 20)", median(walls)),
                target_ratio,
                far.targets.then_some(ratio >= 8.0),
            );
            table.row(
                format!("provgate CPU per cold image (in that burst, connections open; {name})"),
                format!("{cpu:.2} ms"),
                target_cpu,
                far.targets.then_some(cpu <= 1.0),
            );
            if far.targets {
                let handshake = median(cpu_per_handshake);
                table.row("provgate CPU per new connection (TLS handshake)", format!("{handshake:.2} ms"), "", None);
            }
        }
    }

    // A 10-image Pod cold against a 1-image Pod cold.
    if opts.runs("pod10") {
        for far in &distant {
            far.prime(&target).await;
            let mut ratios = Vec::new();
            let mut tens = Vec::new();
            for (one, ten) in far.pod1.iter().zip(&far.pod10) {
                let (one_ms, _) = cold(&target, &far.proxy, far.pod(std::slice::from_ref(one)), Expect::Allow).await;
                let (ten_ms, _) = cold(&target, &far.proxy, far.pod(ten), Expect::Allow).await;
                ratios.push(ten_ms / one_ms);
                tens.push(ten_ms);
            }
            let ratio = median(ratios);
            table.row(
                format!("10-image Pod cold ÷ 1-image Pod cold ({}, 20 ms)", far.name),
                format!("{ratio:.2}× ({:.0} ms)", median(tens)),
                if far.targets { "≤ 1.5×" } else { "" },
                far.targets.then_some(ratio <= 1.5),
            );
        }
    }

    // RSS with many cached entries: that many distinct signed digests reviewed once each.
    if opts.runs("rss") {
        let t = Instant::now();
        let fakes: Vec<String> = (0..opts.entries)
            .map(|i| format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("rss-{i}")))))
            .collect();
        {
            use futures::StreamExt as _;
            let jobs = fakes.iter().map(|d| pusher.sign(direct, d));
            futures::stream::iter(jobs).buffer_unordered(16).collect::<Vec<()>>().await;
        }
        eprintln!("signed {} digests in {:.1} s", fakes.len(), t.elapsed().as_secs_f64());
        let t = Instant::now();
        fill(&target, &registry.addr, &fakes).await;
        eprintln!("reviewed {} cold digests in {:.1} s", fakes.len(), t.elapsed().as_secs_f64());
        pg.assert_running();
        let verified = pg
            .metrics()
            .lines()
            .filter(|l| l.contains(r#"cache="verifications""#) && l.contains(r#"result="miss""#))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>();
        let rss_full = pg.rss() as f64 / MB;
        table.row("RSS idle", format!("{rss_idle:.1} MB"), "≤ 50 MB", Some(rss_idle <= 50.0));
        table.row(
            format!("RSS with {} cached entries (signed digests)", opts.entries),
            format!("{rss_full:.1} MB ({verified:.0} verifications computed)"),
            "≤ 100 MB",
            Some(rss_full <= 100.0),
        );
        drop(pg);
    }

    // Uncached deny: both caches off, one connection. Measured twice: reading both places signers store in (the
    // default), and reading cosign's `.sig` tag only (`signatures.storage: [tags]`), which is all Kubewarden's
    // verify-image-signatures reads. The target is on the second, the comparison of like with like.
    if opts.runs("uncached") {
        let no_cache = "cache:\n  maxEntries: 0\n  maxArtifactBytes: 0\n";
        let hosts = [registry.addr.as_str(), counting.addr.as_str()];
        let tags_only =
            policy("bench", &key, "**").replace("  require:", "  signatures: {storage: [tags]}\n  require:");
        let unsigned_tag = unsigned[0].replace(':', "-");
        let (sig, schema) =
            (format!("/v2/{REPO}/manifests/{unsigned_tag}.sig"), format!("/v2/{REPO}/manifests/{unsigned_tag}"));
        let configurations = [
            ("b", "both places (the default)", policy("bench", &key, "**"), vec![sig.clone(), schema]),
            ("c", "the .sig tag only (signatures.storage: [tags])", tags_only, vec![sig]),
        ];
        for (dir, places, policy, lookups) in configurations {
            let policies = [("bench.yaml", policy)];
            let setup = Setup { hosts: &hosts, policies: &policies, extra: no_cache };
            let pg = Provgate::start(&work.path().join(dir), &setup);
            let target = Target::new(&pg.url_host, &pg.ca_pem);
            let through = pod(&[by_digest(&counting.addr, &unsigned[0])]);
            cold(&target, &counting, through.clone(), Expect::Deny("unsigned")).await;
            let before = counting.count();
            closed_loop(&target, 1, dur, 20, through, Expect::Deny("unsigned")).await;
            let per_review = (counting.count() - before) as f64 / 20.0;
            let direct = pod(&[by_digest(&registry.addr, &unsigned[0])]);
            closed_loop(&target, 1, dur, 20, direct.clone(), Expect::Deny("unsigned")).await;
            // Rounds, as for the CPU of a warm review: the rate of one connection waiting on docker-registry moves
            // with the machine from one run to the next. The median round is reported.
            let (mut rates, mut p50s, mut registry_ms) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..UNCACHED_ROUNDS {
                let registry_cpu = CpuSample::of(registry.pid());
                let mut run = closed_loop(&target, 1, dur, u64::MAX, direct.clone(), Expect::Deny("unsigned")).await;
                assert_eq!(run.errors, 0, "uncached: {:?}", run.first_error);
                registry_ms.push(CpuSample::of(registry.pid()).since(&registry_cpu) as f64 / 1e6 / run.ok as f64);
                rates.push(run.rate());
                p50s.push(run.quantile(0.5));
            }
            drop(pg);
            let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rates.iter().copied().fold(0.0, f64::max);
            let (rate, p50, registry_ms) = (median(rates), median(p50s), median(registry_ms));
            // What docker-registry allows on its own: the same lookups from a bare HTTP client, nothing else done.
            let registry_cpu = CpuSample::of(registry.pid());
            let (bare, rounds) = bare_lookups(&registry.addr, &lookups, dur).await;
            let bare_registry_ms = CpuSample::of(registry.pid()).since(&registry_cpu) as f64 / 1e6 / rounds as f64;
            let compared = lookups.len() == 1;
            table.row(
                format!("uncached deny (caches off), 1 conn, {places}"),
                format!(
                    "{rate:.0}/s (median of {UNCACHED_ROUNDS} rounds, {lo:.0}–{hi:.0}), p50 {p50:.2} ms, \
                     {per_review:.1} registry requests each (docker-registry itself: {registry_ms:.1} ms of CPU per \
                     review)"
                ),
                if compared { "≥ 420/s (2× Kubewarden's 210/s), uncached, 1 request" } else { "" },
                compared.then_some(rate >= 420.0 && per_review == 1.0),
            );
            table.row(
                format!(
                    "the same {} from a bare HTTP client (no review){}",
                    if compared { "lookup" } else { "two lookups" },
                    if compared { "" } else { ", 1 conn each, in parallel" }
                ),
                format!("{bare:.0}/s (docker-registry itself: {bare_registry_ms:.1} ms of CPU per round)"),
                "",
                None,
            );
        }
    }

    println!(
        "\nbench run of {:.0} s; throughput runs of {:.0} s each",
        started.elapsed().as_secs_f64(),
        dur.as_secs_f64()
    );
    table.print()
}

/// A registry on loopback reached through a counting proxy that adds no delay, and the images pushed to it for
/// the cold reviews.
struct Nearby {
    name: &'static str,
    proxy: Proxy,
    /// The registry's process, whose CPU is read.
    pid: u32,
    /// Whether its rows carry the issue's latency target.
    targets: bool,
    primer: String,
    digest: Vec<String>,
    annotated: Vec<String>,
    /// Images tagged `cold-t-0`, `cold-t-1`, ….
    tagged: usize,
}

impl Nearby {
    async fn push(pusher: &Pusher, proxy: Proxy, pid: u32, signer: &Signer, name: &'static str, targets: bool) -> Self {
        let signing = signer.at(&proxy.addr);
        let primer = pusher.images("cold-primer", 1, Some(signing)).await.remove(0);
        let digest = pusher.images("cold-d", 10, Some(signing)).await;
        let annotated = pusher.images("cold-a", 10, Some(signing.annotated())).await;
        let tagged = pusher.images("cold-t", 10, Some(signing)).await.len();
        Self { name, proxy, pid, targets, primer, digest, annotated, tagged }
    }

    fn images(&self) -> usize {
        1 + self.digest.len() + self.annotated.len() + self.tagged
    }
}

/// A registry reached through a proxy that holds each answer 20 ms, as one across a network, and the images
/// pushed to it for the burst and the 10-image Pod.
struct Distant {
    name: &'static str,
    proxy: Proxy,
    /// Whether its rows carry the issue's targets.
    targets: bool,
    primers: Vec<String>,
    /// Primers reviewed so far.
    primed: std::sync::atomic::AtomicUsize,
    alone: Vec<String>,
    bursts: Vec<Vec<String>>,
    pod1: Vec<String>,
    pod10: Vec<Vec<String>>,
}

impl Distant {
    async fn push(pusher: &Pusher, proxy: Proxy, signer: &Signer, name: &'static str, targets: bool) -> Self {
        let signing = Some(signer.at(&proxy.addr));
        let primers = pusher.images("far-primer", 2, signing).await;
        let alone = pusher.images("alone", 3, signing).await;
        let mut bursts = Vec::new();
        for r in 0..3 {
            bursts.push(pusher.images(&format!("burst-{r}"), 20, signing).await);
        }
        let pod1 = pusher.images("pod1", 3, signing).await;
        let mut pod10 = Vec::new();
        for r in 0..3 {
            pod10.push(pusher.images(&format!("pod10-{r}"), 10, signing).await);
        }
        Self { name, proxy, targets, primers, primed: Default::default(), alone, bursts, pod1, pod10 }
    }

    fn images(&self) -> usize {
        let sets = [&self.primers, &self.alone, &self.pod1].into_iter().chain(&self.bursts).chain(&self.pod10);
        sets.map(Vec::len).sum()
    }

    /// A Pod of `digests` from this registry.
    fn pod(&self, digests: &[String]) -> Bytes {
        pod(&digests.iter().map(|d| by_digest(&self.proxy.addr, d)).collect::<Vec<_>>())
    }

    /// Reviews an image not reviewed before, so that provgate has met the registry (its session, and whether it
    /// has the referrers API) before what is measured.
    async fn prime(&self, target: &Target) {
        let next = self.primed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unused = self.primers.get(next).expect("a primer not yet reviewed");
        cold(target, &self.proxy, self.pod(std::slice::from_ref(unused)), Expect::Allow).await;
    }
}

/// Rounds of `paths` asked of the registry at `addr` at once, each on its own keep-alive connection, for
/// `duration`, by a client that does nothing else: how fast the registry answers them on its own (rounds/s), and
/// how many rounds that was.
async fn bare_lookups(addr: &str, paths: &[String], duration: Duration) -> (f64, u64) {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let (started, mut rounds) = (Instant::now(), 0u64);
    while started.elapsed() < duration {
        let asks = paths.iter().map(|path| {
            let client = client.clone();
            let uri: hyper::Uri = format!("http://{addr}{path}").parse().unwrap();
            async move {
                let resp = client.get(uri).await.unwrap();
                assert_eq!(resp.status(), hyper::StatusCode::NOT_FOUND, "{path}");
                resp.into_body().collect().await.unwrap();
            }
        });
        futures::future::join_all(asks).await;
        rounds += 1;
    }
    (rounds as f64 / started.elapsed().as_secs_f64(), rounds)
}

/// Reviews each digest once (64 connections), one image per review.
async fn fill(target: &Target, host: &str, digests: &[String]) {
    use futures::StreamExt as _;
    let mut conns = Vec::new();
    for _ in 0..64 {
        conns.push(target.connect().await.unwrap().0);
    }
    let chunks: Vec<Vec<String>> = digests.chunks(digests.len().div_ceil(64)).map(<[String]>::to_vec).collect();
    let jobs = conns.into_iter().zip(chunks).map(|(mut conn, chunk)| {
        let host = host.to_owned();
        async move {
            for d in chunk {
                conn.review(pod(&[by_digest(&host, &d)]), Expect::Allow).await.unwrap();
            }
        }
    });
    futures::stream::iter(jobs).buffer_unordered(64).collect::<Vec<()>>().await;
}

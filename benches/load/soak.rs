//! The soak: a paced mix of signed, unsigned and tag references for a fixed time, with a serving-certificate
//! rotation and a policy reload half way; errors, p99 and RSS reported per 10 s, failing on any error or RSS growth.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::{Expect, Target, quantile_ms};
use crate::fixtures::{Pusher, Signer};
use crate::server::{Provgate, Setup};
use crate::{by_digest, by_tag, key_file, pod, policy};

/// Connections the mix is spread over; each reconnects after this many reviews, so new handshakes keep happening.
const CONNS: u64 = 16;
const RECONNECT_EVERY: u64 = 500;
const WINDOW: u64 = 10;

#[derive(Default)]
struct Second {
    ok: u64,
    errors: u64,
    latencies: Vec<u32>,
}

type Seconds = Arc<Mutex<BTreeMap<u64, Second>>>;

pub async fn run(duration: Duration, rate: u64) -> bool {
    println!("soak: {} s at {rate} reviews/s; machine: {}", duration.as_secs(), crate::machine());
    let registry = crate::support::registry::DockerRegistry::start(crate::support::registry::Auth::None);
    let pusher = Pusher::new(&registry.addr);
    let (signer, stranger) = (Signer::new(), Signer::new());
    let signed = pusher.images("soak-signed", 20, Some(signer.at(&registry.addr))).await;
    let unsigned = pusher.images("soak-unsigned", 5, None).await;
    pusher.images("soak-canary", 1, Some(signer.at(&registry.addr))).await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), &signer);
    let other = key_file(&dir.path().join("stranger"), &stranger);
    let policies = [("bench.yaml", policy("bench", &key, "**"))];
    let hosts = [registry.addr.as_str()];
    let mut pg = Provgate::start(&dir.path().join("pg"), &Setup { hosts: &hosts, policies: &policies, extra: "" });
    let target = Target::new(&pg.url_host, &pg.ca_pem);

    // The mix: 7 in 10 signed by digest, 2 unsigned by digest, 1 signed by tag (a registry request each time).
    let mix: Vec<(Bytes, Expect)> = (0..100)
        .map(|i| {
            let (image, expect) = match i % 10 {
                0..=6 => (by_digest(&registry.addr, &signed[i % signed.len()]), Expect::Allow),
                7 | 8 => (by_digest(&registry.addr, &unsigned[i % unsigned.len()]), Expect::Deny("unsigned")),
                _ => (by_tag(&registry.addr, &format!("soak-signed-{}", (i / 10) % signed.len())), Expect::Allow),
            };
            (pod(&[image]), expect)
        })
        .collect();
    let mix = Arc::new(mix);
    let canary = pod(&[by_tag(&registry.addr, "soak-canary-0")]);
    check_once(&target, canary.clone(), Expect::Allow).await.expect("the canary is admitted before the reload");

    let seconds: Seconds = Arc::default();
    let start = Instant::now();
    let until = start + duration;
    let period = Duration::from_secs_f64(CONNS as f64 / rate as f64);
    let tasks: Vec<_> = (0..CONNS)
        .map(|c| {
            let (target, mix, seconds) = (target.clone(), mix.clone(), seconds.clone());
            tokio::spawn(async move { drive(c, &target, &mix, &seconds, start, until, period).await })
        })
        .collect();

    let mut rss: BTreeMap<u64, f64> = BTreeMap::new();
    let (mut rotated, mut reloaded) = (None, None);
    let half = duration.as_secs() / 2;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while Instant::now() < until {
        tick.tick().await;
        let s = start.elapsed().as_secs();
        rss.insert(s, pg.rss() as f64 / crate::MB);
        pg.assert_running();
        if s == half && rotated.is_none() {
            pg.rotate_certificate();
            let t = Instant::now();
            rotated = Some(
                wait_for(|| async { target.connect().await.is_ok_and(|(_, der)| der == pg.leaf_der) })
                    .await
                    .then(|| t.elapsed()),
            );
            let v2 = format!(
                "{}---\n{}",
                policy("bench", &key, "**"),
                policy("canary", &other, &format!("{}/{}:soak-canary-0", registry.addr, crate::fixtures::REPO))
            );
            let t = Instant::now();
            pg.write_policy("bench.yaml", &v2);
            let denied = wait_for(|| check_once(&target, canary.clone(), Expect::Deny("")).map_ok()).await;
            reloaded = Some(denied.then(|| t.elapsed()));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }

    let seconds = std::mem::take(&mut *seconds.lock().unwrap());
    println!("| window | reviews | errors | reviews/s | p99 ms | RSS MB |");
    println!("|---|---|---|---|---|---|");
    let (mut total, mut errors) = (0, 0);
    let mut first_rss = None;
    let mut last_rss = 0.0;
    for w in 0..duration.as_secs().div_ceil(WINDOW) {
        let (from, to) = (w * WINDOW, (w + 1) * WINDOW);
        let mut lat = Vec::new();
        let (mut ok, mut err) = (0, 0);
        for (_, sec) in seconds.range(from..to) {
            ok += sec.ok;
            err += sec.errors;
            lat.extend_from_slice(&sec.latencies);
        }
        let mem = rss.range(from..to).map(|(_, m)| *m).fold(0.0, f64::max);
        if w == 1 || (w == 0 && first_rss.is_none() && duration.as_secs() <= WINDOW) {
            first_rss = Some(mem);
        }
        if mem > 0.0 {
            last_rss = mem;
        }
        let secs = (to.min(duration.as_secs()) - from).max(1);
        println!(
            "| {from}–{to} s | {ok} | {err} | {:.0} | {:.2} | {mem:.1} |",
            ok as f64 / secs as f64,
            quantile_ms(&mut lat, 0.99)
        );
        total += ok;
        errors += err;
    }
    let first_rss = first_rss.unwrap_or(last_rss);
    let growth = last_rss - first_rss;
    let allowed = (first_rss * 0.10).max(5.0);
    println!(
        "\n{total} reviews, {errors} errors; certificate rotation served to new connections after {}; policy reload \
         effective after {}; RSS {first_rss:.1} MB after the first window, {last_rss:.1} MB at the end ({growth:+.1} \
         MB, allowed {allowed:.1})",
        show(rotated),
        show(reloaded),
    );
    let mut ok = true;
    for (failed, what) in [
        (errors > 0, "errors"),
        (!matches!(rotated, Some(Some(_))), "the rotated certificate was not served"),
        (!matches!(reloaded, Some(Some(_))), "the reloaded policy did not take effect"),
        (growth > allowed, "RSS grew"),
        (total < rate * duration.as_secs() * 9 / 10, "under 90% of the target rate"),
    ] {
        if failed {
            println!("FAILED: {what}");
            ok = false;
        }
    }
    if ok {
        println!("soak passed");
    }
    ok
}

fn show(t: Option<Option<Duration>>) -> String {
    match t {
        Some(Some(d)) => format!("{:.1} s", d.as_secs_f64()),
        Some(None) => "never (10 s)".into(),
        None => "not done".into(),
    }
}

/// Polls `check` every 100 ms for up to 10 s.
async fn wait_for<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

trait MapOk {
    async fn map_ok(self) -> bool;
}

impl<F: std::future::Future<Output = Result<(), String>>> MapOk for F {
    async fn map_ok(self) -> bool {
        self.await.is_ok()
    }
}

async fn check_once(target: &Target, body: Bytes, expect: Expect) -> Result<(), String> {
    let (mut conn, _) = target.connect().await?;
    conn.review(body, expect).await
}

/// One connection's share of the mix, paced at one review per `period`.
async fn drive(
    c: u64,
    target: &Target,
    mix: &[(Bytes, Expect)],
    seconds: &Seconds,
    start: Instant,
    until: Instant,
    period: Duration,
) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + period.mul_f64(c as f64 / CONNS as f64),
        period,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut conn = None;
    let mut i = c;
    let mut sent = 0u64;
    loop {
        tick.tick().await;
        if Instant::now() >= until {
            return;
        }
        if conn.is_none() || sent.is_multiple_of(RECONNECT_EVERY) {
            conn = target.connect().await.ok().map(|(c, _)| c);
        }
        let (body, expect) = &mix[(i as usize) % mix.len()];
        i += CONNS;
        sent += 1;
        let t = Instant::now();
        let result = match conn.as_mut() {
            Some(conn) => conn.review(body.clone(), *expect).await,
            None => Err("could not connect".into()),
        };
        let second = start.elapsed().as_secs();
        let mut seconds = seconds.lock().unwrap();
        let entry = seconds.entry(second).or_default();
        match result {
            Ok(()) => {
                entry.ok += 1;
                entry.latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Err(e) => {
                if entry.errors == 0 {
                    eprintln!("soak error at {second} s: {e}");
                }
                entry.errors += 1;
                conn = None;
            }
        }
    }
}

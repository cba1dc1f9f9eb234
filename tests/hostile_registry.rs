//! The registry client against a hostile registry: crafted manifests, blobs, headers and token answers, driven
//! through `provgate verify` (the library's one-shot engine) or the registry module's public API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::registry::*;

/// The hostile server itself: it serves what was put, by tag and digest, counts, and can be bent while running.
#[tokio::test]
async fn the_hostile_server_serves_counts_and_changes_while_running() {
    let h = Hostile::start();
    let http = reqwest::Client::new();
    let base = format!("http://{}", h.addr);
    let first = h.put_image("team/app", "one");
    let second = h.put_image("team/app", "two");
    h.tag("team/app", "v1", &first);

    assert_eq!(http.get(format!("{base}/v2/")).send().await.unwrap().status(), 200);
    let head = http.head(format!("{base}/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["docker-content-digest"], first.as_str());
    assert_eq!(head.headers()["content-type"], OCI_MANIFEST);
    let body = http.get(format!("{base}/v2/team/app/manifests/{first}")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256_digest(&body), first);
    let blob = h.put_blob("team/app", b"payload".to_vec());
    let got = http.get(format!("{base}/v2/team/app/blobs/{blob}")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"payload");
    assert_eq!(http.get(format!("{base}/v2/team/other/blobs/{blob}")).send().await.unwrap().status(), 404);

    // Re-tagged while running.
    h.tag("team/app", "v1", &second);
    let head = http.head(format!("{base}/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(head.headers()["docker-content-digest"], second.as_str());
    assert_eq!(h.hits("/v2/team/app/manifests/v1"), 2);

    // Overrides, a generated body, a delay, and the challenge with its token endpoint.
    h.set("/v2/team/app/manifests/v1", Answer::status(429).header("Retry-After", "7"));
    let r = http.get(format!("{base}/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (429, "7"));
    h.set("/big", Answer::ok("text/plain", Body::Repeat { pattern: b"ab".to_vec(), len: 1 << 20 }));
    let big = http.get(format!("{base}/big")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!((big.len(), &big[..4]), (1 << 20, &b"abab"[..]));
    assert_eq!(h.sent("/big"), 1 << 20);
    h.set("/slow", Answer::status(204).delay(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    assert_eq!(http.get(format!("{base}/slow")).send().await.unwrap().status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(300));
    h.unset("/v2/team/app/manifests/v1");
    h.challenge(Some(Challenge::default()));
    let r = http.get(format!("{base}/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains(&h.own_realm()) && challenge.contains("repository:team/app:pull"), "{challenge}");
    let token: serde_json::Value =
        http.get(format!("{base}/token?service=hostile")).send().await.unwrap().json().await.unwrap();
    let r = http
        .get(format!("{base}/v2/team/app/manifests/v1"))
        .bearer_auth(token["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.hits("/token"), 1);

    // Many connections at once.
    let many = (0..100).map(|_| http.get(format!("{base}/v2/")).send());
    let answers = futures::future::join_all(many).await;
    assert!(answers.iter().all(|a| a.as_ref().unwrap().status() == 401));
    assert_eq!(h.hits("/v2/"), 101);
    assert_eq!(h.total(), 112);
}

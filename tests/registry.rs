//! The registry module against real registries on loopback (Debian docker-registry, ferro-oci-server) and, for
//! faults no real registry can be made to show, a canned-answer server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use provgate::artifact::Origin;
use provgate::images::{Digest, ImageRef};
use provgate::registry::{
    Credentials, HostConfig, HostCredentials, PlatformManifest, Registry, RegistryClient, RegistryConfig,
    RegistryError, Wanted,
};
use serde_json::json;
use support::registry::*;
use tokio::time::Instant;

fn client(hosts: &[(&str, HostConfig)], tweak: impl FnOnce(&mut RegistryConfig)) -> Arc<dyn Registry> {
    let mut cfg = RegistryConfig::default();
    for (h, c) in hosts {
        cfg.hosts.insert((*h).to_owned(), c.clone());
    }
    tweak(&mut cfg);
    Arc::new(RegistryClient::new(cfg).unwrap())
}

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

fn digest(d: &Desc) -> Digest {
    Digest::parse(&d.digest).unwrap()
}

fn soon(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

fn platform(d: &Desc, arch: &str, variant: Option<&str>) -> PlatformManifest {
    PlatformManifest {
        digest: digest(d),
        media_type: d.media_type.clone(),
        os: "linux".into(),
        architecture: arch.into(),
        variant: variant.map(str::to_owned),
    }
}

/// The images every registry test pushes: a single image with a `.sig`, a `.att` and three referrers.
struct Fixture {
    layout: Layout,
    single: Desc,
    payload: Vec<u8>,
    envelope: Vec<u8>,
    bundle_new: Vec<u8>,
    bundle_old: Vec<u8>,
    r_new: Desc,
    r_old: Desc,
}

fn fixture() -> Fixture {
    let mut l = Layout::new();
    let single = l.image("single", "amd64");
    l.tag("single", &single);
    let payload = simple_signing_payload("127.0.0.1/team/app", &single.digest);
    let sig =
        l.cosign_manifest(&[(SIMPLE_SIGNING, payload.clone(), json!({"dev.cosignproject.cosign/signature": "MEUC"}))]);
    l.tag("sig", &sig);
    let envelope = dsse_envelope(single.hex());
    let att = l.cosign_manifest(&[
        (
            DSSE,
            envelope.clone(),
            json!({"dev.cosignproject.cosign/signature": "", "predicateType": "https://slsa.dev/provenance/v1"}),
        ),
        ("application/vnd.example.unknown", b"not for the verifier".to_vec(), json!({})),
    ]);
    l.tag("att", &att);
    // The layer media type decides, not artifactType: one bundle hides behind the empty config type (as ghcr.io
    // reports it), one uses the older bundle media type, and an SBOM must be left out.
    let bundle_new = bundle(single.hex());
    let bundle_old = bundle(&format!("old-{}", single.hex()));
    let r_new = l.referrer(&single, OCI_EMPTY, BUNDLE, &bundle_new, "new");
    let r_old = l.referrer(&single, "application/vnd.dev.sigstore.bundle+json", BUNDLE_OLD, &bundle_old, "old");
    let r_sbom = l.referrer(&single, "application/spdx+json", "application/spdx+json", b"{\"spdx\":1}", "sbom");
    l.tag("r-new", &r_new);
    l.tag("r-old", &r_old);
    l.tag("r-sbom", &r_sbom);
    let refs = l.referrers_index(&[&r_new, &r_old, &r_sbom]);
    l.tag("refs", &refs);
    Fixture { layout: l, single, payload, envelope, bundle_new, bundle_old, r_new, r_old }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_tags_indexes_docker_lists_cosign_tags_and_tag_schema_referrers() {
    let reg = DockerRegistry::start(Auth::None);
    let mut f = fixture();
    let (index, amd, arm) = f.layout.index("multi");
    f.layout.tag("multi", &index);
    let (list, damd, darm) = f.layout.docker_list("dlist");
    reg.push_docker(&f.layout, &list, "team/dlist", "v1");
    let hex = f.single.hex().to_owned();
    for (tag, repo, dest) in [
        ("single", "team/app", "v1".to_owned()),
        ("multi", "team/multi", "v1".to_owned()),
        ("sig", "team/app", format!("sha256-{hex}.sig")),
        ("att", "team/app", format!("sha256-{hex}.att")),
        ("r-new", "team/app", "r-new".to_owned()),
        ("r-old", "team/app", "r-old".to_owned()),
        ("r-sbom", "team/app", "r-sbom".to_owned()),
        ("refs", "team/app", format!("sha256-{hex}")),
    ] {
        reg.push(&f.layout, tag, repo, &dest);
    }
    let r = client(&[(&reg.addr, reg.host_config())], |_| {});
    let a = &reg.addr;
    let anon = Credentials::Anonymous;

    // One client, used concurrently through &self.
    let refs = ["app", "multi", "dlist"].map(|n| image(&format!("{a}/team/{n}:v1")));
    let bytes = r.budget();
    let (single, multi, dlist) = futures::join!(
        r.resolve(&refs[0], &anon, &bytes, soon(10)),
        r.resolve(&refs[1], &anon, &bytes, soon(10)),
        r.resolve(&refs[2], &anon, &bytes, soon(10)),
    );
    let single = single.unwrap();
    assert_eq!(single.digest, digest(&f.single));
    assert_eq!(single.media_type, OCI_MANIFEST);
    assert!(single.platforms.is_empty() && !single.is_index());
    let multi = multi.unwrap();
    assert_eq!(multi.digest, digest(&index), "a multi-arch tag resolves to the index digest");
    assert!(multi.is_index());
    assert_eq!(multi.platforms, vec![platform(&amd, "amd64", None), platform(&arm, "arm64", Some("v8"))]);
    let dlist = dlist.unwrap();
    assert_eq!(dlist.digest, digest(&list));
    assert_eq!(dlist.media_type, DOCKER_LIST);
    assert_eq!(dlist.platforms, vec![platform(&damd, "amd64", None), platform(&darm, "arm", Some("v7"))]);

    // By digest: confirmed against the bytes.
    let by_digest =
        r.resolve(&image(&format!("{a}/team/multi@{}", index.digest)), &anon, &r.budget(), soon(10)).await.unwrap();
    assert_eq!(by_digest, multi);
    let child =
        r.resolve(&image(&format!("{a}/team/multi@{}", arm.digest)), &anon, &r.budget(), soon(10)).await.unwrap();
    assert_eq!(child.digest, digest(&arm));
    assert!(child.platforms.is_empty());

    // Missing things are NotFound, naming what is missing.
    let err = r.resolve(&image(&format!("{a}/team/app:nope")), &anon, &r.budget(), soon(10)).await.unwrap_err();
    assert_eq!(err.code(), "registry-not-found", "{err}");
    assert!(err.to_string().contains("team/app:nope"), "{err}");
    let missing = format!("{a}/team/app@sha256:{}", "0".repeat(64));
    assert!(matches!(
        r.resolve(&image(&missing), &anon, &r.budget(), soon(10)).await,
        Err(RegistryError::NotFound { .. })
    ));

    // Cosign tags and the referrers tag schema (docker-registry has no referrers API).
    let art = r
        .artifacts(&image(&format!("{a}/team/app:v1")), &digest(&f.single), &anon, Wanted::ALL, &r.budget(), soon(10))
        .await
        .unwrap();
    assert_eq!(art.signatures.len(), 1);
    assert_eq!(art.signatures[0].data, f.payload);
    assert_eq!(art.signatures[0].origin, Origin::SigTag);
    assert_eq!(art.signatures[0].annotations["dev.cosignproject.cosign/signature"], "MEUC");
    assert_eq!(art.attestations.len(), 1, "the unknown layer of .att is left out");
    assert_eq!(art.attestations[0].data, f.envelope);
    assert_eq!(art.attestations[0].origin, Origin::AttTag);
    assert_eq!(art.attestations[0].annotations["predicateType"], "https://slsa.dev/provenance/v1");
    let mut bundles: Vec<_> = art.bundles.iter().map(|l| (l.data.to_vec(), l.origin.clone())).collect();
    bundles.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want = vec![
        (f.bundle_new.clone(), Origin::Referrer { manifest: digest(&f.r_new), artifact_type: Some(OCI_EMPTY.into()) }),
        (
            f.bundle_old.clone(),
            Origin::Referrer {
                manifest: digest(&f.r_old),
                artifact_type: Some("application/vnd.dev.sigstore.bundle+json".into()),
            },
        ),
    ];
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(bundles, want, "bundles found by layer media type; the SBOM referrer left out");
    let new = art.bundles.iter().find(|l| l.data == f.bundle_new).unwrap();
    assert_eq!(new.annotations["org.example.note"], "new", "manifest annotations reach the layer");

    // Nothing stored for the index: empty, not an error.
    let none = r
        .artifacts(&image(&format!("{a}/team/multi:v1")), &digest(&index), &anon, Wanted::ALL, &r.budget(), soon(10))
        .await
        .unwrap();
    assert!(none.is_empty());

    // Plain HTTP only for hosts the config lists: without the entry the client speaks TLS and fails.
    let strict = client(&[], |_| {});
    let started = std::time::Instant::now();
    let err = strict.resolve(&image(&format!("{a}/team/app:v1")), &anon, &strict.budget(), soon(5)).await.unwrap_err();
    assert_eq!(err.code(), "registry-unreachable", "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A `.sig` layer holding the payload cosign writes by default for the image is known by its digest and not read:
/// its blob is deleted from the registry and the layer still comes back whole. A payload with annotations, or one
/// made for another image (a replay), is read; and so is the default payload when the image is named otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_cosign_payload_is_known_by_its_digest_and_every_other_payload_is_read() {
    let reg = DockerRegistry::start(Auth::None);
    let a = &reg.addr;
    let mut l = Layout::new();
    let (single, other) = (l.image("single", "amd64"), l.image("other", "amd64"));
    l.tag("single", &single);
    let default = simple_signing_payload(&format!("{a}/team/app"), &single.digest);
    let annotated = serde_json::to_vec(&json!({"critical": {"identity": {"docker-reference": format!("{a}/team/app")},
        "image": {"docker-manifest-digest": single.digest}, "type": "cosign container image signature"},
        "optional": {"build": "42"}}))
    .unwrap();
    let replayed = simple_signing_payload(&format!("{a}/team/app"), &other.digest);
    let signature = |s: &str| json!({"dev.cosignproject.cosign/signature": s});
    let sig = l.cosign_manifest(&[
        (SIMPLE_SIGNING, default.clone(), signature("A")),
        (SIMPLE_SIGNING, annotated.clone(), signature("B")),
        (SIMPLE_SIGNING, replayed.clone(), signature("C")),
    ]);
    l.tag("sig", &sig);
    reg.push(&l, "single", "team/app", "v1");
    reg.push(&l, "sig", "team/app", &format!("sha256-{}.sig", single.hex()));
    let payload_blob = format!("http://{a}/v2/team/app/blobs/{}", Digest::sha256_of(&default));
    let http = reqwest::Client::new();
    assert_eq!(http.delete(&payload_blob).send().await.unwrap().status(), 202);
    assert_eq!(http.get(&payload_blob).send().await.unwrap().status(), 404, "the payload's blob is gone");

    let localhost = a.replace("127.0.0.1", "localhost");
    let r = client(&[(a, reg.host_config()), (&localhost, reg.host_config())], |_| {});
    let artifacts = |name: String| {
        let r = r.clone();
        let d = digest(&single);
        async move { r.artifacts(&image(&name), &d, &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(10)).await }
    };
    let art = artifacts(format!("{a}/team/app:v1")).await.unwrap();
    let got: Vec<_> = art
        .signatures
        .iter()
        .map(|l| (l.annotations["dev.cosignproject.cosign/signature"].as_str(), &l.data))
        .collect();
    assert_eq!(got, [("A", &default.into()), ("B", &annotated.into()), ("C", &replayed.into())]);
    for layer in &art.signatures {
        assert_eq!(layer.digest, Digest::sha256_of(&layer.data));
    }
    // Named through another host, the default payload is another text: this one is read, and it is not there.
    let err = artifacts(format!("{localhost}/team/app:v1")).await.unwrap_err();
    assert_eq!(err.code(), "registry-not-found", "{err}");
    assert!(
        err.to_string().contains(
            &Digest::sha256_of(&simple_signing_payload(&format!("{a}/team/app"), &single.digest)).to_string()
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_api_on_ferro() {
    let ferro = Ferro::start();
    let f = fixture();
    ferro.push(&f.layout, "single", "team/app", "v1");
    for tag in ["r-new", "r-old", "r-sbom"] {
        ferro.push(&f.layout, tag, "team/app", tag);
    }
    let r = client(&[(&ferro.addr, HostConfig { insecure: true, ..HostConfig::default() })], |_| {});
    let img = image(&format!("{}/team/app:v1", ferro.addr));
    let resolved = r.resolve(&img, &Credentials::Anonymous, &r.budget(), soon(10)).await.unwrap();
    assert_eq!(resolved.digest, digest(&f.single));
    let art =
        r.artifacts(&img, &resolved.digest, &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(10)).await.unwrap();
    assert!(art.signatures.is_empty() && art.attestations.is_empty(), "no .sig/.att pushed: none, not an error");
    let mut got: Vec<_> = art.bundles.iter().map(|l| l.data.clone()).collect();
    got.sort();
    let mut want = vec![f.bundle_new.clone(), f.bundle_old.clone()];
    want.sort();
    assert_eq!(got, want, "found through the referrers API: no tag-schema index was pushed");
}

/// Canned registry routes for `repo` serving `manifests` and `blobs` by digest.
fn serve(repo: &str, manifests: &[&Desc], blobs: &[&Desc]) -> HashMap<String, Canned> {
    let mut routes = HashMap::new();
    routes.insert("/v2/".to_owned(), Canned::ok("application/json", b"{}".to_vec()));
    for m in manifests {
        let c = Canned::ok(&m.media_type, m.bytes.clone()).header("Docker-Content-Digest", &m.digest);
        routes.insert(format!("/v2/{repo}/manifests/{}", m.digest), c);
    }
    for b in blobs {
        routes
            .insert(format!("/v2/{repo}/blobs/{}", b.digest), Canned::ok("application/octet-stream", b.bytes.clone()));
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_pages_are_followed_through_link_headers() {
    let l = Layout::new();
    let subject = l.image("paged", "amd64");
    let b1 = bundle("page-one");
    let b2 = bundle("page-two");
    let r1 = l.referrer(&subject, BUNDLE, BUNDLE, &b1, "1");
    let r2 = l.referrer(&subject, BUNDLE, BUNDLE, &b2, "2");
    let layer1 = l.blob(BUNDLE, &b1);
    let layer2 = l.blob(BUNDLE, &b2);
    let empty = l.blob(OCI_EMPTY, b"{}");
    // A listed referrer whose own subject is another image is not this image's.
    let stranger = l.image("stranger", "amd64");
    let b3 = bundle("someone else's");
    let r3 = l.referrer(&stranger, BUNDLE, BUNDLE, &b3, "3");
    let layer3 = l.blob(BUNDLE, &b3);
    let mut routes = serve("team/app", &[&r1, &r2, &r3], &[&layer1, &layer2, &layer3, &empty]);
    let page = |d: &[&Desc]| {
        let manifests: Vec<_> = d.iter().map(|d| d.json()).collect();
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})).unwrap()
    };
    let first = format!("/v2/team/app/referrers/{}", subject.digest);
    let second = format!("{first}?n=1&last={}", r1.hex());
    routes.insert(
        first.clone(),
        Canned::ok(OCI_INDEX, page(&[&r1])).header("Link", &format!("<{second}>; rel=\"next\"")),
    );
    routes.insert(second.clone(), Canned::ok(OCI_INDEX, page(&[&r2, &r3])));
    // A page whose next link leaves the registry is refused.
    let evil = format!("/v2/team/evil/referrers/{}", subject.digest);
    routes.insert(evil, Canned::ok(OCI_INDEX, page(&[&r1])).header("Link", "<http://127.0.0.2:9/steal>; rel=\"next\""));
    let server = CannedServer::start(routes);
    let r = client(&[(&server.addr, server.host_config())], |_| {});
    let img = image(&format!("{}/team/app:v1", server.addr));
    let art = r
        .artifacts(&img, &digest(&subject), &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(10))
        .await
        .unwrap();
    let mut got: Vec<_> = art.bundles.iter().map(|l| l.data.clone()).collect();
    got.sort();
    let mut want = vec![b1, b2];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(server.hits(&second), 1, "the second page was fetched once");
    assert_eq!(server.hits(&format!("/v2/team/app/blobs/{}", layer3.digest)), 0, "the stranger's layer is not read");
    let evil_img = image(&format!("{}/team/evil:v1", server.addr));
    let err = r
        .artifacts(&evil_img, &digest(&subject), &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "registry-malformed", "{err}");
}

fn docker_config(host: &str, user: &str, pass: &str) -> Vec<u8> {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    serde_json::to_vec(&json!({"auths": {host: {"auth": auth}}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_basic_auth_and_credentials_from_dockerconfigjson() {
    let reg = DockerRegistry::start(Auth::Basic(vec![("alice".into(), "wonderland".into())]));
    let f = fixture();
    reg.push(&f.layout, "single", "team/app", "v1");
    reg.push(&f.layout, "sig", "team/app", &format!("sha256-{}.sig", f.single.hex()));
    let a = reg.addr.clone();
    let img = image(&format!("{a}/team/app:v1"));
    let r = client(&[(&a, reg.host_config())], |_| {});

    let credentials = HostCredentials::from_docker_config(&docker_config(&a, "alice", "wonderland")).unwrap();
    let alice = credentials.for_host(&a);
    assert_eq!(alice, Credentials::basic("alice", "wonderland"));
    let resolved = r.resolve(&img, &alice, &r.budget(), soon(10)).await.unwrap();
    assert_eq!(resolved.digest, digest(&f.single));
    let art = r.artifacts(&img, &resolved.digest, &alice, Wanted::ALL, &r.budget(), soon(10)).await.unwrap();
    assert_eq!(art.signatures.len(), 1);
    assert_eq!(art.signatures[0].data, f.payload);

    for creds in [Credentials::basic("alice", "wrong"), Credentials::Anonymous] {
        let err = r.resolve(&img, &creds, &r.budget(), soon(10)).await.unwrap_err();
        assert_eq!(err.code(), "registry-unauthorized", "{creds:?}: {err}");
        assert!(err.to_string().contains("team/app"), "{err}");
    }

    // Default credentials from a dockerconfigjson file named in the config.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, docker_config(&a, "alice", "wonderland")).unwrap();
    let with_file = client(&[(&a, HostConfig { docker_config_json: Some(path), ..reg.host_config() })], |_| {});
    assert_eq!(
        with_file.resolve(&img, &Credentials::Anonymous, &with_file.budget(), soon(10)).await.unwrap().digest,
        digest(&f.single)
    );

    // A dockerconfigjson without an entry for the host is a setup error, not silent anonymity.
    let other = dir.path().join("other.json");
    std::fs::write(&other, docker_config("elsewhere.example", "alice", "wonderland")).unwrap();
    let mut cfg = RegistryConfig::default();
    cfg.hosts.insert(a.clone(), HostConfig { docker_config_json: Some(other), ..reg.host_config() });
    let err = RegistryClient::new(cfg).err().unwrap();
    assert!(err.to_string().contains("has no entry"), "{err}");

    // Without the CA bundle the registry's certificate is not trusted.
    let no_ca = client(&[], |_| {});
    let err = no_ca.resolve(&img, &alice, &no_ca.budget(), soon(10)).await.unwrap_err();
    assert_eq!(err.code(), "registry-unreachable", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_bearer_tokens_keeps_credentials_per_identity() {
    let users = vec![
        ("alice".to_owned(), "wonderland".to_owned(), vec!["team/app".to_owned()]),
        ("bob".to_owned(), "builder".to_owned(), vec!["team/other".to_owned()]),
    ];
    let reg = DockerRegistry::start(Auth::Token(users));
    let f = fixture();
    reg.push(&f.layout, "single", "team/app", "v1");
    reg.push(&f.layout, "att", "team/app", &format!("sha256-{}.att", f.single.hex()));
    let img = image(&format!("{}/team/app:v1", reg.addr));
    let r = client(&[(&reg.addr, reg.host_config())], |_| {});
    let alice = Credentials::basic("alice", "wonderland");
    let bob = Credentials::basic("bob", "builder");

    assert_eq!(r.resolve(&img, &alice, &r.budget(), soon(10)).await.unwrap().digest, digest(&f.single));
    // Bob may not read team/app: alice's token, cached on the same client, must not serve him, even when both ask
    // at the same time.
    let d = digest(&f.single);
    let bytes = r.budget();
    let (a1, b1, a2, b2) = futures::join!(
        r.resolve(&img, &alice, &bytes, soon(10)),
        r.resolve(&img, &bob, &bytes, soon(10)),
        r.artifacts(&img, &d, &alice, Wanted::ALL, &bytes, soon(10)),
        r.artifacts(&img, &d, &bob, Wanted::ALL, &bytes, soon(10)),
    );
    assert_eq!(a1.unwrap().digest, digest(&f.single));
    assert_eq!(a2.unwrap().attestations.len(), 1);
    assert_eq!(b1.unwrap_err().code(), "registry-unauthorized");
    assert_eq!(b2.unwrap_err().code(), "registry-unauthorized");
    let err = r.resolve(&img, &bob, &r.budget(), soon(10)).await.unwrap_err();
    assert_eq!(err.code(), "registry-unauthorized", "{err}");
    let err = r.resolve(&img, &Credentials::Anonymous, &r.budget(), soon(10)).await.unwrap_err();
    assert_eq!(err.code(), "registry-unauthorized", "{err}");
    let art = r.artifacts(&img, &digest(&f.single), &alice, Wanted::ALL, &r.budget(), soon(10)).await.unwrap();
    assert_eq!(art.attestations.len(), 1);
    assert_eq!(art.attestations[0].data, f.envelope);
    let seen = reg.tokens.as_ref().unwrap().users_seen();
    assert!(seen.iter().any(|u| u == "alice") && seen.iter().any(|u| u == "bob"), "{seen:?}");
    let wrong = Credentials::basic("alice", "nope");
    assert_eq!(r.resolve(&img, &wrong, &r.budget(), soon(10)).await.unwrap_err().code(), "registry-unauthorized");

    // The token server listens on another port: without it in tokenRealms, its realm is refused, uncontacted.
    let asked = reg.tokens.as_ref().unwrap().users_seen().len();
    let unlisted = client(&[(&reg.addr, HostConfig { token_realms: vec![], ..reg.host_config() })], |_| {});
    let err = unlisted.resolve(&img, &alice, &unlisted.budget(), soon(10)).await.unwrap_err();
    assert_eq!(err.code(), "registry-token-realm", "{err}");
    assert!(err.to_string().contains("tokenRealms"), "{err}");
    assert_eq!(reg.tokens.as_ref().unwrap().users_seen().len(), asked);
}

// ---------------------------------------------------------------- faults, each its own error within the deadline

async fn fault(
    routes: HashMap<String, Canned>,
    tweak: impl FnOnce(&mut RegistryConfig),
    secs: u64,
) -> (RegistryError, CannedServer, Duration) {
    let server = CannedServer::start(routes);
    let r = client(&[(&server.addr, server.host_config())], tweak);
    let started = std::time::Instant::now();
    let err = r
        .resolve(&image(&format!("{}/team/app:v1", server.addr)), &Credentials::Anonymous, &r.budget(), soon(secs))
        .await
        .unwrap_err();
    (err, server, started.elapsed())
}

fn with_v2(mut routes: HashMap<String, Canned>) -> HashMap<String, Canned> {
    routes.insert("/v2/".to_owned(), Canned::ok("application/json", b"{}".to_vec()));
    routes
}

#[tokio::test]
async fn registry_down_is_unreachable() {
    let addr = format!("127.0.0.1:{}", free_port());
    let r = client(&[(&addr, HostConfig { insecure: true, ..HostConfig::default() })], |_| {});
    let started = std::time::Instant::now();
    let err = r
        .resolve(&image(&format!("{addr}/team/app:v1")), &Credentials::Anonymous, &r.budget(), soon(3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "registry-unreachable", "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_stalled_registry_times_out_at_the_deadline() {
    let routes = with_v2(HashMap::from([("/v2/team/app/manifests/v1".to_owned(), Canned::stall())]));
    let (err, _server, took) = fault(routes, |_| {}, 1).await;
    assert_eq!(err.code(), "registry-timed-out", "{err}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(1800), "{took:?}");
    // The per-call timeout cuts a call short well before a distant deadline.
    let routes = with_v2(HashMap::from([("/v2/team/app/manifests/v1".to_owned(), Canned::stall())]));
    let (err, _server, took) = fault(routes, |c| c.call_timeout = Duration::from_millis(400), 30).await;
    assert_eq!(err.code(), "registry-timed-out", "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let routes = with_v2(HashMap::from([("/v2/team/app/manifests/v1".to_owned(), Canned::status(500))]));
    let (err, server, took) = fault(routes, |c| c.retries = 2, 10).await;
    assert!(matches!(err, RegistryError::ServerError { status: 500, attempts: 3, .. }), "{err}");
    assert_eq!(server.hits("/v2/team/app/manifests/v1"), 3);
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn rate_limits_are_retried_only_within_the_deadline() {
    let target = "/v2/team/app/manifests/v1".to_owned();
    let routes = with_v2(HashMap::from([(target.clone(), Canned::status(429).header("Retry-After", "30"))]));
    let (err, server, took) = fault(routes, |c| c.retries = 5, 3).await;
    assert_eq!(
        err,
        RegistryError::RateLimited { registry: server.addr.clone(), retry_after: Some(Duration::from_secs(30)) }
    );
    assert_eq!(server.hits(&target), 1, "a 30 s wait does not fit a 3 s deadline: no retry");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let routes = with_v2(HashMap::from([(target.clone(), Canned::status(429).header("Retry-After", "0"))]));
    let (err, server, _) = fault(routes, |c| c.retries = 1, 5).await;
    assert_eq!(err.code(), "registry-rate-limited");
    assert_eq!(server.hits(&target), 2, "retried once");
}

#[tokio::test]
async fn content_not_matching_its_digest_is_refused() {
    let l = Layout::new();
    let real = l.image("real", "amd64");
    let other = l.image("other", "amd64");
    // By digest: the registry answers with other bytes.
    let routes = with_v2(HashMap::from([(
        format!("/v2/team/app/manifests/{}", real.digest),
        Canned::ok(OCI_MANIFEST, other.bytes.clone()),
    )]));
    let server = CannedServer::start(routes);
    let r = client(&[(&server.addr, server.host_config())], |_| {});
    let img = image(&format!("{}/team/app@{}", server.addr, real.digest));
    let err = r.resolve(&img, &Credentials::Anonymous, &r.budget(), soon(5)).await.unwrap_err();
    assert!(
        matches!(&err, RegistryError::DigestMismatch { expected, actual, .. } if *expected == real.digest && *actual == other.digest),
        "{err}"
    );

    // A signature layer whose blob is not what its descriptor says.
    let payload = b"signed payload".to_vec();
    let sig = l.cosign_manifest(&[(SIMPLE_SIGNING, payload, json!({}))]);
    let layer = l.blob(SIMPLE_SIGNING, b"signed payload");
    let mut routes = serve("team/app", &[], &[]);
    routes.insert(
        format!("/v2/team/app/manifests/sha256-{}.sig", real.hex()),
        Canned::ok(OCI_MANIFEST, sig.bytes.clone()),
    );
    routes.insert(
        format!("/v2/team/app/blobs/{}", layer.digest),
        Canned::ok("application/octet-stream", b"tampered payload".to_vec()),
    );
    let server = CannedServer::start(routes);
    let r = client(&[(&server.addr, server.host_config())], |_| {});
    let img = image(&format!("{}/team/app:v1", server.addr));
    let err = r
        .artifacts(&img, &digest(&real), &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "registry-digest-mismatch", "{err}");

    // A manifest fetched by tag whose stated digest does not match its bytes.
    let mut routes = serve("team/app", &[], &[&layer]);
    let lying = Canned::ok(OCI_MANIFEST, sig.bytes.clone()).header("Docker-Content-Digest", &other.digest);
    routes.insert(format!("/v2/team/app/manifests/sha256-{}.sig", real.hex()), lying);
    let server = CannedServer::start(routes);
    let r = client(&[(&server.addr, server.host_config())], |_| {});
    let img = image(&format!("{}/team/app:v1", server.addr));
    let err = r
        .artifacts(&img, &digest(&real), &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "registry-digest-mismatch", "{err}");
}

#[tokio::test]
async fn oversized_blobs_and_manifests_are_refused_at_the_cap() {
    let l = Layout::new();
    let subject = l.image("big", "amd64");
    let big = vec![b'x'; 64 << 10];
    let layer = l.blob(SIMPLE_SIGNING, &big);
    // The manifest understates the size, and the blob streams without Content-Length: the read stops at the cap.
    let mut lying = layer.clone();
    lying.size = 10;
    let sig = l.json(
        OCI_MANIFEST,
        &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": l.blob(OCI_CONFIG, b"{}").json(), "layers": [lying.json()]}),
    );
    let sig_target = format!("/v2/team/app/manifests/sha256-{}.sig", subject.hex());
    let blob_target = format!("/v2/team/app/blobs/{}", layer.digest);
    for no_length in [true, false] {
        let mut routes = serve("team/app", &[], &[]);
        routes.insert(sig_target.clone(), Canned::ok(OCI_MANIFEST, sig.bytes.clone()));
        routes.insert(blob_target.clone(), Canned { no_length, ..Canned::ok("application/octet-stream", big.clone()) });
        let server = CannedServer::start(routes);
        let r = client(&[(&server.addr, server.host_config())], |c| c.max_blob_bytes = 1024);
        let img = image(&format!("{}/team/app:v1", server.addr));
        let err = r
            .artifacts(&img, &digest(&subject), &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(5))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::TooLarge { limit: 1024, .. }), "no_length={no_length}: {err}");
    }
    // A declared size above the cap is refused before any download.
    let honest = l.cosign_manifest(&[(SIMPLE_SIGNING, big.clone(), json!({}))]);
    let mut routes = serve("team/app", &[], &[&layer]);
    routes.insert(sig_target.clone(), Canned::ok(OCI_MANIFEST, honest.bytes.clone()));
    let server = CannedServer::start(routes);
    let r = client(&[(&server.addr, server.host_config())], |c| c.max_blob_bytes = 1024);
    let img = image(&format!("{}/team/app:v1", server.addr));
    let err = r
        .artifacts(&img, &digest(&subject), &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "registry-too-large", "{err}");
    assert_eq!(server.hits(&blob_target), 0);
    // Manifests have their own cap.
    let routes = with_v2(HashMap::from([(
        "/v2/team/app/manifests/v1".to_owned(),
        Canned::ok(OCI_MANIFEST, subject.bytes.clone()),
    )]));
    let (err, _s, _) = fault(routes, |c| c.max_manifest_bytes = 64, 5).await;
    assert_eq!(err.code(), "registry-too-large", "{err}");
}

#[tokio::test]
async fn blob_redirects_are_followed_but_bounded() {
    let l = Layout::new();
    let subject = l.image("redirected", "amd64");
    let payload = b"redirected payload".to_vec();
    let sig = l.cosign_manifest(&[(SIMPLE_SIGNING, payload.clone(), json!({}))]);
    let layer = l.blob(SIMPLE_SIGNING, &payload);
    let blob_target = format!("/v2/team/app/blobs/{}", layer.digest);
    let sig_target = format!("/v2/team/app/manifests/sha256-{}.sig", subject.hex());
    let img = |s: &CannedServer| image(&format!("{}/team/app:v1", s.addr));

    // A registry that sends blobs to a CDN: followed, and the bytes still checked.
    let mut routes = serve("team/app", &[], &[]);
    routes.insert(sig_target.clone(), Canned::ok(OCI_MANIFEST, sig.bytes.clone()));
    routes.insert(blob_target.clone(), Canned::status(307).header("Location", "/cdn/payload"));
    routes.insert("/cdn/payload".to_owned(), Canned::ok("application/octet-stream", payload.clone()));
    let server = CannedServer::start(routes);
    let r = client(&[(&server.addr, server.host_config())], |_| {});
    let art = r
        .artifacts(&img(&server), &digest(&subject), &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(5))
        .await
        .unwrap();
    assert_eq!(art.signatures.len(), 1);
    assert_eq!(art.signatures[0].data, payload);
    assert_eq!(server.hits("/cdn/payload"), 1);

    // A redirect loop stops after the configured number of hops.
    let mut routes = serve("team/app", &[], &[]);
    routes.insert(sig_target.clone(), Canned::ok(OCI_MANIFEST, sig.bytes.clone()));
    routes.insert(blob_target.clone(), Canned::status(307).header("Location", &blob_target));
    let server = CannedServer::start(routes);
    let r = client(&[(&server.addr, server.host_config())], |c| c.max_redirects = 3);
    let err = r
        .artifacts(&img(&server), &digest(&subject), &Credentials::Anonymous, Wanted::ALL, &r.budget(), soon(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "registry-unreachable", "{err}");
    assert!(err.to_string().contains("redirect"), "{err}");
    assert_eq!(server.hits(&blob_target), 4, "the first request and three redirects");
}

#[test]
fn unreadable_or_invalid_ca_bundles_fail_at_setup() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    for path in [bad, dir.path().join("missing.pem")] {
        let mut cfg = RegistryConfig::default();
        cfg.hosts.insert("r.example".into(), HostConfig { ca_bundle: Some(path.clone()), ..HostConfig::default() });
        let err = RegistryClient::new(cfg).err().unwrap_or_else(|| panic!("{} accepted", path.display()));
        assert!(err.to_string().contains("caBundle"), "{err}");
    }
}

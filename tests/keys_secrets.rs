//! The Secret key source against a loopback HTTP server answering real Kubernetes API JSON for get, list and
//! watch: keys load, rotate without restart, and a missing Secret, missing data key or bad key is a named error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use provgate::keys::{KeyRef, KeyStore, SecretRef, SecretWatch, fetch_secret_key};
use support::kube_api::serve;

const P256_A: &str = include_str!("fixtures/vectors/sigstore-rs/key-signed-busybox.pub.pem");
const P256_B: &str = include_str!("fixtures/vectors/tekton-chains/cosign.pub");
const PRIVATE: &str = include_str!("fixtures/vectors/tekton-chains/cosign.key");

async fn until(
    store: &KeyStore,
    r: &KeyRef,
    pred: impl Fn(&Result<provgate::verify::PublicKey, provgate::keys::KeysError>) -> bool,
) {
    for _ in 0..200 {
        if pred(&store.get(r)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("key for {r} never reached the expected state; last: {:?}", store.get(r));
}

fn fp(pem: &str) -> String {
    provgate::verify::PublicKey::from_pem(pem.as_bytes()).unwrap().fingerprint().to_owned()
}

#[tokio::test]
async fn secret_keys_load_rotate_and_fail_with_named_errors() {
    let (api, client) = serve().await;
    // A Chains-style Secret: the public key next to the encrypted private key and its password.
    api.put(
        "tekton-chains",
        "signing-secrets",
        &[("cosign.pub", P256_A), ("cosign.key", PRIVATE), ("cosign.password", "hunter2")],
    );
    api.put("tekton-chains", "no-pub", &[("x509.pem", PRIVATE)]);
    api.put("tekton-chains", "garbage", &[("cosign.pub", "not a key")]);
    let watch = SecretWatch::new(client.clone());
    let store = KeyStore::new(Some(watch.clone()));
    let chains = KeyRef::parse("k8s://tekton-chains/signing-secrets").unwrap();
    let missing = KeyRef::parse("k8s://tekton-chains/absent").unwrap();
    let no_key = KeyRef::parse("k8s://tekton-chains/no-pub").unwrap();
    let garbage = KeyRef::parse("k8s://tekton-chains/garbage").unwrap();
    let refs = [chains.clone(), missing.clone(), no_key.clone(), garbage.clone()];
    store.watch(&refs);
    store.watch(&refs); // idempotent: one watch per reference

    until(&store, &chains, |k| k.as_ref().is_ok_and(|k| k.fingerprint() == fp(P256_A))).await;
    until(&store, &missing, |k| k.as_ref().is_err_and(|e| e.code() == "key-secret-not-found")).await;
    until(&store, &no_key, |k| k.as_ref().is_err_and(|e| e.code() == "key-missing-data-key")).await;
    until(&store, &garbage, |k| k.as_ref().is_err_and(|e| e.code() == "key-unparseable")).await;
    assert!(store.get(&missing).unwrap_err().to_string().contains("tekton-chains/absent"));
    assert!(store.get(&no_key).unwrap_err().to_string().contains("cosign.pub"));
    assert!(store.get(&garbage).unwrap_err().to_string().contains("k8s://tekton-chains/garbage/cosign.pub"));
    assert_eq!(store.key_set(std::slice::from_ref(&chains)).unwrap().keys().len(), 1);
    assert_eq!(store.key_set(&[chains.clone(), missing.clone()]).unwrap_err().code(), "key-secret-not-found");

    // Every watch filters by name with a field selector.
    api.wait_for_watches(4).await;
    {
        let c = api.cluster.lock().unwrap();
        assert!(c.requests.iter().all(|r| r.contains("metadata.name=")), "{:?}", c.requests);
        assert_eq!(c.watches, 4, "{:?}", c.requests);
    }

    // Rotation: the new key applies without restarting anything.
    api.put("tekton-chains", "signing-secrets", &[("cosign.pub", P256_B), ("cosign.key", PRIVATE)]);
    until(&store, &chains, |k| k.as_ref().is_ok_and(|k| k.fingerprint() == fp(P256_B))).await;
    // The missing Secret appears.
    api.put("tekton-chains", "absent", &[("cosign.pub", P256_A)]);
    until(&store, &missing, |k| k.as_ref().is_ok_and(|k| k.fingerprint() == fp(P256_A))).await;
    // The key is removed from the Secret, then the Secret is deleted.
    api.put("tekton-chains", "signing-secrets", &[("cosign.key", PRIVATE)]);
    until(&store, &chains, |k| k.as_ref().is_err_and(|e| e.code() == "key-missing-data-key")).await;
    api.delete("tekton-chains", "signing-secrets");
    until(&store, &chains, |k| k.as_ref().is_err_and(|e| e.code() == "key-secret-not-found")).await;

    // One-shot GET for commands that do not watch.
    let absent = SecretRef { namespace: "tekton-chains".into(), name: "absent".into(), key: "cosign.pub".into() };
    assert_eq!(fetch_secret_key(client.clone(), &absent).await.unwrap().fingerprint(), fp(P256_A));
    let gone = SecretRef { name: "signing-secrets".into(), ..absent.clone() };
    assert_eq!(fetch_secret_key(client.clone(), &gone).await.unwrap_err().code(), "key-secret-not-found");
    let other_key = SecretRef { key: "other.pub".into(), ..absent.clone() };
    assert_eq!(fetch_secret_key(client, &other_key).await.unwrap_err().code(), "key-missing-data-key");

    // readiness wait on an already-known Secret answers at once
    let r = SecretRef { namespace: "tekton-chains".into(), name: "absent".into(), key: "cosign.pub".into() };
    assert!(watch.ready(&r, Duration::from_secs(5)).await.is_ok());
    watch.retain(&[]);
    assert_eq!(watch.get(&r).unwrap_err().code(), "key-not-loaded");
    // ... and that `get` restarted the watch, so the key comes back without anyone calling `watch`.
    let again = KeyRef::Secret(r.clone());
    until(&store, &again, |k| k.as_ref().is_ok_and(|k| k.fingerprint() == fp(P256_A))).await;
}

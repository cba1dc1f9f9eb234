//! The live policy set: swapped whole when the files change, the last good set kept while a broken edit is
//! rejected. Files are polled by content, which also sees a ConfigMap volume's `..data` symlink swap. The active
//! set is the files' set joined with the cluster's ImagePolicy objects (see [`super::cluster`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest as _, Sha256};

use super::{LoadErrors, PolicySet, load, policy_files};

#[derive(Debug, Default)]
pub struct PolicyStore {
    current: ArcSwapOption<PolicySet>,
    /// The last good set loaded from files, and the cluster's policies; `current` joins them.
    files: ArcSwapOption<PolicySet>,
    cluster: ArcSwapOption<PolicySet>,
    /// Serialises joins, so a files reload and a cluster change racing never publish a stale pair.
    join: std::sync::Mutex<()>,
    /// The errors of the last rejected load, until a good one replaces them.
    last_error: ArcSwapOption<LoadErrors>,
    /// Fingerprint of the files as they were at the last load attempt.
    attempted: std::sync::Mutex<Option<Vec<u8>>>,
    /// Loads rejected (at start or on a change), for `provgate_policy_load_errors_total`.
    load_errors: Counter,
}

impl PolicyStore {
    /// A store holding `set`, for one-shot use (no files to reload).
    pub fn with(set: PolicySet) -> Self {
        let store = Self::default();
        store.files.store(Some(Arc::new(set)));
        store.publish();
        store
    }

    /// The active set, or None before any set loaded.
    pub fn current(&self) -> Option<Arc<PolicySet>> {
        self.current.load_full()
    }

    pub fn last_error(&self) -> Option<Arc<LoadErrors>> {
        self.last_error.load_full()
    }

    /// The count of rejected loads (a handle on the store's own counter).
    pub fn load_errors(&self) -> Counter {
        self.load_errors.clone()
    }

    /// Loads `path`; on success the set becomes active, on failure the previous set stays and the errors are kept.
    pub fn reload(&self, path: &Path) -> Result<Arc<PolicySet>, LoadErrors> {
        self.remember(fingerprint(path));
        match load(path) {
            Ok(set) => {
                let set = Arc::new(set);
                self.files.store(Some(set.clone()));
                self.publish();
                self.last_error.store(None);
                Ok(set)
            }
            Err(errors) => {
                self.last_error.store(Some(Arc::new(errors.clone())));
                self.load_errors.inc();
                Err(errors)
            }
        }
    }

    /// The last good set loaded from files (None before one loaded).
    pub fn files(&self) -> Option<Arc<PolicySet>> {
        self.files.load_full()
    }

    /// Replaces the cluster's policies (their names never clash with the files'; the caller checks).
    pub fn set_cluster(&self, set: PolicySet) {
        self.cluster.store(Some(Arc::new(set)));
        self.publish();
    }

    /// Makes files ∪ cluster the active set; nothing is active until the files have loaded once.
    fn publish(&self) {
        let _join = self.join.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(files) = self.files.load_full() else { return };
        let joined = match self.cluster.load_full() {
            Some(cluster) if !cluster.policies().is_empty() => {
                let mut hasher = Sha256::new();
                hasher.update(files.generation().as_bytes());
                hasher.update([0]);
                hasher.update(cluster.generation().as_bytes());
                let policies = files.policies().iter().chain(cluster.policies()).cloned().collect();
                Arc::new(PolicySet::new(policies, hex::encode(&hasher.finalize()[..8])))
            }
            _ => files,
        };
        self.current.store(Some(joined));
    }

    /// Records `print` as the last attempted load; returns whether it differs from the previous attempt.
    fn remember(&self, print: Option<Vec<u8>>) -> bool {
        let mut attempted = self.attempted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *attempted != print;
        *attempted = print;
        changed
    }

    /// Polls `path` every `period` and reloads when the files' names or contents differ from the last load
    /// attempt. Runs until dropped.
    pub async fn watch(self: Arc<Self>, path: PathBuf, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            if !self.remember(fingerprint(&path)) {
                continue;
            }
            match self.reload(&path) {
                Ok(set) => {
                    tracing::info!(generation = set.generation(), policies = set.policies().len(), "policies reloaded")
                }
                Err(errors) => tracing::error!(%errors, "policy change rejected; the previous policy set stays active"),
            }
        }
    }
}

/// A hash of the policy files' names and bytes (None when they cannot be listed).
fn fingerprint(path: &Path) -> Option<Vec<u8>> {
    let files = policy_files(path).ok()?;
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&file).unwrap_or_default());
        hasher.update([0]);
    }
    Some(hasher.finalize().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: a}\nspec:\n  match: {images: [\"**\"]}\n";

    #[test]
    fn a_broken_edit_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::default();
        assert!(store.current().is_none());
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        let first = store.reload(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD.replace("images", "imagez")).unwrap();
        let errors = store.reload(dir.path()).unwrap_err();
        assert!(errors.to_string().contains("a.yaml:5:"), "{errors}");
        assert_eq!(store.load_errors().get(), 1, "the rejected load is counted");
        assert_eq!(store.current().unwrap().generation(), first.generation());
        assert!(store.last_error().is_some());
        std::fs::write(dir.path().join("a.yaml"), GOOD.replace("name: a", "name: b")).unwrap();
        store.reload(dir.path()).unwrap();
        assert_eq!(store.current().unwrap().policies()[0].name, "b");
        assert!(store.last_error().is_none());
        assert_eq!(store.load_errors().get(), 1, "a good load is not an error");
    }

    #[tokio::test(start_paused = true)]
    async fn watch_follows_a_configmap_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (version, name) in [("v1", "first"), ("v2", "second")] {
            std::fs::create_dir(root.join(format!("..{version}"))).unwrap();
            std::fs::write(root.join(format!("..{version}/p.yaml")), GOOD.replace("name: a", &format!("name: {name}")))
                .unwrap();
        }
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/p.yaml", root.join("p.yaml")).unwrap();
        let store = Arc::new(PolicyStore::default());
        store.reload(root).unwrap();
        assert_eq!(store.current().unwrap().policies()[0].name, "first");
        let task = tokio::spawn(store.clone().watch(root.to_path_buf(), Duration::from_secs(2)));
        // The kubelet's atomic swap: a new symlink renamed over `..data`.
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if store.current().unwrap().policies()[0].name == "second" {
                break;
            }
        }
        task.abort();
        assert_eq!(store.current().unwrap().policies()[0].name, "second");
    }
}

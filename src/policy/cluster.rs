//! ImagePolicy objects in the cluster: watched beside the files, each compiled on its own (a version that does not
//! compile never replaces the last good one), joined with the files' set, and their status written back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher as watch_objects};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::model::{API_VERSION, ImagePolicy, KIND};
use super::{Policy, PolicySet, PolicyStore, load_sources};

/// The largest `spec` (as JSON) compiled; larger ones are reported on the object and not loaded. The apiserver
/// caps a whole object near 1.5 MiB; a policy needs a few KiB.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;

/// The most `spec.validations` a cluster policy may hold (also the CRD schema's `maxItems`): every matching
/// validation is evaluated for every image of every review.
pub const MAX_VALIDATIONS: usize = 64;

/// How long [`start`] waits for the first list before serving without the cluster's policies.
const FIRST_LIST: Duration = Duration::from_secs(10);

/// `status` of an ImagePolicy object, written by provgate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicyStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The `metadata.generation` of the version that judges images (the last one that compiled), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One status condition; provgate writes `Ready`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// `Loaded`, `CompileError` or `NameClash`.
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A schema that accepts any value, for fields whose several shapes (`true` or a map; `any`, `all` or
/// `{atLeast: n}`) a structural CRD schema cannot express; provgate's loader checks them and reports on the object.
pub fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// What one object compiled to, kept while its uid and generation stay the same.
#[derive(Debug, Clone)]
struct Entry {
    uid: String,
    generation: i64,
    /// This generation's error, if it did not compile.
    error: Option<String>,
    /// The last version that compiled: its generation, the policy and its content hash.
    good: Option<(i64, Arc<Policy>, String)>,
}

/// The cluster's ImagePolicy objects, compiled, feeding a [`PolicyStore`].
pub struct ClusterPolicies {
    api: Api<DynamicObject>,
    store: Arc<PolicyStore>,
    entries: BTreeMap<String, Entry>,
}

/// Loads the cluster's ImagePolicy objects into `store` (waiting at most 10 s for the first list), then follows
/// them, and the files' changes (polled every `period`), in the returned task.
pub async fn start(client: kube::Client, store: Arc<PolicyStore>, period: Duration) -> tokio::task::JoinHandle<()> {
    let resource = ApiResource::erase::<ImagePolicy>(&());
    let mut cluster = ClusterPolicies { api: Api::all_with(client, &resource), store, entries: BTreeMap::new() };
    match tokio::time::timeout(FIRST_LIST, cluster.api.list(&ListParams::default())).await {
        Ok(Ok(list)) => {
            let objects = list.items.into_iter().map(|o| (o.metadata.name.clone().unwrap_or_default(), o)).collect();
            cluster.reconcile(&objects).await;
        }
        Ok(Err(error)) => {
            tracing::info!(%error, "ImagePolicy objects are not readable (is the CRD installed?); retrying in the background")
        }
        Err(_) => tracing::warn!("listing ImagePolicy objects took over 10 s; loading them in the background"),
    }
    tokio::spawn(cluster.follow(period))
}

impl ClusterPolicies {
    /// Watches the objects and reconciles on every change, and when the files' set changes (name clashes).
    async fn follow(mut self, period: Duration) {
        let mut stream = watch_objects(self.api.clone(), watcher::Config::default()).default_backoff().boxed();
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut objects: BTreeMap<String, DynamicObject> = BTreeMap::new();
        let mut listing: BTreeMap<String, DynamicObject> = BTreeMap::new();
        let mut files = self.store.files().map(|s| s.generation().to_owned());
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(Event::Init)) => listing.clear(),
                    Some(Ok(Event::InitApply(o))) => {
                        listing.insert(o.metadata.name.clone().unwrap_or_default(), o);
                    }
                    Some(Ok(Event::InitDone)) => {
                        objects = std::mem::take(&mut listing);
                        self.reconcile(&objects).await;
                    }
                    Some(Ok(Event::Apply(o))) => {
                        objects.insert(o.metadata.name.clone().unwrap_or_default(), o);
                        self.reconcile(&objects).await;
                    }
                    Some(Ok(Event::Delete(o))) => {
                        objects.remove(o.metadata.name.as_deref().unwrap_or_default());
                        self.reconcile(&objects).await;
                    }
                    Some(Err(error)) => tracing::warn!(%error, "watching ImagePolicy objects"),
                    None => return,
                },
                _ = ticks.tick() => {
                    let now = self.store.files().map(|s| s.generation().to_owned());
                    if now != files {
                        files = now;
                        self.reconcile(&objects).await;
                    }
                }
            }
        }
    }

    /// Compiles what changed, publishes the last good version of every object whose name the files do not use,
    /// and writes each object's status where it differs.
    async fn reconcile(&mut self, objects: &BTreeMap<String, DynamicObject>) {
        let files = self.store.files();
        let mut active = Vec::new();
        let mut hasher = Sha256::new();
        let mut entries = BTreeMap::new();
        let mut statuses = Vec::new();
        for (name, object) in objects {
            let uid = object.metadata.uid.clone().unwrap_or_default();
            let generation = object.metadata.generation.unwrap_or_default();
            let previous = self.entries.remove(name).filter(|e| e.uid == uid);
            let entry = match previous {
                Some(e) if e.generation == generation => e,
                previous => {
                    let good = previous.and_then(|e| e.good);
                    match compile(name, &object.data["spec"]) {
                        Ok((policy, hash)) => {
                            Entry { uid, generation, error: None, good: Some((generation, policy, hash)) }
                        }
                        Err(error) => Entry { uid, generation, error: Some(error), good },
                    }
                }
            };
            let clash = files.as_ref().and_then(|f| f.policies().iter().find(|p| &p.name == name).cloned());
            let condition = match (&clash, &entry.error, &entry.good) {
                (Some(file), _, _) => (
                    "False",
                    "NameClash",
                    format!(
                        "the policy file {} already defines a policy named {name:?}; rename this ImagePolicy (files win)",
                        file.file.display()
                    ),
                ),
                (None, Some(error), Some((g, _, _))) => {
                    ("False", "CompileError", format!("{error}; generation {g} stays active"))
                }
                (None, Some(error), None) => ("False", "CompileError", format!("{error}; no version is active")),
                (None, None, _) => ("True", "Loaded", format!("compiled; generation {generation} is active")),
            };
            let active_generation = match (&clash, &entry.good) {
                (None, Some((g, policy, hash))) => {
                    active.push(policy.clone());
                    hasher.update(name.as_bytes());
                    hasher.update([0]);
                    hasher.update(hash.as_bytes());
                    Some(*g)
                }
                _ => None,
            };
            if let Some(status) = status(object, generation, active_generation, condition) {
                statuses.push((name.clone(), status));
            }
            entries.insert(name.clone(), entry);
        }
        self.entries = entries;
        let count = active.len();
        self.store.set_cluster(PolicySet::new(active, hex::encode(&hasher.finalize()[..8])));
        tracing::debug!(policies = count, "cluster policies reconciled");
        for (name, status) in statuses {
            let patch = json!({ "status": status });
            if let Err(error) = self.api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::warn!(policy = %name, %error, "writing ImagePolicy status");
            }
        }
    }
}

/// The status `object` should carry, or None when it already does (so writing it does not loop through the watch).
fn status(
    object: &DynamicObject,
    generation: i64,
    active_generation: Option<i64>,
    (state, reason, message): (&str, &str, String),
) -> Option<ImagePolicyStatus> {
    let current: ImagePolicyStatus = serde_json::from_value(object.data["status"].clone()).unwrap_or_default();
    let previous = current.conditions.iter().find(|c| c.type_ == "Ready");
    let last_transition_time = match previous {
        Some(c) if c.status == state => c.last_transition_time.clone(),
        _ => chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let want = ImagePolicyStatus {
        observed_generation: Some(generation),
        active_generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: state.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: Some(generation),
        }],
    };
    (want != current).then_some(want)
}

/// Compiles one object's `spec` with the files' loader: the policy and a hash of its content, or every error
/// joined (the loader's messages name the field and the expression).
fn compile(name: &str, spec: &Value) -> Result<(Arc<Policy>, String), String> {
    let bytes = serde_json::to_vec(spec).map_err(|e| e.to_string())?.len();
    if bytes > MAX_SPEC_BYTES {
        return Err(format!("spec is {bytes} bytes, more than {MAX_SPEC_BYTES}"));
    }
    let validations = spec["validations"].as_array().map_or(0, Vec::len);
    if validations > MAX_VALIDATIONS {
        return Err(format!("spec.validations has {validations} entries, more than {MAX_VALIDATIONS}"));
    }
    let doc = json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec});
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    let set = load_sources(&[(PathBuf::from(format!("{KIND}/{name}")), text)])
        .map_err(|errors| errors.0.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; "))?;
    let policy = set.policies().first().cloned().ok_or_else(|| "spec is empty".to_owned())?;
    Ok((policy, set.generation().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(validations: Value) -> Value {
        json!({"match": {"images": ["registry.example.com/**"]}, "validations": validations})
    }

    #[test]
    fn a_spec_compiles_with_the_files_loader() {
        let (policy, hash) = compile("team", &spec(json!([{"expression": "image.ref != ''"}]))).unwrap();
        assert_eq!((policy.name.as_str(), policy.validations.len()), ("team", 1));
        assert_eq!(policy.file, PathBuf::from("ImagePolicy/team"));
        let (_, other) = compile("team", &spec(json!([{"expression": "image.ref == ''"}]))).unwrap();
        assert_ne!(hash, other, "the hash follows the content");
    }

    #[test]
    fn errors_name_the_field_and_the_expression() {
        let table: &[(Value, &str)] = &[
            (spec(json!([{"expression": "nope == 1"}])), "validations[0].expression: unknown variable `nope`"),
            (spec(json!([{"expression": "image.ref =="}])), "syntax error in `image.ref ==`"),
            (json!({"match": {"images": ["**"]}, "require": {"signature": "yes"}}), "true, false, or a map"),
            (json!({"match": {"images": ["**"]}, "colour": 1}), "unknown field `colour`"),
            (json!({"match": {"images": ["["]}}), "["),
            (
                json!({"match": {"images": ["**"]}, "authorities": [{"name": "a", "key": "k8s://ns/key"}],
                       "evidence": [{"name": "sbom", "from": "object.spec", "store": {"oci": "r.example/e"}}]}),
                "evidence[0] (\"sbom\"): from reads `object`",
            ),
            (
                json!({"match": {"images": ["**"]}, "validations": [{"expression": "size(evidence.sbom) == 1"}]}),
                "validations[0] reads `evidence`, but spec.evidence declares none",
            ),
        ];
        for (spec, needle) in table {
            let error = compile("p", spec).unwrap_err();
            assert!(error.contains(needle), "{error} should mention {needle}");
        }
    }

    #[test]
    fn huge_specs_and_too_many_validations_are_refused_before_compiling() {
        let many: Vec<Value> = (0..=MAX_VALIDATIONS).map(|_| json!({"expression": "true"})).collect();
        let error = compile("p", &spec(Value::Array(many))).unwrap_err();
        assert!(error.contains("65 entries, more than 64"), "{error}");
        let huge = json!({"match": {"images": vec!["registry.example.com/x"; 4000]}});
        let error = compile("p", &huge).unwrap_err();
        assert!(error.contains("more than 65536"), "{error}");
    }

    #[test]
    fn the_active_set_is_the_files_joined_with_the_cluster() {
        let file = "apiVersion: provgate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: f}\nspec:\n  match: {images: [\"**\"]}\n";
        let files = load_sources(&[(PathBuf::from("f.yaml"), file.into())]).unwrap();
        let store = PolicyStore::with(files.clone());
        assert_eq!(store.current().unwrap().generation(), files.generation());
        let (policy, hash) = compile("c", &spec(json!([]))).unwrap();
        store.set_cluster(PolicySet::new(vec![policy], hash));
        let joined = store.current().unwrap();
        let names: Vec<&str> = joined.policies().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["f", "c"]);
        assert_ne!(joined.generation(), files.generation(), "cache keys see the cluster's policies");
        store.set_cluster(PolicySet::default());
        assert_eq!(store.current().unwrap().generation(), files.generation());
        assert_eq!(store.files().unwrap().policies().len(), 1);
    }

    #[test]
    fn status_is_written_only_when_it_changes() {
        let mut object = DynamicObject::new("p", &ApiResource::erase::<ImagePolicy>(&()));
        let want = status(&object, 2, Some(2), ("True", "Loaded", "ok".into())).unwrap();
        assert_eq!(want.conditions[0].observed_generation, Some(2));
        object.data = json!({"status": want});
        assert_eq!(status(&object, 2, Some(2), ("True", "Loaded", "ok".into())), None);
        let broken = status(&object, 3, Some(2), ("False", "CompileError", "bad".into())).unwrap();
        assert_eq!((broken.observed_generation, broken.active_generation), (Some(3), Some(2)));
    }
}

//! Registry credentials for one review, in the kubelet's order: the Pod's `imagePullSecrets`, then its
//! ServiceAccount's, then the dockerconfigjson Secrets the config names. Read through the Kubernetes API and cached
//! briefly; the config's per-host `dockerConfigJson` files stay the registry client's fallback.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use serde::Deserialize;
use serde_json::Value;

use crate::policy::signatures::PullSecretName;
use crate::registry::HostCredentials;

/// Config `credentials:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CredentialsConfig {
    /// dockerconfigjson Secrets as `NAMESPACE/NAME`, tried after the Pod's own pull secrets.
    pub secrets: Vec<String>,
    /// Use the Pod's and its ServiceAccount's `imagePullSecrets` (needs `get` on Secrets and ServiceAccounts in
    /// workload namespaces).
    pub image_pull_secrets: bool,
    /// How long a Secret or ServiceAccount read is reused.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self { secrets: Vec::new(), image_pull_secrets: false, cache_ttl: Duration::from_secs(30) }
    }
}

impl CredentialsConfig {
    /// Checks every `secrets` entry is `NAMESPACE/NAME`.
    pub fn validate(&self) -> Result<(), String> {
        for s in &self.secrets {
            if split(s).is_none() {
                return Err(format!("credentials.secrets: {s:?} is not NAMESPACE/NAME"));
            }
        }
        Ok(())
    }
}

fn split(s: &str) -> Option<(&str, &str)> {
    s.split_once('/').filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
}

type Cached = Arc<Option<HostCredentials>>;

/// Reads pull secrets through the Kubernetes API, when there is one.
pub struct PullSecrets {
    client: Option<kube::Client>,
    config: CredentialsConfig,
    secrets: moka::future::Cache<(String, String), Cached>,
    accounts: moka::future::Cache<(String, String), Arc<Vec<String>>>,
}

impl PullSecrets {
    pub fn new(client: Option<kube::Client>, config: CredentialsConfig) -> Self {
        let ttl = config.cache_ttl;
        Self {
            client,
            secrets: moka::future::Cache::builder().max_capacity(4096).time_to_live(ttl).build(),
            accounts: moka::future::Cache::builder().max_capacity(4096).time_to_live(ttl).build(),
            config,
        }
    }

    /// The credentials a Pod with `pod_spec` in `namespace` pulls with. Unreadable or missing Secrets are skipped,
    /// as the kubelet skips them: the registry then refuses, and that refusal is the denial.
    pub async fn credentials(&self, namespace: &str, pod_spec: Option<&Value>) -> HostCredentials {
        let mut credentials = HostCredentials::default();
        let Some(client) = &self.client else { return credentials };
        let mut names: Vec<(String, String)> = Vec::new();
        if self.config.image_pull_secrets {
            let spec = pod_spec.cloned().unwrap_or(Value::Null);
            names.extend(pull_secret_names(&spec).into_iter().map(|n| (namespace.to_owned(), n)));
            let account = spec.get("serviceAccountName").and_then(Value::as_str).filter(|s| !s.is_empty());
            let account = account.unwrap_or("default");
            let listed = self.account_pull_secrets(client, namespace, account).await;
            names.extend(listed.iter().map(|n| (namespace.to_owned(), n.clone())));
        }
        names.extend(self.config.secrets.iter().filter_map(|s| split(s)).map(|(ns, n)| (ns.to_owned(), n.to_owned())));
        for (ns, name) in names {
            if let Some(found) = self.secret(client, &ns, &name).await.as_ref() {
                credentials.merge(found.clone());
            }
        }
        credentials
    }

    /// The credentials in the dockerconfigjson Secrets a policy's `signaturePullSecrets` name: a name without a
    /// namespace is in provgate's own (the namespace of its ServiceAccount in a cluster, else the kubeconfig's).
    /// Unreadable or missing Secrets are skipped, so the signature registry's refusal is the denial.
    pub async fn signature_credentials(&self, names: &[PullSecretName]) -> HostCredentials {
        let mut credentials = HostCredentials::default();
        let Some(client) = &self.client else { return credentials };
        for secret in names {
            let ns = secret.namespace.as_deref().unwrap_or_else(|| client.default_namespace());
            if let Some(found) = self.secret(client, ns, &secret.name).await.as_ref() {
                credentials.merge(found.clone());
            }
        }
        credentials
    }

    async fn account_pull_secrets(&self, client: &kube::Client, ns: &str, name: &str) -> Arc<Vec<String>> {
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), ns);
        self.accounts
            .get_with((ns.to_owned(), name.to_owned()), async move {
                let names = match api.get_opt(name).await {
                    Ok(Some(account)) => {
                        account.image_pull_secrets.unwrap_or_default().into_iter().map(|r| r.name).collect()
                    }
                    Ok(None) => Vec::new(),
                    Err(e) => {
                        tracing::warn!(namespace = ns, account = name, error = %e, "ServiceAccount not readable");
                        Vec::new()
                    }
                };
                Arc::new(names)
            })
            .await
    }

    async fn secret(&self, client: &kube::Client, ns: &str, name: &str) -> Cached {
        let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), ns);
        self.secrets
            .get_with((ns.to_owned(), name.to_owned()), async move {
                let found = match api.get_opt(name).await {
                    Ok(Some(secret)) => docker_config(secret, ns, name),
                    Ok(None) => {
                        tracing::warn!(namespace = ns, secret = name, "pull secret not found");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(namespace = ns, secret = name, error = %e, "pull secret not readable");
                        None
                    }
                };
                Arc::new(found)
            })
            .await
    }
}

/// The credentials in a `kubernetes.io/dockerconfigjson` (or legacy `dockercfg`) Secret.
fn docker_config(mut secret: Secret, ns: &str, name: &str) -> Option<HostCredentials> {
    let mut data = secret.data.take().unwrap_or_default();
    let bytes = data.remove(".dockerconfigjson").or_else(|| data.remove(".dockercfg"))?;
    match HostCredentials::from_docker_config(&bytes.0) {
        Ok(credentials) => Some(credentials),
        Err(e) => {
            tracing::warn!(namespace = ns, secret = name, error = %e, "pull secret is not a docker config");
            None
        }
    }
}

/// `imagePullSecrets[*].name` of a pod spec.
fn pull_secret_names(spec: &Value) -> Vec<String> {
    let list = spec.get("imagePullSecrets").and_then(Value::as_array);
    list.into_iter().flatten().filter_map(|r| r.get("name")?.as_str()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pull_secret_names_in_order() {
        let spec = json!({"imagePullSecrets": [{"name": "a"}, {"name": "b"}, {}]});
        assert_eq!(pull_secret_names(&spec), vec!["a", "b"]);
        assert!(pull_secret_names(&json!({})).is_empty());
    }

    #[test]
    fn configured_secret_names_must_be_namespaced() {
        let ok = CredentialsConfig { secrets: vec!["ci/pull".into()], ..Default::default() };
        assert!(ok.validate().is_ok());
        for bad in ["pull", "/pull", "ci/", "a/b/c"] {
            let c = CredentialsConfig { secrets: vec![bad.into()], ..Default::default() };
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}

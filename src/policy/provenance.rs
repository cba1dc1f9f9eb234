//! One normalised view of in-toto Provenance v0.1, SLSA v0.2 and SLSA v1 predicates, the CEL `provenance`.

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// in-toto Provenance v0.1 (Chains' old `in-toto` formatter, and other in-toto tools).
pub const INTOTO_PROVENANCE_V01: &str = "https://in-toto.io/Provenance/v0.1";
/// SLSA Provenance v0.2 (Chains' `in-toto` and `slsa/v1` formats).
pub const SLSA_PROVENANCE_V02: &str = "https://slsa.dev/provenance/v0.2";
/// SLSA Provenance v1 (Chains' `slsa/v2alpha3` and `slsa/v2alpha4` formats).
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";

/// The provenance a policy sees, whatever version it was written in.
///
/// A field the source version lacks, or that has an unexpected JSON type, is empty (`""`, `[]`, `{}`), never an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// `"v0.1"`, `"v0.2"`, `"v1"`; `""` when no provenance statement was verified.
    pub version: String,
    pub builder: Builder,
    pub build_type: String,
    /// v0.1/v0.2 `materials`; v1 `buildDefinition.resolvedDependencies`.
    pub materials: Vec<Material>,
    /// v0.2 `invocation`; v0.1 `recipe.arguments` / `recipe.environment`; empty in v1.
    pub invocation: Invocation,
    /// v1 `buildDefinition.externalParameters`; empty before v1.
    pub external_parameters: Value,
    /// RFC 3339 as written: v0.x `metadata.buildStartedOn`, v1 `runDetails.metadata.startedOn`.
    pub started_on: String,
    /// RFC 3339 as written: v0.x `metadata.buildFinishedOn`, v1 `runDetails.metadata.finishedOn`.
    pub finished_on: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Builder {
    pub id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Material {
    pub uri: String,
    /// Algorithm to hex; entries whose value is not a string are dropped.
    pub digest: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invocation {
    pub parameters: Value,
    pub environment: Value,
}

impl Default for Invocation {
    fn default() -> Self {
        Invocation { parameters: empty_object(), environment: empty_object() }
    }
}

/// The provenance predicate versions this view understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvenanceVersion {
    V01,
    V02,
    V1,
}

impl ProvenanceVersion {
    /// The version a `predicateType` names, `None` for anything that is not provenance.
    pub fn of(predicate_type: &str) -> Option<Self> {
        match predicate_type {
            INTOTO_PROVENANCE_V01 => Some(Self::V01),
            SLSA_PROVENANCE_V02 => Some(Self::V02),
            SLSA_PROVENANCE_V1 => Some(Self::V1),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::V01 => "v0.1",
            Self::V02 => "v0.2",
            Self::V1 => "v1",
        }
    }
}

impl Provenance {
    /// The empty view, used when no provenance statement was verified.
    pub fn empty() -> Self {
        Provenance { external_parameters: empty_object(), ..Default::default() }
    }

    /// Normalises `predicate` of type `predicate_type`; `None` if the type is not a provenance predicate.
    pub fn normalise(predicate_type: &str, predicate: &Value) -> Option<Self> {
        let version = ProvenanceVersion::of(predicate_type)?;
        let p = predicate;
        let view = match version {
            ProvenanceVersion::V01 => Provenance {
                version: String::new(),
                builder: Builder { id: string_at(p, &["builder", "id"]) },
                build_type: string_at(p, &["recipe", "type"]),
                materials: materials(at(p, &["materials"]), "uri"),
                invocation: Invocation {
                    parameters: object_at(p, &["recipe", "arguments"]),
                    environment: object_at(p, &["recipe", "environment"]),
                },
                external_parameters: empty_object(),
                started_on: string_at(p, &["metadata", "buildStartedOn"]),
                finished_on: string_at(p, &["metadata", "buildFinishedOn"]),
            },
            ProvenanceVersion::V02 => Provenance {
                version: String::new(),
                builder: Builder { id: string_at(p, &["builder", "id"]) },
                build_type: string_at(p, &["buildType"]),
                materials: materials(at(p, &["materials"]), "uri"),
                invocation: Invocation {
                    parameters: object_at(p, &["invocation", "parameters"]),
                    environment: object_at(p, &["invocation", "environment"]),
                },
                external_parameters: empty_object(),
                started_on: string_at(p, &["metadata", "buildStartedOn"]),
                finished_on: string_at(p, &["metadata", "buildFinishedOn"]),
            },
            ProvenanceVersion::V1 => Provenance {
                version: String::new(),
                builder: Builder { id: string_at(p, &["runDetails", "builder", "id"]) },
                build_type: string_at(p, &["buildDefinition", "buildType"]),
                materials: materials(at(p, &["buildDefinition", "resolvedDependencies"]), "uri"),
                invocation: Invocation::default(),
                external_parameters: object_at(p, &["buildDefinition", "externalParameters"]),
                started_on: string_at(p, &["runDetails", "metadata", "startedOn"]),
                finished_on: string_at(p, &["runDetails", "metadata", "finishedOn"]),
            },
        };
        Some(Provenance { version: version.label().to_string(), ..view })
    }

    /// The view as JSON, the shape the CEL variable `provenance` has.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| empty_object())
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn string_at(value: &Value, path: &[&str]) -> String {
    at(value, path).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// The object at `path`; any other JSON type (array, string, null, absent) is `{}`.
fn object_at(value: &Value, path: &[&str]) -> Value {
    match at(value, path) {
        Some(Value::Object(map)) => Value::Object(map.clone()),
        _ => empty_object(),
    }
}

fn materials(list: Option<&Value>, uri_key: &str) -> Vec<Material> {
    let Some(Value::Array(items)) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter(|item| item.is_object())
        .map(|item| Material {
            uri: string_at(item, &[uri_key]),
            digest: match item.get("digest") {
                Some(Value::Object(d)) => {
                    d.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect()
                }
                _ => BTreeMap::new(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn statement(name: &str) -> Value {
        let path = format!("{}/testdata/statements/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn view(name: &str) -> Provenance {
        let s = statement(name);
        Provenance::normalise(s["predicateType"].as_str().unwrap(), &s["predicate"]).unwrap()
    }

    #[test]
    fn normalises_each_fixture() {
        struct Row {
            file: &'static str,
            version: &'static str,
            builder: &'static str,
            build_type: &'static str,
            materials: usize,
            first_uri: Option<&'static str>,
            started: &'static str,
            finished: &'static str,
        }
        let rows = [
            Row {
                file: "chains-kaniko-slsa-v0.2-statement.json",
                version: "v0.2",
                builder: "https://tekton.dev/chains/v2",
                build_type: "tekton.dev/v1beta1/TaskRun",
                materials: 0,
                first_uri: None,
                started: "2022-10-03T11:32:47Z",
                finished: "2022-10-03T11:33:15Z",
            },
            Row {
                file: "chains-maven-intoto-provenance-v0.1-statement.json",
                version: "v0.1",
                builder: "https://configured.builder@v1",
                build_type: "https://tekton.dev/attestations/chains@v1",
                materials: 4,
                first_uri: Some("git+https://github.com/org/repo"),
                started: "2021-05-11T11:05:50Z",
                finished: "2021-05-11T11:15:42Z",
            },
            Row {
                file: "chains-slsa-v1-format-task-output-image.json",
                version: "v0.2",
                builder: "https://tekton.dev/chains/v2",
                build_type: "tekton.dev/v1beta1/TaskRun",
                materials: 6,
                first_uri: Some("oci://gcr.io/tekton-releases/github.com/tektoncd/pipeline/cmd/git-init"),
                started: "2023-03-14T09:12:03Z",
                finished: "2023-03-14T09:13:41Z",
            },
            Row {
                file: "chains-slsa-v2alpha4-task-output-image.json",
                version: "v1",
                builder: "https://tekton.dev/chains/v2",
                build_type: "https://tekton.dev/chains/v2/slsa",
                materials: 3,
                first_uri: Some("git+https://github.com/tektoncd/catalog.git"),
                started: "2023-03-14T09:12:03Z",
                finished: "2023-03-14T09:13:41Z",
            },
        ];
        for row in rows {
            let p = view(row.file);
            assert_eq!(p.version, row.version, "{}", row.file);
            assert_eq!(p.builder.id, row.builder, "{}", row.file);
            assert_eq!(p.build_type, row.build_type, "{}", row.file);
            assert_eq!(p.materials.len(), row.materials, "{}", row.file);
            assert_eq!(p.materials.first().map(|m| m.uri.as_str()), row.first_uri, "{}", row.file);
            assert_eq!(p.started_on, row.started, "{}", row.file);
            assert_eq!(p.finished_on, row.finished, "{}", row.file);
        }
    }

    #[test]
    fn version_specific_fields_land_in_the_common_place() {
        let v02 = view("chains-kaniko-slsa-v0.2-statement.json");
        assert_eq!(v02.invocation.parameters["IMAGE"], "ttl.sh/tekton-chains-demo");
        assert_eq!(v02.invocation.environment, json!({}));
        assert_eq!(v02.external_parameters, json!({}));

        let v1 = view("chains-slsa-v2alpha4-task-output-image.json");
        assert_eq!(v1.external_parameters["runSpec"]["taskRef"]["name"], "kaniko-build");
        assert_eq!(v1.invocation, Invocation::default());
        assert_eq!(v1.materials[2].uri, "git+https://github.com/acme/app.git");
        assert_eq!(v1.materials[2].digest["sha1"], "6ed7aad5e8a36052ee5f6079fc91368e362121f7");

        let v01 = view("chains-maven-intoto-provenance-v0.1-statement.json");
        assert_eq!(v01.materials[1].digest.len(), 1);
    }

    #[test]
    fn missing_or_mistyped_fields_are_empty_not_errors() {
        for (kind, predicate) in [
            (SLSA_PROVENANCE_V02, json!({})),
            (SLSA_PROVENANCE_V1, json!({})),
            (INTOTO_PROVENANCE_V01, json!(null)),
            (SLSA_PROVENANCE_V02, json!({"builder": {"id": 7}, "materials": "nope", "invocation": []})),
            (SLSA_PROVENANCE_V1, json!({"buildDefinition": {"resolvedDependencies": [1, {"digest": {"sha256": 2}}]}})),
        ] {
            let p = Provenance::normalise(kind, &predicate).unwrap();
            assert_eq!(p.builder.id, "");
            assert_eq!(p.build_type, "");
            assert_eq!(p.started_on, "");
            assert_eq!(p.invocation.parameters, json!({}));
            assert!(p.materials.iter().all(|m| m.uri.is_empty() && m.digest.is_empty()), "{predicate}");
            assert!(p.materials.len() <= 1);
            let json = p.to_json();
            for key in [
                "version",
                "builder",
                "buildType",
                "materials",
                "invocation",
                "externalParameters",
                "startedOn",
                "finishedOn",
            ] {
                assert!(json.get(key).is_some(), "missing {key}");
            }
        }
    }

    #[test]
    fn other_predicates_are_not_provenance() {
        assert_eq!(Provenance::normalise("https://spdx.dev/Document", &json!({})), None);
        assert_eq!(Provenance::normalise("https://slsa.dev/provenance/v0.3", &json!({})), None);
        assert_eq!(Provenance::empty().to_json()["version"], "");
    }
}

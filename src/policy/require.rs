//! A policy's `require` section: signature, named attestations and how authorities combine, compiled at load
//! against the policy's authorities and checked over what `verify` accepted.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::reason::Requirement;
use crate::verify::{AttestationCheck, SignatureCheck};

/// `spec.require` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequireSpec {
    /// Deny tag references: the kubelet may pull a different image than the one verified.
    #[serde(default)]
    pub digest: bool,
    /// `true` (any authority), or `{authorities: [..], match: any | all | {atLeast: n}}`.
    #[serde(default, deserialize_with = "bool_or_need")]
    #[schemars(schema_with = "super::cluster::any_value")]
    pub signature: Option<NeedSpec>,
    #[serde(default)]
    pub attestations: Vec<AttestationSpec>,
    /// `index`: the image's own digest must satisfy the signature requirement; `all`: so must every platform
    /// manifest of a multi-arch image.
    #[serde(default)]
    pub platforms: Platforms,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NeedSpec {
    /// Which of the policy's authorities count; empty means all of them.
    #[serde(default)]
    pub authorities: Vec<String>,
    #[serde(default, rename = "match")]
    #[schemars(schema_with = "super::cluster::any_value")]
    pub combine: Combine,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AttestationSpec {
    /// The name CEL sees under `attestations`.
    pub name: String,
    /// An exact predicate type URI, or `slsa` for SLSA provenance v0.2 and v1 (and in-toto provenance v0.1).
    pub predicate_type: String,
    #[serde(default)]
    pub authorities: Vec<String>,
    #[serde(default, rename = "match")]
    #[schemars(schema_with = "super::cluster::any_value")]
    pub combine: Combine,
    /// Read this attestation from a release list instead of the image: the list's own signature and this
    /// attestation must verify, and the list must pin the image's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<super::via::ViaSpec>,
    /// An image volume (`volumes[].image`) is also covered by a statement whose subjects name every layer of its
    /// manifest (an OCI artifact whose layers are a build's outputs). Never a container image: its config
    /// (entrypoint, user, environment) is no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cover_layers: bool,
}

/// How many of the listed authorities must vouch: `any`, `all`, or `{atLeast: n}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Combine {
    #[default]
    Any,
    All,
    AtLeast(usize),
}

impl Serialize for Combine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self {
            Self::Any => s.serialize_str("any"),
            Self::All => s.serialize_str("all"),
            Self::AtLeast(n) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("atLeast", n)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Combine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Combine;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any, all, or {atLeast: N}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Combine, E> {
                match v {
                    "any" => Ok(Combine::Any),
                    "all" => Ok(Combine::All),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Combine, A::Error> {
                let key: String = map.next_key()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                if key != "atLeast" {
                    return Err(de::Error::unknown_field(&key, &["atLeast"]));
                }
                let n: usize = map.next_value()?;
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::invalid_length(2, &self));
                }
                Ok(Combine::AtLeast(n))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Platforms {
    #[default]
    Index,
    All,
}

fn bool_or_need<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NeedSpec>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<NeedSpec>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false, or a map with authorities and match")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.then(NeedSpec::default))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            NeedSpec::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V)
}

/// Authorities and how many of them must vouch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub authorities: Vec<String>,
    pub combine: Combine,
}

impl Need {
    fn compile(spec: &NeedSpec, all: &[String], what: &str) -> Result<Self, String> {
        if all.is_empty() {
            return Err(format!("{what} needs authorities: list at least one under spec.authorities"));
        }
        for (i, name) in spec.authorities.iter().enumerate() {
            if !all.contains(name) {
                return Err(format!("{what}: authority {name:?} is not in spec.authorities ({})", all.join(", ")));
            }
            if spec.authorities[..i].contains(name) {
                return Err(format!(
                    "{what}: authority {name:?} is listed twice, so one authority would count twice towards match"
                ));
            }
        }
        let authorities = if spec.authorities.is_empty() { all.to_vec() } else { spec.authorities.clone() };
        if let Combine::AtLeast(n) = spec.combine
            && (n == 0 || n > authorities.len())
        {
            return Err(format!("{what}: match atLeast {n} must be between 1 and {}", authorities.len()));
        }
        Ok(Self { authorities, combine: spec.combine })
    }

    /// Whether the authorities that vouched (those for which `vouches` is true) satisfy this need.
    pub fn satisfied_by(&self, vouches: impl Fn(&str) -> bool) -> bool {
        let count = self.authorities.iter().filter(|a| vouches(a)).count();
        match self.combine {
            Combine::Any => count >= 1,
            Combine::All => count == self.authorities.len(),
            Combine::AtLeast(n) => count >= n,
        }
    }

    /// "authority chains", "all of a, b", "2 of a, b, c".
    pub fn describe(&self) -> String {
        let names = self.authorities.join(", ");
        match (self.combine, self.authorities.len()) {
            (_, 1) => format!("authority {names}"),
            (Combine::Any, _) => format!("any of {names}"),
            (Combine::All, _) => format!("all of {names}"),
            (Combine::AtLeast(n), _) => format!("{n} of {names}"),
        }
    }
}

/// Predicate types that count as SLSA provenance for `predicateType: slsa`.
pub const SLSA_TYPES: [&str; 3] =
    ["https://slsa.dev/provenance/v0.2", "https://slsa.dev/provenance/v1", "https://in-toto.io/Provenance/v0.1"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationNeed {
    pub name: String,
    pub predicate_type: String,
    pub need: Need,
    /// Read from this release list instead of the image.
    pub via: Option<super::via::Via>,
    /// An image volume may be covered by a statement naming every layer of its manifest.
    pub cover_layers: bool,
}

impl AttestationNeed {
    pub fn accepts(&self, predicate_type: &str) -> bool {
        if self.predicate_type == "slsa" {
            SLSA_TYPES.contains(&predicate_type)
        } else {
            self.predicate_type == predicate_type
        }
    }
}

/// The compiled `require` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    pub digest: bool,
    pub signature: Option<Need>,
    pub attestations: Vec<AttestationNeed>,
    pub platforms: Platforms,
}

impl Requirements {
    /// Checks names against the policy's authorities (`all`). An absent `require` with authorities means a
    /// signature from any of them; a `require` that asks nothing of listed authorities is an error, since it would
    /// admit unsigned images while reading as if it checked them.
    pub fn compile(spec: Option<&RequireSpec>, all: &[String]) -> Result<Self, String> {
        let Some(spec) = spec else {
            let signature = (!all.is_empty()).then(|| Need { authorities: all.to_vec(), combine: Combine::Any });
            return Ok(Self { signature, ..Self::default() });
        };
        let signature = spec.signature.as_ref().map(|s| Need::compile(s, all, "require.signature")).transpose()?;
        let mut attestations: Vec<AttestationNeed> = Vec::new();
        for (i, a) in spec.attestations.iter().enumerate() {
            let what = format!("require.attestations[{i}]");
            if attestations.iter().any(|x| x.name == a.name) {
                return Err(format!("{what}: name {:?} is used twice", a.name));
            }
            if a.predicate_type.is_empty() {
                return Err(format!("{what}: predicateType must not be empty"));
            }
            let spec = NeedSpec { authorities: a.authorities.clone(), combine: a.combine };
            let via = a.via.as_ref().map(|v| super::via::Via::compile(v, &what)).transpose()?;
            if via.is_some() && a.cover_layers {
                return Err(format!(
                    "{what}: coverLayers does not apply to an attestation read via a release list (the list's \
                     statement is about the list)"
                ));
            }
            attestations.push(AttestationNeed {
                name: a.name.clone(),
                predicate_type: a.predicate_type.clone(),
                need: Need::compile(&spec, all, &what)?,
                via,
                cover_layers: a.cover_layers,
            });
        }
        if spec.platforms == Platforms::All && signature.is_none() {
            return Err("require.platforms: all needs require.signature".into());
        }
        if !all.is_empty() && signature.is_none() && attestations.is_empty() {
            return Err(format!(
                "spec.authorities lists {} but require asks for neither a signature nor an attestation, so unsigned \
                 images would be admitted: set require.signature: true (or remove require, which means the same), or \
                 list require.attestations",
                all.join(", ")
            ));
        }
        Ok(Self { digest: spec.digest, signature, attestations, platforms: spec.platforms })
    }

    /// What must hold, in words, e.g. `signature from authority chains; attestation provenance (slsa) from
    /// authority chains; every platform signed`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.digest {
            parts.push("digest reference".to_owned());
        }
        if let Some(need) = &self.signature {
            parts.push(format!("signature from {}", need.describe()));
        }
        for a in &self.attestations {
            let mut part = format!("attestation {} ({}) from {}", a.name, a.predicate_type, a.need.describe());
            if let Some(via) = &a.via {
                part.push_str(&format!(" via {}", via.describe()));
            }
            if a.cover_layers {
                part.push_str(", or of every layer of an image volume");
            }
            parts.push(part);
        }
        if self.platforms == Platforms::All {
            parts.push("every platform manifest signed".to_owned());
        }
        if parts.is_empty() { "no verification".to_owned() } else { parts.join("; ") }
    }
}

/// One unmet requirement: what kind (its code) and the words a user acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub requirement: Requirement,
    pub message: String,
}

impl From<Unmet> for crate::reason::Reason {
    fn from(u: Unmet) -> Self {
        Self::Unmet { requirement: u.requirement, message: u.message }
    }
}

/// Checks the signature requirement for one digest.
pub fn check_signature(
    need: &Need,
    check: &SignatureCheck,
    authorities: &[std::sync::Arc<crate::verify::Authority>],
) -> Option<Unmet> {
    if need.satisfied_by(|a| check.verified.iter().any(|v| v.authority() == a)) {
        return None;
    }
    Some(Unmet {
        requirement: Requirement::Signature(check.outcome().err()),
        message: format!("no valid signature from {}: {}", need.describe(), check.explain(authorities)),
    })
}

/// Checks one attestation requirement; returns the statements that count for CEL, or why it is unmet.
pub fn check_attestation<'c>(
    need: &AttestationNeed,
    check: &'c AttestationCheck,
    authorities: &[std::sync::Arc<crate::verify::Authority>],
) -> Result<Vec<&'c crate::verify::Verified<crate::verify::Statement>>, Unmet> {
    let matching: Vec<_> = check
        .verified
        .iter()
        .filter(|s| need.accepts(&s.predicate_type) && need.need.authorities.iter().any(|a| a == s.authority()))
        .collect();
    if need.need.satisfied_by(|a| matching.iter().any(|s| s.authority() == a)) {
        return Ok(matching);
    }
    let other_types: BTreeSet<&str> = check.verified.iter().map(|s| s.predicate_type.as_str()).collect();
    let detail = if !check.verified.is_empty() && matching.is_empty() {
        format!(
            "verified attestations have predicate types {} only",
            other_types.into_iter().collect::<Vec<_>>().join(", ")
        )
    } else {
        check.explain(authorities)
    };
    let requirement = if matching.is_empty() && !check.verified.is_empty() {
        Requirement::PredicateType
    } else {
        Requirement::Attestation(check.outcome().err())
    };
    Err(Unmet {
        requirement,
        message: format!(
            "attestation {:?} ({}) not satisfied by {}: {detail}",
            need.name,
            need.predicate_type,
            need.need.describe()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> RequireSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn signature_accepts_bool_or_map() {
        assert!(spec("signature: false").signature.is_none());
        assert!(spec("{}").signature.is_none());
        let s = spec("signature: true").signature.unwrap();
        assert!(s.authorities.is_empty());
        let s = spec("signature: {authorities: [a, b], match: all}").signature.unwrap();
        assert_eq!((s.authorities.len(), s.combine), (2, Combine::All));
        let s = spec("signature: {match: {atLeast: 2}}").signature.unwrap();
        assert_eq!(s.combine, Combine::AtLeast(2));
        assert!(serde_yaml_ng::from_str::<RequireSpec>("signature: {authoritie: [a]}").is_err());
        assert!(serde_yaml_ng::from_str::<RequireSpec>("signature: maybe").is_err());
        assert!(serde_yaml_ng::from_str::<RequireSpec>("signature: {match: some}").is_err());
        assert!(serde_yaml_ng::from_str::<RequireSpec>("signature: {match: {atMost: 1}}").is_err());
        assert!(serde_yaml_ng::from_str::<RequireSpec>("signature: {match: {atLeast: 1, x: 2}}").is_err());
    }

    #[test]
    fn compile_checks_authority_names_and_thresholds() {
        let all = names(&["chains", "release"]);
        let r = Requirements::compile(Some(&spec("signature: true")), &all).unwrap();
        assert_eq!(r.signature.unwrap().authorities, all, "empty list means every authority");
        let table = [
            ("signature: true", vec![], "needs authorities"),
            ("signature: {authorities: [nobody]}", all.clone(), "\"nobody\" is not in spec.authorities"),
            ("signature: {match: {atLeast: 3}}", all.clone(), "between 1 and 2"),
            ("signature: {match: {atLeast: 0}}", all.clone(), "between 1 and 2"),
            (
                "attestations: [{name: p, predicateType: slsa}, {name: p, predicateType: slsa}]",
                all.clone(),
                "used twice",
            ),
            ("attestations: [{name: p, predicateType: ''}]", all.clone(), "must not be empty"),
            ("platforms: all", all.clone(), "needs require.signature"),
            ("signature: {authorities: [chains, chains], match: all}", all.clone(), "listed twice"),
            ("signature: {authorities: [chains, release, chains], match: {atLeast: 2}}", all.clone(), "listed twice"),
            (
                "attestations: [{name: p, predicateType: slsa, authorities: [release, release]}]",
                all.clone(),
                "listed twice",
            ),
            ("{}", all.clone(), "asks for neither a signature nor an attestation"),
            ("signature: false", all.clone(), "unsigned images would be admitted"),
            ("digest: true", all.clone(), "asks for neither"),
        ];
        for (yaml, authorities, needle) in table {
            let e = Requirements::compile(Some(&spec(yaml)), &authorities).unwrap_err();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }

    #[test]
    fn an_attestation_may_come_via_a_release_list_or_cover_layers_but_not_both() {
        let all = names(&["chains"]);
        let r = Requirements::compile(
            Some(&spec(
                "attestations: [{name: release, predicateType: slsa, via: {list: \"registry.example.com/releases/app:v1\", \
                 artifactType: application/vnd.example.release-list.v1+json}}, {name: p, predicateType: slsa, \
                 coverLayers: true}]",
            )),
            &all,
        )
        .unwrap();
        let via = r.attestations[0].via.as_ref().unwrap();
        assert_eq!(via.list.to_string(), "registry.example.com/releases/app:v1");
        assert!((!r.attestations[0].cover_layers) && r.attestations[1].cover_layers && r.attestations[1].via.is_none());
        assert_eq!(
            r.describe(),
            "attestation release (slsa) from authority chains via release list registry.example.com/releases/app:v1 \
             (of type application/vnd.example.release-list.v1+json); attestation p (slsa) from authority chains, or \
             of every layer of an image volume"
        );
        let table = [
            ("attestations: [{name: p, predicateType: slsa, via: {list: \"Bad Ref\"}}]", "via.list \"Bad Ref\""),
            ("attestations: [{name: p, predicateType: slsa, via: {list: r.example/l, artifactType: ''}}]", "empty"),
            (
                "attestations: [{name: p, predicateType: slsa, coverLayers: true, via: {list: r.example/l}}]",
                "coverLayers",
            ),
        ];
        for (yaml, needle) in table {
            let e = Requirements::compile(Some(&spec(yaml)), &all).unwrap_err();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
        assert!(
            serde_yaml_ng::from_str::<RequireSpec>("attestations: [{name: p, predicateType: x, via: {lists: l}}]")
                .is_err()
        );
    }

    #[test]
    fn absent_require_means_a_signature_from_any_authority() {
        let all = names(&["chains", "release"]);
        let r = Requirements::compile(None, &all).unwrap();
        assert_eq!(r.signature, Some(Need { authorities: all.clone(), combine: Combine::Any }));
        assert_eq!(r.describe(), "signature from any of chains, release");
        let none = Requirements::compile(None, &[]).unwrap();
        assert_eq!((none.signature.clone(), none.describe()), (None, "no verification".to_owned()));
        let r = Requirements::compile(
            Some(&spec("{digest: true, attestations: [{name: p, predicateType: slsa, authorities: [chains]}]}")),
            &all,
        )
        .unwrap();
        assert_eq!(r.describe(), "digest reference; attestation p (slsa) from authority chains");
    }

    #[test]
    fn combine_table() {
        let need = |c| Need { authorities: names(&["a", "b", "c"]), combine: c };
        let set = |v: &[&'static str]| v.iter().copied().collect::<BTreeSet<&str>>();
        let table: &[(Combine, &[&str], bool)] = &[
            (Combine::Any, &[], false),
            (Combine::Any, &["b"], true),
            (Combine::Any, &["x"], false),
            (Combine::All, &["a", "b"], false),
            (Combine::All, &["a", "b", "c"], true),
            (Combine::AtLeast(2), &["a"], false),
            (Combine::AtLeast(2), &["a", "c"], true),
            (Combine::AtLeast(2), &["a", "x"], false),
        ];
        for (combine, vouched, want) in table {
            let vouched_set = set(vouched);
            assert_eq!(need(*combine).satisfied_by(|a| vouched_set.contains(a)), *want, "{combine:?} {vouched:?}");
        }
        assert_eq!(need(Combine::AtLeast(2)).describe(), "2 of a, b, c");
    }

    #[test]
    fn slsa_matches_every_provenance_version() {
        let need = AttestationNeed {
            name: "p".into(),
            predicate_type: "slsa".into(),
            need: Need { authorities: names(&["a"]), combine: Combine::Any },
            via: None,
            cover_layers: false,
        };
        for t in SLSA_TYPES {
            assert!(need.accepts(t));
        }
        assert!(!need.accepts("https://cyclonedx.org/bom"));
        let exact = AttestationNeed { predicate_type: "https://slsa.dev/provenance/v1".into(), ..need };
        assert!(exact.accepts("https://slsa.dev/provenance/v1"));
        assert!(!exact.accepts("https://slsa.dev/provenance/v0.2"));
    }
}

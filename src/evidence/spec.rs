//! A policy's `spec.evidence` as written, and compiled at load: each entry's name, the CEL `from` that selects
//! resourceDescriptors in the verified statements, the content-addressable store to fetch them from, their media
//! type and size cap. Pure.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::normalise::Expected;
use crate::images::ImageRef;
use crate::policy::cel::{CelEngine, Expect, Expression};

/// Most `spec.evidence` entries in one policy.
pub const MAX_ENTRIES: usize = 8;
/// Most descriptors one entry may select for one image.
pub const MAX_SELECTED: usize = 16;
/// `maxBytes` when not given.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 20;
/// The largest `maxBytes` accepted.
pub const MAX_MAX_BYTES: u64 = 64 << 20;
/// The media type assumed when none is given: any JSON (SBOMs recognised).
pub const DEFAULT_MEDIA_TYPE: &str = "application/json";
/// The variables `from` may read: the image and what verified for it, not the request.
pub const FROM_VARIABLES: [&str; 4] = ["image", "signatures", "attestations", "provenance"];

/// One `spec.evidence[]` entry as written.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EvidenceSpec {
    /// What validations call it: `evidence.<name>` (a CEL identifier).
    pub name: String,
    /// CEL over the verified statements (`image`, `signatures`, `attestations`, `provenance`) giving the
    /// resourceDescriptors to fetch: a list of `{name, uri, mediaType, digest: {sha256}}` (or one of them).
    pub from: String,
    /// Where the documents are stored by digest.
    pub store: StoreSpec,
    /// `application/vnd.cyclonedx+json`, `application/spdx+json`, or any JSON (default `application/json`: SBOMs
    /// of either kind are recognised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Largest document read, in bytes (default 4 MiB, at most 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// `{oci: REPO}` or `{https: BASE_URL}`: exactly one.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreSpec {
    /// `registry/repository` whose blobs are the documents (`GET /v2/<repository>/blobs/sha256:<hex>`), read with
    /// the registry client, its credentials and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<String>,
    /// An `https://` base URL: a document is `BASE_URL/sha256/<hex>`, or the URL with `{sha256}` replaced by the
    /// hex digest when it holds that placeholder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<String>,
}

/// Where one entry's documents are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// An OCI repository (normalised like an image).
    Oci(ImageRef),
    /// An HTTPS store: the URL template, and its `host[:port]` (the registries setting whose CA bundle it trusts).
    Https { template: String, host: String },
}

/// The placeholder an HTTPS store URL may hold.
const PLACEHOLDER: &str = "{sha256}";

impl Store {
    /// How explanations and cache keys name it: `oci://REPO` or the URL as written.
    pub fn key(&self) -> String {
        match self {
            Self::Oci(repository) => format!("oci://{}", repository.name()),
            Self::Https { template, .. } => template.clone(),
        }
    }

    /// The URL of the document `sha256` in an HTTPS store.
    pub fn url(template: &str, sha256: &str) -> String {
        if template.contains(PLACEHOLDER) {
            template.replace(PLACEHOLDER, sha256)
        } else {
            format!("{}/sha256/{sha256}", template.trim_end_matches('/'))
        }
    }
}

/// One compiled entry.
#[derive(Debug, Clone)]
pub struct EvidenceDecl {
    pub name: String,
    pub from: Expression,
    pub store: Store,
    /// The media type written (or the default), and what it makes provgate accept.
    pub media_type: String,
    pub expected: Expected,
    pub max_bytes: u64,
}

/// Compiles `spec.evidence`; an error names the entry and what is wrong, for the loader to place.
pub fn compile(specs: &[EvidenceSpec], engine: &CelEngine) -> Result<Vec<EvidenceDecl>, (usize, String)> {
    if specs.len() > MAX_ENTRIES {
        return Err((0, format!("evidence lists {} entries, more than {MAX_ENTRIES}", specs.len())));
    }
    let mut out: Vec<EvidenceDecl> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let err = |m: String| (i, format!("evidence[{i}] ({:?}): {m}", spec.name));
        if !identifier(&spec.name) {
            return Err(err(
                "name must be a CEL identifier (letters, digits, _), so validations read evidence.<name>".into()
            ));
        }
        if out.iter().any(|d| d.name == spec.name) {
            return Err(err("name is used twice".into()));
        }
        let from = engine.compile(&spec.from, Expect::List).map_err(|e| err(format!("from: {e}")))?;
        if let Some(v) = crate::policy::cel::VARIABLES.iter().find(|v| !FROM_VARIABLES.contains(v) && from.reads(v)) {
            return Err(err(format!(
                "from reads `{v}`; it selects from what verified for the image and may read only {}",
                FROM_VARIABLES.join(", ")
            )));
        }
        let max_bytes = spec.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes == 0 || max_bytes > MAX_MAX_BYTES {
            return Err(err(format!("maxBytes must be between 1 and {MAX_MAX_BYTES}, not {max_bytes}")));
        }
        let media_type = spec.media_type.clone().unwrap_or_else(|| DEFAULT_MEDIA_TYPE.to_owned());
        if !(media_type == "application/json" || media_type.ends_with("+json")) {
            return Err(err(format!("mediaType {media_type:?} is not JSON (application/json or */*+json)")));
        }
        let store = store(&spec.store).map_err(err)?;
        let expected = Expected::of(&media_type);
        out.push(EvidenceDecl { name: spec.name.clone(), from, store, media_type, expected, max_bytes });
    }
    Ok(out)
}

/// Words CEL reserves, which cannot follow `evidence.`.
const RESERVED: [&str; 21] = [
    "as",
    "break",
    "const",
    "continue",
    "else",
    "false",
    "for",
    "function",
    "if",
    "import",
    "in",
    "let",
    "loop",
    "namespace",
    "null",
    "package",
    "return",
    "true",
    "var",
    "void",
    "while",
];

fn identifier(name: &str) -> bool {
    let mut chars = name.chars();
    if RESERVED.contains(&name) {
        return false;
    }
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

fn store(spec: &StoreSpec) -> Result<Store, String> {
    match (&spec.oci, &spec.https) {
        (Some(repo), None) => {
            let last = repo.rsplit('/').next().unwrap_or_default();
            if repo.contains('@') || (repo.contains('/') && last.contains(':')) {
                return Err(format!("store.oci {repo:?} must name a repository, without a tag or digest"));
            }
            ImageRef::parse(repo).map(Store::Oci).map_err(|e| format!("store.oci {repo:?} is not a repository: {e}"))
        }
        (None, Some(url)) => https(url),
        _ => Err("store must name exactly one of oci (a repository) or https (a base URL)".into()),
    }
}

/// An `https://host[:port]/path` URL with at most one `{sha256}`, no credentials, query or fragment.
fn https(url: &str) -> Result<Store, String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!("store.https {url:?} must start with https:// (evidence is never read in the clear)"));
    };
    let host = rest.split('/').next().unwrap_or_default();
    let bad_host = host.is_empty()
        || host.contains('@')
        || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if bad_host {
        return Err(format!("store.https {url:?} has no valid host (credentials in the URL are refused)"));
    }
    if url.contains('?')
        || url.contains('#')
        || url.matches(PLACEHOLDER).count() > 1
        || url.contains(char::is_whitespace)
    {
        return Err(format!(
            "store.https {url:?} may not hold a query, a fragment, spaces or more than one {PLACEHOLDER}"
        ));
    }
    Ok(Store::Https { template: url.to_owned(), host: host.to_ascii_lowercase() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, from: &str, store: StoreSpec) -> EvidenceSpec {
        EvidenceSpec { name: name.into(), from: from.into(), store, media_type: None, max_bytes: None }
    }

    fn oci(repo: &str) -> StoreSpec {
        StoreSpec { oci: Some(repo.into()), https: None }
    }

    fn https_store(url: &str) -> StoreSpec {
        StoreSpec { oci: None, https: Some(url.into()) }
    }

    const FROM: &str = "attestations.provenance.map(s, s.predicate.runDetails.byproducts).flatten()";

    fn compile_one(s: EvidenceSpec) -> Result<EvidenceDecl, String> {
        compile(&[s], crate::policy::engine().unwrap()).map(|mut d| d.remove(0)).map_err(|(_, m)| m)
    }

    #[test]
    fn entries_compile_with_their_defaults() {
        let d = compile_one(spec("sbom", FROM, oci("REGISTRY.example.com:443/team/evidence"))).unwrap();
        assert_eq!(d.store.key(), "oci://registry.example.com/team/evidence");
        assert_eq!(
            (d.max_bytes, d.media_type.as_str(), d.expected),
            (DEFAULT_MAX_BYTES, "application/json", Expected::Json)
        );
        let d = compile_one(EvidenceSpec {
            media_type: Some("application/vnd.cyclonedx+json".into()),
            max_bytes: Some(MAX_MAX_BYTES),
            ..spec("sbom_2", "[]", https_store("https://cas.example.com:8443/blobs/{sha256}/raw"))
        })
        .unwrap();
        assert_eq!(d.expected, Expected::CycloneDx);
        let Store::Https { template, host } = &d.store else { panic!("{:?}", d.store) };
        assert_eq!(host, "cas.example.com:8443");
        assert_eq!(Store::url(template, "ab"), "https://cas.example.com:8443/blobs/ab/raw");
        assert_eq!(Store::url("https://cas.example.com/v1/", "ab"), "https://cas.example.com/v1/sha256/ab");
    }

    #[test]
    fn broken_entries_are_refused_with_the_reason() {
        let table: Vec<(EvidenceSpec, &str)> = vec![
            (spec("sbom", "attestations.provenance[0].", oci("r.example/e")), "from: syntax error"),
            (spec("sbom", "nope.byproducts", oci("r.example/e")), "unknown variable `nope`"),
            (spec("sbom", "size(attestations) > 0", oci("r.example/e")), "must evaluate to list"),
            (spec("sbom", "object.spec.containers", oci("r.example/e")), "from reads `object`"),
            (spec("sbom", "[request.namespace]", oci("r.example/e")), "from reads `request`"),
            (spec("sbom", "evidence.other", oci("r.example/e")), "from reads `evidence`"),
            // A hostile policy file: `from` is bounded like any expression.
            (spec("sbom", "lists.range(100000000)", oci("r.example/e")), "literal bound of at most 10000"),
            (
                spec("sbom", "lists.range(10000).map(i, lists.range(10000).map(j, {}))", oci("r.example/e")),
                "iterations in all",
            ),
            (spec("sbom", &format!("[{}]", "{},".repeat(2048)), oci("r.example/e")), "more than 4096"),
            (spec("s-bom", FROM, oci("r.example/e")), "CEL identifier"),
            (spec("in", FROM, oci("r.example/e")), "CEL identifier"),
            (spec("sbom", FROM, oci("r.example/e:latest")), "without a tag or digest"),
            (spec("sbom", FROM, StoreSpec::default()), "exactly one of oci"),
            (
                spec("sbom", FROM, StoreSpec { oci: Some("r.example/e".into()), https: Some("https://x".into()) }),
                "exactly one",
            ),
            (spec("sbom", FROM, https_store("http://cas.example.com")), "must start with https://"),
            (spec("sbom", FROM, https_store("https://user:pw@cas.example.com")), "no valid host"),
            (spec("sbom", FROM, https_store("https://cas.example.com/?a=b")), "query"),
            (spec("sbom", FROM, https_store("https://c.example/{sha256}/{sha256}")), "more than one"),
            (EvidenceSpec { max_bytes: Some(0), ..spec("sbom", FROM, oci("r.example/e")) }, "maxBytes must be"),
            (
                EvidenceSpec { max_bytes: Some(MAX_MAX_BYTES + 1), ..spec("sbom", FROM, oci("r.example/e")) },
                "maxBytes must be",
            ),
            (
                EvidenceSpec { media_type: Some("text/plain".into()), ..spec("sbom", FROM, oci("r.example/e")) },
                "not JSON",
            ),
        ];
        for (s, needle) in table {
            let e = compile_one(s.clone()).unwrap_err();
            assert!(e.contains(needle), "{s:?}: {e}");
            assert!(e.starts_with("evidence[0] (\""), "{e}");
        }
        let engine = crate::policy::engine().unwrap();
        let twice = compile(&[spec("a", FROM, oci("r.example/e")), spec("a", FROM, oci("r.example/e"))], engine);
        assert_eq!(twice.unwrap_err().0, 1);
        let many: Vec<EvidenceSpec> =
            (0..=MAX_ENTRIES).map(|i| spec(&format!("e{i}"), FROM, oci("r.example/e"))).collect();
        assert!(compile(&many, engine).unwrap_err().1.contains("more than"));
    }
}

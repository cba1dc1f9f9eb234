//! Reading fetched evidence bytes: JSON, with CycloneDX JSON and SPDX 2.x JSON SBOMs normalised to one shape,
//! `{components: [{name, version, purl, licenses}]}`, so one policy judges both. Pure.

use serde_json::{Map, Value, json};

use super::document::{Document, Format};

/// Media type of CycloneDX JSON.
pub const CYCLONEDX_JSON: &str = "application/vnd.cyclonedx+json";
/// Media type of SPDX JSON.
pub const SPDX_JSON: &str = "application/spdx+json";

/// Most components read from one SBOM (nested CycloneDX components included); a larger SBOM is refused.
pub const MAX_COMPONENTS: usize = 100_000;

/// What an evidence entry's `mediaType` says the documents are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// `application/vnd.cyclonedx+json`: must be a CycloneDX JSON document.
    CycloneDx,
    /// `application/spdx+json`: must be an SPDX 2.x JSON document.
    Spdx,
    /// Any other JSON media type: an SBOM of either kind is recognised and normalised, other JSON kept as it is.
    Json,
}

impl Expected {
    /// What `media_type` (an evidence entry's, default `application/json`) asks for.
    pub fn of(media_type: &str) -> Self {
        match media_type {
            CYCLONEDX_JSON => Self::CycloneDx,
            SPDX_JSON => Self::Spdx,
            _ => Self::Json,
        }
    }

    /// How a refusal names what was expected.
    pub fn describe(self) -> &'static str {
        match self {
            Self::CycloneDx => "CycloneDX JSON",
            Self::Spdx => "SPDX 2 JSON",
            Self::Json => "JSON",
        }
    }
}

/// Parses `bytes` as `expected` says: the document, or why it cannot be read.
pub fn read(bytes: &[u8], expected: Expected) -> Result<Document, String> {
    let json: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let cyclonedx = json.get("bomFormat").and_then(Value::as_str) == Some("CycloneDX");
    let spdx = json.get("spdxVersion").and_then(Value::as_str).is_some_and(|v| v.starts_with("SPDX-2."));
    let (format, content) = match expected {
        Expected::CycloneDx if !cyclonedx => return Err("bomFormat is not \"CycloneDX\"".into()),
        Expected::Spdx if !spdx => return Err("spdxVersion is not SPDX-2.x".into()),
        _ if cyclonedx => (Format::CycloneDx, cyclonedx_components(&json)?),
        _ if spdx => (Format::Spdx, spdx_components(&json)?),
        _ => (Format::Json, json),
    };
    Ok(Document { format, content, bytes: bytes.len() as u64 })
}

/// Every CycloneDX component, nested ones included, in document order.
fn cyclonedx_components(bom: &Value) -> Result<Value, String> {
    let mut out = Vec::new();
    let mut pending: Vec<&Value> = top_list(bom, "components")?.iter().rev().collect();
    while let Some(c) = pending.pop() {
        if out.len() >= MAX_COMPONENTS {
            return Err(format!("more than {MAX_COMPONENTS} components"));
        }
        let Some(fields) = c.as_object() else { return Err("a component is not an object".into()) };
        let licenses = list(fields, "licenses")?
            .iter()
            .filter_map(|l| {
                let license = l.get("license");
                let id = license.and_then(|x| x.get("id")).or_else(|| license.and_then(|x| x.get("name")));
                id.or_else(|| l.get("expression")).and_then(Value::as_str).map(str::to_owned)
            })
            .collect::<Vec<_>>();
        out.push(component(text(fields, "name"), text(fields, "version"), text(fields, "purl"), licenses));
        pending.extend(list(fields, "components")?.iter().rev());
    }
    Ok(json!({ "components": out }))
}

/// Every SPDX package: its purl from `externalRefs`, its licenses from `licenseConcluded` and `licenseDeclared`
/// (`NOASSERTION` and `NONE` left out).
fn spdx_components(doc: &Value) -> Result<Value, String> {
    let packages = top_list(doc, "packages")?;
    if packages.len() > MAX_COMPONENTS {
        return Err(format!("more than {MAX_COMPONENTS} packages"));
    }
    let mut out = Vec::with_capacity(packages.len());
    for p in packages {
        let Some(fields) = p.as_object() else { return Err("a package is not an object".into()) };
        let purl = list(fields, "externalRefs")?
            .iter()
            .find(|r| r.get("referenceType").and_then(Value::as_str) == Some("purl"))
            .and_then(|r| r.get("referenceLocator")?.as_str())
            .unwrap_or_default();
        let mut licenses: Vec<String> = Vec::new();
        for key in ["licenseConcluded", "licenseDeclared"] {
            let l = text(fields, key);
            if !l.is_empty() && l != "NOASSERTION" && l != "NONE" && !licenses.iter().any(|k| k == l) {
                licenses.push(l.to_owned());
            }
        }
        out.push(component(text(fields, "name"), text(fields, "versionInfo"), purl, licenses));
    }
    Ok(json!({ "components": out }))
}

fn component(name: &str, version: &str, purl: &str, licenses: Vec<String>) -> Value {
    json!({"name": name, "version": version, "purl": purl, "licenses": licenses})
}

/// A top-level list (absent: empty).
fn top_list<'a>(doc: &'a Value, key: &str) -> Result<&'a [Value], String> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("{key} is not a list")),
    }
}

fn list<'a>(fields: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("{key} of a component is not a list")),
    }
}

/// A string field, `""` when absent or not a string.
fn text<'a>(fields: &'a Map<String, Value>, key: &str) -> &'a str {
    fields.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/evidence/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn names(doc: &Document) -> Vec<(String, String, String, Vec<String>)> {
        doc.content["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap().to_owned();
                let licenses = c["licenses"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned());
                (s("name"), s("version"), s("purl"), licenses.collect())
            })
            .collect()
    }

    #[test]
    fn one_scan_in_cyclonedx_and_in_spdx_gives_the_same_components() {
        let cdx = read(&fixture("venv.cdx.json"), Expected::CycloneDx).unwrap();
        let spdx = read(&fixture("venv.spdx.json"), Expected::Spdx).unwrap();
        assert_eq!((cdx.format, spdx.format), (Format::CycloneDx, Format::Spdx));
        let crypto = ("cryptography".to_owned(), "50.0.2".to_owned(), "pkg:pypi/cryptography@50.0.2".to_owned());
        let find = |doc: &Document| names(doc).into_iter().find(|c| c.0 == crypto.0).unwrap();
        let (c, s) = (find(&cdx), find(&spdx));
        assert_eq!((c.0.clone(), c.1.clone(), c.2.clone()), crypto);
        assert_eq!(c.3, ["Apache-2.0 OR BSD-3-Clause"], "a CycloneDX expression is kept whole");
        assert_eq!(s.3, ["(Apache-2.0 OR BSD-3-Clause)"], "SPDX writes it in parentheses");
        // Packages both formats list, with the same purls (SPDX also lists the scanned directory itself).
        let purls = |doc: &Document| {
            let mut p: Vec<String> = names(doc).into_iter().map(|c| c.2).filter(|p| !p.is_empty()).collect();
            p.sort();
            p
        };
        assert_eq!(purls(&cdx), purls(&spdx));
        assert!(names(&cdx).iter().any(|c| c.0 == "cffi" && c.3 == ["MIT-0"]), "{:?}", names(&cdx));
        assert!(names(&spdx).iter().any(|c| c.0 == "setuptools" && c.3 == ["MIT"]), "concluded is read");
        assert!(names(&spdx).iter().any(|c| c.0 == "Simple Launcher" && c.3.is_empty()), "NOASSERTION is dropped");
    }

    #[test]
    fn the_media_type_decides_what_is_accepted() {
        let cdx = fixture("venv.cdx.json");
        assert_eq!(read(&cdx, Expected::Json).unwrap().format, Format::CycloneDx, "recognised under JSON");
        assert!(read(&cdx, Expected::Spdx).unwrap_err().contains("SPDX-2.x"));
        assert!(read(&fixture("venv.spdx.json"), Expected::CycloneDx).unwrap_err().contains("CycloneDX"));
        let other = read(br#"{"tests": {"passed": 12, "failed": 0}}"#, Expected::Json).unwrap();
        assert_eq!((other.format, other.content["tests"]["passed"].as_i64()), (Format::Json, Some(12)));
        assert_eq!(other.components(), None);
        for (bytes, needle) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"bomFormat": "CycloneDX", "components": {}}"#, "components is not a list"),
            (br#"{"bomFormat": "CycloneDX", "components": [1]}"#, "not an object"),
            (br#"{"spdxVersion": "SPDX-2.3", "packages": [{"externalRefs": 3}]}"#, "externalRefs"),
        ] {
            let e = read(bytes, Expected::Json).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert!(Expected::of("application/json") == Expected::Json && Expected::of(SPDX_JSON) == Expected::Spdx);
    }

    #[test]
    fn nested_cyclonedx_components_are_flattened_and_bounded() {
        let doc = br#"{"bomFormat": "CycloneDX", "components": [
            {"name": "app", "version": "1", "licenses": [{"license": {"name": "Proprietary"}}],
             "components": [{"name": "lib", "purl": "pkg:npm/lib@2", "licenses": [{"license": {"id": "MIT"}}]}]},
            {"name": "tool"}]}"#;
        let got = names(&read(doc, Expected::CycloneDx).unwrap());
        let order: Vec<&str> = got.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(order, ["app", "lib", "tool"]);
        assert_eq!(got[0].3, ["Proprietary"]);
        assert_eq!((got[1].2.as_str(), got[1].3.clone()), ("pkg:npm/lib@2", vec!["MIT".to_owned()]));
        let many =
            format!(r#"{{"bomFormat": "CycloneDX", "components": [{}]}}"#, vec!["{}"; MAX_COMPONENTS + 1].join(","));
        assert!(read(many.as_bytes(), Expected::CycloneDx).unwrap_err().contains("more than"));
    }
}

//! Turning what an `evidence[].from` gave (one JSON value per verified provenance statement) into the descriptors to
//! fetch: each must carry a signed `digest.sha256`; duplicates are fetched once; the order is fixed by content, never
//! by the order a registry listed statements in; at most [`MAX_SELECTED`](super::spec::MAX_SELECTED). Pure.

use serde_json::Value;

use super::document::{Descriptor, EvidenceError};

/// The descriptors in `results` (each a list of descriptors, or one descriptor), at most `max`.
pub fn descriptors(results: &[Value], max: usize) -> Result<Vec<Descriptor>, EvidenceError> {
    let mut out: Vec<Descriptor> = Vec::new();
    for result in results {
        let items: &[Value] = match result {
            Value::Array(items) => items,
            single @ Value::Object(_) => std::slice::from_ref(single),
            // A statement without what `from` looks for (a `.?` that found nothing) selects nothing.
            Value::Null => &[],
            other => {
                return Err(EvidenceError::Selection {
                    detail: format!("it gave {}, not a list of resourceDescriptors", kind(other)),
                });
            }
        };
        for item in items {
            let d = descriptor(item)?;
            if !out.contains(&d) {
                out.push(d);
            }
            if out.len() > max {
                return Err(EvidenceError::TooMany { count: out.len(), max });
            }
        }
    }
    out.sort();
    Ok(out)
}

fn descriptor(item: &Value) -> Result<Descriptor, EvidenceError> {
    let Value::Object(fields) = item else {
        return Err(EvidenceError::Selection {
            detail: format!("an element is {}, not a resourceDescriptor", kind(item)),
        });
    };
    let text = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (name, uri, media_type) = (text("name"), text("uri"), text("mediaType"));
    let sha256 = fields.get("digest").and_then(|d| d.get("sha256")).and_then(Value::as_str).unwrap_or_default();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        let shown = [("name", &name), ("uri", &uri)]
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k} {:?}", truncate(v)))
            .collect::<Vec<_>>();
        let descriptor = if shown.is_empty() { "unnamed".to_owned() } else { shown.join(", ") };
        return Err(EvidenceError::NoDigest { descriptor });
    }
    Ok(Descriptor { sha256: sha256.to_owned(), name, uri, media_type })
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn d(name: &str, hex: &str) -> Value {
        json!({"name": name, "uri": format!("oci://r/{name}"), "mediaType": "application/spdx+json", "digest": {"sha256": hex}})
    }

    #[test]
    fn descriptors_are_deduplicated_and_ordered_by_content() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let results = [json!([d("sbom", &b), d("scan", &a)]), json!(d("sbom", &b)), Value::Null];
        let got = descriptors(&results, 16).unwrap();
        let hexes: Vec<&str> = got.iter().map(|x| x.sha256.as_str()).collect();
        assert_eq!(hexes, [a.as_str(), b.as_str()]);
        assert_eq!((got[1].name.as_str(), got[1].media_type.as_str()), ("sbom", "application/spdx+json"));
        let reversed = descriptors(&[json!([d("scan", &a)]), json!([d("sbom", &b)])], 16).unwrap();
        assert_eq!(reversed, got, "the statements' order does not matter");
        assert_eq!(descriptors(&[json!([])], 16).unwrap(), vec![]);
    }

    #[test]
    fn what_cannot_be_trusted_by_digest_is_refused() {
        let table = [
            (json!([{"name": "sbom", "digest": {"sha512": "ab"}}]), "evidence-no-digest", "name \"sbom\""),
            (json!([{"uri": "https://x", "digest": {"sha256": "AB".repeat(32)}}]), "evidence-no-digest", "uri"),
            (json!([{"digest": {"sha256": "a".repeat(63)}}]), "evidence-no-digest", "unnamed"),
            (json!([{"digest": {"sha256": 7}}]), "evidence-no-digest", "unnamed"),
            (json!(["oci://r/e@sha256:abc"]), "evidence-selection-failed", "a string"),
            (json!("x"), "evidence-selection-failed", "a string, not a list"),
            (json!(3), "evidence-selection-failed", "a number"),
        ];
        for (result, code, needle) in table {
            let e = descriptors(std::slice::from_ref(&result), 16).unwrap_err();
            assert_eq!(e.code(), code, "{result}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        let many: Vec<Value> = (0..17).map(|i| d("x", &format!("{i:064x}"))).collect();
        let e = descriptors(&[Value::Array(many.clone())], 16).unwrap_err();
        assert_eq!(e, EvidenceError::TooMany { count: 17, max: 16 });
        assert_eq!(descriptors(&[Value::Array(many[..16].to_vec())], 16).unwrap().len(), 16);
    }
}

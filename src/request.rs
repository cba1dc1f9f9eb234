//! The admission request as provgate reads it: what is asked (operation, kind, namespace, user) and the objects.
//! Read by the HTTP edge from an AdmissionReview, built by `provgate verify` for its images; judged by the engine.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    /// As the API server writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The parts of an AdmissionRequest provgate reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: Operation,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub old_object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Bytes of the JSON text this request was read from, when it was read from one (the whole review). Its
    /// object, written out again, can be at most [`JSON_GROWTH`] times as long.
    #[serde(skip)]
    pub read_from_bytes: Option<usize>,
}

/// How much longer JSON text can become when parsed into a `serde_json::Value` and written out compactly again.
/// Whitespace, escapes (`\u00e9` is written `é`) and repeated keys only shrink it; a number can grow, at most from
/// `1e15` (4 bytes) to `1000000000000000.0` (18 bytes).
pub const JSON_GROWTH: usize = 5;

impl Request {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }

    /// The object's name, or its `generateName` prefix on CREATE.
    pub fn object_name(&self) -> String {
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            return name.to_owned();
        }
        let meta = self.object.as_ref().and_then(|o| o.get("metadata"));
        let generate = meta.and_then(|m| m.get("generateName")).and_then(Value::as_str);
        generate.map(|g| format!("{g}*")).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The size of `text` parsed and written out compactly again, over its own size.
    fn growth(text: &str) -> f64 {
        let value: Value = serde_json::from_str(text).unwrap();
        crate::policy::eval::json_size(&value, usize::MAX) as f64 / text.len() as f64
    }

    #[test]
    fn an_operation_reads_as_the_api_server_writes_it() {
        for op in [Operation::Create, Operation::Update, Operation::Delete, Operation::Connect] {
            assert_eq!(serde_json::to_value(op).unwrap(), op.as_str());
        }
    }

    #[test]
    fn json_written_again_is_at_most_json_growth_times_as_long() {
        assert_eq!(
            serde_json::to_string(&serde_json::from_str::<Value>("1e15").unwrap()).unwrap(),
            "1000000000000000.0"
        );
        let worst = growth("1e15");
        assert!(worst > 4.0 && worst <= JSON_GROWTH as f64, "{worst}");
        // Every short number literal: mantissas, signs and exponents, in every spelling.
        let mut seen = 0.0f64;
        for sign in ["", "-"] {
            for mantissa in ["0", "1", "9", "1.5", "0.1", "123456789"] {
                for e in ["e", "E", "e+", "e-"] {
                    for exponent in 0..400 {
                        let text = format!("{sign}{mantissa}{e}{exponent}");
                        if serde_json::from_str::<Value>(&text).is_ok() {
                            seen = seen.max(growth(&text));
                        }
                    }
                }
            }
        }
        for text in ["-0", "0.0", "18446744073709551616", "-9223372036854775809", "1.0000000000000002"] {
            seen = seen.max(growth(text));
        }
        assert!(seen <= JSON_GROWTH as f64, "{seen}");
        // Whatever else an object holds shrinks or stays: whitespace, escapes, repeated keys.
        for text in
            [r#"{ "a" : [ 1 , 2 ] }"#, r#"{"a":"\u00e9\/\n\u0001"}"#, r#"{"a":1,"a":2}"#, r#"{"a":[1e15,1e15]}"#]
        {
            assert!(growth(text) <= JSON_GROWTH as f64, "{text}");
        }
    }
}

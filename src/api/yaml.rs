//! The one YAML reader and writer of the project: manifests, the CRD, the OpenAPI file
//! and the tests' fixtures all go through here, so they are read by the same rules.
//!
//! Strict, as YAML asks: a key written twice in one mapping is an error naming the
//! mapping's field path and the key, never "the last one wins". serde-saphyr (pure Rust,
//! maintained; serde_yaml is deprecated) parses, and refuses duplicate keys by default;
//! serde_path_to_error supplies the field path. Pure: text in, value or error out.

use super::validate::{FieldError, child_path};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a YAML (or JSON) text could not be read into the wanted type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}")]
pub struct YamlError {
    /// A key written twice (`at.path` names it), or anything else.
    pub kind: YamlErrorKind,
    /// Where reading stopped (e.g. `metadata.annotations`; empty for the document) and
    /// what is wrong there, with the line and column when the parser knows them.
    pub at: FieldError,
}

/// The kinds of [`YamlError`] a caller may treat differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlErrorKind {
    /// A key written twice in one mapping: a well-formed document that means two things.
    DuplicateKey,
    /// Not YAML, or YAML that does not fit the wanted type.
    Invalid,
}

impl YamlError {
    fn new(kind: YamlErrorKind, path: impl Into<String>, message: impl Into<String>) -> Self {
        YamlError {
            kind,
            at: FieldError::new(path, message),
        }
    }
}

/// The parser's settings: YAML 1.2's core schema, as serde_yaml and Kubernetes read
/// strings: only `true`/`false` are booleans (`n`, `yes`, `on` stay strings), `0755` and
/// `1_000` stay strings; duplicate keys are errors (the default).
fn options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o.leading_zero_numbers_as_strings = true;
    o.underscored_numbers_as_strings = true;
    o
}

/// Read one YAML document (JSON is YAML too) into `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let mut track = serde_path_to_error::Track::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    result.map_err(|e| error_at(&track.path().to_string(), &e))
}

/// The error at `path` (serde_path_to_error's form: `.` for the root, `?` for a key not
/// read yet). A duplicate key is reported at its own path.
fn error_at(path: &str, e: &serde_saphyr::Error) -> YamlError {
    let parent = path.strip_suffix('?').unwrap_or(path);
    let parent = parent.strip_suffix('.').unwrap_or(parent);
    let parent = if parent == "." { "" } else { parent };
    match e.without_snippet() {
        serde_saphyr::Error::DuplicateMappingKey { key, location } => YamlError::new(
            YamlErrorKind::DuplicateKey,
            key.as_deref()
                .map_or_else(|| parent.to_string(), |k| child_path(parent, k)),
            format!(
                "duplicate key: written twice in one mapping (again at line {}, column {})",
                location.line(),
                location.column()
            ),
        ),
        other => YamlError::new(YamlErrorKind::Invalid, parent, plain_message(other)),
    }
}

/// Every document of a multi-document YAML stream (`---` separated), each into `T`.
pub fn documents<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, YamlError> {
    serde_saphyr::from_multiple_with_options(text, options()).map_err(|e| error_at("", &e))
}

/// `value` as a YAML document.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    serde_saphyr::to_string(value)
        .map_err(|e| YamlError::new(YamlErrorKind::Invalid, "", e.to_string()))
}

/// The parser's message on one line, without its source snippet.
fn plain_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    text.strip_prefix("error: ").unwrap_or(&text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn err(text: &str) -> YamlError {
        from_str::<Value>(text).unwrap_err()
    }

    #[test]
    fn a_duplicate_key_is_an_error_naming_its_path() {
        let e = err("metadata:\n  annotations: {a: b}\n  labels: {}\n  annotations: {c: d}\n");
        assert_eq!(e.kind, YamlErrorKind::DuplicateKey);
        assert_eq!(e.at.path, "metadata.annotations");
        assert!(e.at.message.contains("line 4, column 3"), "{e}");
        assert_eq!(err("a: 1\na: 2\n").at.path, "a");
        assert_eq!(
            err("s:\n  l:\n    - x: 1\n      x: 2\n").at.path,
            "s.l[0].x"
        );
        let e = err("m:\n  vmpod.io/x: 1\n  vmpod.io/x: 2\n");
        assert_eq!(e.at.path, r#"m["vmpod.io/x"]"#);
        let e = err(r#"{"a": {"b": 1, "b": 2}}"#);
        assert_eq!(
            (e.kind, e.at.path.as_str()),
            (YamlErrorKind::DuplicateKey, "a.b")
        );
    }

    #[test]
    fn syntax_errors_and_typed_reads() {
        let e = err("a: [b");
        assert_eq!(e.kind, YamlErrorKind::Invalid);
        assert!(e.at.message.contains("line 1"), "{e}");
        assert_eq!(from_str::<Value>("- 1\n").unwrap(), json!([1]));
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[allow(dead_code)]
            n: u8,
        }
        let e = from_str::<T>("n: 300\n").unwrap_err();
        assert_eq!((e.kind, e.at.path.as_str()), (YamlErrorKind::Invalid, "n"));
    }

    #[test]
    fn yaml_1_2_core_schema_scalars() {
        let v: Value =
            from_str("a: n\nb: yes\nc: on\nd: true\ne: 0755\nf: 1_000\ng: 12\n").unwrap();
        assert_eq!(
            v,
            json!({"a": "n", "b": "yes", "c": "on", "d": true, "e": "0755", "f": "1_000", "g": 12})
        );
    }

    #[test]
    fn documents_and_round_trip() {
        let docs: Vec<Value> = documents("a: 1\n---\nb: [x]\n").unwrap();
        assert_eq!(docs, [json!({"a": 1}), json!({"b": ["x"]})]);
        let e = documents::<Value>("a: 1\n---\nb: 1\nb: 2\n").unwrap_err();
        assert_eq!(
            (e.kind, e.at.path.as_str()),
            (YamlErrorKind::DuplicateKey, "b")
        );
        let v = json!({"k": "v: x", "n": [1, 2], "t": "true", "e": ""});
        assert_eq!(from_str::<Value>(&to_string(&v).unwrap()).unwrap(), v);
    }
}

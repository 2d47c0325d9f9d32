//! Loading a manifest: YAML or JSON text -> [`VirtualMachineInstance`]. Accepts
//! `apiVersion: vmpod.io/v1alpha1` and KubeVirt's `kubevirt.io/v1` and `kubevirt.io/v1alpha3`
//! (normalised to ours). Read strictly by [`super::yaml`]: a key written twice is an error
//! naming its path. A null value means the field is absent, as for any Kubernetes resource.
//!
//! Before deserialising, the document is checked against the schema generated from the types
//! (the CRD's openAPIV3Schema), so one pass reports *every* unsupported field, missing
//! required field, wrong type and bad enum value with its field path, instead of stopping at
//! the first. Deserialisation (through `serde_path_to_error`) then catches what the schema
//! cannot say, again with a path. Pure: text in, value or errors out.

use super::types::VirtualMachineInstance;
use super::validate::{FieldError, ValidVmi, child_path, index_path};
use super::yaml::YamlErrorKind;
use super::{API_VERSION, KIND, KUBEVIRT_API_VERSION, KUBEVIRT_API_VERSION_V1ALPHA3};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// Why a manifest could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// The text is neither YAML nor JSON.
    #[error("not a YAML or JSON document: {0}")]
    Syntax(String),
    /// The document does not fit the schema; every problem found, each with its path.
    #[error("{}", join_errors(.0))]
    Fields(Vec<FieldError>),
}

impl LoadError {
    /// The field errors (empty for a syntax error).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            LoadError::Syntax(_) => &[],
            LoadError::Fields(errors) => errors,
        }
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parse a VMI manifest (YAML or JSON). `kubevirt.io/v1` is rewritten to
/// `vmpod.io/v1alpha1`. Does not apply defaults or semantic validation: see
/// [`super::validate::validate`] and [`load_valid_vmi`].
pub fn load_vmi(text: &str) -> Result<VirtualMachineInstance, LoadError> {
    let mut doc: Value = super::yaml::from_str(text).map_err(|e| match e.kind {
        YamlErrorKind::DuplicateKey => LoadError::Fields(vec![e.at]),
        YamlErrorKind::Invalid => LoadError::Syntax(e.to_string()),
    })?;
    prune_nulls(&mut doc);
    let Value::Object(root) = &mut doc else {
        return Err(LoadError::Syntax(format!(
            "the document is {}, not a mapping",
            json_type_name(&doc)
        )));
    };
    let mut errors = check_header(root);
    errors.extend(check_metadata(root.get("metadata")));
    let body: Map<String, Value> = root
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_schema(&Value::Object(body), vmi_schema(), "", &mut errors);
    if !errors.is_empty() {
        return Err(LoadError::Fields(errors));
    }
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        LoadError::Fields(vec![serde_error(path, &e.into_inner().to_string())])
    })
}

/// Drop every mapping entry whose value is null, at any depth, as the Kubernetes API server
/// prunes nulls before validating a custom resource: `creationTimestamp: null` (what
/// `kubectl ... -o yaml` writes) means "not set", and a required field set to null is
/// reported as required.
fn prune_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(prune_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// Load, validate and default a manifest: what a launcher or `vmpodctl run` wants. Every
/// problem is returned, with its field path.
pub fn load_valid_vmi(text: &str) -> Result<ValidVmi, Vec<FieldError>> {
    let vmi = load_vmi(text).map_err(|e| match e {
        LoadError::Syntax(msg) => vec![FieldError::new("", msg)],
        LoadError::Fields(errors) => errors,
    })?;
    super::validate::check(vmi)
}

/// `missing field `x`` at `p` becomes `p.x: required`; anything else keeps serde's words.
fn serde_error(path: String, message: &str) -> FieldError {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        return FieldError::new(child_path(&path, field), "required");
    }
    FieldError::new(path, message)
}

fn check_header(root: &mut Map<String, Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match root.get("apiVersion") {
        None => errors.push(FieldError::new("apiVersion", "required")),
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v))
            if v == KUBEVIRT_API_VERSION || v == KUBEVIRT_API_VERSION_V1ALPHA3 =>
        {
            root.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        }
        Some(other) => errors.push(FieldError::new(
            "apiVersion",
            format!(
                "{other} is not {API_VERSION}, {KUBEVIRT_API_VERSION} or {KUBEVIRT_API_VERSION_V1ALPHA3}"
            ),
        )),
    }
    match root.get("kind") {
        None => errors.push(FieldError::new("kind", "required")),
        Some(Value::String(k)) if k == KIND => {}
        Some(other) => errors.push(FieldError::new("kind", format!("{other} is not {KIND}"))),
    }
    errors
}

/// `metadata` is Kubernetes' ObjectMeta: check it against ObjectMeta's own schema.
fn check_metadata(metadata: Option<&Value>) -> Vec<FieldError> {
    static META: OnceLock<Value> = OnceLock::new();
    let schema = META.get_or_init(|| {
        let settings = schemars::generate::SchemaSettings::openapi3().with(|s| {
            s.inline_subschemas = true;
        });
        settings
            .into_generator()
            .into_root_schema_for::<ObjectMeta>()
            .to_value()
    });
    let mut errors = Vec::new();
    if let Some(m) = metadata {
        check_schema(m, schema, "metadata", &mut errors);
    }
    errors
}

/// The openAPIV3Schema of the CRD: `spec` and `status`.
fn vmi_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = super::crd::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the generated CRD has a schema");
        serde_json::to_value(schema).expect("a schema serialises")
    })
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Check `value` against an OpenAPI v3 (structural) schema, collecting every unsupported
/// field, missing required field, type mismatch and bad enum value under `path`.
fn check_schema(value: &Value, schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let prop = |k: &str| schema.get(k);
    if value.is_null() {
        if prop("nullable") != Some(&Value::Bool(true)) && prop("type").is_some() {
            errors.push(FieldError::new(path, "must not be null"));
        }
        return;
    }
    if prop("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            errors.push(FieldError::new(
                path,
                format!("expected a string or an integer, found {}", describe(value)),
            ));
        }
        return;
    }
    if let Some(Value::String(want)) = prop("type") {
        let ok = match want.as_str() {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            let want = match want.as_str() {
                "object" => "a mapping",
                "array" => "a list",
                "string" => "a string",
                "integer" => "an integer",
                "number" => "a number",
                _ => "a boolean",
            };
            errors.push(FieldError::new(
                path,
                format!("expected {want}, found {}", describe(value)),
            ));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = prop("enum")
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        errors.push(FieldError::new(
            path,
            format!("{value} is not one of {}", names.join(", ")),
        ));
        return;
    }
    if let Some(min) = prop("minimum").and_then(Value::as_f64)
        && value.as_f64().is_some_and(|v| v < min)
    {
        errors.push(FieldError::new(path, format!("{value} is below {min}")));
    }
    match value {
        Value::Object(map) => check_object(map, schema, path, errors),
        Value::Array(items) => {
            if let Some(item_schema) = prop("items") {
                for (i, item) in items.iter().enumerate() {
                    check_schema(item, item_schema, &index_path(path, i), errors);
                }
            }
        }
        _ => {}
    }
}

fn check_object(
    map: &Map<String, Value>,
    schema: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                errors.push(FieldError::new(child_path(path, name), "required"));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let values = schema.get("additionalProperties").filter(|v| v.is_object());
    let open = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    for (key, v) in map {
        let field = child_path(path, key);
        match (properties.and_then(|p| p.get(key)), values) {
            (Some(s), _) | (None, Some(s)) => check_schema(v, s, &field, errors),
            (None, None) if open => {}
            (None, None) => {
                let known: Vec<&str> = properties
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let hint = if known.is_empty() {
                    "this object takes no fields".to_string()
                } else {
                    format!("supported here: {}", known.join(", "))
                };
                errors.push(FieldError::new(
                    field,
                    format!("unsupported field {key:?} ({hint})"),
                ));
            }
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => {
            format!("{} {v}", json_type_name(v))
        }
        _ => json_type_name(v).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match load_vmi(text) {
            Ok(_) => vec![],
            Err(e) => match e {
                LoadError::Syntax(m) => vec![format!("syntax: {m}")],
                LoadError::Fields(f) => f.iter().map(ToString::to_string).collect(),
            },
        }
    }

    const MINIMAL: &str = "apiVersion: vmpod.io/v1alpha1\nkind: VirtualMachineInstance\nmetadata: {name: a}\nspec: {domain: {}}\n";

    #[test]
    fn yaml_and_json_and_kubevirt_api_version() {
        let vmi = load_vmi(MINIMAL).unwrap();
        assert_eq!(vmi.metadata.name.as_deref(), Some("a"));
        let json = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",
            "metadata":{"name":"b"},"spec":{"domain":{"memory":{"guest":"1Gi"}}}}"#;
        let vmi = load_vmi(json).unwrap();
        assert_eq!(vmi.spec.domain.guest_memory_bytes(), Ok(1 << 30));
        assert_eq!(
            serde_json::to_value(&vmi).unwrap()["apiVersion"],
            API_VERSION,
            "normalised"
        );
    }

    #[test]
    fn every_schema_problem_is_reported_with_its_path() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, labelz: {}}
spec:
  domain:
    cpu: {cores: two, model: host}
    devices:
      disks:
        - disk: {bus: ide}
  volumes:
    - name: v
      hostDisk: {path: /x, type: Weird}
  bogus: 1
"#;
        assert_eq!(
            errors(text),
            [
                r#"apiVersion: "v1" is not vmpod.io/v1alpha1, kubevirt.io/v1 or kubevirt.io/v1alpha3"#,
                r#"kind: "Pod" is not VirtualMachineInstance"#,
                r#"metadata.labelz: unsupported field "labelz" (supported here: annotations, creationTimestamp, deletionGracePeriodSeconds, deletionTimestamp, finalizers, generateName, generation, labels, managedFields, name, namespace, ownerReferences, resourceVersion, selfLink, uid)"#,
                r#"spec.bogus: unsupported field "bogus" (supported here: domain, hostname, networks, nodeSelector, subdomain, terminationGracePeriodSeconds, volumes)"#,
                r#"spec.domain.cpu.cores: expected an integer, found a string "two""#,
                r#"spec.domain.cpu.model: unsupported field "model" (supported here: cores, sockets, threads)"#,
                r#"spec.domain.devices.disks[0].name: required"#,
                r#"spec.domain.devices.disks[0].disk.bus: "ide" is not one of "virtio", "sata", "scsi", "usb""#,
                r#"spec.volumes[0].hostDisk.type: "Weird" is not one of "Disk", "DiskOrCreate""#,
            ]
        );
    }

    #[test]
    fn empty_marker_objects_take_no_fields() {
        let text = MINIMAL.replace(
            "spec: {domain: {}}",
            "spec: {domain: {devices: {interfaces: [{name: n, bridge: {x: 1}}]}}}",
        );
        assert_eq!(
            errors(&text),
            [
                r#"spec.domain.devices.interfaces[0].bridge.x: unsupported field "x" (this object takes no fields)"#
            ]
        );
    }

    #[test]
    fn syntax_and_shape_errors() {
        assert!(matches!(load_vmi("a: [b"), Err(LoadError::Syntax(_))));
        assert!(matches!(load_vmi("- 1"), Err(LoadError::Syntax(m)) if m.contains("a list")));
        assert_eq!(
            errors("kind: VirtualMachineInstance\napiVersion: vmpod.io/v1alpha1\n"),
            ["spec: required"]
        );
    }

    #[test]
    fn nulls_mean_absent_as_in_kubernetes() {
        let text = MINIMAL
            .replace("metadata: {name: a}", "metadata: {name: a, creationTimestamp: null}")
            .replace(
                "spec: {domain: {}}",
                "spec: {volumes: null, domain: {cpu: null, devices: {disks: [{name: null}]}}}\nstatus: {}",
            );
        assert_eq!(
            errors(&text),
            ["spec.domain.devices.disks[0].name: required"]
        );
        let ok = text.replace("{name: null}", "{name: d}");
        let vmi = load_vmi(&ok).unwrap();
        assert!(vmi.spec.volumes.is_empty() && vmi.spec.domain.cpu.is_none());
    }

    #[test]
    fn serde_catches_what_the_schema_cannot() {
        let text = MINIMAL.replace(
            "spec: {domain: {}}",
            "spec: {domain: {cpu: {cores: 5000000000}}}",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("spec.domain.cpu.cores: "), "{errs:?}");
    }
}

//! Schema helpers: custom field schemas and a structural-schema self-check.

use serde_json::{Value, json};

/// Schema of a free-form JSON object (`x-kubernetes-preserve-unknown-fields`), e.g. AppBinding
/// `spec.parameters` (an upstream `runtime.RawExtension`).
pub fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Schema of an optional base64 byte string (`k8s_openapi::ByteString`, Go `[]byte`).
pub fn optional_bytes(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "format": "byte",
        "nullable": true,
    })
}

/// Schema of `volumeClaimTemplates`: core PersistentVolumeClaims whose `apiVersion` and
/// `kind`, when given, can only be `v1` and `PersistentVolumeClaim` (the typed object refuses
/// anything else, so the API server must too, not only the webhook).
pub fn claim_templates(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut s = g.subschema_for::<Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim>>();
    if let Some(props) = s
        .as_object_mut()
        .and_then(|o| o.get_mut("items"))
        .and_then(|i| i.get_mut("properties"))
        .and_then(Value::as_object_mut)
    {
        for (field, only) in [("apiVersion", "v1"), ("kind", "PersistentVolumeClaim")] {
            if let Some(Value::Object(f)) = props.get_mut(field) {
                f.insert("enum".into(), json!([only]));
            }
        }
    }
    s
}

/// Normalises a generated schema in place: `null` is removed from `enum` lists (schemars adds it
/// for `Option<inline enum>`; `nullable: true` already expresses it).
pub fn normalize(node: &mut Value) {
    match node {
        Value::Object(obj) => {
            if let Some(Value::Array(values)) = obj.get_mut("enum")
                && values.iter().any(Value::is_null)
            {
                values.retain(|v| !v.is_null());
                obj.insert("nullable".to_owned(), Value::Bool(true));
            }
            for v in obj.values_mut() {
                normalize(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

const FORBIDDEN: &[&str] = &[
    "$ref",
    "$schema",
    "$defs",
    "definitions",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
];

/// Checks an `openAPIV3Schema` (as JSON) against the structural-schema rules the API server
/// enforces for apiextensions.k8s.io/v1 CRDs, and returns every violation as `path: problem`
/// (empty = structural). Checked: no `$ref`/`oneOf`/`anyOf`/`allOf`/`not`; every node typed unless
/// int-or-string or preserve-unknown-fields; int-or-string nodes untyped; no `properties` together
/// with `additionalProperties`; arrays have a single `items` schema; no `default: null`; enum values
/// match the type; list-map keys are required or defaulted.
pub fn structural_violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, "", &mut out);
    out
}

fn check(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    for k in FORBIDDEN {
        if obj.contains_key(*k) {
            out.push(format!("{path}: has `{k}`"));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let ty = obj.get("type").and_then(Value::as_str);
    match (ty, int_or_string) {
        (Some(_), true) => out.push(format!("{path}: int-or-string with a `type`")),
        (None, false) if !preserve => out.push(format!("{path}: no `type`")),
        _ => {}
    }
    if let Some(t) = obj.get("type")
        && !t.is_string()
    {
        out.push(format!("{path}: `type` is not a single string"));
    }
    if obj.get("default") == Some(&Value::Null) {
        out.push(format!("{path}: `default: null`"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: both `properties` and `additionalProperties`"
        ));
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array) {
        for v in values {
            let ok = match ty {
                Some("string") => v.is_string(),
                Some("integer") => v.is_i64() || v.is_u64(),
                Some("number") => v.is_number(),
                Some("boolean") => v.is_boolean(),
                _ => true,
            };
            if !ok {
                out.push(format!("{path}: enum value {v} does not match type {ty:?}"));
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check(v, &format!("{path}.{k}"), out);
        }
    }
    if let Some(ap) = obj.get("additionalProperties") {
        match ap {
            Value::Object(_) => check(ap, &format!("{path}{{}}"), out),
            Value::Bool(false) => {}
            other => out.push(format!("{path}: additionalProperties {other}")),
        }
    }
    if ty == Some("array") {
        match obj.get("items") {
            Some(items @ Value::Object(_)) => {
                check(items, &format!("{path}[]"), out);
                if obj.get("x-kubernetes-list-type") == Some(&json!("map")) {
                    let required: Vec<&str> = items
                        .get("required")
                        .and_then(Value::as_array)
                        .map(|r| r.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    for key in obj
                        .get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let key = key.as_str().unwrap_or_default();
                        let defaulted = items
                            .pointer(&format!("/properties/{key}/default"))
                            .is_some();
                        if !required.contains(&key) && !defaulted {
                            out.push(format!(
                                "{path}: list-map key `{key}` neither required nor defaulted"
                            ));
                        }
                    }
                }
            }
            _ => out.push(format!("{path}: array without a single `items` schema")),
        }
    } else if obj.contains_key("items") {
        out.push(format!("{path}: `items` on a non-array"));
    }
}

//! The JSON constraints requests can ask for: TGI's `grammar` parameter and OpenAI's
//! `response_format`, parsed into a schema for `model::grammar`.

use crate::error::ApiError;
use model::grammar::Schema;
use serde_json::Value;

/// TGI's `parameters.grammar`: `{"type": "json", "value": <JSON Schema>}` (the schema may also
/// come as a string holding JSON). Regular-expression grammars are refused.
pub fn tgi(grammar: &Value) -> Result<Schema, ApiError> {
    let kind = grammar.get("type").and_then(Value::as_str);
    match kind {
        Some("json") | Some("json_object") => {
            let value = grammar
                .get("value")
                .ok_or_else(|| invalid("`grammar.value` is missing"))?;
            schema(value)
        }
        Some("regex") => Err(invalid(
            "regex grammars are not supported; use type \"json\"",
        )),
        _ => Err(invalid(
            "`grammar.type` must be \"json\" (with a JSON Schema as `value`)",
        )),
    }
}

/// OpenAI's `response_format`: `text` (no constraint), `json_object` (any object),
/// `json_schema` (`{"json_schema": {"schema": ...}}`), and TGI's `{"type": "json", "value": ...}`.
pub fn openai(format: &Value) -> Result<Option<Schema>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Schema::any_object())),
        Some("json_schema") => {
            let s = format
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| invalid("`response_format.json_schema.schema` is missing"))?;
            schema(s).map(Some)
        }
        Some("json") => tgi(format).map(Some),
        _ => Err(invalid(
            "`response_format.type` must be one of text, json_object, json_schema",
        )),
    }
}

fn schema(value: &Value) -> Result<Schema, ApiError> {
    let parsed;
    let doc = match value {
        Value::String(text) => {
            parsed = serde_json::from_str(text)
                .map_err(|e| invalid(&format!("the JSON Schema is not valid JSON: {e}")))?;
            &parsed
        }
        v => v,
    };
    Schema::compile(doc).map_err(|e| invalid(&format!("invalid JSON Schema: {e}")))
}

fn invalid(msg: &str) -> ApiError {
    ApiError::Validation(format!("Grammar is not valid: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_the_documented_shapes() {
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert!(tgi(&json!({"type": "json", "value": s})).is_ok());
        assert!(tgi(&json!({"type": "json", "value": s.to_string()})).is_ok());
        assert!(openai(&json!({"type": "text"})).unwrap().is_none());
        assert_eq!(
            openai(&json!({"type": "json_object"})).unwrap(),
            Some(Schema::any_object())
        );
        let js = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s}});
        assert!(openai(&js).unwrap().is_some());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let msg = |r: Result<Schema, ApiError>| match r {
            Err(ApiError::Validation(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(msg(tgi(&json!({"type": "regex", "value": "a+"}))).contains("regex"));
        assert!(msg(tgi(&json!({"type": "json"}))).contains("grammar.value"));
        assert!(msg(tgi(&json!({"type": "json", "value": "{bad"}))).contains("not valid JSON"));
        assert!(
            msg(tgi(&json!({"type": "json", "value": {"type": "strin"}}))).contains("unknown type")
        );
        assert!(openai(&json!({"type": "xml"})).is_err());
        assert!(openai(&json!({"type": "json_schema"})).is_err());
    }
}

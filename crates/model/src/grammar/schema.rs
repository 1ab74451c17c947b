//! JSON Schema compiled into the small set of shapes the constrained decoder enforces.
//!
//! Supported: `type` object (declared `properties` in any order, each at most once, all of
//! `required`; no other keys), array
//! (`items`), string (`maxLength`), integer, number, boolean, null; `enum` and `const` of any JSON values;
//! `$ref` into `#/$defs` or `#/definitions`. A subschema using anything else (`anyOf`, a list
//! of types, patterns) is enforced as "any JSON value", so the output is always valid JSON.

use serde_json::Value;

pub type NodeId = u16;

/// Any JSON value.
pub const ANY: NodeId = 0;
/// An object with any keys and values.
pub const ANY_OBJECT: NodeId = 1;
/// An array of any values.
pub const ANY_ARRAY: NodeId = 2;
/// `true`, `false` or `null`.
pub const ANY_LITERAL: NodeId = 3;

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Any,
    /// Declared properties in order; an empty list means any keys with any values.
    Object(Vec<Prop>),
    Array(NodeId),
    /// At most `max_len` characters (`maxLength`), when given.
    String {
        max_len: Option<u16>,
    },
    Number,
    Integer,
    /// The JSON text of each allowed value (enum, const, booleans, null).
    Literals(Vec<Vec<u8>>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Prop {
    /// The key as it appears between the quotes (JSON-escaped).
    pub key: Vec<u8>,
    pub value: NodeId,
    pub required: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Schema {
    pub nodes: Vec<Node>,
    pub root: NodeId,
}

const MAX_NODES: usize = 4096;
const MAX_REF_DEPTH: usize = 16;

impl Schema {
    fn base() -> Schema {
        Schema {
            nodes: vec![
                Node::Any,
                Node::Object(Vec::new()),
                Node::Array(ANY),
                Node::Literals(vec![b"true".to_vec(), b"false".to_vec(), b"null".to_vec()]),
            ],
            root: ANY,
        }
    }

    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    pub fn any_object() -> Schema {
        Schema {
            root: ANY_OBJECT,
            ..Schema::base()
        }
    }

    /// Any JSON value.
    pub fn any() -> Schema {
        Schema::base()
    }

    /// Compiles a JSON Schema document; errors name the offending part.
    pub fn compile(doc: &Value) -> Result<Schema, String> {
        let mut s = Schema::base();
        s.root = s.node(doc, doc, 0, "#")?;
        Ok(s)
    }

    fn push(&mut self, node: Node) -> Result<NodeId, String> {
        if self.nodes.len() >= MAX_NODES {
            return Err(format!("the schema has more than {MAX_NODES} parts"));
        }
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as NodeId)
    }

    fn node(&mut self, v: &Value, doc: &Value, depth: usize, at: &str) -> Result<NodeId, String> {
        let obj = match v {
            Value::Bool(true) => return Ok(ANY),
            Value::Bool(false) => return Err(format!("{at}: the schema `false` allows nothing")),
            Value::Object(o) => o,
            other => return Err(format!("{at}: a schema must be an object, found {other}")),
        };
        if let Some(r) = obj.get("$ref") {
            let r = r
                .as_str()
                .ok_or_else(|| format!("{at}/$ref: expected a string"))?;
            if depth >= MAX_REF_DEPTH {
                return Ok(ANY); // recursive definitions: deeper levels take any value
            }
            let target = r
                .strip_prefix("#/$defs/")
                .map(|n| ("$defs", n))
                .or_else(|| r.strip_prefix("#/definitions/").map(|n| ("definitions", n)))
                .and_then(|(section, name)| doc.get(section)?.get(name))
                .ok_or_else(|| format!("{at}/$ref: cannot resolve {r:?} (only #/$defs/NAME and #/definitions/NAME)"))?;
            return self.node(target, doc, depth + 1, r);
        }
        if let Some(c) = obj.get("const") {
            return self.push(Node::Literals(vec![literal(c)]));
        }
        if let Some(e) = obj.get("enum") {
            let values = e
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| format!("{at}/enum: expected a non-empty list"))?;
            return self.push(Node::Literals(values.iter().map(literal).collect()));
        }
        let ty = match obj.get("type") {
            Some(Value::String(t)) => t.as_str(),
            None if obj.contains_key("properties") => "object",
            None if obj.contains_key("items") => "array",
            _ => return Ok(ANY),
        };
        match ty {
            "string" => {
                let max_len = match obj.get("maxLength") {
                    None => None,
                    Some(m) => {
                        Some(m.as_u64().filter(|&m| m < u16::MAX as u64).ok_or_else(|| {
                            format!("{at}/maxLength: expected an integer below 65535")
                        })? as u16)
                    }
                };
                self.push(Node::String { max_len })
            }
            "integer" => self.push(Node::Integer),
            "number" => self.push(Node::Number),
            "boolean" => self.push(Node::Literals(vec![b"true".to_vec(), b"false".to_vec()])),
            "null" => self.push(Node::Literals(vec![b"null".to_vec()])),
            "array" => match obj.get("items") {
                Some(items) => {
                    let item = self.node(items, doc, depth, &format!("{at}/items"))?;
                    self.push(Node::Array(item))
                }
                None => Ok(ANY_ARRAY),
            },
            "object" => {
                let Some(props) = obj.get("properties") else {
                    return Ok(ANY_OBJECT);
                };
                let props = props
                    .as_object()
                    .ok_or_else(|| format!("{at}/properties: expected an object"))?;
                if props.is_empty() {
                    return Ok(ANY_OBJECT);
                }
                let required: Vec<&str> = match obj.get("required") {
                    None => Vec::new(),
                    Some(Value::Array(r)) => r.iter().filter_map(Value::as_str).collect(),
                    Some(_) => return Err(format!("{at}/required: expected a list of names")),
                };
                if props.len() > 64 {
                    return Err(format!(
                        "{at}/properties: {} properties; at most 64 are supported",
                        props.len()
                    ));
                }
                let mut out = Vec::with_capacity(props.len());
                for (name, sub) in props {
                    let value = self.node(sub, doc, depth, &format!("{at}/properties/{name}"))?;
                    let key = serde_json::to_string(name).expect("a string serializes");
                    out.push(Prop {
                        key: key.as_bytes()[1..key.len() - 1].to_vec(),
                        value,
                        required: required.contains(&name.as_str()),
                    });
                }
                self.push(Node::Object(out))
            }
            other => Err(format!("{at}/type: unknown type {other:?}")),
        }
    }
}

fn literal(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_objects_refs_and_enums() {
        let doc = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "dose": {"$ref": "#/$defs/dose"},
                "route": {"enum": ["oral", "iv"]}
            },
            "required": ["name", "dose"],
            "$defs": {"dose": {"type": "number"}}
        });
        let s = Schema::compile(&doc).unwrap();
        let Node::Object(props) = &s.nodes[s.root as usize] else {
            panic!("root is {:?}", s.nodes[s.root as usize]);
        };
        let prop = |k: &[u8]| props.iter().find(|p| p.key == k).unwrap();
        assert_eq!(props.len(), 3);
        assert!(prop(b"name").required && prop(b"dose").required && !prop(b"route").required);
        assert_eq!(s.nodes[prop(b"dose").value as usize], Node::Number);
        assert_eq!(
            s.nodes[prop(b"route").value as usize],
            Node::Literals(vec![b"\"oral\"".to_vec(), b"\"iv\"".to_vec()])
        );
    }

    #[test]
    fn unsupported_parts_take_any_value_and_errors_name_the_place() {
        let s = Schema::compile(&json!({"anyOf": [{"type": "string"}, {"type": "null"}]})).unwrap();
        assert_eq!(s.root, ANY);
        let e = Schema::compile(&json!({"properties": {"a": {"$ref": "#/nowhere"}}})).unwrap_err();
        assert!(e.contains("#/properties/a/$ref"), "{e}");
        let e = Schema::compile(&json!({"type": "object", "properties": {"a": {"type": "str"}}}))
            .unwrap_err();
        assert!(e.contains("unknown type \"str\""), "{e}");
        assert!(Schema::compile(&json!(3)).is_err());
    }

    #[test]
    fn recursive_refs_stop() {
        let doc = json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
            "properties": {"child": {"$ref": "#/$defs/node"}}}}});
        let s = Schema::compile(&doc).unwrap();
        assert!(s.nodes.len() < 64, "{} nodes", s.nodes.len());
    }
}

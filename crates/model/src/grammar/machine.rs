//! A byte-at-a-time recognizer of JSON prefixes that follow a compiled [`Schema`].
//!
//! The state is a small fixed-size `Copy` value, so checking a candidate token is a copy and a
//! few byte steps: the decoder does that for every token of the vocabulary at every step.

use super::schema::{Node, NodeId, Schema, ANY, ANY_ARRAY, ANY_LITERAL, ANY_OBJECT};

/// Nesting deeper than this is refused (an opening bracket is then not allowed).
const MAX_DEPTH: usize = 20;
/// Consecutive whitespace bytes allowed between tokens, enough for pretty-printed output but
/// not for a model that loops on newlines.
const MAX_WHITESPACE: u8 = 12;
/// `Frame::Str::left` of a string of any length.
const UNLIMITED: u16 = u16::MAX;
/// Longest number, in bytes.
const MAX_NUMBER: u8 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Obj {
    /// After `{`: a key or `}`.
    Start,
    /// After `,`: a key.
    Key,
    /// After the key: `:`, then a value of `value`.
    Colon { value: NodeId },
    /// After a member: `,` or `}`.
    Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arr {
    Start,
    AfterComma,
    Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Hex(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn accepting(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// A value of `node` is expected (leading whitespace allowed).
    Value(NodeId),
    /// Inside an object; bit j of `used` is set once declared property j has been written.
    Object {
        node: NodeId,
        used: u64,
        phase: Obj,
    },
    Array {
        node: NodeId,
        phase: Arr,
    },
    /// Inside a string (a free key or a string value) that may take `left` more characters
    /// (`UNLIMITED`: any number).
    /// `cont`: UTF-8 continuation bytes still owed by the current character.
    Str {
        esc: Esc,
        left: u16,
        cont: u8,
    },
    /// Inside a declared key: the bytes so far are `key[..len]` of property `prop`.
    Key {
        prop: u16,
        len: u16,
    },
    Number {
        integer: bool,
        state: Num,
        len: u8,
    },
    /// Matching a literal: the bytes so far are `literal[..len]` of alternative `alt`.
    Literal {
        node: NodeId,
        alt: u16,
        len: u16,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Machine {
    stack: [Frame; MAX_DEPTH],
    depth: u8,
    whitespace: u8,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Machine {
    /// Expecting one value of the schema's root.
    pub fn new(schema: &Schema) -> Machine {
        let mut stack = [Frame::Value(ANY); MAX_DEPTH];
        stack[0] = Frame::Value(schema.root);
        Machine {
            stack,
            depth: 1,
            whitespace: 0,
        }
    }

    /// The document is whole: nothing more may follow (a top-level number or literal could
    /// still grow, but may also end here).
    pub fn can_end(&self, schema: &Schema) -> bool {
        match self.depth {
            0 => true,
            1 => match self.stack[0] {
                Frame::Number { state, .. } => state.accepting(),
                Frame::Literal { node, alt, len } => literal_done(schema, node, alt, len),
                _ => false,
            },
            _ => false,
        }
    }

    /// Nothing but the end may come.
    pub fn finished(&self) -> bool {
        self.depth == 0
    }

    /// Inside a plain string with no escape pending: any byte but `"`, `\` and controls.
    pub fn in_plain_string(&self) -> bool {
        self.depth > 0
            && self.stack[self.depth as usize - 1]
                == Frame::Str {
                    esc: Esc::None,
                    left: UNLIMITED,
                    cont: 0,
                }
    }

    /// Feeds all of `bytes`; false (and the state is then unspecified) when they cannot
    /// continue the document.
    pub fn feed_all(&mut self, schema: &Schema, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(schema, b))
    }

    /// Takes one byte; false when it cannot continue the document.
    pub fn feed(&mut self, schema: &Schema, b: u8) -> bool {
        if is_ws(b) && self.between_tokens() {
            self.whitespace += 1;
            return self.whitespace <= MAX_WHITESPACE;
        }
        self.whitespace = 0;
        self.step(schema, b)
    }

    /// Whitespace here is insignificant (and not part of a string or number).
    fn between_tokens(&self) -> bool {
        if self.depth == 0 {
            return false; // the document is over: only the end may come
        }
        match self.stack[self.depth as usize - 1] {
            Frame::Value(_) | Frame::Object { .. } | Frame::Array { .. } => true,
            // A number or literal that could end here ends at whitespace.
            Frame::Number { state, .. } => state.accepting() && self.depth > 1,
            _ => false,
        }
    }

    fn top(&mut self) -> &mut Frame {
        &mut self.stack[self.depth as usize - 1]
    }

    fn push(&mut self, f: Frame) -> bool {
        if self.depth as usize >= MAX_DEPTH {
            return false;
        }
        self.stack[self.depth as usize] = f;
        self.depth += 1;
        true
    }

    /// The value on top is complete: pop it (its parent already expects what follows).
    fn pop(&mut self) {
        self.depth -= 1;
    }

    fn step(&mut self, schema: &Schema, b: u8) -> bool {
        if self.depth == 0 {
            return false;
        }
        let frame = *self.top();
        match frame {
            Frame::Value(node) => self.start_value(schema, node, b),
            Frame::Object { node, used, phase } => self.object(schema, node, used, phase, b),
            Frame::Array { node, phase } => match (phase, b) {
                (Arr::Start | Arr::Next, b']') => {
                    self.pop();
                    true
                }
                (Arr::Next, b',') => {
                    *self.top() = Frame::Array {
                        node,
                        phase: Arr::AfterComma,
                    };
                    true
                }
                (Arr::Start | Arr::AfterComma, _) => {
                    let Node::Array(items) = schema.nodes[node as usize] else {
                        unreachable!("array frames hold array nodes")
                    };
                    *self.top() = Frame::Array {
                        node,
                        phase: Arr::Next,
                    };
                    self.push(Frame::Value(items)) && self.step(schema, b)
                }
                _ => false,
            },
            Frame::Str {
                esc,
                mut left,
                mut cont,
            } => {
                // Strings stay well-formed UTF-8 (up to overlong forms), so the text decodes.
                match b {
                    0x80..=0xBF if cont > 0 => {
                        cont -= 1;
                        *self.top() = Frame::Str { esc, left, cont };
                        return true;
                    }
                    _ if cont > 0 => return false,
                    0x80..=0xBF | 0xF8..=0xFF => return false,
                    0xC0..=0xDF => cont = 1,
                    0xE0..=0xEF => cont = 2,
                    0xF0..=0xF7 => cont = 3,
                    _ => {}
                }
                // A character starts at any byte but a UTF-8 continuation byte; an escape
                // sequence is one character.
                if esc == Esc::None && b != b'"' && b & 0xC0 != 0x80 && left != UNLIMITED {
                    if left == 0 {
                        return false;
                    }
                    left -= 1;
                }
                let next = match (esc, b) {
                    (Esc::None, b'"') => {
                        self.pop();
                        return true;
                    }
                    (Esc::None, b'\\') => Esc::Backslash,
                    (Esc::None, 0..=0x1f) => return false,
                    (Esc::None, _) => Esc::None,
                    (Esc::Backslash, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                        Esc::None
                    }
                    (Esc::Backslash, b'u') => Esc::Hex(4),
                    (Esc::Hex(n), _) if b.is_ascii_hexdigit() => {
                        if n == 1 {
                            Esc::None
                        } else {
                            Esc::Hex(n - 1)
                        }
                    }
                    _ => return false,
                };
                *self.top() = Frame::Str {
                    esc: next,
                    left,
                    cont,
                };
                true
            }
            Frame::Key { prop, len } => self.key(schema, prop, len, b),
            Frame::Number {
                integer,
                state,
                len,
            } => {
                let next = match (state, b) {
                    (Num::Start, b'-') => Some(Num::Minus),
                    (Num::Start | Num::Minus, b'0') => Some(Num::Zero),
                    (Num::Start | Num::Minus, b'1'..=b'9') => Some(Num::Int),
                    (Num::Int, b'0'..=b'9') => Some(Num::Int),
                    (Num::Zero | Num::Int, b'.') if !integer => Some(Num::Dot),
                    (Num::Dot | Num::Frac, b'0'..=b'9') => Some(Num::Frac),
                    (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') if !integer => Some(Num::E),
                    (Num::E, b'+' | b'-') => Some(Num::ESign),
                    (Num::E | Num::ESign | Num::Exp, b'0'..=b'9') => Some(Num::Exp),
                    _ => None,
                };
                match next {
                    Some(state) if len < MAX_NUMBER => {
                        *self.top() = Frame::Number {
                            integer,
                            state,
                            len: len + 1,
                        };
                        true
                    }
                    Some(_) => false,
                    // The number ends; the byte belongs to what follows it.
                    None if state.accepting() && self.depth > 1 => {
                        self.pop();
                        self.step(schema, b)
                    }
                    None => false,
                }
            }
            Frame::Literal { node, alt, len } => {
                let Node::Literals(alts) = &schema.nodes[node as usize] else {
                    unreachable!("literal frames hold literal nodes")
                };
                let (alt, len) = (alt as usize, len as usize);
                let prefix = &alts[alt][..len];
                let cont = (alt..alts.len()).find(|&j| {
                    alts[j].len() > len && alts[j].starts_with(prefix) && alts[j][len] == b
                });
                if let Some(j) = cont {
                    *self.top() = Frame::Literal {
                        node,
                        alt: j as u16,
                        len: len as u16 + 1,
                    };
                    true
                } else if literal_done(schema, node, alt as u16, len as u16) && self.depth > 1 {
                    self.pop();
                    self.step(schema, b)
                } else {
                    false
                }
            }
        }
    }

    fn start_value(&mut self, schema: &Schema, node: NodeId, b: u8) -> bool {
        let frame = match (&schema.nodes[node as usize], b) {
            (Node::Any, b'{') | (Node::Object(_), b'{') => {
                let node = if node == ANY { ANY_OBJECT } else { node };
                Frame::Object {
                    node,
                    used: 0,
                    phase: Obj::Start,
                }
            }
            (Node::Any, b'[') | (Node::Array(_), b'[') => Frame::Array {
                node: if node == ANY { ANY_ARRAY } else { node },
                phase: Arr::Start,
            },
            (Node::Any, b'"') => Frame::Str {
                esc: Esc::None,
                left: UNLIMITED,
                cont: 0,
            },
            (Node::String { max_len }, b'"') => Frame::Str {
                esc: Esc::None,
                left: max_len.unwrap_or(UNLIMITED),
                cont: 0,
            },
            (Node::Any | Node::Number | Node::Integer, b'-' | b'0'..=b'9') => {
                *self.top() = Frame::Number {
                    integer: matches!(schema.nodes[node as usize], Node::Integer),
                    state: Num::Start,
                    len: 0,
                };
                return self.step(schema, b);
            }
            (Node::Any, b't' | b'f' | b'n') | (Node::Literals(_), _) => {
                let node = if node == ANY { ANY_LITERAL } else { node };
                *self.top() = Frame::Literal {
                    node,
                    alt: 0,
                    len: 0,
                };
                return self.step(schema, b);
            }
            _ => return false,
        };
        *self.top() = frame;
        true
    }

    fn object(&mut self, schema: &Schema, node: NodeId, used: u64, phase: Obj, b: u8) -> bool {
        let Node::Object(props) = &schema.nodes[node as usize] else {
            unreachable!("object frames hold object nodes")
        };
        let free = props.is_empty();
        // Declared properties may come in any order, each at most once; the object closes
        // once every required one is there.
        let unused = (0..props.len()).any(|j| used & (1 << j) == 0);
        let may_close = props
            .iter()
            .enumerate()
            .all(|(j, p)| !p.required || used & (1 << j) != 0);
        match (phase, b) {
            (Obj::Start | Obj::Next, b'}') if may_close => {
                self.pop();
                true
            }
            (Obj::Next, b',') if free || unused => {
                *self.top() = Frame::Object {
                    node,
                    used,
                    phase: Obj::Key,
                };
                true
            }
            (Obj::Start | Obj::Key, b'"') if free => {
                *self.top() = Frame::Object {
                    node,
                    used,
                    phase: Obj::Colon { value: ANY },
                };
                self.push(Frame::Str {
                    esc: Esc::None,
                    left: UNLIMITED,
                    cont: 0,
                })
            }
            (Obj::Start | Obj::Key, b'"') => {
                match (0..props.len()).find(|j| used & (1 << j) == 0) {
                    Some(j) => self.push(Frame::Key {
                        prop: j as u16,
                        len: 0,
                    }),
                    None => false,
                }
            }
            (Obj::Colon { value }, b':') => {
                *self.top() = Frame::Object {
                    node,
                    used,
                    phase: Obj::Next,
                };
                self.push(Frame::Value(value))
            }
            _ => false,
        }
    }

    /// A byte of a declared key; the object frame is just below. `prop` is one of the unused
    /// properties whose key starts with the bytes typed so far.
    fn key(&mut self, schema: &Schema, prop: u16, len: u16, b: u8) -> bool {
        let Frame::Object { node, used, .. } = self.stack[self.depth as usize - 2] else {
            unreachable!("key frames sit on object frames")
        };
        let Node::Object(props) = &schema.nodes[node as usize] else {
            unreachable!("object frames hold object nodes")
        };
        let len = len as usize;
        let typed = &props[prop as usize].key[..len];
        let mut candidates =
            (0..props.len()).filter(|&j| used & (1 << j) == 0 && props[j].key.starts_with(typed));
        if b == b'"' {
            let Some(j) = candidates.find(|&j| props[j].key.len() == len) else {
                return false;
            };
            self.pop();
            *self.top() = Frame::Object {
                node,
                used: used | (1 << j),
                phase: Obj::Colon {
                    value: props[j].value,
                },
            };
            return true;
        }
        match candidates.find(|&j| props[j].key.get(len) == Some(&b)) {
            Some(j) => {
                *self.top() = Frame::Key {
                    prop: j as u16,
                    len: len as u16 + 1,
                };
                true
            }
            None => false,
        }
    }
}

fn literal_done(schema: &Schema, node: NodeId, alt: u16, len: u16) -> bool {
    let Node::Literals(alts) = &schema.nodes[node as usize] else {
        return false;
    };
    let prefix = &alts[alt as usize][..len as usize];
    alts[alt as usize..]
        .iter()
        .any(|a| a.len() == len as usize && a.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accepts(schema: &Schema, text: &str) -> bool {
        let mut m = Machine::new(schema);
        m.feed_all(schema, text.as_bytes()) && m.can_end(schema)
    }

    /// Every prefix of a valid document is accepted byte by byte.
    fn prefixes_ok(schema: &Schema, text: &str) -> bool {
        let mut m = Machine::new(schema);
        text.bytes().all(|b| m.feed(schema, b))
    }

    #[test]
    fn any_json_value() {
        let s = Schema::any();
        for ok in [
            r#"{"a": [1, -2.5e+3, true, null, {"b": "x\"\u00e9\n"}], "c": {}}"#,
            "[]",
            "\"caf\u{e9}\"",
            "0",
            "-12.5",
            "false",
        ] {
            assert!(accepts(&s, ok), "{ok}");
        }
        for bad in [
            "{a: 1}",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "tru",
            "\"\\x\"",
            "{\"a\":1}}",
            "nul",
            "\"a\u{1}\"",
        ] {
            assert!(!accepts(&s, bad), "{bad}");
        }
    }

    #[test]
    fn object_root_and_limits() {
        let s = Schema::any_object();
        assert!(accepts(&s, "{\n  \"x\": [1, 2]\n}"));
        assert!(!prefixes_ok(&s, "[1]"), "json_object wants an object");
        assert!(
            !prefixes_ok(&s, &format!("{{{}", " ".repeat(13))),
            "whitespace runs are capped"
        );
        let deep = format!("{{\"a\":{}", "[".repeat(MAX_DEPTH));
        assert!(!prefixes_ok(&s, &deep), "nesting is capped");
        assert!(
            !prefixes_ok(&s, &format!("{{\"a\":{}", "1".repeat(30))),
            "numbers are capped"
        );
        let mut m = Machine::new(&s);
        assert!(m.feed_all(&s, b"{}"));
        assert!(m.finished() && m.can_end(&s));
        assert!(!m.feed(&s, b' '), "nothing follows the document");
    }

    #[test]
    fn schema_properties_required_and_types() {
        let s = Schema::compile(&json!({
            "type": "object",
            "properties": {
                "drug": {"type": "string"},
                "dose_mg": {"type": "integer"},
                "route": {"enum": ["oral", "iv"]},
                "urgent": {"type": "boolean"},
                "notes": {"type": "array", "items": {"type": "number"}}
            },
            "required": ["drug", "urgent"]
        }))
        .unwrap();
        for ok in [
            r#"{"drug": "aspirin", "dose_mg": 75, "route": "oral", "urgent": false, "notes": [1.5]}"#,
            r#"{"drug":"x","urgent":true}"#,
            r#"{"drug": "x", "route": "iv", "urgent": true}"#,
            r#"{"urgent": true, "drug": "x"}"#,
        ] {
            assert!(accepts(&s, ok), "{ok}");
        }
        for bad in [
            r#"{"drug": "x"}"#,                                 // missing required
            r#"{"drug": "x", "dose_mg": 7.5, "urgent": true}"#, // integer
            r#"{"drug": "x", "route": "im", "urgent": true}"#,  // enum
            r#"{"drug": 3, "urgent": true}"#,                   // type
            r#"{"drug": "x", "urgent": true, "extra": 1}"#,     // undeclared
            r#"{"drug": "x", "drug": "y", "urgent": true}"#,    // twice
            r#"{"drug": "x", "urgent": true, "notes": ["a"]}"#,
        ] {
            assert!(!accepts(&s, bad), "{bad}");
        }
    }

    #[test]
    fn string_max_length_counts_characters() {
        let s = Schema::compile(&json!({"type": "string", "maxLength": 3})).unwrap();
        assert!(accepts(&s, "\"abc\"") && accepts(&s, "\"\""));
        assert!(
            accepts(&s, "\"\u{e9}\u{e9}\\n\""),
            "two 2-byte characters and an escape"
        );
        assert!(!prefixes_ok(&s, "\"abcd"));
        assert!(!prefixes_ok(&s, "\"ab\u{e9}\u{e9}"));
        let any = Schema::any();
        let mut m = Machine::new(&any);
        assert!(m.feed_all(&any, &[b'"', 0xC3]));
        assert!(!m.feed(&any, b'"'), "a character cut in the middle");
        assert!(
            !Machine::new(&any).feed_all(&any, &[b'"', 0xA9]),
            "a stray continuation byte"
        );
    }

    #[test]
    fn keys_sharing_a_prefix() {
        let s = Schema::compile(&json!({"type": "object", "properties": {
            "ab": {"type": "integer"}, "a": {"type": "integer"}, "abc": {"type": "integer"}}}))
        .unwrap();
        assert!(accepts(&s, r#"{"a": 1}"#));
        assert!(accepts(&s, r#"{"ab": 1, "a": 2, "abc": 3}"#));
        assert!(accepts(&s, r#"{"abc": 3}"#));
        assert!(accepts(&s, r#"{"a": 1, "ab": 2}"#));
        assert!(!accepts(&s, r#"{"a": 1, "a": 2}"#));
        assert!(!accepts(&s, r#"{"abcd": 1}"#) && !accepts(&s, r#"{"b": 1}"#));
    }

    #[test]
    fn top_level_scalars_end_where_they_may() {
        let s = Schema::compile(&json!({"type": "integer"})).unwrap();
        let mut m = Machine::new(&s);
        assert!(m.feed_all(&s, b"12"));
        assert!(m.can_end(&s) && !m.finished());
        assert!(!m.feed(&s, b'.'));
        let s = Schema::compile(&json!({"enum": [1, 12, "a"]})).unwrap();
        assert!(accepts(&s, "1") && accepts(&s, "12") && accepts(&s, "\"a\""));
        assert!(!accepts(&s, "2") && !accepts(&s, "123"));
    }
}

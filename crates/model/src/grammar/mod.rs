//! Constrained decoding: only tokens that keep the output a valid prefix of a JSON document
//! (following a JSON Schema, or any object) may be sampled, and the end of generation only
//! once the document is whole. This is what TGI's `grammar: {"type": "json"}` and OpenAI's
//! `response_format` ask for.

mod machine;
mod schema;

pub use machine::Machine;
pub use schema::Schema;

use std::sync::Arc;
use tokenizer::Tokenizer;

/// What the constraint needs to know about the vocabulary, built once per model.
pub struct TokenTable {
    bytes: Vec<Vec<u8>>,
    /// Tokens that are neither special nor empty, grouped by their first byte.
    by_first_byte: Vec<Vec<u32>>,
    /// Tokens that can sit inside a JSON string as they are: whole UTF-8 characters, no
    /// quote, backslash or control byte.
    plain: Vec<bool>,
    eos: Vec<u32>,
}

impl TokenTable {
    pub fn new(tokenizer: &Tokenizer) -> TokenTable {
        let bytes = tokenizer.token_bytes();
        let mut by_first_byte = vec![Vec::new(); 256];
        let mut plain = vec![false; bytes.len()];
        for (id, b) in bytes.iter().enumerate() {
            if b.is_empty() || tokenizer.is_special(id as u32) {
                continue;
            }
            by_first_byte[b[0] as usize].push(id as u32);
            plain[id] = b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\')
                && std::str::from_utf8(b).is_ok();
        }
        TokenTable {
            bytes,
            by_first_byte,
            plain,
            eos: tokenizer.eos_ids().to_vec(),
        }
    }
}

/// One sequence's constraint: the schema, the vocabulary and where the output stands.
#[derive(Clone)]
pub struct JsonConstraint {
    schema: Arc<Schema>,
    table: Arc<TokenTable>,
    state: Machine,
}

impl std::fmt::Debug for JsonConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonConstraint")
            .field("schema", &self.schema)
            .field("finished", &self.finished())
            .finish_non_exhaustive()
    }
}

impl JsonConstraint {
    pub fn new(schema: Arc<Schema>, table: Arc<TokenTable>) -> JsonConstraint {
        let state = Machine::new(&schema);
        JsonConstraint {
            schema,
            table,
            state,
        }
    }

    /// Sets the logits of every token that may not come next to -inf.
    pub fn mask(&self, logits: &mut [f32]) {
        let mut allowed = vec![false; logits.len()];
        let s = &*self.schema;
        for (first, ids) in self.table.by_first_byte.iter().enumerate() {
            if ids.is_empty()
                || !{
                    let mut m = self.state;
                    m.feed(s, first as u8)
                }
            {
                continue;
            }
            for &id in ids {
                let ok = (self.state.in_plain_string() && self.table.plain[id as usize]) || {
                    let mut m = self.state;
                    m.feed_all(s, &self.table.bytes[id as usize])
                };
                if let Some(a) = allowed.get_mut(id as usize) {
                    *a = ok;
                }
            }
        }
        // The end is allowed once the document is whole, and also when nothing else is (a
        // dead end the limits caused), so that generation always stops.
        let end = self.state.can_end(s) || !allowed.iter().any(|&a| a);
        for &e in &self.table.eos {
            if let Some(a) = allowed.get_mut(e as usize) {
                *a = end;
            }
        }
        for (l, ok) in logits.iter_mut().zip(allowed) {
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// Moves past `token`, which [`JsonConstraint::mask`] allowed.
    pub fn advance(&mut self, token: u32) {
        if let Some(b) = self.table.bytes.get(token as usize) {
            if !self.table.eos.contains(&token) {
                let s = &*self.schema;
                let ok = self.state.feed_all(s, b);
                debug_assert!(ok, "token {token} was not allowed");
            }
        }
    }

    /// The document is complete and cannot continue: only the end may follow.
    pub fn finished(&self) -> bool {
        self.state.finished()
    }
}

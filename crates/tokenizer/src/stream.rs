//! [`IncrementalDecoder`]: text for generated ids as they come, never half a character.
//!
//! Decoding one id at a time goes wrong twice: a character split over byte tokens comes out as
//! U+FFFD, and SentencePiece's decoder strips the leading space of whatever it is given, so
//! " world" would come out as "world". Like TGI and transformers' `TextStreamer`, we decode a
//! short window of recent ids twice, without and with the new ones, and emit the difference;
//! the window starts at an id that already produced complete text, so that stripping and byte
//! merging act the same in both decodes. The pieces add up to `decode(all ids)`.

use crate::{Tokenizer, TokenizerError};

/// Streams the text of ids pushed one at a time.
pub struct IncrementalDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    /// Ids from the start of the window on; older ones are dropped.
    ids: Vec<u32>,
    /// `ids[..read]` has been emitted; `ids[..read]` decodes to complete text.
    read: usize,
}

impl<'a> IncrementalDecoder<'a> {
    pub fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        IncrementalDecoder {
            tok,
            skip_special,
            ids: Vec::new(),
            read: 0,
        }
    }

    /// The text that `id` completes; empty while a character is still incomplete.
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[..self.read], self.skip_special)?;
        let after = self.tok.decode(&self.ids, self.skip_special)?;
        // A trailing U+FFFD is a byte sequence still waiting for its end.
        if after.ends_with('\u{FFFD}') || after.len() <= before.len() {
            return Ok(String::new());
        }
        let new = suffix_after(&before, &after);
        // The next window starts where this one's emitted text ended.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(new)
    }

    /// Whatever is still held back (an unfinished byte sequence comes out as U+FFFD).
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let before = self.tok.decode(&self.ids[..self.read], self.skip_special)?;
        let after = self.tok.decode(&self.ids, self.skip_special)?;
        self.ids.clear();
        self.read = 0;
        Ok(if after.len() > before.len() {
            suffix_after(&before, &after)
        } else {
            String::new()
        })
    }
}

/// The part of `after` past `before`. Decoders only ever append, so `before` is a prefix; should
/// one not be, the text past the longest common prefix is the best guess.
fn suffix_after(before: &str, after: &str) -> String {
    if let Some(rest) = after.strip_prefix(before) {
        return rest.to_string();
    }
    let common: usize = before
        .chars()
        .zip(after.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    after[common..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufVocab;

    fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> Vec<String> {
        let mut d = IncrementalDecoder::new(tok, skip);
        let mut out: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
        out.push(d.finish().unwrap());
        out
    }

    #[test]
    fn byte_tokens_wait_for_the_whole_character_and_spaces_survive() {
        let tok = Tokenizer::from_gguf(&crate::gguf::tests::tiny_spm()).unwrap();
        let id = |s: &str| tok.token_to_id(s).unwrap();
        // "hello € world": € is three byte tokens.
        let ids = [
            1,
            id("▁hello"),
            id("▁"),
            id("<0xE2>"),
            id("<0x82>"),
            id("<0xAC>"),
            id("▁world"),
            2,
        ];
        let pieces = stream(&tok, &ids, true);
        assert_eq!(pieces, ["", "hello", " ", "", "", "€", " world", "", ""]);
        assert_eq!(pieces.concat(), tok.decode(&ids, true).unwrap());
        let pieces = stream(&tok, &ids, false);
        assert_eq!(pieces.concat(), tok.decode(&ids, false).unwrap());
    }

    #[test]
    fn unfinished_bytes_come_out_at_finish() {
        let tok = Tokenizer::from_gguf(&crate::gguf::tests::tiny_spm()).unwrap();
        let id = |s: &str| tok.token_to_id(s).unwrap();
        let ids = [id("▁hello"), id("<0xE2>")];
        let pieces = stream(&tok, &ids, true);
        assert_eq!(pieces, ["hello", "", "\u{FFFD}"]);
        assert_eq!(pieces.concat(), tok.decode(&ids, true).unwrap());
    }

    #[test]
    fn byte_level_bpe_streams_split_characters() {
        // GPT-2 byte alphabet: "é" is bytes C3 A9, spelled "Ã" and "©".
        let v = GgufVocab {
            model: "gpt2".into(),
            pre: Some("gpt-2".into()),
            tokens: ["a", "Ã", "©", "Ġ"].iter().map(|s| s.to_string()).collect(),
            merges: Some(vec![]),
            ..Default::default()
        };
        let tok = Tokenizer::from_gguf(&v).unwrap();
        let ids = tok.encode("a é", false).unwrap();
        assert_eq!(ids, vec![0, 3, 1, 2]);
        let pieces = stream(&tok, &ids, false);
        assert_eq!(pieces, ["a", " ", "", "é", ""]);
    }
}

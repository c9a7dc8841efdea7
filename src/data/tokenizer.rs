//! A character-level tokenizer. Ids 0..4 are the specials `<PAD>`, `<SOS>`, `<EOS>`, `<UNK>`;
//! then every character of the training text, sorted. A character outside the vocabulary
//! becomes `<UNK>` (never silently padding). The vocabulary round-trips through JSON so it is
//! saved inside each model checkpoint.

use crate::{Error, Result};
use std::collections::HashMap;

pub const PAD: u32 = 0;
pub const SOS: u32 = 1;
pub const EOS: u32 = 2;
pub const UNK: u32 = 3;
const SPECIALS: [&str; 4] = ["<PAD>", "<SOS>", "<EOS>", "<UNK>"];

#[derive(Clone, Debug, PartialEq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    index: HashMap<char, u32>,
}

impl CharTokenizer {
    /// The vocabulary of `text`.
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text
            .chars()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        chars.dedup();
        Self::from_chars(chars)
    }
    fn from_chars(chars: Vec<char>) -> Self {
        let index = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, (i + SPECIALS.len()) as u32))
            .collect();
        CharTokenizer { chars, index }
    }
    pub fn vocab_size(&self) -> usize {
        self.chars.len() + SPECIALS.len()
    }
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.chars()
            .map(|c| *self.index.get(&c).unwrap_or(&UNK))
            .collect()
    }
    /// Decodes ids, skipping `<PAD>`/`<SOS>`, stopping at `<EOS>`, showing `<UNK>` as `?`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut s = String::new();
        for &id in ids {
            match id {
                PAD | SOS => {}
                EOS => break,
                UNK => s.push('?'),
                _ => {
                    if let Some(&c) = self.chars.get(id as usize - SPECIALS.len()) {
                        s.push(c)
                    } else {
                        s.push('?')
                    }
                }
            }
        }
        s
    }
    pub fn to_json(&self) -> String {
        let chars: String = self.chars.iter().collect();
        serde_json::json!({ "type": "char", "specials": SPECIALS, "chars": chars }).to_string()
    }
    pub fn from_json(json: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::msg(format!("tokenizer JSON: {e}")))?;
        let chars = v
            .get("chars")
            .and_then(|c| c.as_str())
            .ok_or_else(|| Error::msg("tokenizer JSON: missing \"chars\""))?;
        Ok(Self::from_chars(chars.chars().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trips_and_marks_unknowns() {
        let t = CharTokenizer::from_text("abca b");
        assert_eq!(t.vocab_size(), 4 + 4);
        let ids = t.encode("cab z");
        assert_eq!(ids[4], UNK);
        assert_eq!(t.decode(&ids), "cab ?");
        assert_eq!(CharTokenizer::from_json(&t.to_json()).unwrap(), t);
    }
}

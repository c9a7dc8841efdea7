//! A word-level tokenizer for prompts, and [`PromptTokenizer`], the choice between it and the
//! character-level [`CharTokenizer`].
//!
//! Words are runs of letters and digits, lowercased; every other visible character (`,`, `.`)
//! is a token of its own; whitespace separates. Ids 0..4 are the same specials as the char
//! tokenizer's (`<PAD>`, `<SOS>`, `<EOS>`, `<UNK>`), then the vocabulary's words in sorted
//! order. A word outside the vocabulary becomes `<UNK>`.
//!
//! Why words for conditioning: a jointly trained encoder over characters must learn to spell
//! "triangle" from the diffusion loss alone before the U-Net can use it; with one token per
//! word, each word's embedding gets its gradient directly. On the shapes (docs/PERF.md) the
//! shape of the prompt was followed far more often at the same number of steps.

use super::tokenizer::{CharTokenizer, PAD, SOS, UNK};
use crate::{Error, Result};
use std::collections::{BTreeSet, HashMap};

const SPECIALS: [&str; 4] = ["<PAD>", "<SOS>", "<EOS>", "<UNK>"];

#[derive(Clone, Debug, PartialEq)]
pub struct WordTokenizer {
    words: Vec<String>,
    index: HashMap<String, u32>,
}

/// The words and punctuation marks of `text`, in order.
pub fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for ch in text.chars() {
        if ch.is_alphanumeric() {
            word.extend(ch.to_lowercase());
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !ch.is_whitespace() {
            out.push(ch.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

impl WordTokenizer {
    /// The vocabulary of every word in `text`.
    pub fn from_text(text: &str) -> Self {
        let words: BTreeSet<String> = split_words(text).into_iter().collect();
        Self::from_words(words.into_iter().collect())
    }
    fn from_words(words: Vec<String>) -> Self {
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), (i + SPECIALS.len()) as u32))
            .collect();
        WordTokenizer { words, index }
    }
    pub fn vocab_size(&self) -> usize {
        self.words.len() + SPECIALS.len()
    }
    pub fn encode(&self, text: &str) -> Vec<u32> {
        split_words(text)
            .iter()
            .map(|w| *self.index.get(w).unwrap_or(&UNK))
            .collect()
    }
    /// Words joined by spaces, skipping `<PAD>`/`<SOS>`, stopping at `<EOS>`, `<UNK>` as `?`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out: Vec<&str> = Vec::new();
        for &id in ids {
            match id {
                PAD | SOS => {}
                super::tokenizer::EOS => break,
                _ => out.push(
                    self.words
                        .get((id as usize).wrapping_sub(SPECIALS.len()))
                        .map_or("?", |w| w.as_str()),
                ),
            }
        }
        out.join(" ")
    }
    pub fn to_json(&self) -> String {
        serde_json::json!({ "type": "word", "specials": SPECIALS, "words": self.words }).to_string()
    }
    pub fn from_json(json: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::msg(format!("tokenizer JSON: {e}")))?;
        let words = v
            .get("words")
            .and_then(|w| w.as_array())
            .ok_or_else(|| Error::msg("tokenizer JSON: missing \"words\""))?
            .iter()
            .map(|w| {
                w.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::msg("tokenizer JSON: a word is not a string"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_words(words))
    }
}

/// How a prompt becomes ids: one per character or one per word.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptTokenizer {
    Char(CharTokenizer),
    Word(WordTokenizer),
}

impl PromptTokenizer {
    /// `char` or `word`, over the vocabulary of `text`.
    pub fn new(kind: &str, text: &str) -> Result<Self> {
        match kind {
            "char" => Ok(PromptTokenizer::Char(CharTokenizer::from_text(text))),
            "word" => Ok(PromptTokenizer::Word(WordTokenizer::from_text(text))),
            other => Err(Error::msg(format!(
                "unknown tokenizer {other:?} (expected char or word)"
            ))),
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            PromptTokenizer::Char(_) => "char",
            PromptTokenizer::Word(_) => "word",
        }
    }
    pub fn vocab_size(&self) -> usize {
        match self {
            PromptTokenizer::Char(t) => t.vocab_size(),
            PromptTokenizer::Word(t) => t.vocab_size(),
        }
    }
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            PromptTokenizer::Char(t) => t.encode(text),
            PromptTokenizer::Word(t) => t.encode(text),
        }
    }
    pub fn to_json(&self) -> String {
        match self {
            PromptTokenizer::Char(t) => t.to_json(),
            PromptTokenizer::Word(t) => t.to_json(),
        }
    }
    /// Reads either JSON; the char tokenizer's is recognized by its `"chars"`.
    pub fn from_json(json: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::msg(format!("tokenizer JSON: {e}")))?;
        match v.get("type").and_then(|t| t.as_str()) {
            Some("word") => Ok(PromptTokenizer::Word(WordTokenizer::from_json(json)?)),
            _ if v.get("chars").is_some() => {
                Ok(PromptTokenizer::Char(CharTokenizer::from_json(json)?))
            }
            other => Err(Error::msg(format!(
                "tokenizer JSON: unknown type {other:?} (expected char or word)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn splits_words_and_punctuation_and_round_trips() {
        assert_eq!(
            split_words("Show a Large circle,  coloured red."),
            ["show", "a", "large", "circle", ",", "coloured", "red", "."]
        );
        let t = WordTokenizer::from_text("a red circle, a blue square");
        // a , blue circle red square + 4 specials
        assert_eq!(t.vocab_size(), 4 + 6);
        let ids = t.encode("a green circle");
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[1], UNK);
        assert_eq!(t.decode(&ids), "a ? circle");
        assert_eq!(WordTokenizer::from_json(&t.to_json()).unwrap(), t);
        for kind in ["char", "word"] {
            let p = PromptTokenizer::new(kind, "a red circle").unwrap();
            assert_eq!(p.kind(), kind);
            assert_eq!(PromptTokenizer::from_json(&p.to_json()).unwrap(), p);
        }
        assert!(PromptTokenizer::new("bpe", "x").is_err());
    }
}

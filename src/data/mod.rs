//! Data: built-in corpora, tokenizers, and (later) procedural image data and dataset readers.

pub mod idx;
pub mod mnist;
pub mod shapes;
pub mod text;
pub mod tokenizer;
pub mod word_tokenizer;

pub use tokenizer::CharTokenizer;
pub use word_tokenizer::{PromptTokenizer, WordTokenizer};

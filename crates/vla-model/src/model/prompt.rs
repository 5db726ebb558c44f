//! The OpenVLA prompt and its token ids (OPENVLA_FACTS §4): `In: What action should the
//! robot take to {instruction.lower()}?\nOut:`, encoded with `<s>` prepended, then the
//! `▁` token (29871) appended as `predict_action` does.

use std::path::Path;

use super::ModelError;

/// Id of `▁` in the Llama-2 vocabulary, which `predict_action` appends.
pub const SPACE_TOKEN_ID: u32 = 29871;

/// The prompt text for an instruction. Python's `str.lower()` is Unicode-aware, as is Rust's.
pub fn prompt_text(instruction: &str) -> String {
    format!(
        "In: What action should the robot take to {}?\nOut:",
        instruction.to_lowercase()
    )
}

/// Bytes of instruction text one token can stand for, at most, per byte of its vocabulary
/// entry: lower-casing can shrink a character to a third of its bytes (`K`, the Kelvin sign,
/// is 3 bytes, `k` one); 4 leaves margin.
const INSTRUCTION_BYTES_PER_TOKEN_BYTE: usize = 4;

/// The checkpoint's `tokenizer.json`.
pub struct PromptTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// Bytes of the longest vocabulary entry: no token covers more of the text than this.
    longest_token_bytes: usize,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer").finish_non_exhaustive()
    }
}

impl PromptTokenizer {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: format!("cannot load tokenizer: {e}"),
        })?;
        let longest_token_bytes = tokenizer
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Self {
            tokenizer,
            longest_token_bytes,
        })
    }

    /// Token ids of the prompt for `instruction`, refused with [`ModelError::PromptTooLong`]
    /// when they would be more than `max_tokens`. A text too long to possibly fit is refused
    /// before it is lower-cased or tokenized, so the work and memory spent on a hostile
    /// instruction stay bounded by the limit, not by its length.
    pub fn encode_instruction_within(
        &self,
        instruction: &str,
        max_tokens: usize,
    ) -> Result<Vec<u32>, ModelError> {
        let max_bytes = max_tokens
            .saturating_mul(self.longest_token_bytes)
            .saturating_mul(INSTRUCTION_BYTES_PER_TOKEN_BYTE);
        if instruction.len() > max_bytes {
            return Err(ModelError::PromptTooLong {
                what: format!("{} bytes", instruction.len()),
                limit: max_tokens,
            });
        }
        let ids = self.encode_instruction(instruction)?;
        if ids.len() > max_tokens {
            return Err(ModelError::PromptTooLong {
                what: format!("{} prompt tokens", ids.len()),
                limit: max_tokens,
            });
        }
        Ok(ids)
    }

    /// Token ids of the prompt for `instruction`, with `<s>` first and 29871 last.
    pub fn encode_instruction(&self, instruction: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .tokenizer
            .encode(prompt_text(instruction), true)
            .map_err(|e| ModelError::Unsupported {
                what: "tokenizer".into(),
                message: format!("cannot encode the prompt: {e}"),
            })?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.last() != Some(&SPACE_TOKEN_ID) {
            ids.push(SPACE_TOKEN_ID);
        }
        Ok(ids)
    }
}

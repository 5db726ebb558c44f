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

/// The checkpoint's `tokenizer.json`.
pub struct PromptTokenizer {
    tokenizer: tokenizers::Tokenizer,
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
        Ok(Self { tokenizer })
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

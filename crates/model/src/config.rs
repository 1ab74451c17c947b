//! The shape of a Llama-family model, from GGUF metadata or a Hugging Face config.json.

use kernels::cpu::ops::RopeStyle;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Rows of the embedding matrix; the tokenizer may know more ids than this.
    pub n_vocab: usize,
    /// Longest sequence the model was trained for; prompts past it are refused.
    pub max_context: usize,
    pub rope_theta: f32,
    /// Dimensions of each head that RoPE rotates (all of them for Llama).
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub tie_embeddings: bool,
}

impl ModelConfig {
    /// The shape a Hugging Face `config.json` describes, with `n_vocab` taken from the caller
    /// (the embedding's rows, which can differ from `vocab_size`).
    pub fn from_hf(hf: &formats::LlamaConfig, n_vocab: usize) -> ModelConfig {
        ModelConfig {
            architecture: hf.model_type.clone(),
            n_layers: hf.num_hidden_layers,
            hidden: hf.hidden_size,
            intermediate: hf.intermediate_size,
            n_heads: hf.num_attention_heads,
            n_kv_heads: hf.kv_heads(),
            head_dim: hf.head_dim(),
            n_vocab,
            max_context: hf.max_position_embeddings,
            rope_theta: hf.rope_theta as f32,
            rope_dims: hf.head_dim(),
            rope_style: RopeStyle::Halves,
            rms_eps: hf.rms_norm_eps as f32,
            tie_embeddings: hf.tie_word_embeddings,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Checks the relations the forward pass relies on, naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("block_count / num_hidden_layers", self.n_layers),
            ("embedding_length / hidden_size", self.hidden),
            ("feed_forward_length / intermediate_size", self.intermediate),
            ("attention.head_count / num_attention_heads", self.n_heads),
            (
                "attention.head_count_kv / num_key_value_heads",
                self.n_kv_heads,
            ),
            ("head_dim", self.head_dim),
            ("vocabulary size", self.n_vocab),
            ("context_length / max_position_embeddings", self.max_context),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("model config: {name} is 0"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "model config: {} attention heads are not a multiple of {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.rope_dims == 0
            || self.rope_dims > self.head_dim
            || !self.rope_dims.is_multiple_of(2)
        {
            return Err(format!(
                "model config: rope dimension count {} does not fit head_dim {}",
                self.rope_dims, self.head_dim
            ));
        }
        // Written to also refuse NaN.
        let in_range = self.rope_theta > 0.0 && self.rms_eps >= 0.0;
        if !in_range {
            return Err(format!(
                "model config: rope theta {} / rms eps {} out of range",
                self.rope_theta, self.rms_eps
            ));
        }
        Ok(())
    }
}

//! A Llama model from a GGUF file: metadata to config, tensors mapped in place, the tokenizer
//! rebuilt from the `tokenizer.ggml.*` keys.

use super::{template_or_chatml, LoadedModel};
use crate::config::ModelConfig;
use crate::huge_pages::HugeBuffer;
use crate::llama::{Layer, Llama};
use crate::weights::{Bytes, Matrix};
use anyhow::{anyhow, bail, Context, Result};
use formats::{GgmlType, GgufFile};
use kernels::cpu::dot::QuantKind;
use kernels::cpu::matmul::WeightFormat;
use kernels::cpu::ops::RopeStyle;
use kernels::cpu::packed::{self, PackedKind};
use kernels::cpu::Features;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokenizer::{GgufVocab, Tokenizer};

pub fn load(path: &Path) -> Result<LoadedModel> {
    let file = Arc::new(GgufFile::open(path)?);
    let config = read_config(&file)?;
    let tokenizer = load_tokenizer(&file)?;
    let template = template_or_chatml(tokenizer.chat_template())?;
    let owner = file.shared_bytes().clone();
    let packed = pack_all(&file);
    let matrix = |name: &str| gguf_matrix(&file, &owner, &packed, name);
    let vector = |name: &str| gguf_vector(&file, name);

    let embed_tokens = matrix("token_embd.weight")?;
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let p = format!("blk.{i}");
        layers.push(Layer {
            attn_norm: vector(&format!("{p}.attn_norm.weight"))?,
            q_proj: matrix(&format!("{p}.attn_q.weight"))?,
            k_proj: matrix(&format!("{p}.attn_k.weight"))?,
            v_proj: matrix(&format!("{p}.attn_v.weight"))?,
            o_proj: matrix(&format!("{p}.attn_output.weight"))?,
            qkv_bias: match file.tensor(&format!("{p}.attn_q.bias")) {
                None => None,
                Some(_) => Some([
                    vector(&format!("{p}.attn_q.bias"))?,
                    vector(&format!("{p}.attn_k.bias"))?,
                    vector(&format!("{p}.attn_v.bias"))?,
                ]),
            },
            ffn_norm: vector(&format!("{p}.ffn_norm.weight"))?,
            gate_proj: matrix(&format!("{p}.ffn_gate.weight"))?,
            up_proj: matrix(&format!("{p}.ffn_up.weight"))?,
            down_proj: matrix(&format!("{p}.ffn_down.weight"))?,
        });
    }
    let norm = vector("output_norm.weight")?;
    let lm_head = match file.tensor("output.weight") {
        Some(_) => Some(matrix("output.weight")?),
        None => None,
    };
    let config = ModelConfig {
        tie_embeddings: lm_head.is_none(),
        n_vocab: embed_tokens.rows,
        ..config
    };
    let model = Llama::new(config, embed_tokens, layers, norm, lm_head).map_err(|e| anyhow!(e))?;
    let name = file
        .get_str("general.name")?
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
        path: path.to_path_buf(),
        format: "gguf",
        name,
    })
}

fn read_config(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file
        .get_str("general.architecture")?
        .ok_or_else(|| anyhow!("GGUF has no general.architecture"))?
        .to_string();
    // Mistral-style GGUFs use the llama architecture name; others would need their own code.
    if arch != "llama" {
        bail!("GGUF architecture '{arch}' is not supported (only llama)");
    }
    let req = |key: &str| -> Result<usize> {
        let full = format!("{arch}.{key}");
        let v = file
            .get_u64(&full)?
            .ok_or_else(|| anyhow!("GGUF metadata key '{full}' is missing"))?;
        usize::try_from(v).with_context(|| format!("GGUF metadata key '{full}' = {v} is too large"))
    };
    let opt = |key: &str| -> Result<Option<usize>> {
        let full = format!("{arch}.{key}");
        Ok(file.get_u64(&full)?.map(|v| v as usize))
    };
    let hidden = req("embedding_length")?;
    let n_heads = req("attention.head_count")?;
    if n_heads == 0 {
        bail!("GGUF metadata key '{arch}.attention.head_count' is 0");
    }
    let head_dim = opt("attention.key_length")?.unwrap_or(hidden / n_heads);
    Ok(ModelConfig {
        architecture: arch.clone(),
        n_layers: req("block_count")?,
        hidden,
        intermediate: req("feed_forward_length")?,
        n_heads,
        n_kv_heads: opt("attention.head_count_kv")?.unwrap_or(n_heads),
        head_dim,
        n_vocab: 0, // from the embedding's shape, once it is read
        max_context: req("context_length")?,
        rope_theta: file
            .get_f32(&format!("{arch}.rope.freq_base"))?
            .unwrap_or(10000.0),
        rope_dims: opt("rope.dimension_count")?.unwrap_or(head_dim),
        rope_style: RopeStyle::Adjacent,
        rms_eps: file
            .get_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5),
        tie_embeddings: false,
    })
}

/// The kernel format for a ggml type; block types without a fast kernel are expanded row by
/// row through the reference dequantizer.
fn weight_format(ty: GgmlType) -> Option<WeightFormat> {
    use GgmlType as G;
    macro_rules! blocks {
        ($t:expr) => {
            WeightFormat::Blocks {
                block_elems: $t.block_size(),
                block_bytes: $t.type_size(),
                // Sizes were checked when the matrix was built, so this cannot fail.
                dequantize: |src, dst| drop(formats::dequantize($t, src, dst)),
            }
        };
    }
    Some(match ty {
        G::F32 => WeightFormat::F32,
        G::F16 => WeightFormat::F16,
        G::BF16 => WeightFormat::BF16,
        G::Q4_0 => WeightFormat::Quant(QuantKind::Q4_0),
        G::Q4_1 => WeightFormat::Quant(QuantKind::Q4_1),
        G::Q8_0 => WeightFormat::Quant(QuantKind::Q8_0),
        G::Q5_0 => blocks!(G::Q5_0),
        G::Q5_1 => blocks!(G::Q5_1),
        G::Q2_K => blocks!(G::Q2_K),
        G::Q3_K => blocks!(G::Q3_K),
        G::Q4_K => blocks!(G::Q4_K),
        G::Q5_K => blocks!(G::Q5_K),
        G::Q6_K => blocks!(G::Q6_K),
        _ => return None,
    })
}

/// Every quantized matrix of the file repacked for the AVX-512 VNNI kernels (where they run),
/// into one buffer on huge pages: name -> (format, byte range in `buffer`).
struct Packed {
    buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
    tensors: HashMap<String, (PackedKind, std::ops::Range<usize>)>,
}

fn pack_all(file: &GgufFile) -> Packed {
    let mut tensors = HashMap::new();
    let mut plan = Vec::new();
    let mut total = 0;
    if packed::worth_packing(Features::get()) {
        for info in file.tensors() {
            let Some(WeightFormat::Quant(kind)) = weight_format(info.ty) else {
                continue;
            };
            if info.dims.len() != 2 {
                continue;
            }
            let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
            if let Some(len) = packed::packed_len(kind, rows, cols) {
                plan.push((info, kind, rows, cols, total..total + len));
                total = (total + len).next_multiple_of(64);
            }
        }
    }
    let mut buffer = HugeBuffer::zeroed(total);
    for (info, kind, rows, cols, range) in plan {
        let src = file.tensor_bytes(info);
        if let Some(pk) = packed::pack_into(
            kind,
            src,
            rows,
            cols,
            &mut buffer.as_mut_slice()[range.clone()],
        ) {
            // The file's copy is not read again: let the kernel drop its pages from this
            // process, so the model is resident once, not twice.
            release_pages(src);
            tensors.insert(info.name.clone(), (pk, range));
        }
    }
    Packed {
        buffer: Arc::new(buffer),
        tensors,
    }
}

fn gguf_matrix(
    file: &GgufFile,
    owner: &Arc<dyn AsRef<[u8]> + Send + Sync>,
    packed: &Packed,
    name: &str,
) -> Result<Matrix> {
    let info = file
        .tensor(name)
        .ok_or_else(|| anyhow!("GGUF tensor '{name}' is missing"))?;
    if info.dims.len() != 2 {
        bail!(
            "GGUF tensor '{name}' has {} dimensions, expected 2",
            info.dims.len()
        );
    }
    let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
    let format = weight_format(info.ty).ok_or_else(|| {
        anyhow!(
            "GGUF tensor '{name}' has type {}, which meditron cannot compute with",
            info.ty.name()
        )
    })?;
    let (format, bytes) = match packed.tensors.get(name) {
        Some((pk, range)) => (
            WeightFormat::Packed(*pk),
            Bytes::new(packed.buffer.clone(), range.clone()),
        ),
        None => {
            let start = info.offset as usize;
            (
                format,
                Bytes::new(owner.clone(), start..start + info.n_bytes),
            )
        }
    };
    let bytes = bytes.map_err(|e| anyhow!("GGUF tensor '{name}': {e}"))?;
    Matrix::new(name, format, bytes, rows, cols).map_err(|e| anyhow!(e))
}

/// Tells the kernel that the whole pages inside `bytes` (part of a read-only file mapping)
/// will not be needed soon; they are re-read from the file if they ever are. Only lowers the
/// resident size: failure is harmless and ignored.
fn release_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_DONTNEED: i32 = 4;
        const PAGE: usize = 4096;
        let start = (bytes.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (bytes.as_ptr() as usize + bytes.len()) / PAGE * PAGE;
        if end > start {
            // SAFETY: the range lies inside a private read-only file mapping that outlives
            // this call; dropping its pages cannot change what later reads see.
            unsafe { madvise(start as *mut std::ffi::c_void, end - start, MADV_DONTNEED) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

fn gguf_vector(file: &GgufFile, name: &str) -> Result<Vec<f32>> {
    let info = file
        .tensor(name)
        .ok_or_else(|| anyhow!("GGUF tensor '{name}' is missing"))?;
    if info.dims.len() != 1 {
        bail!(
            "GGUF tensor '{name}' has {} dimensions, expected 1",
            info.dims.len()
        );
    }
    formats::ggml::dequantize_to_vec(info.ty, file.tensor_bytes(info), info.dims[0] as usize)
        .with_context(|| format!("GGUF tensor '{name}'"))
}

pub fn load_tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    let id = |key: &str| -> Result<Option<u32>> { Ok(file.get_u64(key)?.map(|v| v as u32)) };
    let model = file
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| anyhow!("GGUF has no tokenizer (tokenizer.ggml.model is missing)"))?
        .to_string();
    let vocab = GgufVocab {
        model,
        pre: file.get_str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens: file
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| anyhow!("GGUF metadata key 'tokenizer.ggml.tokens' is missing"))?
            .to_vec(),
        scores: file
            .get_f32_array("tokenizer.ggml.scores")?
            .map(<[f32]>::to_vec),
        token_types: file
            .get_i32_array("tokenizer.ggml.token_type")?
            .map(|c| c.into_owned()),
        merges: file
            .get_str_array("tokenizer.ggml.merges")?
            .map(<[String]>::to_vec),
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        unk_id: id("tokenizer.ggml.unknown_token_id")?,
        pad_id: id("tokenizer.ggml.padding_token_id")?,
        add_bos: file.get_bool("tokenizer.ggml.add_bos_token")?,
        add_eos: file.get_bool("tokenizer.ggml.add_eos_token")?,
        add_space_prefix: file.get_bool("tokenizer.ggml.add_space_prefix")?,
        chat_template: file.get_str("tokenizer.chat_template")?.map(str::to_string),
    };
    Tokenizer::from_gguf(&vocab).context("building the tokenizer from GGUF metadata")
}

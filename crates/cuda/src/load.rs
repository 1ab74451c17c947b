//! Hugging Face checkpoints onto the GPU: GPTQ directories (AutoGPTQ / GPTQModel layout,
//! `quantize_config.json` or `config.json`'s `quantization_config`, act-order `g_idx`, v1 and v2
//! zero points) and fp16/bf16/f32 ones.
//!
//! The formats crate reads the config and the safetensors headers; tensor bytes go from the page
//! cache to the GPU through two pinned buffers (many threads `pread` one chunk while the previous
//! one is copied), and the GPTQ tensors are repacked into the kernels' layout on the GPU: rows
//! sorted by group (the act-order permutation kept for the activation gather), 32-row slabs, byte
//! zero points only where they are not the symmetric ones. q/k/v and gate/up become one linear
//! each; where their permutations differ (checkpoints made without a shared Hessian), the fused
//! linear keeps one permutation per part and its input is gathered once per part.

use crate::driver::{Buf, Event, Gpu, Pinned};
use crate::kernels::{copy_cols_u16, gptq_repack_on_gpu, gptq_zeros_on_gpu, QLinear};
use crate::llama::{Config, Layer, Linear, Model};
use anyhow::{bail, Context, Result};
use formats::gptq::{CheckpointFormat, GptqConfig};
use formats::{Dtype, LlamaConfig, ModelWeights, SafeTensorsFile};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Loads the model in `dir` onto the GPU: GPTQ when the directory has a GPTQ config, else
/// fp16/bf16/f32 weights (stored as fp16).
pub fn load(gpu: &Gpu, dir: &Path) -> Result<Model> {
    let gptq = GptqConfig::from_dir(dir)?;
    let hf = LlamaConfig::from_file(&dir.join("config.json"))
        .with_context(|| format!("reading {}/config.json", dir.display()))?;
    hf.validate()?;
    if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        bail!(
            "{}: rope_scaling is not supported by the CUDA backend",
            dir.display()
        );
    }
    let cfg = Config {
        hidden: hf.hidden_size,
        inter: hf.intermediate_size,
        n_heads: hf.num_attention_heads,
        n_kv: hf.kv_heads(),
        head_dim: hf.head_dim(),
        n_layers: hf.num_hidden_layers,
        vocab: hf.vocab_size,
        eps: hf.rms_norm_eps as f32,
        rope_theta: hf.rope_theta,
    };
    let files = Files::open(dir, gptq.as_ref())?;
    let mut ld = Loader::new(gpu, &files)?;
    let (h, i) = (cfg.hidden, cfg.inter);
    let (qd, kvd) = (cfg.n_heads * cfg.head_dim, cfg.n_kv * cfg.head_dim);
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let m = format!("{p}.mlp");
        let lin = |ld: &mut Loader, parts: &[(String, usize)], k: usize| -> Result<Linear> {
            match &gptq {
                Some(g) if !files.contains(&format!("{}.weight", parts[0].0)) => {
                    Ok(Linear::Q(ld.gptq_linear(g, parts, k)?))
                }
                _ => ld.f16_linear(parts, k),
            }
        };
        layers.push(Layer {
            attn_norm: ld.f16_tensor(&format!("{p}.input_layernorm.weight"), &[h])?,
            ffn_norm: ld.f16_tensor(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            qkv: lin(
                &mut ld,
                &[
                    (format!("{a}.q_proj"), qd),
                    (format!("{a}.k_proj"), kvd),
                    (format!("{a}.v_proj"), kvd),
                ],
                h,
            )?,
            o: lin(&mut ld, &[(format!("{a}.o_proj"), h)], qd)?,
            gate_up: lin(
                &mut ld,
                &[(format!("{m}.gate_proj"), i), (format!("{m}.up_proj"), i)],
                h,
            )?,
            down: lin(&mut ld, &[(format!("{m}.down_proj"), h)], i)?,
        });
    }
    let embed = ld.f16_tensor("model.embed_tokens.weight", &[cfg.vocab, h])?;
    let lm_head = if files.contains("lm_head.weight") {
        ld.f16_tensor("lm_head.weight", &[cfg.vocab, h])?
    } else if hf.tie_word_embeddings {
        let b = gpu.alloc(embed.bytes)?;
        gpu.copy_dtod(b.ptr, embed.ptr, embed.bytes)?;
        b
    } else {
        bail!(
            "{}: lm_head.weight is missing and tie_word_embeddings is false",
            dir.display()
        );
    };
    let norm = ld.f16_tensor("model.norm.weight", &[h])?;
    gpu.sync()?;
    Ok(Model {
        cfg,
        embed,
        layers,
        norm,
        lm_head,
    })
}

/// The checkpoint's safetensors files: as the CPU loader finds them, or every `*.safetensors`
/// of the directory when there is no index (as some GPTQ writers leave them).
struct Files {
    files: Vec<SafeTensorsFile>,
    by_name: HashMap<String, usize>,
    handles: Vec<std::fs::File>,
}

impl Files {
    fn open(dir: &Path, gptq: Option<&GptqConfig>) -> Result<Files> {
        let base = gptq.and_then(|g| g.model_file_base_name.as_deref());
        let w = match base {
            Some(b)
                if dir.join(format!("{b}.safetensors")).is_file()
                    || dir.join(format!("{b}.safetensors.index.json")).is_file() =>
            {
                Some(ModelWeights::open_dir_with_base(dir, b)?)
            }
            _ => {
                let has_index = dir.join("model.safetensors").is_file()
                    || dir.join("model.safetensors.index.json").is_file();
                if has_index {
                    Some(ModelWeights::open_dir(dir)?)
                } else {
                    None
                }
            }
        };
        let paths: Vec<PathBuf> = match &w {
            Some(w) => w.files().iter().map(|f| f.path().to_owned()).collect(),
            None => {
                let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                    .with_context(|| format!("listing {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                v.sort();
                if v.is_empty() {
                    bail!("{}: no *.safetensors files", dir.display());
                }
                v
            }
        };
        drop(w);
        let mut files = Vec::new();
        let mut by_name = HashMap::new();
        let mut handles = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let f = SafeTensorsFile::open(p)?;
            for n in f.names() {
                if by_name.insert(n.to_string(), i).is_some() {
                    bail!("{}: tensor {n} appears in two files", dir.display());
                }
            }
            files.push(f);
            handles
                .push(std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?);
        }
        Ok(Files {
            files,
            by_name,
            handles,
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// (file index, dtype, shape, absolute byte range).
    fn find(&self, name: &str) -> Result<(usize, Dtype, Vec<usize>, std::ops::Range<usize>)> {
        let &i = self
            .by_name
            .get(name)
            .with_context(|| format!("tensor {name} is missing from the checkpoint"))?;
        let f = &self.files[i];
        let t = f.tensor(name).context("tensor vanished")?;
        let (_, range) = f.tensor_storage(name).context("tensor vanished")?;
        Ok((i, t.dtype, t.shape.to_vec(), range))
    }

    fn expect(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<Piece> {
        let (file, dt, sh, range) = self.find(name)?;
        if dt != dtype || sh != shape {
            bail!(
                "{}: tensor {name} is {dt:?} {sh:?}, expected {dtype:?} {shape:?}",
                self.files[file].path().display()
            );
        }
        Ok(Piece {
            file,
            offset: range.start as u64,
            len: range.len(),
        })
    }

    /// A small tensor's bytes on the host.
    fn read_host(&self, p: &Piece) -> Result<Vec<u8>> {
        let mut v = vec![0u8; p.len];
        self.handles[p.file]
            .read_exact_at(&mut v, p.offset)
            .with_context(|| format!("reading {}", self.files[p.file].path().display()))?;
        Ok(v)
    }
}

#[derive(Clone, Copy)]
struct Piece {
    file: usize,
    offset: u64,
    len: usize,
}

/// Bytes per pinned chunk; two chunks are in flight (one read by the threads, one copied).
const CHUNK: usize = 64 << 20;

struct Loader<'a> {
    gpu: &'a Gpu,
    files: &'a Files,
    pinned: [Pinned; 2],
    copied: [Event; 2],
    busy: [bool; 2],
    next: usize,
    threads: usize,
    /// Device staging for a linear's checkpoint tensors before the repack.
    staging: Option<Buf>,
}

impl<'a> Loader<'a> {
    fn new(gpu: &'a Gpu, files: &'a Files) -> Result<Loader<'a>> {
        Ok(Loader {
            gpu,
            files,
            pinned: [gpu.pinned(CHUNK)?, gpu.pinned(CHUNK)?],
            copied: [Event::new()?, Event::new()?],
            busy: [false; 2],
            next: 0,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(4)
                .clamp(1, 16),
            staging: None,
        })
    }

    /// Copies file pieces to device addresses: parallel reads into one pinned chunk while the
    /// other is copied to the GPU (copies are queued on the main stream, in order).
    fn upload(&mut self, jobs: &[(Piece, u64)]) -> Result<()> {
        // Split into chunks of at most CHUNK bytes: (piece, dst, offset in chunk).
        let mut chunk: Vec<(Piece, u64, usize)> = Vec::new();
        let mut fill = 0usize;
        for &(p, dst) in jobs {
            let mut done = 0;
            while done < p.len {
                let n = (p.len - done).min(CHUNK - fill);
                chunk.push((
                    Piece {
                        file: p.file,
                        offset: p.offset + done as u64,
                        len: n,
                    },
                    dst + done as u64,
                    fill,
                ));
                fill += n;
                done += n;
                if fill == CHUNK {
                    self.flush(&chunk)?;
                    chunk.clear();
                    fill = 0;
                }
            }
        }
        if !chunk.is_empty() {
            self.flush(&chunk)?;
        }
        Ok(())
    }

    fn flush(&mut self, chunk: &[(Piece, u64, usize)]) -> Result<()> {
        let i = self.next % 2;
        self.next += 1;
        if self.busy[i] {
            self.copied[i].synchronize()?;
        }
        let buf = &self.pinned[i];
        let total: usize = chunk.iter().map(|c| c.0.len).sum();
        // Work list of (file, file offset, len, chunk offset), cut into ~equal slices per thread.
        let per = total.div_ceil(self.threads).max(1 << 20);
        let mut work: Vec<Vec<(usize, u64, usize, usize)>> = vec![Vec::new()];
        let mut acc = 0;
        for &(p, _, at) in chunk {
            let mut done = 0;
            while done < p.len {
                let n = (p.len - done).min(per - acc);
                work.last_mut()
                    .unwrap()
                    .push((p.file, p.offset + done as u64, n, at + done));
                done += n;
                acc += n;
                if acc == per {
                    work.push(Vec::new());
                    acc = 0;
                }
            }
        }
        let base = buf.as_mut_ptr() as usize;
        let files = self.files;
        std::thread::scope(|s| -> Result<()> {
            let hs: Vec<_> = work
                .iter()
                .filter(|w| !w.is_empty())
                .map(|w| {
                    s.spawn(move || -> Result<()> {
                        for &(f, off, n, at) in w {
                            // SAFETY: slices of the pinned chunk are disjoint across threads and
                            // within bounds (at + n <= CHUNK); nothing else touches it until
                            // the copy below is queued after the scope ends.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut((base + at) as *mut u8, n)
                            };
                            files.handles[f].read_exact_at(dst, off).with_context(|| {
                                format!("reading {}", files.files[f].path().display())
                            })?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in hs {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
            }
            Ok(())
        })?;
        for &(p, dst, at) in chunk {
            self.gpu.copy_pinned(dst, buf, at, p.len)?;
        }
        self.copied[i].record(self.gpu, false)?;
        self.busy[i] = true;
        Ok(())
    }

    /// A 16-bit float tensor of `shape` as fp16 on the device (bf16/f32 converted on the host).
    fn f16_tensor(&mut self, name: &str, shape: &[usize]) -> Result<Buf> {
        let (file, dt, sh, range) = self.files.find(name)?;
        if sh != shape {
            bail!(
                "{}: tensor {name} has shape {sh:?}, expected {shape:?}",
                self.files.files[file].path().display()
            );
        }
        if dt == Dtype::F16 {
            let b = self.gpu.alloc(range.len())?;
            let p = Piece {
                file,
                offset: range.start as u64,
                len: range.len(),
            };
            self.upload(&[(p, b.ptr)])?;
            return Ok(b);
        }
        let t = self.files.files[file]
            .tensor(name)
            .context("tensor vanished")?;
        let v: Vec<u16> = t
            .to_f32_vec()
            .with_context(|| format!("reading {name}"))?
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect();
        self.gpu.sync()?;
        self.gpu.upload(&v)
    }

    /// fp16 nn.Linear weights [N][K] of the parts, stacked along N.
    fn f16_linear(&mut self, parts: &[(String, usize)], k: usize) -> Result<Linear> {
        let n: usize = parts.iter().map(|p| p.1).sum();
        let w = self.gpu.alloc(n * k * 2)?;
        let mut row = 0;
        for (prefix, rows) in parts {
            let t = self.f16_tensor(&format!("{prefix}.weight"), &[*rows, k])?;
            self.gpu
                .copy_dtod(w.ptr + (row * k * 2) as u64, t.ptr, t.bytes)?;
            row += rows;
            self.gpu.sync()?;
        }
        Ok(Linear::F16 { w, k, n })
    }

    fn staging(&mut self, bytes: usize) -> Result<u64> {
        if self.staging.as_ref().is_none_or(|b| b.bytes < bytes) {
            self.gpu.sync()?;
            self.staging = None;
            self.staging = Some(self.gpu.alloc(bytes)?);
        }
        Ok(self.staging.as_ref().map_or(0, |b| b.ptr))
    }

    /// The GPTQ parts (prefix, outputs) of one fused linear with `k` inputs.
    fn gptq_linear(
        &mut self,
        g: &GptqConfig,
        parts: &[(String, usize)],
        k: usize,
    ) -> Result<QLinear> {
        let bits = g.bits;
        if ![3, 4, 8].contains(&bits) {
            bail!(
                "{}: {bits}-bit GPTQ is not supported on the GPU (3, 4, 8)",
                g.source.display()
            );
        }
        let gs = g.group_size.unwrap_or(k).min(k);
        let groups = k.div_ceil(gs);
        let n: usize = parts.iter().map(|p| p.1).sum();
        let pl = |len: usize| len * bits as usize / 32;
        let sym_stored: u32 = match g.format {
            CheckpointFormat::V1 => (1 << (bits - 1)) - 1,
            CheckpointFormat::V2 => 1 << (bits - 1),
        };
        let offset = match g.format {
            CheckpointFormat::V1 => 1,
            CheckpointFormat::V2 => 0,
        };
        struct Part {
            qweight: Piece,
            qzeros: Piece,
            scales: Piece,
            perm: Option<Vec<i32>>,
            sym: bool,
            ncols: usize,
        }
        let mut ps = Vec::new();
        for (prefix, ncols) in parts {
            let ncols = *ncols;
            let f = self.files;
            let qweight = f.expect(&format!("{prefix}.qweight"), Dtype::I32, &[pl(k), ncols])?;
            let qzeros = f.expect(
                &format!("{prefix}.qzeros"),
                Dtype::I32,
                &[groups, pl(ncols)],
            )?;
            let scales = f.expect(&format!("{prefix}.scales"), Dtype::F16, &[groups, ncols])?;
            let gname = format!("{prefix}.g_idx");
            let perm = if f.contains(&gname) {
                let p = f.expect(&gname, Dtype::I32, &[k])?;
                let g_idx: Vec<i32> = f
                    .read_host(&p)?
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                sort_by_group(&g_idx, gs, groups).with_context(|| format!("tensor {gname}"))?
            } else {
                None
            };
            // Symmetric when every stored zero is the middle code: compare whole words with
            // the packed pattern of such a row.
            let zrow = formats::gptq::pack_qzeros(&vec![sym_stored as u8; ncols], 1, ncols, bits)
                .map_err(|e| anyhow::anyhow!("{prefix}: {e:?}"))?;
            let zb = f.read_host(&qzeros)?;
            let sym = zb
                .chunks_exact(4)
                .enumerate()
                .all(|(i, c)| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) == zrow[i % zrow.len()]);
            if !sym && bits == 8 && offset == 1 && zb.contains(&0xff) {
                bail!(
                    "{prefix}.qzeros: an 8-bit zero point of 256 does not fit the kernel's bytes"
                );
            }
            ps.push(Part {
                qweight,
                qzeros,
                scales,
                perm,
                sym,
                ncols,
            });
        }
        let any_asym = ps.iter().any(|p| !p.sym);
        // One permutation for all parts when they agree (real checkpoints: q/k/v and gate/up
        // share the Hessian), else one per part.
        let all_same = ps.windows(2).all(|w| w[0].perm == w[1].perm);
        let perms: Vec<i32> = if ps.iter().all(|p| p.perm.is_none()) {
            Vec::new()
        } else if all_same {
            ps[0].perm.clone().unwrap_or_default()
        } else {
            ps.iter()
                .flat_map(|p| p.perm.clone().unwrap_or_else(|| (0..k as i32).collect()))
                .collect()
        };
        let nseg = if all_same { 1 } else { ps.len() };
        let mut seg = [n, n];
        let mut col = 0;
        for (i, p) in ps.iter().enumerate() {
            if i > 0 && nseg > 1 {
                seg[i - 1] = col;
            }
            col += p.ncols;
        }
        let gpu = self.gpu;
        let perm = (!perms.is_empty())
            .then(|| gpu.upload(&perms))
            .transpose()?;
        let inv_perm = match (&perm, nseg) {
            (Some(_), 1) => {
                let mut inv = vec![0i32; k];
                for (i, &j) in perms.iter().enumerate() {
                    inv[j as usize] = i as i32;
                }
                Some(gpu.upload(&inv)?)
            }
            _ => None,
        };
        let qw = gpu.alloc(k / 32 * bits as usize * n * 4)?;
        let scales = gpu.alloc(groups * n * 2)?;
        let zeros = any_asym.then(|| gpu.alloc(groups * n)).transpose()?;
        // Checkpoint tensors of all parts into the staging buffer, then repack part by part.
        let mut jobs = Vec::new();
        let mut at = 0usize;
        let mut offs = Vec::new();
        for p in &ps {
            let mut o = [0usize; 3];
            for (j, piece) in [p.qweight, p.scales, p.qzeros].into_iter().enumerate() {
                if j == 2 && !any_asym {
                    continue;
                }
                o[j] = at;
                jobs.push((piece, at));
                at += piece.len.next_multiple_of(256);
            }
            offs.push(o);
        }
        let base = self.staging(at)?;
        let jobs: Vec<(Piece, u64)> = jobs
            .into_iter()
            .map(|(p, o)| (p, base + o as u64))
            .collect();
        self.upload(&jobs)?;
        let mut col0 = 0;
        for (i, p) in ps.iter().enumerate() {
            let pp = match &perm {
                Some(b) if nseg > 1 => b.ptr + (i * k * 4) as u64,
                Some(b) => b.ptr,
                None => 0,
            };
            let o = offs[i];
            gptq_repack_on_gpu(
                gpu,
                bits,
                base + o[0] as u64,
                pp,
                qw.ptr,
                k,
                p.ncols,
                n,
                col0,
            )?;
            copy_cols_u16(
                gpu,
                base + o[1] as u64,
                scales.ptr,
                groups,
                p.ncols,
                n,
                col0,
            )?;
            if let Some(z) = &zeros {
                gptq_zeros_on_gpu(
                    gpu,
                    bits,
                    base + o[2] as u64,
                    z.ptr,
                    groups,
                    p.ncols,
                    n,
                    col0,
                    offset,
                )?;
            }
            col0 += p.ncols;
        }
        let q = QLinear {
            qw,
            scales,
            zeros,
            perm,
            inv_perm,
            k,
            n,
            bits,
            group_size: gs,
            kw: crate::kernels::default_kw(bits, n),
            seg,
        };
        q.validate()?;
        Ok(q)
    }
}

/// The act-order permutation of a g_idx (sorted row i is original row perm[i], stable within a
/// group), None when it is the identity; an error unless the groups are runs of `gs` rows.
pub fn sort_by_group(g_idx: &[i32], gs: usize, groups: usize) -> Result<Option<Vec<i32>>> {
    let mut count = vec![0usize; groups];
    for (i, &g) in g_idx.iter().enumerate() {
        if g < 0 || g as usize >= groups {
            bail!("g_idx[{i}] = {g} is outside 0..{groups}");
        }
        count[g as usize] += 1;
    }
    let k = g_idx.len();
    for (g, &c) in count.iter().enumerate() {
        let want = gs.min(k - g * gs);
        if c != want {
            bail!("group {g} has {c} rows, not {want}: static or uneven groups are not supported on the GPU");
        }
    }
    let mut next: Vec<usize> = (0..groups).map(|g| g * gs).collect();
    let mut perm = vec![0i32; k];
    for (i, &g) in g_idx.iter().enumerate() {
        perm[next[g as usize]] = i as i32;
        next[g as usize] += 1;
    }
    Ok((!perm.iter().enumerate().all(|(i, &p)| i as i32 == p)).then_some(perm))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several shards without an index (as the peers' generator writes them): every file is
    /// opened, tensors are found with their absolute byte ranges and read back exactly.
    #[test]
    fn shards_without_an_index_are_all_opened() {
        let dir = std::env::temp_dir().join(format!("meditron-cuda-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a: Vec<u8> = (0..64u8).collect();
        let b: Vec<u8> = (0..24u8).map(|x| x.wrapping_mul(7)).collect();
        formats::safetensors::write_safetensors(
            &dir.join("model-embed.safetensors"),
            &[("x.weight", Dtype::F16, &[4, 8], &a)],
            &[],
        )
        .unwrap();
        formats::safetensors::write_safetensors(
            &dir.join("model-00000.safetensors"),
            &[("y.qweight", Dtype::I32, &[2, 3], &b)],
            &[],
        )
        .unwrap();
        let f = Files::open(&dir, None).unwrap();
        assert!(f.contains("x.weight") && f.contains("y.qweight"));
        let p = f.expect("y.qweight", Dtype::I32, &[2, 3]).unwrap();
        assert_eq!(f.read_host(&p).unwrap(), b);
        let p = f.expect("x.weight", Dtype::F16, &[4, 8]).unwrap();
        assert_eq!(f.read_host(&p).unwrap(), a);
        let e = f.expect("x.weight", Dtype::F16, &[8, 4]).err().unwrap();
        assert!(format!("{e:#}").contains("expected"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sort_by_group_is_stable_and_checks_groups() {
        let g = [1, 0, 1, 0];
        assert_eq!(sort_by_group(&g, 2, 2).unwrap(), Some(vec![1, 3, 0, 2]));
        assert_eq!(sort_by_group(&[0, 0, 1, 1], 2, 2).unwrap(), None);
        assert!(sort_by_group(&[0, 0, 0, 1], 2, 2).is_err());
        // A last group shorter than the others (K not a multiple of the group size).
        assert_eq!(
            sort_by_group(&[1, 0, 0], 2, 2).unwrap(),
            Some(vec![1, 2, 0])
        );
    }
}

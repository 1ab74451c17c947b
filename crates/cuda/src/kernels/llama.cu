// The Llama forward pass apart from the matrix products: embedding, residual add + RMSNorm
// (+ the next GEMV's act-order gather), RoPE + KV-cache append, paged GQA attention with the
// sequence split across blocks (flash-decoding) and its combine, SwiGLU, fp16 GEMV (lm_head and
// fp16 checkpoints), greedy argmax, and random fills for synthetic weights.
//
// Matrix products leave f32 partial sums [S][B][N] (S = K splits; 1 for cuBLAS); the consumer
// adds them up, so no kernel needs atomics or a zeroed output.
//
// Compile-time parameters: HD (head dim), GQA (query heads per KV head), PAGE (KV page size in
// tokens), SPLIT (positions per attention block).

#ifndef HD
#define HD 128
#endif
#ifndef GQA
#define GQA 8
#endif
#ifndef PAGE
#define PAGE 16
#endif
#ifndef SPLIT
#define SPLIT 64
#endif

// h[b][:] = emb[tok[b]][:]; grid B, block 256.
extern "C" __global__ void embed(const int* __restrict__ tok, const u16* __restrict__ emb, float* __restrict__ h,
                                 int H) {
    pdl_launch();
    pdl_wait();
    int b = blockIdx.x;
    const u16* row = emb + (size_t)tok[b] * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) h[(size_t)b * H + i] = h2f(row[i]);
}

// h[b] += sum_s part[s][b] (the split-K partial sums of the last matmul), and each block's sum of
// squares of the new h for the norm. grid (ceil(H / 256), B), block 256: spread over the GPU, since
// reading up to 56 partial vectors from one block would take one SM tens of microseconds.
extern "C" __global__ void __launch_bounds__(256) add_partials(const float* __restrict__ part, int S, int B,  // [S][B][H]
                                                              float* __restrict__ h,  // [B][H]
                                                              float* __restrict__ ss,  // [B][gridDim.x]
                                                              int H) {
    pdl_launch();
    pdl_wait();
    __shared__ float red[32];
    int b = blockIdx.y, i = blockIdx.x * 256 + threadIdx.x;
    float v = 0.f;
    if (i < H) {
        v = h[(size_t)b * H + i];
        for (int s = 0; s < S; s++) v += part[((size_t)s * B + b) * H + i];
        h[(size_t)b * H + i] = v;
    }
    float t = block_sum(v * v, red);
    if (threadIdx.x == 0) ss[(size_t)b * gridDim.x + blockIdx.x] = t;
}

// out[b][xpos(k)] = fp16(rmsnorm(h[b]) * w)[perm[k]]: the next matmul's input, gathered into its
// sorted row order and pair layout. grid (ceil(H / 256), B, segments), block 256; nss =
// add_partials' grid.x (or the column tiles of a GEMV with the residual add); perm [segments][H].
extern "C" __global__ void __launch_bounds__(256) rmsnorm_gather(const float* __restrict__ h, const float* __restrict__ ss,
                                                                int nss, const u16* __restrict__ w,
                                                                const int* __restrict__ perm,  // [H] or null
                                                                u16* __restrict__ out, int H, float eps, int xbits) {
    pdl_launch();
    pdl_wait();
    __shared__ float red[32];
    int b = blockIdx.y, k = blockIdx.x * 256 + threadIdx.x;
    float t = threadIdx.x < nss ? ss[(size_t)b * nss + threadIdx.x] : 0.f;
    float r = rsqrtf(block_sum(t, red) / (float)H + eps);
    if (k >= H) return;
    // grid.z: one gathered copy per column segment of the consumer (its parts' permutations).
    int j = perm ? perm[(size_t)blockIdx.z * H + k] : k;
    // As transformers: normalize in f32, round to fp16, then multiply by the weight.
    float y = h2f(f2h(h[(size_t)b * H + j] * r)) * h2f(w[j]);
    out[((size_t)blockIdx.z * gridDim.y + b) * H + xpos(k, xbits)] = f2h(y);
}

// Sum the QKV partials, rotate q and k (rotate-half RoPE, pairs (i, i + HD/2)), append k and v
// to the paged cache at pos[b]; q goes out in f32. grid (B, NH + 2 * NKV), block HD / 2.
extern "C" __global__ void qkv_rope(const float* __restrict__ part, int S, int B,  // [S][B][(NH+2NKV)*HD]
                                    const int* __restrict__ pos, const int* __restrict__ seq,  // [B]
                                    const float* __restrict__ rope_cos,
                                    const float* __restrict__ rope_sin,  // [max_pos][HD/2]
                                    float* __restrict__ q,              // [B][NH][HD]
                                    u16* __restrict__ kc, u16* __restrict__ vc,  // [pages][PAGE][NKV][HD]
                                    const int* __restrict__ table, int max_pages,  // [seqs][max_pages]
                                    int NH, int NKV) {
    pdl_launch();
    pdl_wait();
    int b = blockIdx.x, head = blockIdx.y, i = threadIdx.x;
    int ncol = (NH + 2 * NKV) * HD;
    int c0 = head * HD + i, c1 = c0 + HD / 2;
    float x0 = 0.f, x1 = 0.f;
    for (int s = 0; s < S; s++) {
        const float* p = part + ((size_t)s * B + b) * ncol;
        x0 += p[c0];
        x1 += p[c1];
    }
    int ps = pos[b];
    if (head < NH + NKV) {
        float cs = rope_cos[(size_t)ps * (HD / 2) + i], sn = rope_sin[(size_t)ps * (HD / 2) + i];
        float y0 = x0 * cs - x1 * sn, y1 = x1 * cs + x0 * sn;
        x0 = y0;
        x1 = y1;
    }
    if (head < NH) {
        float* qo = q + ((size_t)b * NH + head) * HD;
        qo[i] = x0;
        qo[i + HD / 2] = x1;
        return;
    }
    int kvh = head < NH + NKV ? head - NH : head - NH - NKV;
    int page = table[(size_t)seq[b] * max_pages + ps / PAGE];
    size_t slot = (((size_t)page * PAGE + ps % PAGE) * NKV + kvh) * HD;
    u16* dst = head < NH + NKV ? kc : vc;
    dst[slot + i] = f2h(x0);
    dst[slot + i + HD / 2] = f2h(x1);
}

// Partial attention of the GQA query heads of one KV head over positions
// [z * SPLIT, min(pos[b] + 1, (z + 1) * SPLIT)), with its own max and sum (flash-decoding).
// grid (B, NKV, nsplit), block 256 (8 warps, one key per warp at a time, HD/32 dims per lane).
extern "C" __global__ void __launch_bounds__(256) attn_split(
    const float* __restrict__ q,                                   // [B][NH][HD]
    const u16* __restrict__ kc, const u16* __restrict__ vc,        // [pages][PAGE][NKV][HD]
    const int* __restrict__ table, int max_pages, const int* __restrict__ pos, const int* __restrict__ seq,
    float* __restrict__ part_o,   // [B][NH][nsplit][HD]
    float* __restrict__ part_ml,  // [B][NH][nsplit][2]
    int NKV, float scale,
    unsigned* __restrict__ counters,   // [B][NKV], zero between launches; null: attn_combine follows
    const int* __restrict__ inv_perm,  // as attn_combine's
    u16* __restrict__ out, int xbits,
    int skip_empty) {  // blocks past the row's position return at once (attn_combine never reads them)
    pdl_launch();
    pdl_wait();
    const int DPL = HD / 32;
    __shared__ float sm[8][GQA], sl[8][GQA];
    __shared__ float so[8][GQA][HD];
    int b = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z, nsplit = gridDim.z;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int NH = NKV * GQA;
    int len = pos[b] + 1;
    int start = z * SPLIT, end = min(len, start + SPLIT);
    // A decode graph is captured for the cache's whole length (nsplit blocks per row and KV head)
    // while the row's position grows: at position 512 of a 4096-token cache, 55 of 64 blocks
    // have no keys. They used to write empty partials anyway.
    if (skip_empty && start >= end) return;
    float qr[GQA][DPL], m[GQA], l[GQA], acc[GQA][DPL];
#pragma unroll
    for (int g = 0; g < GQA; g++) {
        const float* qp = q + ((size_t)b * NH + kvh * GQA + g) * HD + lane * DPL;
#pragma unroll
        for (int d = 0; d < DPL; d++) {
            qr[g][d] = qp[d] * scale;
            acc[g][d] = 0.f;
        }
        m[g] = -INFINITY;
        l[g] = 0.f;
    }
    const int* tb = table + (size_t)seq[b] * max_pages;
    for (int j = start + warp; j < end; j += 8) {
        size_t slot = (((size_t)tb[j / PAGE] * PAGE + j % PAGE) * NKV + kvh) * HD + lane * DPL;
        float kf[DPL], vf[DPL];
#pragma unroll
        for (int d = 0; d < DPL; d++) {
            kf[d] = h2f(kc[slot + d]);
            vf[d] = h2f(vc[slot + d]);
        }
#pragma unroll
        for (int g = 0; g < GQA; g++) {
            float s = 0.f;
#pragma unroll
            for (int d = 0; d < DPL; d++) s += qr[g][d] * kf[d];
            s = warp_sum(s);
            float mn = fmaxf(m[g], s);
            float corr = __expf(m[g] - mn), p = __expf(s - mn);
            l[g] = l[g] * corr + p;
#pragma unroll
            for (int d = 0; d < DPL; d++) acc[g][d] = acc[g][d] * corr + p * vf[d];
            m[g] = mn;
        }
    }
#pragma unroll
    for (int g = 0; g < GQA; g++) {
        if (lane == 0) {
            sm[warp][g] = m[g];
            sl[warp][g] = l[g];
        }
#pragma unroll
        for (int d = 0; d < DPL; d++) so[warp][g][lane * DPL + d] = acc[g][d];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < GQA * HD; i += 256) {
        int g = i / HD, d = i % HD;
        float M = -INFINITY;
        for (int w = 0; w < 8; w++) M = fmaxf(M, sm[w][g]);
        float L = 0.f, O = 0.f;
        if (M != -INFINITY) {
            for (int w = 0; w < 8; w++) {
                float e = __expf(sm[w][g] - M);
                L += sl[w][g] * e;
                O += so[w][g][d] * e;
            }
        }
        size_t row = ((size_t)b * NH + kvh * GQA + g) * nsplit + z;
        part_o[row * HD + d] = O;
        if (d == 0) {
            part_ml[row * 2] = M;
            part_ml[row * 2 + 1] = L;
        }
    }
    if (counters) {
        // attn_combine folded in: the last of the row's split blocks for this KV head merges the
        // splits of its GQA heads, in the same order and arithmetic as attn_combine.
        __shared__ unsigned is_last;
        __threadfence();
        __syncthreads();
        const int used = min(nsplit, (pos[b] + SPLIT) / SPLIT);  // the blocks with keys
        const int arrive = skip_empty ? used : nsplit;
        if (threadIdx.x == 0) is_last = atomicAdd(counters + b * NKV + kvh, 1u) == arrive - 1;
        __syncthreads();
        if (is_last) {
            __threadfence();
            for (int i = threadIdx.x; i < GQA * HD; i += 256) {
                const int g = i / HD, d = i % HD, h = kvh * GQA + g;
                const size_t row = ((size_t)b * NH + h) * nsplit;
                float M = -INFINITY;
                for (int zz = 0; zz < used; zz++) M = fmaxf(M, __ldcg(part_ml + (row + zz) * 2));
                float L = 0.f, O = 0.f;
                for (int zz = 0; zz < used; zz++) {
                    const float mz = __ldcg(part_ml + (row + zz) * 2);
                    if (mz == -INFINITY) continue;
                    const float e = __expf(mz - M);
                    L += __ldcg(part_ml + (row + zz) * 2 + 1) * e;
                    O += __ldcg(part_o + (row + zz) * HD + d) * e;
                }
                const int j = h * HD + d;
                const int dst = inv_perm ? inv_perm[j] : j;
                out[(size_t)b * NH * HD + xpos(dst, xbits)] = f2h(O / L);
            }
            if (threadIdx.x == 0) counters[b * NKV + kvh] = 0u;
        }
    }
}

// Merge the splits of each query head and write fp16 (scattered to the o_proj's sorted order
// through inv_perm). grid (B, NH), block HD.
extern "C" __global__ void attn_combine(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                        int nsplit, const int* __restrict__ pos,
                                        const int* __restrict__ inv_perm,  // [NH*HD] or null
                                        u16* __restrict__ out,             // [B][NH*HD]
                                        int NH, int xbits) {
    pdl_launch();
    pdl_wait();
    int b = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    int used = min(nsplit, (pos[b] + SPLIT) / SPLIT);
    size_t row = ((size_t)b * NH + h) * nsplit;
    float M = -INFINITY;
    for (int z = 0; z < used; z++) M = fmaxf(M, part_ml[(row + z) * 2]);
    float L = 0.f, O = 0.f;
    for (int z = 0; z < used; z++) {
        float mz = part_ml[(row + z) * 2];
        if (mz == -INFINITY) continue;
        float e = __expf(mz - M);
        L += part_ml[(row + z) * 2 + 1] * e;
        O += part_o[(row + z) * HD + d] * e;
    }
    int j = h * HD + d;
    int dst = inv_perm ? inv_perm[j] : j;
    out[(size_t)b * NH * HD + xpos(dst, xbits)] = f2h(O / L);
}

// Attention of many query rows at once (prefill), on the tensor cores (flash-attention 2 style).
// A block takes QT = AW * 16 / GQA consecutive rows (tokens) and one KV head: its AW warps own
// 16 (token, query head) pairs each, as the rows of mma.m16n8k16 A fragments, so every key and
// value chunk is read once from the cache into shared memory for all QT tokens x GQA heads,
// instead of once per row as attn_split does. Rows of a block that belong to different sequences
// (a server's mixed batch) are handled one run of equal seq[] at a time. Keys go in chunks of
// AKC from position 0 with an online softmax per row (f32 scores, P rounded to fp16 for the PV
// product, f32 accumulators); keys after a row's position are masked, unwritten cache slots past
// the run's last position are read as zeros. Output as attn_combine: fp16, scattered through
// inv_perm into the consumer's order and pair layout. grid (ceil(rows / QT), NKV), block AW * 32.
#ifndef AW
#define AW 4
#endif
#define AKC 32
#define KPAD (HD + 8)  // row stride of the shared tiles in halves: conflict-free fragment reads
extern "C" __global__ void __launch_bounds__(AW * 32) attn_prefill(
    const float* __restrict__ q,                             // [rows][NH][HD]
    const u16* __restrict__ kc, const u16* __restrict__ vc,  // [pages][PAGE][NKV][HD]
    const int* __restrict__ table, int max_pages, const int* __restrict__ pos, const int* __restrict__ seq,
    int rows, const int* __restrict__ inv_perm, u16* __restrict__ out, int NKV, float scale, int xbits) {
    __shared__ __align__(16) u16 ks[AKC][KPAD];
    __shared__ __align__(16) u16 vs[AKC][KPAD];
    pdl_launch();
    pdl_wait();
    const int QT = AW * 16 / GQA;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int kvh = blockIdx.y, NH = NKV * GQA;
    const int t0 = blockIdx.x * QT, tend = min(rows, t0 + QT);
    // This lane's two rows: A rows g and g + 8 of its warp.
    int tok[2], head[2], rp[2];
    bool live[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int idx = warp * 16 + g + 8 * i;
        tok[i] = t0 + idx / GQA;
        head[i] = kvh * GQA + idx % GQA;
        live[i] = idx < QT * GQA && tok[i] < tend;
        rp[i] = live[i] ? pos[tok[i]] : -1;
    }
    u32 qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                float2 v = make_float2(0.f, 0.f);
                if (live[i]) v = *(const float2*)(q + ((size_t)tok[i] * NH + head[i]) * HD + kk * 16 + 2 * t + 8 * hh);
                qa[kk][i + 2 * hh] = pack2(f2h(v.x * scale), f2h(v.y * scale));
            }
    float o[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; d++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[d][e] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int ta = t0; ta < tend;) {
        const int sq = seq[ta];
        int tb = ta + 1, maxp = pos[ta];
        while (tb < tend && seq[tb] == sq) {
            maxp = max(maxp, pos[tb]);
            tb++;
        }
        bool in[2];
#pragma unroll
        for (int i = 0; i < 2; i++) in[i] = live[i] && tok[i] >= ta && tok[i] < tb;
        const int* tbl = table + (size_t)sq * max_pages;
        for (int j0 = 0; j0 <= maxp; j0 += AKC) {
            __syncthreads();  // the previous chunk's reads are done
            for (int i = threadIdx.x; i < AKC * HD / 8; i += AW * 32) {
                const int kj = i / (HD / 8), c = i % (HD / 8), j = j0 + kj;
                uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
                if (j <= maxp) {
                    const size_t slot = (((size_t)tbl[j / PAGE] * PAGE + j % PAGE) * NKV + kvh) * HD + c * 8;
                    kv = *(const uint4*)(kc + slot);
                    vv = *(const uint4*)(vc + slot);
                }
                *(uint4*)&ks[kj][c * 8] = kv;
                *(uint4*)&vs[kj][c * 8] = vv;
            }
            __syncthreads();
            // S = Q K^T for AKC keys: AKC / 8 tiles of 8 keys.
            float sc[AKC / 8][4];
#pragma unroll
            for (int nt = 0; nt < AKC / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) sc[nt][e] = 0.f;
#pragma unroll
                for (int kk = 0; kk < HD / 16; kk++) {
                    const u32 b0 = *(const u32*)&ks[nt * 8 + g][kk * 16 + 2 * t];
                    const u32 b1 = *(const u32*)&ks[nt * 8 + g][kk * 16 + 2 * t + 8];
                    mma16816(sc[nt], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b0, b1);
                }
            }
            // Online softmax per row (row i: fragment elements 2i, 2i + 1; a row's 4 lanes t).
#pragma unroll
            for (int i = 0; i < 2; i++) {
                float mx = -INFINITY;
#pragma unroll
                for (int nt = 0; nt < AKC / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int key = j0 + nt * 8 + 2 * t + e;
                        if (!in[i] || key > rp[i]) sc[nt][2 * i + e] = -INFINITY;
                        mx = fmaxf(mx, sc[nt][2 * i + e]);
                    }
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                if (in[i]) {
                    // Key 0 is in a run's first chunk, so m is finite from then on.
                    const float mn = fmaxf(m[i], mx);
                    const float corr = __expf(m[i] - mn);
                    m[i] = mn;
                    l[i] *= corr;
#pragma unroll
                    for (int d = 0; d < HD / 8; d++) {
                        o[d][2 * i] *= corr;
                        o[d][2 * i + 1] *= corr;
                    }
#pragma unroll
                    for (int nt = 0; nt < AKC / 8; nt++)
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const float p = __expf(sc[nt][2 * i + e] - mn);
                            l[i] += p;
                            sc[nt][2 * i + e] = p;
                        }
                } else {
#pragma unroll
                    for (int nt = 0; nt < AKC / 8; nt++) sc[nt][2 * i] = sc[nt][2 * i + 1] = 0.f;
                }
            }
            // O += P V: P's C fragments of two adjacent key tiles are an A fragment of 16 keys.
#pragma unroll
            for (int kh = 0; kh < AKC / 16; kh++) {
                const u32 a0 = pack2(f2h(sc[2 * kh][0]), f2h(sc[2 * kh][1]));
                const u32 a1 = pack2(f2h(sc[2 * kh][2]), f2h(sc[2 * kh][3]));
                const u32 a2 = pack2(f2h(sc[2 * kh + 1][0]), f2h(sc[2 * kh + 1][1]));
                const u32 a3 = pack2(f2h(sc[2 * kh + 1][2]), f2h(sc[2 * kh + 1][3]));
                const int k0 = kh * 16 + 2 * t;
#pragma unroll
                for (int d = 0; d < HD / 8; d++) {
                    const int dd = d * 8 + g;
                    const u32 b0 = pack2(vs[k0][dd], vs[k0 + 1][dd]);
                    const u32 b1 = pack2(vs[k0 + 8][dd], vs[k0 + 9][dd]);
                    mma16816(o[d], a0, a1, a2, a3, b0, b1);
                }
            }
        }
        ta = tb;
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (!live[i]) continue;
        const float inv = 1.f / l[i];
#pragma unroll
        for (int d = 0; d < HD / 8; d++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = head[i] * HD + d * 8 + 2 * t + e;
                const int dst = inv_perm ? inv_perm[j] : j;
                out[(size_t)tok[i] * NH * HD + xpos(dst, xbits)] = f2h(o[d][2 * i + e] * inv);
            }
    }
}

// a = silu(gate) * up from the fused gate|up partials, scattered to down_proj's sorted order.
// grid (ceil(I / 256), B), block 256.
extern "C" __global__ void swiglu(const float* __restrict__ part, int S, int B,  // [S][B][2I]
                                  const int* __restrict__ inv_perm,              // [I] or null
                                  u16* __restrict__ out,                         // [B][I]
                                  int I, int xbits) {
    pdl_launch();
    pdl_wait();
    int j = blockIdx.x * 256 + threadIdx.x, b = blockIdx.y;
    if (j >= I) return;
    float g = 0.f, u = 0.f;
    for (int s = 0; s < S; s++) {
        const float* p = part + ((size_t)s * B + b) * 2 * I;
        g += p[j];
        u += p[I + j];
    }
    // As transformers in fp16: gate and up are rounded to fp16 before the activation.
    g = h2f(f2h(g));
    u = h2f(f2h(u));
    float a = h2f(f2h(g / (1.f + __expf(-g)))) * u;
    out[(size_t)b * I + xpos(inv_perm ? inv_perm[j] : j, xbits)] = f2h(a);
}

// out[b][n] = sum_k W[n][k] x[b][k] for an fp16 row-major [N][K] weight (nn.Linear layout).
// grid ceil(N / 8), block 256: one warp per output row, 16-byte loads. K % 8 == 0.
#ifndef NBF
#define NBF 1
#endif
extern "C" __global__ void __launch_bounds__(256) gemv_f16(const uint4* __restrict__ W, const uint4* __restrict__ x,
                                                           float* __restrict__ out, int K, int N) {
    pdl_launch();
    pdl_wait();
    int n = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (n >= N) return;
    int K8 = K >> 3;
    const uint4* wr = W + (size_t)n * K8;
    float acc[NBF];
#pragma unroll
    for (int b = 0; b < NBF; b++) acc[b] = 0.f;
#pragma unroll 4
    for (int k = lane; k < K8; k += 32) {
        uint4 wv = ld_stream(wr + k);
        u32 ww[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
        for (int b = 0; b < NBF; b++) {
            uint4 xv = x[(size_t)b * K8 + k];
            u32 xx[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
                acc[b] += h2f((u16)(ww[i] & 0xffff)) * h2f((u16)(xx[i] & 0xffff)) +
                          h2f((u16)(ww[i] >> 16)) * h2f((u16)(xx[i] >> 16));
        }
    }
#pragma unroll
    for (int b = 0; b < NBF; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) out[(size_t)b * N + n] = v;
    }
}

// Greedy pick per row (lowest index among equal maxima, as torch.argmax); writes tok[b] and,
// when advance is set, history[b][pos[b] + 1] and pos[b] += 1, so a captured decode step needs
// nothing from the host. grid B, block 1024.
extern "C" __global__ void __launch_bounds__(1024) argmax_step(const float* __restrict__ logits, int V,
                                                               int* __restrict__ tok, int* __restrict__ pos,
                                                               int* __restrict__ history, int hist_len,
                                                               int advance) {
    pdl_launch();
    pdl_wait();
    __shared__ float bv[32];
    __shared__ int bi[32];
    int b = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float* row = logits + (size_t)b * V;
    float best = -INFINITY;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = row[i];
        if (v > best) {
            best = v;
            idx = i;
        }
    }
    warp_argmax(best, idx);
    if (lane == 0) {
        bv[warp] = best;
        bi[warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (bv[w] > best || (bv[w] == best && bi[w] < idx)) {
                best = bv[w];
                idx = bi[w];
            }
        tok[b] = idx;
        if (advance) {
            int p = pos[b] + 1;
            if (history && p < hist_len) history[(size_t)b * hist_len + p] = idx;
            pos[b] = p;
        }
    }
}

__device__ __forceinline__ u32 mix32(unsigned long long i, u32 seed) {
    unsigned long long z = i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (u32)(z ^ (z >> 31));
}
extern "C" __global__ void fill_u32(u32* p, unsigned long long n, u32 seed) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        p[i] = mix32(i, seed);
}
// Uniform fp16 values in [lo, hi).
extern "C" __global__ void fill_f16(u16* p, unsigned long long n, u32 seed, float lo, float hi) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        p[i] = f2h(lo + (hi - lo) * (float)(mix32(i, seed) >> 8) * (1.f / 16777216.f));
}

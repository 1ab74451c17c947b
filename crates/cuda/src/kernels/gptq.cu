// GPTQ weights on the GPU: the decode GEMV that dequantizes in registers, and the dequantizer
// to fp16 used before a cuBLAS GEMM at prefill.
//
// Weight layout (made at load, see gptq.rs): rows sorted by group (act-order permutation applied
// to the rows), packed along K in slabs of 32 input rows; slab s of column n is BITS words at
// qw[(s * BITS + j) * N + n]. 4-bit: word j holds k = 8j..8j+7 (nibble i = k 8j+i). 8-bit: word j
// holds k = 4j..4j+3. 3-bit: our own layout (not GPTQ's 96-bit stream) so that two values can be
// turned into an fp16 pair with one shift and one mask: in word j (0..2), 3-bit field i (0..4) of
// the low half is k = 5j+i and of the high half k = 16+5j+i; k = 15 and 31 are spread over bit
// 15 / bit 31 of the three words (bit b of the value in word b).
// scales: fp16 [G][N]; zeros: u8 [G][N] (the real zero point) or null for symmetric
// (zero = 2^(BITS-1)).
//
// Compile-time parameters: BITS (3, 4, 8), NB (activation rows, 1..8), KW (input rows per warp
// chunk), SPF (32-row slabs per scale group flush = min(group, KW) / 32).

#ifndef BITS
#define BITS 4
#endif
#ifndef NB
#define NB 1
#endif
#ifndef KW
#define KW 128
#endif
#ifndef SPF
#define SPF 4
#endif

#define NS (KW / 32)      // slabs per warp chunk
#define NF (NS / SPF)     // scale flushes per warp chunk
#define NWORDS (NS * BITS) // 16-byte loads per thread per chunk
#define KB (KW * 8)       // input rows per block (8 warps)

// The pair of slab positions (a, b) that the dequantizer produces as its p-th fp16 pair.
__device__ __forceinline__ void pair_map(int p, int& a, int& b) {
#if BITS == 4
    a = 8 * (p >> 2) + (p & 3);
    b = a + 4;
#elif BITS == 8
    a = 4 * (p >> 1) + (p & 1);
    b = a + 2;
#else
    a = p;
    b = p + 16;
#endif
}

__device__ __forceinline__ u32 comp(const uint4& v, int c) {
    return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}

// y_partial[split][b][n] = sum over this block's K range of x[b][k] * W[k][n]
// grid: (ceil(N / 128), ceil(K / KB)); block: 256 threads; each lane owns 4 adjacent columns,
// each of the 8 warps one KW-row chunk; partial sums over splits are added by the consumer.
// Version 3: x arrives already gathered and shuffled into pair order by the kernel that produced
// it, so it is read straight from global memory (the same 16 bytes for the whole warp, an L1
// broadcast) with no staging or barrier before the math; x pairs are read once per word and
// reused for the 4 columns; each column has two fp16 accumulators (8 independent FMA chains).
// Where RESID 2 (the q|k|v product of one row) puts its rotated outputs, as qkv_rope.
struct RopeArgs {
    const int* pos;         // [1]
    const int* seq;         // [1]
    const float* cos;       // [max_pos][hd / 2]
    const float* sin;
    float* q;               // [NH][hd]
    u16* kc;                // [pages][page][NKV][hd]
    u16* vc;
    const int* table;       // [seqs][max_pages]
    int max_pages, nh, nkv, hd, page;
};

// Where RESID 3 (the gate|up product of one row, N = 2 * inter) puts silu(gate) * up, as swiglu:
// fp16, scattered to down_proj's sorted row order and pair order.
struct SwigluArgs {
    const int* inv_perm;    // [inter] or null
    u16* out;               // [inter]
    int inter, xbits;
};

// RESID 1: the variant with the residual add at the end (see there). One row, 64-row chunks:
// asked for 4 blocks of 256 threads per SM (at most 64 registers; a few bytes spill outside the
// main loop), which the plain variant got by itself before the residual add and the LOP3
// unpacking (those take 70-76 registers and would drop it to 3 blocks per SM).
#ifndef RESID
#define RESID 0
#endif
#if NB == 1 && BITS != 8 && KW == 64 && (RESID || LOP3)
#define GEMV_BOUNDS __launch_bounds__(256, 4)
#else
#define GEMV_BOUNDS __launch_bounds__(256)
#endif
extern "C" __global__ void GEMV_BOUNDS gptq_gemv(
    const uint4* __restrict__ qw,    // [K / 32 * BITS][N / 4]
    const u16* __restrict__ scales,  // [G][N]
    const u8* __restrict__ zeros,    // [G][N] or null
    const u32* __restrict__ x,       // [nseg][NB][K / 2] fp16 pairs: sorted rows, in pair_map order (xpos)
    float* __restrict__ out,         // [gridDim.y][NB][N]
    int K, int N, int group_size,
    int n1, int n2, int xseg,        // columns >= n1 (>= n2) read x segment 1 (2), xseg u32 apart
    float* __restrict__ resid,       // [NB][N] residual stream, or null (see the end)
    float* __restrict__ ss,          // [NB][gridDim.x] sums of squares for the next RMSNorm
    unsigned* __restrict__ counters,  // [gridDim.x] (RESID 3: half), zero between launches
    const RopeArgs rope,              // RESID 2 only
    const SwigluArgs sw) {            // RESID 3 only
    __shared__ float red[8][NB][128];
    pdl_launch();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kb0 = blockIdx.y * KB;
    const int c0 = blockIdx.x * 128 + lane * 4;
    // Fused linears whose parts have different act-order permutations (q/k/v, gate/up of some
    // checkpoints) see their input gathered once per part.
    x += (size_t)((c0 >= n1) + (c0 >= n2)) * xseg;
    const int kw0 = kb0 + warp * KW;
    const bool active = c0 < N && kw0 < K;

    uint4 w[NWORDS];
    uint2 sc[NF];
    u32 zz[NF];
    if (active) {
        const int N4 = N >> 2;
        const int row0 = (kw0 >> 5) * BITS;
        const int nrows = (K >> 5) * BITS;
#pragma unroll
        for (int i = 0; i < NWORDS; i++) {
            int r = row0 + i;
            w[i] = r < nrows ? ld_stream(qw + (size_t)r * N4 + (c0 >> 2)) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int f = 0; f < NF; f++) {
            int k = kw0 + f * SPF * 32;
            int g = (k < K ? k : K - 1) / group_size;
            sc[f] = *(const uint2*)(scales + (size_t)g * N + c0);
            zz[f] = zeros ? *(const u32*)(zeros + (size_t)g * N + c0) : (1u << (BITS - 1)) * 0x01010101u;
        }
    }
    // The weights are on their way; x (and the output buffer) belong to the kernels before.
    pdl_wait();

    float res[NB][4];
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
        for (int c = 0; c < 4; c++) res[b][c] = 0.f;

    if (active) {
#pragma unroll
        for (int f = 0; f < NF; f++) {
            u32 zlo[4];
#if BITS == 4
            u32 zhi[4];
#elif BITS == 3
            u32 z8[4], z64[4];
#endif
            float s[4];
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const u32 z = (zz[f] >> (8 * c)) & 0xff;
                zlo[c] = (0x6400u | z) * 0x10001u;
#if BITS == 4
                const u16 zh = f2h(-(64.f + (float)z));
                zhi[c] = pack2(zh, zh);
#elif BITS == 3
                const u16 a8 = f2h(-(128.f + (float)z)), a64 = f2h(-(16.f + (float)z));
                z8[c] = pack2(a8, a8);
                z64[c] = pack2(a64, a64);
#endif
                s[c] = h2f((u16)((c < 2 ? sc[f].x : sc[f].y) >> (16 * (c & 1))));
            }
#if BITS == 8
            float acc[NB][4][2];
#pragma unroll
            for (int b = 0; b < NB; b++)
#pragma unroll
                for (int c = 0; c < 4; c++) acc[b][c][0] = acc[b][c][1] = 0.f;
#else
            u32 acc[NB][4][2];
#pragma unroll
            for (int b = 0; b < NB; b++)
#pragma unroll
                for (int c = 0; c < 4; c++) acc[b][c][0] = acc[b][c][1] = 0u;
#endif
#pragma unroll
            for (int s2 = f * SPF; s2 < (f + 1) * SPF; s2++) {
                if (kw0 + s2 * 32 >= K) break;
                const int xbase = ((kw0 >> 5) + s2) * 16;  // u32 index of the slab's first pair
#if BITS == 3
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    // Fields 1, 2 (and 4) are masked in place, not shifted down: 1024 + 8q (64q)
                    // scaled by 1/8 (1/64) in the zero-point FMA, exactly (as 4-bit's odd pairs).
                    u32 wd[3], q[16];
                    const u32 E = 0x64006400u;
#pragma unroll
                    for (int j = 0; j < 3; j++) {
                        const u32 v = comp(w[s2 * 3 + j], c), v9 = v >> 9;
                        wd[j] = v;
                        q[5 * j + 0] = hsub2(and_or(v, 0x00070007u, E), zlo[c]);
                        q[5 * j + 1] = hfma2(and_or(v, 0x00380038u, E), 0x30003000u /* 1/8 */, z8[c]);
                        q[5 * j + 2] = hfma2(and_or(v, 0x01C001C0u, E), 0x24002400u /* 1/64 */, z64[c]);
                        q[5 * j + 3] = hsub2(and_or(v9, 0x00070007u, E), zlo[c]);
                        q[5 * j + 4] = hfma2(and_or(v9, 0x00380038u, E), 0x30003000u, z8[c]);
                    }
                    q[15] = hsub2(((wd[0] >> 15) & 0x00010001u) | ((wd[1] >> 14) & 0x00020002u) |
                                      ((wd[2] >> 13) & 0x00040004u) | E,
                                  zlo[c]);
#pragma unroll
                    for (int p4 = 0; p4 < 4; p4++) {
#pragma unroll
                        for (int b = 0; b < NB; b++) {
                            // x pairs 4 at a time (the slab's 16 pairs are 64-byte aligned).
                            const uint4 xv = __ldg((const uint4*)(x + (size_t)b * (K / 2) + xbase + 4 * p4));
                            acc[b][c][0] = hfma2(q[4 * p4 + 0], xv.x, acc[b][c][0]);
                            acc[b][c][1] = hfma2(q[4 * p4 + 1], xv.y, acc[b][c][1]);
                            acc[b][c][0] = hfma2(q[4 * p4 + 2], xv.z, acc[b][c][0]);
                            acc[b][c][1] = hfma2(q[4 * p4 + 3], xv.w, acc[b][c][1]);
                        }
                    }
                }
#elif BITS == 4
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    uint4 xv[NB];
#pragma unroll
                    for (int b = 0; b < NB; b++) xv[b] = __ldg((const uint4*)(x + (size_t)b * (K / 2) + xbase + 4 * j));
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        const u32 v = comp(w[s2 * 4 + j], c), v2 = v >> 8, E = 0x64006400u;
                        const u32 q0 = hsub2(and_or(v, 0x000F000Fu, E), zlo[c]);
                        const u32 q1 = hfma2(and_or(v, 0x00F000F0u, E), 0x2C002C00u /* 1/16 */, zhi[c]);
                        const u32 q2 = hsub2(and_or(v2, 0x000F000Fu, E), zlo[c]);
                        const u32 q3 = hfma2(and_or(v2, 0x00F000F0u, E), 0x2C002C00u, zhi[c]);
#pragma unroll
                        for (int b = 0; b < NB; b++) {
                            acc[b][c][0] = hfma2(q0, xv[b].x, acc[b][c][0]);
                            acc[b][c][1] = hfma2(q1, xv[b].y, acc[b][c][1]);
                            acc[b][c][0] = hfma2(q2, xv[b].z, acc[b][c][0]);
                            acc[b][c][1] = hfma2(q3, xv[b].w, acc[b][c][1]);
                        }
                    }
                }
#else  // 8-bit: f32 accumulation, (q - z) spans +-255
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    float xf[NB][4];
#pragma unroll
                    for (int b = 0; b < NB; b++) {
                        const uint2 xx = __ldg((const uint2*)(x + (size_t)b * (K / 2) + xbase + 2 * j));
                        const u32 x0 = xx.x, x1 = xx.y;
                        xf[b][0] = h2f((u16)(x0 & 0xffff));
                        xf[b][1] = h2f((u16)(x0 >> 16));
                        xf[b][2] = h2f((u16)(x1 & 0xffff));
                        xf[b][3] = h2f((u16)(x1 >> 16));
                    }
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        const u32 v = comp(w[s2 * 8 + j], c);
                        const u32 q0 = hsub2((v & 0x00FF00FFu) | 0x64006400u, zlo[c]);
                        const u32 q1 = hsub2(((v >> 8) & 0x00FF00FFu) | 0x64006400u, zlo[c]);
                        const float a0 = h2f((u16)(q0 & 0xffff)), a1 = h2f((u16)(q0 >> 16));
                        const float a2 = h2f((u16)(q1 & 0xffff)), a3 = h2f((u16)(q1 >> 16));
#pragma unroll
                        for (int b = 0; b < NB; b++) {
                            acc[b][c][0] += a0 * xf[b][0] + a2 * xf[b][2];
                            acc[b][c][1] += a1 * xf[b][1] + a3 * xf[b][3];
                        }
                    }
                }
#endif
            }
#pragma unroll
            for (int b = 0; b < NB; b++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
#if BITS == 8
                    res[b][c] += s[c] * (acc[b][c][0] + acc[b][c][1]);
#else
                    res[b][c] += s[c] * (h2sum(acc[b][c][0]) + h2sum(acc[b][c][1]));
#endif
                }
        }
    }
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
        for (int c = 0; c < 4; c++) red[warp][b][lane * 4 + c] = res[b][c];
    __syncthreads();
    for (int i = tid; i < NB * 128; i += 256) {
        int b = i >> 7, cc = i & 127, n = blockIdx.x * 128 + cc;
        float v = 0.f;
#pragma unroll
        for (int w2 = 0; w2 < 8; w2++) v += red[w2][b][cc];
        if (n < N) out[((size_t)blockIdx.y * NB + b) * N + n] = v;
    }
#if RESID == 1
    if (resid) {
        // Split-K reduction inside the kernel (decode products whose output goes into the
        // residual stream): the last block of each 128-column tile to finish adds every split's
        // partial sums to resid (threads 0..127 the even splits, 128..255 the odd ones, in split
        // order: deterministic) and writes the tile's sum of squares of the new residual, so
        // add_partials (one more kernel and its dependency wait) disappears before the RMSNorm.
        __shared__ unsigned is_last;
        __shared__ float odd[128];
        __threadfence();
        __syncthreads();
        if (tid == 0) is_last = atomicAdd(counters + blockIdx.x, 1u) == gridDim.y - 1;
        __syncthreads();
        if (is_last) {
            __threadfence();
            const int cc = tid & 127, half = tid >> 7, n = blockIdx.x * 128 + cc;
            const int S = gridDim.y;
            for (int b = 0; b < NB; b++) {
                float v = 0.f;
                if (n < N) {
#pragma unroll 4
                    for (int sp = half; sp < S; sp += 2) v += __ldcg(out + ((size_t)sp * NB + b) * N + n);
                }
                if (half) odd[cc] = v;
                __syncthreads();
                float sq = 0.f;
                if (!half && n < N) {
                    v = resid[(size_t)b * N + n] + (v + odd[cc]);
                    resid[(size_t)b * N + n] = v;
                    sq = v * v;
                }
                const float t = block_sum(sq, &red[0][0][0]);
                if (tid == 0) ss[(size_t)b * gridDim.x + blockIdx.x] = t;
            }
            if (tid == 0) counters[blockIdx.x] = 0u;
        }
    }
#endif
#if RESID == 2 && NB == 1
    {
        // qkv_rope folded in (one row): the last block of each 128-column tile (one head of 128
        // or two of 64) sums the splits (even / odd halves, deterministic), rotates q and k
        // (rotate-half RoPE) and writes q in f32 and k, v into the paged cache, as qkv_rope.
        __shared__ unsigned is_last;
        __shared__ float odd[128], val[128];
        __threadfence();
        __syncthreads();
        if (tid == 0) is_last = atomicAdd(counters + blockIdx.x, 1u) == gridDim.y - 1;
        __syncthreads();
        if (is_last) {
            __threadfence();
            const int cc = tid & 127, half = tid >> 7, n = blockIdx.x * 128 + cc;
            const int S = gridDim.y;
            float v = 0.f;
            if (n < N) {
#pragma unroll 4
                for (int sp = half; sp < S; sp += 2) v += __ldcg(out + (size_t)sp * N + n);
            }
            if (half) odd[cc] = v;
            __syncthreads();
            if (!half) val[cc] = v + odd[cc];
            __syncthreads();
            const int hd = rope.hd, h2 = hd / 2, head = n / hd, i = n % hd;
            if (!half && n < N && i < h2) {
                float x0 = val[cc], x1 = val[cc + h2];
                const int ps = rope.pos[0];
                if (head < rope.nh + rope.nkv) {
                    const float cs = rope.cos[(size_t)ps * h2 + i], sn = rope.sin[(size_t)ps * h2 + i];
                    const float y0 = x0 * cs - x1 * sn, y1 = x1 * cs + x0 * sn;
                    x0 = y0;
                    x1 = y1;
                }
                if (head < rope.nh) {
                    rope.q[(size_t)head * hd + i] = x0;
                    rope.q[(size_t)head * hd + i + h2] = x1;
                } else {
                    const bool isk = head < rope.nh + rope.nkv;
                    const int kvh = isk ? head - rope.nh : head - rope.nh - rope.nkv;
                    const int page = rope.table[(size_t)rope.seq[0] * rope.max_pages + ps / rope.page];
                    const size_t slot = (((size_t)page * rope.page + ps % rope.page) * rope.nkv + kvh) * hd;
                    u16* dst = isk ? rope.kc : rope.vc;
                    dst[slot + i] = f2h(x0);
                    dst[slot + i + h2] = f2h(x1);
                }
            }
            if (tid == 0) counters[blockIdx.x] = 0u;
        }
    }
#endif
#if RESID == 3 && NB == 1
    {
        // swiglu folded in (one row; gate columns [0, inter), up columns [inter, 2 inter), inter
        // a multiple of 128): gate tile t and up tile t share counter t; the last of their
        // 2 x gridDim.y blocks sums both tiles' splits in split order (threads 0..127 gate,
        // 128..255 up: the arithmetic and order of swiglu, so the same bits) and writes
        // silu(gate) * up. Off by default: run 18 measured it 1.1 ms per token slower.
        __shared__ unsigned is_last;
        __shared__ float upv[128];
        const int T = sw.inter >> 7, bx = blockIdx.x, pair = bx < T ? bx : bx - T;
        __threadfence();
        __syncthreads();
        if (tid == 0) is_last = atomicAdd(counters + pair, 1u) == 2 * gridDim.y - 1;
        __syncthreads();
        if (is_last) {
            __threadfence();
            const int cc = tid & 127, half = tid >> 7, j = pair * 128 + cc;
            const int n = half * sw.inter + j, S = gridDim.y;
            float v = 0.f;
            for (int sp = 0; sp < S; sp++) v += __ldcg(out + (size_t)sp * N + n);
            if (half) upv[cc] = v;
            __syncthreads();
            if (!half) {
                // As transformers in fp16: gate and up are rounded to fp16 before the activation.
                const float g = h2f(f2h(v)), u = h2f(f2h(upv[cc]));
                const float a = h2f(f2h(g / (1.f + __expf(-g)))) * u;
                sw.out[xpos(sw.inv_perm ? sw.inv_perm[j] : j, sw.xbits)] = f2h(a);
            }
            if (tid == 0) counters[pair] = 0u;
        }
    }
#endif
}

// The code of slab position k (0..31) from the slab's BITS words.
__device__ __forceinline__ u32 slab_code(const u32* w, int k) {
#if BITS == 4
    return (w[k >> 3] >> (4 * (k & 7))) & 15u;
#elif BITS == 8
    return (w[k >> 2] >> (8 * (k & 3))) & 255u;
#else
    int hi = k >= 16, p = k - 16 * hi;
    if (p < 15) return (w[p / 5] >> (3 * (p % 5) + 16 * hi)) & 7u;
    int sh = 15 + 16 * hi;
    return ((w[0] >> sh) & 1u) | (((w[1] >> sh) & 1u) << 1) | (((w[2] >> sh) & 1u) << 2);
#endif
}

// W16[perm[k]][n - col0] = scale * (q - zero) for columns col0 <= n < col0 + ncols (a [K][ncols]
// slice): rows back in the checkpoint's original order (so the prefill GEMM needs no activation
// gather), perm per column segment (see gptq_gemv); grid (ceil(ncols / 256), K / 32).
extern "C" __global__ void gptq_dequant(const u32* __restrict__ qw, const u16* __restrict__ scales,
                                        const u8* __restrict__ zeros, u16* __restrict__ w16, int K, int N,
                                        int group_size, const int* __restrict__ perm, int n1, int n2, int col0,
                                        int ncols) {
    int c = blockIdx.x * 256 + threadIdx.x, s = blockIdx.y, n = col0 + c;
    if (c >= ncols) return;
    u32 w[BITS];
#pragma unroll
    for (int j = 0; j < BITS; j++) w[j] = qw[(size_t)(s * BITS + j) * N + n];
    int g = (s * 32) / group_size;
    float sc = h2f(scales[(size_t)g * N + n]);
    float z = zeros ? (float)zeros[(size_t)g * N + n] : (float)(1 << (BITS - 1));
    const int* pm = perm ? perm + (size_t)((n >= n1) + (n >= n2)) * K : nullptr;
#pragma unroll
    for (int k = 0; k < 32; k++) {
        int row = pm ? pm[s * 32 + k] : s * 32 + k;
        w16[(size_t)row * ncols + c] = f2h(sc * ((float)slab_code(w, k) - z));
    }
}

// ---- Loading: checkpoint tensors (AutoGPTQ packing, already on the device) into the layout above.

// The code of original row r, column n of a GPTQ qweight [K * BITS / 32][ncols] (values packed
// along K; 3-bit as one bit stream per column).
__device__ __forceinline__ u32 gptq_code(const u32* __restrict__ raw, int r, int n, int ncols) {
#if BITS == 3
    int bit = 3 * r, wi = bit >> 5, sh = bit & 31;
    u32 v = raw[(size_t)wi * ncols + n] >> sh;
    if (sh > 29) v |= raw[(size_t)(wi + 1) * ncols + n] << (32 - sh);
    return v & 7u;
#else
    const int per = 32 / BITS;
    return (raw[(size_t)(r / per) * ncols + n] >> (BITS * (r % per))) & ((1u << BITS) - 1);
#endif
}

// out (the kernel layout, N columns) columns [col0, col0 + ncols) = raw's columns with the rows
// sorted: sorted row k is original row perm[k] (identity when perm is null).
// grid (ceil(ncols / 256), K / 32), block 256.
extern "C" __global__ void gptq_repack(const u32* __restrict__ raw, const int* __restrict__ perm,
                                       u32* __restrict__ out, int K, int ncols, int N, int col0) {
    int n = blockIdx.x * 256 + threadIdx.x, s = blockIdx.y;
    if (n >= ncols) return;
    u32 w[BITS];
#pragma unroll
    for (int j = 0; j < BITS; j++) w[j] = 0;
#pragma unroll
    for (int k = 0; k < 32; k++) {
        int r = perm ? perm[s * 32 + k] : s * 32 + k;
        u32 v = gptq_code(raw, r, n, ncols);
#if BITS == 4
        w[k >> 3] |= v << (4 * (k & 7));
#elif BITS == 8
        w[k >> 2] |= v << (8 * (k & 3));
#else
        {
            int hi = k >= 16, p = k - 16 * hi;
            if (p < 15) {
                w[p / 5] |= v << (3 * (p % 5) + 16 * hi);
            } else {
                int sh = 15 + 16 * hi;
                w[0] |= (v & 1u) << sh;
                w[1] |= ((v >> 1) & 1u) << sh;
                w[2] |= ((v >> 2) & 1u) << sh;
            }
        }
#endif
    }
#pragma unroll
    for (int j = 0; j < BITS; j++) out[(size_t)(s * BITS + j) * N + col0 + n] = w[j];
}

// Zero points: out[g][col0 + n] = stored code of qzeros [G][ncols * BITS / 32] (packed along N)
// + offset (1 for checkpoint_format "gptq"). grid (ceil(ncols / 256), G), block 256.
extern "C" __global__ void gptq_unpack_zeros(const u32* __restrict__ qz, u8* __restrict__ out, int ncols, int N,
                                             int col0, int offset) {
    int n = blockIdx.x * 256 + threadIdx.x, g = blockIdx.y;
    if (n >= ncols) return;
    const u32* row = qz + (size_t)g * (ncols * BITS / 32);
    u32 v = gptq_code(row, n, 0, 1);
    out[(size_t)g * N + col0 + n] = (u8)min(v + (u32)offset, 255u);
}

// dst[r][col0 + c] = src[r][c] for 16-bit values (scales into a fused linear's columns).
// grid (ceil(ncols / 256), rows), block 256.
extern "C" __global__ void copy_cols_u16(const u16* __restrict__ src, u16* __restrict__ dst, int ncols, int N,
                                         int col0) {
    int c = blockIdx.x * 256 + threadIdx.x, r = blockIdx.y;
    if (c < ncols) dst[(size_t)r * N + col0 + c] = src[(size_t)r * ncols + c];
}

#if BITS == 4
// ---- Batched decode (9..32 rows), 4-bit: dequantize in registers, multiply on the tensor cores.
// mma.m16n8k16 with W^T as A (16 weight columns x 16 input rows) and x^T as B (16 input rows x
// 8 activation rows). The k order inside an mma is free as long as A and B agree: lane (g, t)
// loads word t of a slab for columns g and g + 8, whose 4 fp16 pairs are exactly x's pairs
// 4t..4t+3 in the GEMV's pair order (xpos), so x comes in as one 16-byte load per 8 rows.
// grid (ceil(N / 256), ceil(K / kch)); block 128: 4 warps x 64 columns, each warp over the
// block's kch input rows; out [gridDim.y][rows][N] partial sums. NT = ceil(rows / 8).
#ifndef NT
#define NT 4
#endif
// TCU: slabs whose weights are loaded before their math (registers vs loads in flight);
// TCB: minimum resident blocks per SM asked of the register allocator.
#ifndef TCU
#define TCU 4
#endif
#ifndef TCB
#define TCB 1
#endif
// TCA > 0: each warp streams its weights through a ring of TCA slabs in shared memory with
// cp.async (TCU is then unused): the bytes in flight no longer need registers, so a warp keeps
// TCA - 1 slabs (7 KB at 8) on their way instead of one (1 KB in 8 registers), at the same
// occupancy. Ring slot: 4 word rows x (64 + 8) columns, the padding making the lanes' reads
// (row t, column g + c) fall in distinct banks. Needs N % 4 == 0; dynamic shared memory
// 4 warps x TCA x 1152 bytes.
#ifndef TCA
#define TCA 0
#endif
// TCX (with TCA): the slab's activations (NT * 8 rows x 32 inputs, 64 bytes a row) go through the
// ring too, instead of a global load per slab whose L2 latency the mmas wait for. Slot: 4 x 72
// weight words, then NT * 8 x 16 x-words.
#ifndef TCX
#define TCX 0
#endif
#define TC_SLOT (4 * 72 + TCX * NT * 8 * 16)
// TCS: symmetric weights (no zeros: z = 8, its offsets constants) with each group's scales loaded
// once into registers instead of per slab (the per-slab scale and zero arithmetic was a third of
// the kernel's ~480 instructions per slab and warp, ncu, run 16).
#ifndef TCS
#define TCS 0
#endif
__device__ __forceinline__ void cp_async16(u32* smem, const u32* gmem, int src_bytes) {
    unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int n>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(n));
}
__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
extern "C" __global__ void __launch_bounds__(128, TCB) gptq_gemm_tc(
    const u32* __restrict__ qw, const u16* __restrict__ scales, const u8* __restrict__ zeros,
    const u32* __restrict__ x,  // [nseg][rows][K / 2] pairs, xpos order
    float* __restrict__ out, int K, int N, int group_size, int rows, int n1, int n2, int xseg, int kch) {
    pdl_launch();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int cb = blockIdx.x * 256 + warp * 64;
    if (cb >= N) {
        pdl_wait();
        return;
    }
    x += (size_t)((cb >= n1) + (cb >= n2)) * xseg;  // segment bounds are multiples of 64
    const int s0 = blockIdx.y * (kch >> 5), s1 = min(K >> 5, s0 + (kch >> 5));
    float acc[4][NT][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[a][nt][i] = 0.f;
    int col[8];
    bool ok[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        col[i] = cb + 16 * (i >> 1) + g + 8 * (i & 1);
        ok[i] = col[i] < N;
    }
    const u32* xr[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) xr[nt] = x + (size_t)min(nt * 8 + g, rows - 1) * (K / 2) + 4 * t;

    if (s0 >= s1) pdl_wait();
#if TCS
    // This group's scales of the lane's 8 columns, as pairs; `left` slabs until the next group.
    u32 s2v[8];
    int grp = (s0 * 32) / group_size;
    int left = (((grp + 1) * group_size) >> 5) - s0;
    auto load_scales = [&]() {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const u16 sc = __ldg(scales + (size_t)grp * N + (ok[i] ? col[i] : 0));
            s2v[i] = pack2(sc, sc);
        }
    };
    load_scales();
#endif
#if TCA
    extern __shared__ u32 tc_ring[];
    u32* ring = tc_ring + warp * (TCA * TC_SLOT);
    // Lane L copies word row L / 8, columns 8 (L % 8) .. + 7 of each slab: two 16-byte chunks.
    const int cr = lane >> 3, cc = 8 * (lane & 7);
    auto issue = [&](int s) {
        u32* d = ring + (s % TCA) * TC_SLOT + cr * 72 + cc;
        const u32* src = qw + (size_t)(s * 4 + cr) * N + cb + cc;
        // Columns past N: zero-filled, read from a valid address.
        cp_async16(d, cb + cc < N ? src : qw, cb + cc < N ? 16 : 0);
        cp_async16(d + 4, cb + cc + 4 < N ? src + 4 : qw, cb + cc + 4 < N ? 16 : 0);
    };
    // x of slab s: lane L copies 16-byte chunks L, L + 32, ... (row c / 4, quarter c % 4).
    auto issue_x = [&](int s) {
#if TCX
        u32* d = ring + (s % TCA) * TC_SLOT + 4 * 72;
#pragma unroll
        for (int c = lane; c < NT * 32; c += 32) {
            const int row = c >> 2, part = c & 3;
            cp_async16(d + row * 16 + part * 4, x + (size_t)min(row, rows - 1) * (K / 2) + s * 16 + part * 4, 16);
        }
#else
        (void)s;
#endif
    };
#pragma unroll
    for (int p = 0; p < TCA - 1; p++)
        if (s0 + p < s1) issue(s0 + p);
    if (s0 < s1) pdl_wait();  // the first weights are on their way; x is the previous kernel's
    // Group p holds slab p's x (and group 0 the weights of slabs 0 .. TCA - 2 as well).
#pragma unroll
    for (int p = 0; p < TCA - 1; p++) {
        if (s0 + p < s1) issue_x(s0 + p);
        cp_async_commit();
    }
    for (int s = s0; s < s1; s++) {
        const int u = 0;
        __syncwarp();  // every lane is done with the slot about to be refilled
        if (s + TCA - 1 < s1) {
            issue(s + TCA - 1);
            issue_x(s + TCA - 1);
        }
        cp_async_commit();
        cp_async_wait<TCA - 1>();  // this slab's group has landed (for this lane's copies)
        __syncwarp();              // ... and for every lane's
        u32 w[1][8];
        {
            const u32* b = ring + (s % TCA) * TC_SLOT + t * 72 + g;
#pragma unroll
            for (int i = 0; i < 8; i++) w[0][i] = b[16 * (i >> 1) + 8 * (i & 1)];
        }
        {
#else
    for (int sb = s0; sb < s1; sb += TCU) {
        u32 w[TCU][8];
#pragma unroll
        for (int u = 0; u < TCU; u++)
#pragma unroll
            for (int i = 0; i < 8; i++)
                w[u][i] = (sb + u < s1 && ok[i]) ? __ldg(qw + (size_t)((sb + u) * 4 + t) * N + col[i]) : 0u;
        if (sb == s0) pdl_wait();  // the first weights are on their way; x is the previous kernel's
#pragma unroll
        for (int u = 0; u < TCU; u++) {
            const int s = sb + u;
            if (s >= s1) break;
#endif
            uint4 xv[NT];
#if TCA && TCX
            {
                const u32* b = ring + (s % TCA) * TC_SLOT + 4 * 72 + g * 16 + 4 * t;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) xv[nt] = *(const uint4*)(b + nt * 8 * 16);
            }
#else
#pragma unroll
            for (int nt = 0; nt < NT; nt++) xv[nt] = __ldg((const uint4*)(xr[nt] + (size_t)s * 16));
#endif
#if TCS
            if (left == 0) {
                grp++;
                left = group_size >> 5;
                load_scales();
            }
            left--;
#else
            const int grp = (s * 32) / group_size;
#endif
#pragma unroll
            for (int a = 0; a < 4; a++) {
                u32 q[2][4];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int i = 2 * a + h;
#if TCS
                    // (1024 + n) - (1024 + 8) and (16 (1024 + n)) / 16 - (64 + 8), as pairs.
                    const u32 s2 = s2v[i], zlo = 0x64086408u, zhi = 0xD480D480u;
#else
                    const int c = ok[i] ? col[i] : 0;
                    const u16 sc = __ldg(scales + (size_t)grp * N + c);
                    const u32 z = zeros ? (u32)__ldg(zeros + (size_t)grp * N + c) : (1u << (BITS - 1));
                    const u32 s2 = pack2(sc, sc);
                    const u32 zlo = (0x6400u | z) * 0x10001u;
                    const u16 zh = f2h(-(64.f + (float)z));
                    const u32 zhi = pack2(zh, zh);
#endif
                    const u32 v = w[u][i], v2 = v >> 8;
                    q[h][0] = hmul2(hsub2((v & 0x000F000Fu) | 0x64006400u, zlo), s2);
                    q[h][1] = hmul2(hfma2((v & 0x00F000F0u) | 0x64006400u, 0x2C002C00u, zhi), s2);
                    q[h][2] = hmul2(hsub2((v2 & 0x000F000Fu) | 0x64006400u, zlo), s2);
                    q[h][3] = hmul2(hfma2((v2 & 0x00F000F0u) | 0x64006400u, 0x2C002C00u, zhi), s2);
                }
                // The two k-halves of the slab go to each accumulator NT mmas apart.
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    mma16816(acc[a][nt], q[0][0], q[1][0], q[0][1], q[1][1], xv[nt].x, xv[nt].y);
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    mma16816(acc[a][nt], q[0][2], q[1][2], q[0][3], q[1][3], xv[nt].z, xv[nt].w);
            }
        }
    }
    float* o = out + (size_t)blockIdx.y * rows * N;
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int b = nt * 8 + 2 * t + (i & 1);
                const int c = col[2 * a + (i >> 1)];
                if (b < rows && c < N) o[(size_t)b * N + c] = acc[a][nt][i];
            }
}
#endif

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

// 16 pairs (1024 + q_a, 1024 + q_b) as fp16x2, except 4-bit odd pairs, which come out as
// (1024 + 16 q_a, 1024 + 16 q_b); the GEMV scales those by 1/16 in its zero-point FMA.
__device__ __forceinline__ void unpack_slab(const u32* w, u32* t) {
#if BITS == 4
#pragma unroll
    for (int j = 0; j < 4; j++) {
        u32 v = w[j], v2 = w[j] >> 8;
        t[4 * j + 0] = (v & 0x000F000Fu) | 0x64006400u;
        t[4 * j + 1] = (v & 0x00F000F0u) | 0x64006400u;
        t[4 * j + 2] = (v2 & 0x000F000Fu) | 0x64006400u;
        t[4 * j + 3] = (v2 & 0x00F000F0u) | 0x64006400u;
    }
#elif BITS == 8
#pragma unroll
    for (int j = 0; j < 8; j++) {
        t[2 * j + 0] = (w[j] & 0x00FF00FFu) | 0x64006400u;
        t[2 * j + 1] = ((w[j] >> 8) & 0x00FF00FFu) | 0x64006400u;
    }
#else
#pragma unroll
    for (int j = 0; j < 3; j++) {
#pragma unroll
        for (int i = 0; i < 5; i++) t[5 * j + i] = ((w[j] >> (3 * i)) & 0x00070007u) | 0x64006400u;
    }
    t[15] = ((w[0] >> 15) & 0x00010001u) | ((w[1] >> 14) & 0x00020002u) | ((w[2] >> 13) & 0x00040004u) |
            0x64006400u;
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
extern "C" __global__ void __launch_bounds__(256) gptq_gemv(
    const uint4* __restrict__ qw,    // [K / 32 * BITS][N / 4]
    const u16* __restrict__ scales,  // [G][N]
    const u8* __restrict__ zeros,    // [G][N] or null
    const u32* __restrict__ x,       // [NB][K / 2] fp16 pairs: sorted rows, in pair_map order (xpos)
    float* __restrict__ out,         // [gridDim.y][NB][N]
    int K, int N, int group_size) {
    __shared__ float red[8][NB][128];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kb0 = blockIdx.y * KB;
    const int c0 = blockIdx.x * 128 + lane * 4;
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
#endif
            float s[4];
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const u32 z = (zz[f] >> (8 * c)) & 0xff;
                zlo[c] = (0x6400u | z) * 0x10001u;
#if BITS == 4
                const u16 zh = f2h(-(64.f + (float)z));
                zhi[c] = pack2(zh, zh);
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
                    u32 wd[3], t[16];
#pragma unroll
                    for (int j = 0; j < 3; j++) wd[j] = comp(w[s2 * 3 + j], c);
                    unpack_slab(wd, t);
#pragma unroll
                    for (int p = 0; p < 16; p++) {
                        const u32 q = hsub2(t[p], zlo[c]);
#pragma unroll
                        for (int b = 0; b < NB; b++) acc[b][c][p & 1] = hfma2(q, __ldg(x + (size_t)b * (K / 2) + xbase + p), acc[b][c][p & 1]);
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
                        const u32 v = comp(w[s2 * 4 + j], c), v2 = v >> 8;
                        const u32 q0 = hsub2((v & 0x000F000Fu) | 0x64006400u, zlo[c]);
                        const u32 q1 = hfma2((v & 0x00F000F0u) | 0x64006400u, 0x2C002C00u /* 1/16 */, zhi[c]);
                        const u32 q2 = hsub2((v2 & 0x000F000Fu) | 0x64006400u, zlo[c]);
                        const u32 q3 = hfma2((v2 & 0x00F000F0u) | 0x64006400u, 0x2C002C00u, zhi[c]);
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

// W16[k][n] = scale * (q - zero), rows in the sorted order; grid (ceil(N / 256), K / 32).
extern "C" __global__ void gptq_dequant(const u32* __restrict__ qw, const u16* __restrict__ scales,
                                        const u8* __restrict__ zeros, u16* __restrict__ w16, int K, int N,
                                        int group_size) {
    int n = blockIdx.x * 256 + threadIdx.x, s = blockIdx.y;
    if (n >= N) return;
    u32 w[BITS];
#pragma unroll
    for (int j = 0; j < BITS; j++) w[j] = qw[(size_t)(s * BITS + j) * N + n];
    int g = (s * 32) / group_size;
    float sc = h2f(scales[(size_t)g * N + n]);
    float z = zeros ? (float)zeros[(size_t)g * N + n] : (float)(1 << (BITS - 1));
#pragma unroll
    for (int k = 0; k < 32; k++) w16[(size_t)(s * 32 + k) * N + n] = f2h(sc * ((float)slab_code(w, k) - z));
}

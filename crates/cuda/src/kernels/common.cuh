// Shared helpers for every kernel file. NVRTC is run with no include path (users may have only
// the driver), so half-precision values are plain 16-bit integers and the arithmetic on them is
// inline PTX: u16 holds one fp16, u32 holds a pair (low half = first element).
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned char u8;

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
// d = a * b + c on both halves.
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
// (a & b) | c in one LOP3: written as C, the compiler emits an AND and an OR when b and c are
// both constants (one immediate per LOP3); with the constant in a register it is one op.
// LOP3 0 keeps the plain expression (for timing the difference).
#ifndef LOP3
#define LOP3 1
#endif
__device__ __forceinline__ u32 and_or(u32 a, u32 b, u32 c) {
#if LOP3
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#else
    return (a & b) | c;
#endif
}
__device__ __forceinline__ float h2sum(u32 v) { return h2f((u16)(v & 0xffff)) + h2f((u16)(v >> 16)); }
__device__ __forceinline__ u32 pack2(u16 lo, u16 hi) { return (u32)lo | ((u32)hi << 16); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over a whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v, float* red /* [32] shared */) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.f;
    return warp_sum(t);
}

// Streaming 16-byte load: the weights are read once per token, keep them out of L1.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// Programmatic dependent launch (sm_90+): a kernel launched with the programmatic-serialization
// attribute may start while the kernel before it in the stream is still running. Every kernel
// that can be launched so calls pdl_launch() (lets the next kernel start early) and, before it
// reads anything an earlier kernel wrote or writes anything an earlier kernel reads,
// pdl_wait() (returns once the previous kernel has finished and its writes are visible). Only
// constant data (weights) may be read before pdl_wait. Both are no-ops for a normal launch.
__device__ __forceinline__ void pdl_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// c += A . B on the tensor cores: A 16x16 fp16 (row), B 16x8 fp16 (col), c 16x8 f32.
// Lane (g = lane / 4, t = lane % 4) holds a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 =
// A[g][2t+8..], a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]; c0, c1 =
// C[g][2t], C[g][2t+1]; c2, c3 = C[g+8][2t], C[g+8][2t+1] (pairs: low half = lower index).
__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    // Not volatile: the compiler may interleave independent mmas to hide their latency.
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Where sorted input row k goes in a GEMV's activation vector: within each 32-row slab, rows are
// stored as the fp16 pairs the dequantizer of `xbits`-bit weights produces (see gptq.cu), so the
// GEMV reads them with no shuffle. xbits 16 (fp16 weights, cuBLAS) keeps the plain order.
__device__ __forceinline__ int xpos(int k, int xbits) {
    int j = k & 31, base = k - j, p;
    if (xbits == 4)
        p = (j & ~7) + 2 * (j & 3) + ((j >> 2) & 1);
    else if (xbits == 8)
        p = (j & ~3) + 2 * (j & 1) + ((j >> 1) & 1);
    else if (xbits == 3)
        p = j < 16 ? 2 * j : 2 * (j - 16) + 1;
    else
        return k;
    return base + p;
}

// The warp's largest (value, index) pair in every lane; ties go to the lower index (the CPU's
// first maximum).
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) {
            v = ov;
            i = oi;
        }
    }
}

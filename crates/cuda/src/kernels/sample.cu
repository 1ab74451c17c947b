// Sampling on the GPU, so that a serving step returns token ids instead of logits. One block per
// sampled row applies the request's penalties to its logits in place, then finds what the CPU
// sampler (crates/model/src/sampler.rs, `Sampler::sample_with`) picks for the same uniform number:
// greedy argmax (first maximum), or temperature, top-k (ties with the k-th kept), softmax, top-p,
// typical-p, and the inverse-CDF draw in the sampler's candidate order; plus the chosen token's
// log-probability under the penalized logits and the top-n alternatives.
//
// No sorting: every cut and the draw asks "in the order by a key (descending), ties by id
// (ascending), at which element does the running weight first reach a target?". radix_cross
// finds that element's key a byte at a time (four passes over the row, 256-bin weight histograms
// in shared memory), tie_cross then walks the elements with exactly that key in id order.
// Weights are unnormalized probabilities exp(z - zmax), targets scaled by their sum.
//
// Compile-time: TOPN (most alternatives per row).

#ifndef TOPN
#define TOPN 32
#endif
#define NT 1024
#define NW (NT / 32)

// Words of a row's parameters (u32 each; floats as their bits) and of its result.
#define P_ROW 0      // the row of `logits`
#define P_SAMPLE 1   // 0: greedy
#define P_INV_T 2    // 1 / max(temperature, 1e-6), computed on the host as the sampler does
#define P_TOP_K 3    // 0: off
#define P_TOP_P 4    // >= 1: off
#define P_TYPICAL 5  // >= 1: off
#define P_REP 6      // 1: off
#define P_FREQ 7
#define P_PRES 8
#define P_UNIFORM 9
#define P_TOP_N 10
#define P_PEN_OFF 11  // the row's (token, generated count) pairs in `pen`
#define P_PEN_LEN 12
#define P_WORDS 16
#define OUT_WORDS (2 + 2 * TOPN)  // id, logprob, top ids [TOPN], top logprobs [TOPN]

// Orders floats as unsigned integers (larger float, larger key); -0 and +0 share a key, as they
// compare equal.
__device__ __forceinline__ u32 fkey(float x) {
    if (x == 0.f) x = 0.f;
    u32 b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct SampleShared {
    float hist[NW][256];  // per-warp histograms (fewer same-address atomics)
    float red[32];
    int ired[32];
    u32 key;
    float above;
    int pick;
};

__device__ __forceinline__ bool reaches(float run, float target, bool strict) {
    return strict ? run > target : run >= target;
}

// Exclusive prefix sum over the block in thread order.
__device__ float block_excl_scan(float v, SampleShared& s) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        float n = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += n;
    }
    __syncthreads();
    if (lane == 31) s.red[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        float t = s.red[lane], ti = t;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            float n = __shfl_up_sync(0xffffffffu, ti, o);
            if (lane >= o) ti += n;
        }
        s.red[lane] = ti - t;
    }
    __syncthreads();
    return s.red[warp] + inc - v;
}

__device__ int block_min_int(int v, SampleShared& s) {
    __syncthreads();
    if (threadIdx.x == 0) s.pick = 0x7fffffff;
    __syncthreads();
    atomicMin(&s.pick, v);
    __syncthreads();
    return s.pick;
}

__device__ int block_max_int(int v, SampleShared& s) {
    __syncthreads();
    if (threadIdx.x == 0) s.pick = -1;
    __syncthreads();
    atomicMax(&s.pick, v);
    __syncthreads();
    return s.pick;
}

// Among the elements i < V for which f(i, key, w) holds and w > 0, ordered by key descending:
// the key of the element at which the running weight first reaches `target` (exceeds it when
// `strict`); *above gets the weight of the elements with larger keys. If the weight never gets
// there (rounding), the last element's key.
template <class F>
__device__ u32 radix_cross(int V, F f, float target, bool strict, float* above_out, SampleShared& s) {
    u32 prefix = 0, mask = 0;
    float above = 0.f;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int j = threadIdx.x; j < NW * 256; j += NT) (&s.hist[0][0])[j] = 0.f;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += NT) {
            u32 k;
            float w;
            if (f(i, k, w) && w > 0.f && (k & mask) == prefix) atomicAdd(&s.hist[warp][(k >> shift) & 255], w);
        }
        __syncthreads();
        if (threadIdx.x < 256) {
            float t = 0.f;
            for (int w2 = 0; w2 < NW; w2++) t += s.hist[w2][threadIdx.x];
            s.hist[0][threadIdx.x] = t;
        }
        __syncthreads();
        if (warp == 0) {
            // Lane j holds bins 255 - 8j down to 248 - 8j: the warp reads them in key order.
            float b[8], sum = 0.f;
#pragma unroll
            for (int t = 0; t < 8; t++) {
                b[t] = s.hist[0][255 - 8 * lane - t];
                sum += b[t];
            }
            float inc = sum;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                float n = __shfl_up_sync(0xffffffffu, inc, o);
                if (lane >= o) inc += n;
            }
            float run = above + inc - sum;
            int hit = -1, last = -1;
            float hit_above = 0.f, last_above = 0.f;
#pragma unroll
            for (int t = 0; t < 8; t++) {
                if (b[t] > 0.f) {
                    if (hit < 0 && reaches(run + b[t], target, strict)) {
                        hit = t;
                        hit_above = run;
                    }
                    last = t;
                    last_above = run;
                }
                run += b[t];
            }
            u32 hits = __ballot_sync(0xffffffffu, hit >= 0);
            u32 lasts = __ballot_sync(0xffffffffu, last >= 0);
            int src = hits ? __ffs(hits) - 1 : (lasts ? 31 - __clz(lasts) : 0);
            int t = hits ? hit : last;
            float a = hits ? hit_above : last_above;
            t = __shfl_sync(0xffffffffu, t, src);
            a = __shfl_sync(0xffffffffu, a, src);
            if (lane == 0) {
                s.key = (u32)(255 - 8 * src - (t < 0 ? 7 : t));
                s.above = a;
            }
        }
        __syncthreads();
        prefix |= s.key << shift;
        mask |= 0xffu << shift;
        above = s.above;
        __syncthreads();
    }
    *above_out = above;
    return prefix;
}

// Among the elements with key == K (f holds, w > 0), in id order: the id at which above + the
// running weight first reaches `target` (exceeds it when `strict`); the last of them if none does.
template <class F>
__device__ int tie_cross(int V, F f, u32 K, float above, float target, bool strict, SampleShared& s) {
    int chunk = (V + NT - 1) / NT;
    int lo = threadIdx.x * chunk, hi = min(V, lo + chunk);
    float local = 0.f;
    int last = -1;
    for (int i = lo; i < hi; i++) {
        u32 k;
        float w;
        if (f(i, k, w) && w > 0.f && k == K) {
            local += w;
            last = i;
        }
    }
    float excl = block_excl_scan(local, s);
    float run = above + excl;
    int hit = 0x7fffffff;
    if (local > 0.f && reaches(run + local, target, strict) && (!reaches(run, target, strict) || excl == 0.f)) {
        for (int i = lo; i < hi; i++) {
            u32 k;
            float w;
            if (f(i, k, w) && w > 0.f && k == K) {
                run += w;
                if (reaches(run, target, strict)) {
                    hit = i;
                    break;
                }
            }
        }
        if (hit == 0x7fffffff) hit = last;
    }
    hit = block_min_int(hit, s);
    if (hit != 0x7fffffff) return hit;
    return block_max_int(last, s);
}

// grid R (rows to sample), block NT. logits [*][V] f32 (penalized in place), params [R][P_WORDS],
// pen [*][2] i32 (token, times generated; distinct tokens per row), out [R][OUT_WORDS].
extern "C" __global__ void __launch_bounds__(NT) sample_rows(float* logits, int V, const u32* __restrict__ params,
                                                             const int* __restrict__ pen, u32* __restrict__ out) {
    __shared__ SampleShared s;
    const u32* P = params + (size_t)blockIdx.x * P_WORDS;
    float* l = logits + (size_t)P[P_ROW] * V;
    const float rep = __uint_as_float(P[P_REP]), freq = __uint_as_float(P[P_FREQ]),
                pres = __uint_as_float(P[P_PRES]);
    const int poff = (int)P[P_PEN_OFF], plen = (int)P[P_PEN_LEN];
    // Penalties, each token once, in the sampler's arithmetic (no fused multiply-adds).
    for (int e = threadIdx.x; e < plen; e += NT) {
        int t = pen[2 * (poff + e)], c = pen[2 * (poff + e) + 1];
        if (t < 0 || t >= V) continue;
        float v = l[t];
        if (rep != 1.f) v = v < 0.f ? __fmul_rn(v, rep) : __fdiv_rn(v, rep);
        if (c > 0 && (freq != 0.f || pres != 0.f)) v = __fsub_rn(v, __fadd_rn(__fmul_rn(freq, (float)c), pres));
        l[t] = v;
    }
    __syncthreads();

    // Maximum (first index on ties) and log-sum-exp of the penalized logits.
    float m = -INFINITY;
    int am = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += NT) {
        float v = l[i];
        if (v > m) {
            m = v;
            am = i;
        }
    }
    {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        warp_argmax(m, am);
        if (lane == 0) {
            s.red[warp] = m;
            s.ired[warp] = am;
        }
        __syncthreads();
        if (warp == 0) {
            m = s.red[lane];
            am = s.ired[lane];
            warp_argmax(m, am);
            if (lane == 0) {
                s.red[0] = m;
                s.ired[0] = am;
            }
        }
        __syncthreads();
        m = s.red[0];
        am = s.ired[0] == 0x7fffffff ? 0 : s.ired[0];  // all NaN: token 0, as the sampler's argmax
        __syncthreads();
    }
    float se = 0.f;
    for (int i = threadIdx.x; i < V; i += NT) se += __expf(l[i] - m);
    const float lse = m + __logf(block_sum(se, s.red));

    int id = am;
    if (P[P_SAMPLE]) {
        const float inv_t = __uint_as_float(P[P_INV_T]);
        const float zmax = __fmul_rn(m, inv_t);
        const int top_k = (int)P[P_TOP_K];
        const float top_p = __uint_as_float(P[P_TOP_P]), typical = __uint_as_float(P[P_TYPICAL]);
        const bool use_k = top_k > 0 && top_k < V, use_p = top_p < 1.f, use_t = typical < 1.f;
        float above;
        // Top-k: the k-th largest z; every token tying with it stays (as HF).
        u32 kk = 0;
        if (use_k)
            kk = radix_cross(
                V,
                [&](int i, u32& k, float& w) {
                    k = fkey(__fmul_rn(l[i], inv_t));
                    w = 1.f;
                    return true;
                },
                (float)top_k, false, &above, s);
        auto zkept = [&](int i, u32& k, float& w) {
            float z = __fmul_rn(l[i], inv_t);
            k = fkey(z);
            w = __expf(z - zmax);
            return k >= kk;
        };
        float sum = 0.f;
        for (int i = threadIdx.x; i < V; i += NT) {
            u32 k;
            float w;
            if (zkept(i, k, w)) sum += w;
        }
        sum = block_sum(sum, s.red);
        // Top-p: the shortest head (by z, ties by id) holding top_p of the mass.
        u32 kp = 0;
        int ip = 0x7fffffff;
        if (use_p) {
            float target = top_p * sum;
            kp = radix_cross(V, zkept, target, false, &above, s);
            ip = tie_cross(V, zkept, kp, above, target, false, s);
        }
        auto pkept = [&](int i, u32& k, float& w) {
            return zkept(i, k, w) && (k > kp || (k == kp && i <= ip));
        };
        if (use_p) {
            sum = 0.f;
            for (int i = threadIdx.x; i < V; i += NT) {
                u32 k;
                float w;
                if (pkept(i, k, w)) sum += w;
            }
            sum = block_sum(sum, s.red);
        }
        // Typical-p: closest surprisal to the entropy first, up to typical of the mass.
        float entropy = 0.f;
        if (use_t) {
            float e = 0.f;
            for (int i = threadIdx.x; i < V; i += NT) {
                u32 k;
                float w;
                if (pkept(i, k, w)) {
                    float p = w / sum;
                    if (p > 0.f) e -= p * __logf(p);
                }
            }
            entropy = block_sum(e, s.red);
        }
        const float kept_sum = sum;  // the typical cut's normalizer (sum changes below)
        auto tkey = [&](int i, u32& k, float& w) {
            bool in = pkept(i, k, w);
            float p = w / kept_sum;
            float dev = p > 0.f ? fabsf(-__logf(p) - entropy) : INFINITY;
            k = ~fkey(dev);
            return in;
        };
        u32 kt = 0;
        int it = 0x7fffffff;
        if (use_t) {
            float target = typical * sum;
            kt = radix_cross(V, tkey, target, false, &above, s);
            it = tie_cross(V, tkey, kt, above, target, false, s);
            float t = 0.f;
            for (int i = threadIdx.x; i < V; i += NT) {
                u32 k;
                float w;
                if (tkey(i, k, w) && (k > kt || (k == kt && i <= it))) t += w;
            }
            sum = block_sum(t, s.red);
        }
        // The draw, in the order the sampler's candidates end up in: by typicality, else by z
        // when top-k or top-p sorted them, else by id.
        const int order = use_t ? 2 : (use_k || use_p) ? 1 : 0;
        auto dkey = [&](int i, u32& k, float& w) {
            if (use_t) return tkey(i, k, w) && (k > kt || (k == kt && i <= it));
            bool in = pkept(i, k, w);
            if (order == 0) k = 0;
            return in;
        };
        const float target = __uint_as_float(P[P_UNIFORM]) * sum;
        u32 kd = 0;
        above = 0.f;
        if (order != 0) kd = radix_cross(V, dkey, target, true, &above, s);
        id = tie_cross(V, dkey, kd, above, target, true, s);
        if (id < 0 || id >= V) id = am;  // nothing kept with weight: cannot happen, the maximum's is 1
    }

    // The top-n alternatives: the n largest penalized logits, ties by lower id.
    const int n = min(min((int)P[P_TOP_N], TOPN), V);
    __shared__ int top_id[TOPN];
    __shared__ float top_v[TOPN];
    __shared__ int top_count;
    if (n > 0) {
        auto lkey = [&](int i, u32& k, float& w) {
            k = fkey(l[i]);
            w = 1.f;
            return true;
        };
        float above;
        u32 kn = radix_cross(V, lkey, (float)n, false, &above, s);
        int in = tie_cross(V, lkey, kn, above, (float)n, false, s);
        if (threadIdx.x == 0) top_count = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += NT) {
            u32 k = fkey(l[i]);
            if (k > kn || (k == kn && i <= in)) {
                int at = atomicAdd(&top_count, 1);
                if (at < TOPN) {
                    top_id[at] = i;
                    top_v[at] = l[i];
                }
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        u32* o = out + (size_t)blockIdx.x * OUT_WORDS;
        o[0] = (u32)id;
        o[1] = __float_as_uint(l[id] - lse);
        int c = n > 0 ? min(top_count, n) : 0;
        // Insertion sort of at most TOPN entries: by logit descending, then id.
        for (int a = 1; a < c; a++) {
            int ti = top_id[a];
            float tv = top_v[a];
            int b = a - 1;
            while (b >= 0 && (top_v[b] < tv || (top_v[b] == tv && top_id[b] > ti))) {
                top_id[b + 1] = top_id[b];
                top_v[b + 1] = top_v[b];
                b--;
            }
            top_id[b + 1] = ti;
            top_v[b + 1] = tv;
        }
        for (int a = 0; a < TOPN; a++) {
            o[2 + a] = a < c ? (u32)top_id[a] : 0xffffffffu;
            o[2 + TOPN + a] = __float_as_uint(a < c ? top_v[a] - lse : -INFINITY);
        }
    }
}

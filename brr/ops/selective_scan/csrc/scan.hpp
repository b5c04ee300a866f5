// Selective scan (Mamba-2 SSD recurrence) on the CPU: sequential in time, one batch row per task, the
// state of every head of that row in L1, fp32 arithmetic whatever the storage type.
//
// The W = r * p lanes (head, head dim) of a group's r heads are cut into tiles of kLanes lanes (16 with
// AVX-512, 8 with AVX2); a tile's state is n vectors of kLanes floats that stay in registers while the
// tile walks through time, so a step is 2n FMAs and no horizontal sum. The per-head step sizes and
// decays of a whole row are computed first (discretise.cpp, vectorised); the forward pass spreads a step's
// over a tile's lanes with one permutation, the backward pass over all lanes one block of steps at a time.
//
// Layouts (all contiguous): x, y (b, l, h, p); dt (b, l, h); B, C (b, l, g, n); A, D, dt_bias (h,) fp32.
// Forward:  a_t = softplus(dt_t + dt_bias) (or dt_t + dt_bias), S_t = exp(a_t A) S_{t-1} + a_t x_t B_t^T,
//           y_t = S_t C_t + D x_t, S_{-1} = 0.
// Backward: the adjoint recurrence G_t = gy_t C_t^T + exp(a_{t+1} A) G_{t+1}, run from the end; the
//           states it needs are recomputed chunk by chunk from checkpoints kept every kChunk steps.
// Around the scan, the forward kernel can also run the parts of a Mamba-2 block that OpenVINO builds lower into
// it: the causal depthwise convolution and SiLU of x, B and C as it loads each block of steps (CausalConv), the
// gated RMS norm of each batch row's output while it is in cache (GatedNorm), the input projection of u
// (InProjection) and the output projection (OutProjection), and a backward direction, y = flip(block(flip(u)))
// along l, as the forward pass walking each row's steps from the last (`reversed`). Why and when the lowering
// does so: brr/backends/openvino/lowering/__init__.py.
// This header has no dependency beyond the standard library (and the compiler's intrinsics with AVX-512): the
// Python module, the OpenVINO extension and any other host include it and bring their own threading.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace brr::scan {

// In: a = dt + dt_bias, (steps, heads). Out: a = softplus(a) (when softplus), decay = exp(a * A[h]) and,
// when dadu is given, da/du (the softplus' derivative, 1 without it). Defined in discretise.cpp.
void discretise(float* a, float* decay, float* dadu, const float* A, int64_t steps, int64_t heads, bool softplus);

// Storage types: fp32, IEEE fp16 and bfloat16 as raw bits.
struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline float to_float(float v) { return v; }
inline float to_float(BFloat16 v) {
    uint32_t u = uint32_t(v.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float to_float(Half v) {
    uint32_t sign = uint32_t(v.bits & 0x8000) << 16, exponent = (v.bits >> 10) & 0x1f, mantissa = v.bits & 0x3ff;
    uint32_t u;
    if (exponent == 0x1f) {
        u = sign | 0x7f800000u | (mantissa << 13);  // inf / NaN
    } else if (exponent != 0) {
        u = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        u = sign;
    } else {  // subnormal: normalise
        int shift = 0;
        while (!(mantissa & 0x400)) { mantissa <<= 1; ++shift; }
        u = sign | (uint32_t(113 - shift) << 23) | ((mantissa & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

template <class T> inline T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline BFloat16 from_float<BFloat16>(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};  // quiet NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1);  // round to nearest even
    return {uint16_t(u >> 16)};
}
template <> inline Half from_float<Half>(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return {uint16_t(sign | 0x7e00)};          // NaN
    if (abs >= 0x477ff000u) return {uint16_t(sign | 0x7c00)};         // rounds to inf (>= 65520)
    if (abs < 0x38800000u) {                                          // fp16 subnormal or zero
        if (abs < 0x33000000u) return {uint16_t(sign)};
        uint32_t exponent = abs >> 23, mantissa = (abs & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - exponent, half = mantissa >> shift, rest = mantissa & ((1u << shift) - 1);
        uint32_t midpoint = 1u << (shift - 1);
        if (rest > midpoint || (rest == midpoint && (half & 1))) ++half;
        return {uint16_t(sign | half)};
    }
    uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1) - (112u << 23);
    return {uint16_t(sign | (rounded >> 13))};
}

struct Dims {
    int64_t batch, length, heads, headdim, groups, state;
};

// The causal depthwise convolution (+ SiLU) of x, B and C: weights transposed to (width, channels), biases
// (channels,). x's channels are its h * p lanes; B's and C's are interleaved by group, (g, [B | C], n), the
// order in which the kernel reads them.
struct CausalConv {
    const float *x_weight, *x_bias, *bc_weight, *bc_bias;
    int64_t width;
};

// Mamba-2's gated RMS norm (norm_before_gate=False) of the output: y <- RMSNorm(y * SiLU(z)) * weight over each
// step's h * p values; z (b, l, h, p) in the storage type, weight (h * p,).
template <class T>
struct GatedNorm {
    const T* z;
    const float* weight;
    float eps;
};

// Mamba-2's input projection of the block's input u (b, l, features): each step's [z | x | B | C | dt] =
// u_t weight, the columns in mamba_ssm's in_proj order (h p, h p, g n, g n, h values), `columns` of them padded
// with zeros to a multiple of kLanes. x, dt, B, C and the norm's z are then the kernel's own, not inputs.
template <class T>
struct InProjection {
    const T* u;
    const float* weight;  // (features, columns), fp32
    int64_t features, columns;
};

// Mamba-2's output projection of the normalised y, (h p) -> outputs, in the kernel after an InProjection (the
// edge stream's 32 -> 16): y is then (b, l, outputs). weight (h p, columns) fp32, its columns zero-padded to a
// multiple of kLanes.
struct OutProjection {
    const float* weight;
    int64_t outputs, columns;
};

template <class T>
struct ForwardArgs {
    Dims dims;
    const T *x, *dt, *B, *C;
    const float *A, *D, *dt_bias;
    T* y;
    bool dt_softplus;
    const CausalConv* conv = nullptr;   // x, B and C are the convolution's inputs when set
    const GatedNorm<T>* norm = nullptr;  // y is gated and normalised when set
    const InProjection<T>* projection = nullptr;  // x, dt, B, C (and z) are projected from u when set
    const OutProjection* out_projection = nullptr;  // with a projection: y is projected when set
    // The block runs backwards in time: step t of the recurrence is each row's step l - 1 - t, in and out.
    // The gated norm is per step, so it is indifferent.
    bool reversed = false;
    // When set, x, dt, B, C and the norm's z are columns of one (b, l, input_stride) matrix, read where they
    // lie: a projection's output, which the kernel then needs no copy of.
    int64_t input_stride = 0;
};

template <class T>
struct BackwardArgs {
    Dims dims;
    const T *x, *dt, *B, *C, *dy;
    const float *A, *D, *dt_bias;
    T *dx, *ddt, *dB, *dC;
    // Per batch row partial sums of the parameter gradients, (b, h) each: summed by the caller.
    double *dA, *dD, *ddt_bias;
    bool dt_softplus;
};

inline void check_dims(const Dims& d) {
    if (d.batch < 0 || d.length < 0 || d.heads <= 0 || d.headdim <= 0 || d.groups <= 0 || d.state <= 0)
        throw std::invalid_argument("selective scan: every size must be positive");
    if (d.heads % d.groups)
        throw std::invalid_argument("selective scan: heads (" + std::to_string(d.heads) +
                                    ") must be a multiple of groups (" + std::to_string(d.groups) + ")");
}

// Lanes per tile: one register's worth, so that a tile's n state vectors fit the register file (32 zmm with
// AVX-512; 16 ymm with AVX2, where 16-float tiles of n = 16 would spill on every step).
#ifdef __AVX512F__
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
// Steps per block (forward) and between two state checkpoints (backward): the lane-spread step sizes of a
// block and one chunk of recomputed tile states (kChunk x n x kLanes floats, 32 KiB for n = 16 with
// AVX-512) stay in L1.
constexpr int64_t kChunk = 2 * kLanes;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t LaneIndex __attribute__((vector_size(kLanes * sizeof(int32_t))));  // a permutation of a Vec's lanes

namespace detail {

inline Vec broadcast(float v) { return Vec{} + v; }

template <class T>
inline Vec load_lanes(const T* src, int64_t count) {
    Vec v;
    if constexpr (std::is_same_v<T, float>) {
        if (count == kLanes) {  // a full fp32 tile: one vector load, not a copy through the stack
            std::memcpy(&v, src, sizeof v);
            return v;
        }
    }
    alignas(64) float tmp[kLanes] = {};
    for (int64_t i = 0; i < count; ++i) tmp[i] = to_float(src[i]);
    std::memcpy(&v, tmp, sizeof v);
    return v;
}

template <class T>
inline void store_lanes(T* dst, Vec v, int64_t count) {
    if constexpr (std::is_same_v<T, float>) {
        if (count == kLanes) {
            std::memcpy(dst, &v, sizeof v);
            return;
        }
    }
    alignas(64) float tmp[kLanes];
    std::memcpy(tmp, &v, sizeof v);
    for (int64_t i = 0; i < count; ++i) dst[i] = from_float<T>(tmp[i]);
}

inline float lane_sum(Vec v) {
    float s = 0.0f;
    for (int64_t i = 0; i < kLanes; ++i) s += v[i];
    return s;
}

// Step sizes of a batch row: a, decay (and da/du) for every (t, h).
// dt's step t is at dt + t * step (step = -H: the row read backwards).
template <class T>
void row_step_sizes(const T* dt, int64_t step, const float* bias, const float* A, int64_t L, int64_t H, bool softplus,
                    float* a, float* decay, float* dadu) {
    for (int64_t t = 0; t < L; ++t)
        for (int64_t h = 0; h < H; ++h) a[t * H + h] = to_float(dt[t * step + h]) + bias[h];
    discretise(a, decay, dadu, A, L, H, softplus);
}

// Group g's per-head values of steps [t0, t1) spread over its lanes: out[(t - t0) * Wp + r * p + i] = v[t, g r + r];
// the padding lanes (W..Wp) are 0, so padded state lanes stay 0. P > 0 is the head dim known at compile time:
// each head's run of lanes is then one broadcast and store, not a loop (with p = 4 the loop cost more than
// the scan itself).
template <int P>
inline void spread_heads(const float* v, int64_t t0, int64_t t1, int64_t H, int64_t g, int64_t R, int64_t p,
                         int64_t Wp, float* out) {
    const int64_t hp = P ? P : p;
    for (int64_t t = t0; t < t1; ++t) {
        float* row = out + (t - t0) * Wp;
        for (int64_t r = 0; r < R; ++r)
            for (int64_t i = 0; i < hp; ++i) row[r * hp + i] = v[t * H + g * R + r];
        for (int64_t w = R * hp; w < Wp; ++w) row[w] = 0.0f;
    }
}

// Rows [t0 - history, t1) of `count` values from src (row stride `stride`) as floats, `out_stride` apart; rows
// before 0 are 0 (the convolution's left padding).
template <class T>
inline void gather_rows(const T* src, int64_t stride, int64_t t0, int64_t t1, int64_t history, int64_t count,
                        int64_t out_stride, float* out) {
    for (int64_t t = t0 - history; t < t1; ++t, out += out_stride) {
        if (t < 0) std::fill(out, out + count, 0.0f);
        else for (int64_t i = 0; i < count; ++i) out[i] = to_float(src[t * stride + i]);
    }
}

inline void spread(const float* v, int64_t t0, int64_t t1, int64_t H, int64_t g, int64_t R, int64_t p, int64_t Wp,
                   float* out) {
    switch (p) {
        case 4: return spread_heads<4>(v, t0, t1, H, g, R, p, Wp, out);
        case 8: return spread_heads<8>(v, t0, t1, H, g, R, p, Wp, out);
        case 16: return spread_heads<16>(v, t0, t1, H, g, R, p, Wp, out);
        default: return spread_heads<0>(v, t0, t1, H, g, R, p, Wp, out);
    }
}

// B and C of steps [t0 - history, t1) as rows [B_t | C_t] of 2n floats (B at bc[t * 2n + j], C at
// bc[t * 2n + n + j]); rows before 0 are 0.
template <class T>
inline void load_bc(const T* B, const T* C, int64_t base, int64_t stride, int64_t t0, int64_t t1, int64_t history,
                    int64_t n, float* bc) {
    gather_rows(B + base, stride, t0, t1, history, n, 2 * n, bc);
    gather_rows(C + base, stride, t0, t1, history, n, 2 * n, bc + n);
}

inline Vec vec_at(const float* p) {
    Vec v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// e^v in every lane, within 1 ulp: v = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial of
// degree 7 (error r^8 / 8! < 2^-26), times 2^n. Inline, unlike glibc's vector expf: a call per vector made the
// compiler spill the convolution's and the norm's registers around it. NaN stays NaN.
#ifdef __AVX512F__
// With AVX-512, vscalefps applies 2^n: it rounds to the subnormals and to 0 below them and gives inf past
// FLT_MAX by itself, so the result needs no blends, and n needs no conversion to integers; the clamp only keeps
// n finite (vmaxps and vminps return their second operand, here v, when either is NaN). On one Zen 5 core: 1.35x
// the exp rate of the form below, 1.5x its SiLU rate (5.9 against 3.9 G values/s).
inline Vec exp_lanes(Vec v) {
    __m512 x;
    std::memcpy(&x, &v, sizeof x);
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // ln 2 in two parts (n ln2_high is exact).
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x));
    __m512 e = _mm512_set1_ps(1.0f / 5040.0f);
    for (float c : {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f})
        e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
    e = _mm512_scalef_ps(e, n);
    std::memcpy(&v, &e, sizeof v);
    return v;
}
#else
// 2^n built in the exponent bits: below -87.3 (e^v under 2^-126) it gives 0, above 88.37 inf.
inline Vec exp_lanes(Vec v) {
    const Vec lowest = broadcast(-87.33654f), highest = broadcast(88.37626f);
    const Vec clamped = v < lowest ? lowest : (v > highest ? highest : v);
    const Vec scaled = clamped * 1.44269504f;
    const LaneIndex n = __builtin_convertvector(scaled + (scaled < 0.0f ? broadcast(-0.5f) : broadcast(0.5f)), LaneIndex);
    const Vec nf = __builtin_convertvector(n, Vec);
    // ln 2 in two parts (n ln2_high is exact); the empty asm keeps -fassociative-math from merging them again.
    Vec high = clamped - nf * 0.693359375f;
    asm("" : "+x"(high));
    const Vec r = high + nf * 2.12194440e-4f;
    Vec e = broadcast(1.0f / 5040.0f);
    for (float c : {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f}) e = e * r + c;
    const LaneIndex bits = (n + 127) << 23;
    Vec scale;
    std::memcpy(&scale, &bits, sizeof scale);
    e *= scale;
    return v > highest ? broadcast(INFINITY) : (v < lowest ? Vec{} : e);
}
#endif

inline Vec silu_lanes(Vec v) { return v / (1.0f + exp_lanes(-v)); }

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

// Per step t < steps: y_t = g_t / sqrt(mean(g_t^2) + eps) * weight with g_t = y_t * silu(z_t), over `width`
// values, in place; z's steps are z_stride apart. kLanes steps at a time: their scales are then one vector
// sqrt and divide, not a scalar sqrt and divide per step, whose latency stalled the step's scaling behind it.
inline void gated_rms_norm(float* y, const float* z, int64_t z_stride, const float* weight, int64_t steps,
                           int64_t width, float eps) {
    const int64_t vector_width = width - width % kLanes;
    alignas(64) float scales[kLanes];
    for (int64_t t0 = 0; t0 < steps; t0 += kLanes) {
        const int64_t block = std::min(kLanes, steps - t0);
        for (int64_t s = 0; s < kLanes; ++s) {
            if (s >= block) {  // the lanes of a short last block get a harmless mean square
                scales[s] = 1.0f;
                continue;
            }
            float* yt = y + (t0 + s) * width;
            const float* zt = z + (t0 + s) * z_stride;
            Vec squares{};
            float tail = 0.0f;
            for (int64_t c = 0; c < vector_width; c += kLanes) {
                const Vec g = vec_at(yt + c) * silu_lanes(vec_at(zt + c));
                std::memcpy(yt + c, &g, sizeof g);
                squares += g * g;
            }
            for (int64_t c = vector_width; c < width; ++c) {
                yt[c] *= silu(zt[c]);
                tail += yt[c] * yt[c];
            }
            scales[s] = (lane_sum(squares) + tail) / float(width);
        }
        for (int64_t s = 0; s < kLanes; ++s) scales[s] = 1.0f / std::sqrt(scales[s] + eps);
        for (int64_t s = 0; s < block; ++s) {
            float* yt = y + (t0 + s) * width;
            const float scale = scales[s];
            for (int64_t c = 0; c < vector_width; c += kLanes) {
                const Vec normed = vec_at(yt + c) * scale * vec_at(weight + c);
                std::memcpy(yt + c, &normed, sizeof normed);
            }
            for (int64_t c = vector_width; c < width; ++c) yt[c] *= scale * weight[c];
        }
    }
}

// out[r * out_stride + c] = silu(bias[c] + sum_j weight[j * weight_stride + c] * in[(r + j) * channels + c]) for
// r < rows, c < channels: the causal convolution of `width` taps whose input rows start width - 1 steps early.
// Whole vectors of channels (the loops of a 4-tap filter over 16 to 128 channels are too short for the
// compiler's own vectorisation to pay); out's lanes beyond `channels` are left as they are.
inline void causal_conv_silu(const float* in, const float* weight, int64_t weight_stride, const float* bias,
                             int64_t rows, int64_t channels, int64_t width, float* out, int64_t out_stride) {
    const int64_t vector_channels = channels - channels % kLanes;
    for (int64_t c = 0; c < vector_channels; c += kLanes) {
        const Vec b = vec_at(bias + c);
        for (int64_t r = 0; r < rows; ++r) {
            Vec acc = b;
            for (int64_t j = 0; j < width; ++j) acc += vec_at(weight + j * weight_stride + c) * vec_at(in + (r + j) * channels + c);
            acc = silu_lanes(acc);
            std::memcpy(out + r * out_stride + c, &acc, sizeof acc);
        }
    }
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = vector_channels; c < channels; ++c) {
            float acc = bias[c];
            for (int64_t j = 0; j < width; ++j) acc += weight[j * weight_stride + c] * in[(r + j) * channels + c];
            out[r * out_stride + c] = silu(acc);
        }
}

// out[t * columns + c] = sum_k u[t * features + k] weight[k * columns + c] for t < steps: V vectors of columns
// for kSteps steps at a time, kSteps x V accumulators in registers, each weight vector loaded once per kSteps.
// 8 steps by 2 vectors ran near the FMA peak on a Zen 5 core (170-208 GFLOP/s on one core for 64 or 128
// inputs); 4 by 4, with as many accumulators, at 70-90.
template <int V>
inline void project_columns(const float* u, const float* weight, int64_t steps, int64_t features, int64_t columns,
                            int64_t first_column, float* out) {
    constexpr int64_t kSteps = 8;
    for (int64_t t = 0; t < steps; t += kSteps) {
        const int64_t rows = std::min(kSteps, steps - t);
        // Every loop unrolled: otherwise GCC keeps the accumulators on the stack.
        Vec acc[kSteps][V] = {};
        const float* u_rows[kSteps];
#pragma GCC unroll 8
        for (int64_t r = 0; r < kSteps; ++r) u_rows[r] = u + (t + std::min(r, rows - 1)) * features;  // a short last block repeats a row
        const float* weight_row = weight + first_column;
        for (int64_t k = 0; k < features; ++k, weight_row += columns) {
            Vec w[V];
#pragma GCC unroll 2
            for (int v = 0; v < V; ++v) w[v] = vec_at(weight_row + v * kLanes);
#pragma GCC unroll 8
            for (int64_t r = 0; r < kSteps; ++r) {
                const Vec ur = broadcast(u_rows[r][k]);
#pragma GCC unroll 2
                for (int v = 0; v < V; ++v) acc[r][v] += ur * w[v];
            }
        }
        for (int64_t r = 0; r < rows; ++r)
            for (int v = 0; v < V; ++v)
                std::memcpy(out + (t + r) * columns + first_column + v * kLanes, &acc[r][v], sizeof(Vec));
    }
}

// The projection of a batch row, kChunk steps at a time (their u rows stay in L1), two vectors of columns per
// pass (and one for an odd last). Not inlined: inlined into the row kernel, GCC's register allocation ran it at
// half the speed (98-129 against 172-207 GFLOP/s on one core, 128 inputs).
[[gnu::noinline]] inline void project(const float* u, const float* weight, int64_t steps, int64_t features, int64_t columns, float* out) {
    const int64_t vectors = columns / kLanes;
    for (int64_t t0 = 0; t0 < steps; t0 += kChunk) {
        const int64_t block = std::min(kChunk, steps - t0);
        const float* u_block = u + t0 * features;
        float* out_block = out + t0 * columns;
        int64_t v = 0;
        for (; v + 2 <= vectors; v += 2) project_columns<2>(u_block, weight, block, features, columns, v * kLanes, out_block);
        if (v < vectors) project_columns<1>(u_block, weight, block, features, columns, v * kLanes, out_block);
    }
}

template <int N, class T>
void projected_forward_row(const ForwardArgs<T>& args, int64_t b, std::vector<float>& scratch);

// The tile's state: N vectors in registers when N is known at compile time, else in `memory`.
template <int N>
struct TileState {
    Vec s[N];
    TileState(Vec*, int64_t) {}
    Vec& operator[](int64_t j) { return s[j]; }
};
template <>
struct TileState<0> {
    Vec* s;
    TileState(Vec* memory, int64_t) : s(memory) {}
    Vec& operator[](int64_t j) { return s[j]; }
};

template <int N, class T>
void forward_row(const ForwardArgs<T>& args, int64_t b, std::vector<float>& scratch) {
    if (args.projection) return projected_forward_row<N>(args, b, scratch);
    const Dims& d = args.dims;
    const int64_t L = d.length, H = d.heads, p = d.headdim, n = N ? N : d.state, G = d.groups, R = H / G;
    const int64_t W = R * p, tiles = (W + kLanes - 1) / kLanes, Wp = tiles * kLanes;
    constexpr bool fp32 = std::is_same_v<T, float>;
    // Stored in fp16 or bf16, an output to be normalised stays fp32 until the norm, so that the norm (fp32
    // whatever the storage) reads the recurrence's own values, not their rounding.
    thread_local std::vector<float> unnormed;
    float* y_fp32 = nullptr;
    if (!fp32 && args.norm) {
        unnormed.resize(L * H * p);
        y_fp32 = unnormed.data();
    }
    const CausalConv* conv = args.conv;
    const int64_t history = conv ? conv->width - 1 : 0, conv_floats = conv ? (kChunk + history) * std::max(W, 2 * n) : 0;
    // a, decay (L x H, each followed by a vector of slack: a tile reads a whole vector of heads); D lanes; B, C
    // of a block; with the convolution, the convolved x of a block (kChunk x Wp) and the unconvolved rows it
    // reads (x, then B and C); tile states (+1 Vec of slack for alignment).
    scratch.resize(2 * (L * H + kLanes) + Wp + 2 * kChunk * n + (conv ? kChunk * Wp + conv_floats : 0) +
                   (tiles * n + 1) * kLanes);
    float *a = scratch.data(), *decay = a + L * H + kLanes, *DL = decay + L * H + kLanes;
    float *bc = DL + Wp, *xc = bc + 2 * kChunk * n;
    float *rows = xc + (conv ? kChunk * Wp : 0), *raw = rows + conv_floats;
    Vec* states = reinterpret_cast<Vec*>(raw + (-reinterpret_cast<uintptr_t>(raw) / sizeof(float)) % kLanes);
    // Row b's step t (of the recurrence) is at memory step first + t * direction.
    const int64_t first = b * L + (args.reversed ? L - 1 : 0), direction = args.reversed ? -1 : 1;
    // Distances between steps: of the output y (and of the convolution's weight rows), of each input.
    const int64_t x_stride = H * p, bc_stride = G * n, stride = args.input_stride;
    const int64_t x_in = stride ? stride : x_stride, dt_in = stride ? stride : H, bc_in = stride ? stride : bc_stride;
    const int64_t x_step = direction * x_in, y_step = direction * x_stride;
    row_step_sizes(args.dt + first * dt_in, direction * dt_in, args.dt_bias, args.A, L, H, args.dt_softplus, a, decay,
                   nullptr);
    std::fill(a + L * H, a + L * H + kLanes, 0.0f);
    std::fill(decay + L * H, decay + L * H + kLanes, 0.0f);
    if (conv) std::fill(xc, xc + kChunk * Wp, 0.0f);  // padding lanes stay 0
    for (int64_t g = 0; g < G; ++g) {
        spread(args.D, 0, 1, 0, g, R, p, Wp, DL);
        std::fill(states, states + tiles * n, Vec{});
        const int64_t bc_base = first * bc_in + g * n;
        for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
            const int64_t t1 = std::min(L, t0 + kChunk);
            if (conv) {
                const int64_t w = conv->width;
                gather_rows(args.x + first * x_in + g * W, x_step, t0, t1, history, W, W, rows);
                causal_conv_silu(rows, conv->x_weight + g * W, x_stride, conv->x_bias + g * W, t1 - t0, W, w, xc, Wp);
                load_bc(args.B, args.C, bc_base, direction * bc_in, t0, t1, history, n, rows);
                causal_conv_silu(rows, conv->bc_weight + g * 2 * n, 2 * bc_stride, conv->bc_bias + g * 2 * n, t1 - t0,
                                 2 * n, w, bc, 2 * n);
            } else {
                load_bc(args.B, args.C, bc_base, direction * bc_in, t0, t1, 0, n, bc);
            }
            // x from the convolved block or straight from the input: chosen outside the step loop, whose tile
            // states must stay in registers.
            auto walk_tiles = [&](auto convolved) {
                for (int64_t k = 0; k < tiles; ++k) {
                    const int64_t lanes = std::min(kLanes, W - k * kLanes);
                    TileState<N> S(states + k * n, n);
                    if (N) for (int64_t j = 0; j < n; ++j) S[j] = states[k * n + j];
                    const Vec Dv = vec_at(DL + k * kLanes);
                    // A step's a and decay of the tile's heads, spread over its lanes by one permutation of a
                    // vector of heads (lane i belongs to head (k kLanes + i) / p of the group).
                    const int64_t first_head = k * kLanes / p;
                    LaneIndex head_of_lane;
                    for (int64_t i = 0; i < kLanes; ++i)
                        head_of_lane[i] = int32_t(std::min(k * kLanes + i, W - 1) / p - first_head);
                    const float *a_t = a + t0 * H + g * R + first_head, *decay_t = decay + t0 * H + g * R + first_head;
                    const T* x = args.x + (first + direction * t0) * x_in + g * W + k * kLanes;
                    T* y = args.y + (first + direction * t0) * x_stride + g * W + k * kLanes;
                    float* yf = y_fp32 ? y_fp32 + (y - (args.y + b * L * x_stride)) : nullptr;
                    for (int64_t t = 0; t < t1 - t0; ++t, x += x_step, y += y_step, a_t += H, decay_t += H) {
                        Vec xv;
                        if constexpr (decltype(convolved)::value) xv = vec_at(xc + t * Wp + k * kLanes);
                        else xv = load_lanes(x, lanes);
                        const Vec dec = __builtin_shuffle(vec_at(decay_t), head_of_lane);
                        const Vec ax = __builtin_shuffle(vec_at(a_t), head_of_lane) * xv;
                        Vec yv = Dv * xv;
                        for (int64_t j = 0; j < n; ++j) {
                            S[j] = dec * S[j] + ax * bc[t * 2 * n + j];
                            yv += S[j] * bc[t * 2 * n + n + j];
                        }
                        if constexpr (fp32) {
                            store_lanes(y, yv, lanes);
                        } else if (yf) {
                            store_lanes(yf, yv, lanes);
                            yf += y_step;
                        } else {
                            store_lanes(y, yv, lanes);
                        }
                    }
                    if (N) for (int64_t j = 0; j < n; ++j) states[k * n + j] = S[j];
                }
            };
            if (conv) walk_tiles(std::true_type{});
            else walk_tiles(std::false_type{});
        }
    }
    if (args.norm) {
        const int64_t row = L * x_stride;
        T* y = args.y + b * row;
        const T* z = args.norm->z + b * L * x_in;
        if constexpr (fp32) {
            gated_rms_norm(y, z, x_in, args.norm->weight, L, x_stride, args.norm->eps);
        } else {  // the fp32 output and an fp32 copy of z (reusing the scratch: the scan is done with it)
            scratch.resize(row);
            float* zf = scratch.data();
            for (int64_t t = 0; t < L; ++t)
                for (int64_t i = 0; i < x_stride; ++i) zf[t * x_stride + i] = to_float(z[t * x_in + i]);
            gated_rms_norm(y_fp32, zf, x_stride, args.norm->weight, L, x_stride, args.norm->eps);
            for (int64_t i = 0; i < row; ++i) y[i] = from_float<T>(y_fp32[i]);
        }
    }
}

// Forward of one batch row whose inputs the kernel projects: the row's projection into cache (its steps in
// reverse order when reversed), whose columns are the (1, l, ...) inputs of an fp32 forward_row, which
// writes y in place (fp32, neither projected nor reversed) or into cache, from where it is projected and / or
// stored (in l order).
template <int N, class T>
void projected_forward_row(const ForwardArgs<T>& args, int64_t b, std::vector<float>& scratch) {
    const Dims& d = args.dims;
    const InProjection<T>& projection = *args.projection;
    const OutProjection* out = args.out_projection;
    const int64_t L = d.length, H = d.heads, W = H * d.headdim, BC = d.groups * d.state;
    const int64_t K = projection.features, columns = projection.columns;
    if (columns % kLanes || columns < 2 * W + 2 * BC + H || (out && (out->columns % kLanes || out->columns < out->outputs)))
        throw std::invalid_argument("selective scan: a projection's columns must cover its outputs (z, x, B, C and "
                                    "dt in) and be a multiple of " + std::to_string(kLanes));
    constexpr bool fp32 = std::is_same_v<T, float>;
    const bool reversed = args.reversed, y_in_place = fp32 && !out && !reversed;
    const int64_t projected_columns = out ? std::max(columns, out->columns) : columns;
    thread_local std::vector<float> row;
    row.resize((fp32 && !reversed ? 0 : L * K) + (y_in_place ? 0 : L * W) + L * projected_columns);
    float* cursor = row.data();
    auto take = [&](int64_t count) { float* at = cursor; cursor += count; return at; };
    const T* u_row = projection.u + b * L * K;
    const float* u = nullptr;
    if (fp32 && !reversed) {
        u = reinterpret_cast<const float*>(u_row);
    } else {  // an fp32 copy of the row, its steps in the order the block runs them
        float* copy = take(L * K);
        for (int64_t t = 0; t < L; ++t) {
            const T* from = u_row + (reversed ? L - 1 - t : t) * K;
            for (int64_t k = 0; k < K; ++k) copy[t * K + k] = to_float(from[k]);
        }
        u = copy;
    }
    float* y = y_in_place ? reinterpret_cast<float*>(args.y) + b * L * W : take(L * W);
    float* projected = take(L * projected_columns);
    project(u, projection.weight, L, K, columns, projected);
    // Each step's columns: z, x, B, C, dt.
    const float *z = projected, *x = z + W, *B = x + W, *C = B + BC, *dt = C + BC;
    const GatedNorm<float> norm{z, args.norm ? args.norm->weight : nullptr, args.norm ? args.norm->eps : 0.0f};
    ForwardArgs<float> row_args{{1, L, H, d.headdim, d.groups, d.state}, x, dt, B, C, args.A, args.D,
                                args.dt_bias, y, args.dt_softplus, args.conv, args.norm ? &norm : nullptr};
    row_args.input_stride = columns;
    forward_row<N, float>(row_args, 0, scratch);
    if (y_in_place) return;
    const int64_t width = out ? out->outputs : W, stride = out ? out->columns : W;
    if (out) project(y, out->weight, L, W, out->columns, projected);
    const float* result = out ? projected : y;
    T* stored = args.y + b * L * width;
    for (int64_t t = 0; t < L; ++t) {
        T* to = stored + (reversed ? L - 1 - t : t) * width;
        for (int64_t c = 0; c < width; ++c) to[c] = from_float<T>(result[t * stride + c]);
    }
}

// Backward of one batch row, group by group (the row owns its dB and dC, so rows run in parallel).
// Pass 1 keeps every tile's state at each chunk start; pass 2 walks the chunks from the last: recompute a
// tile's states in the chunk, then run the adjoint G_t = gy_t C_t^T + exp(a_{t+1} A) G_{t+1} backwards
// (G carried between chunks per tile). dB and dC are summed over lanes per chunk, the per-head terms
// (ddt, dA, dD, ddt_bias) from per-lane partial sums once every tile has passed.
template <int N, class T>
void backward_row(const BackwardArgs<T>& args, int64_t b, std::vector<float>& scratch) {
    const Dims& d = args.dims;
    const int64_t L = d.length, H = d.heads, p = d.headdim, n = N ? N : d.state, G = d.groups, R = H / G;
    const int64_t W = R * p, tiles = (W + kLanes - 1) / kLanes, Wp = tiles * kLanes;
    const int64_t chunks = (L + kChunk - 1) / kChunk, K = kChunk;
    // Floats: a, decay, dadu (L x H); spread a, decay (K x Wp); D lanes; B, C (K x n); per-lane partials
    // da, ddecay, gy x (K x Wp); then Vecs: checkpoints (chunks x tiles x n), carried tile state / adjoint
    // (tiles x n), recomputed states (K x n), dB / dC partials (K x n each), plus one of slack for alignment.
    const int64_t floats = 3 * L * H + 2 * K * Wp + Wp + 2 * K * n + 3 * K * Wp;
    const int64_t vecs = chunks * tiles * n + tiles * n + K * n + 2 * K * n + 1;
    scratch.resize(floats + vecs * kLanes);
    float *a = scratch.data(), *decay = a + L * H, *dadu = decay + L * H, *aL = dadu + L * H, *decL = aL + K * Wp;
    float *DL = decL + K * Wp, *bc = DL + Wp, *daL = bc + 2 * K * n, *dsL = daL + K * Wp;
    float *gyxL = dsL + K * Wp, *raw = gyxL + K * Wp;
    Vec* ckpt = reinterpret_cast<Vec*>(raw + (-reinterpret_cast<uintptr_t>(raw) / sizeof(float)) % kLanes);
    Vec *carry = ckpt + chunks * tiles * n, *buf = carry + tiles * n, *dBv = buf + K * n, *dCv = dBv + K * n;
    row_step_sizes(args.dt + b * L * H, H, args.dt_bias, args.A, L, H, args.dt_softplus, a, decay, dadu);
    std::vector<double> dA_row(H, 0.0), dD_row(H, 0.0), dbias_row(H, 0.0);
    const int64_t x_stride = H * p, bc_stride = G * n;

    for (int64_t g = 0; g < G; ++g) {
        const int64_t bc_base = b * L * bc_stride + g * n;
        spread(args.D, 0, 1, 0, g, R, p, Wp, DL);
        // Pass 1: checkpoints (carry holds the running tile states).
        std::fill(carry, carry + tiles * n, Vec{});
        for (int64_t c = 0; c < chunks; ++c) {
            const int64_t t0 = c * K, t1 = std::min(L, t0 + K);
            spread(a, t0, t1, H, g, R, p, Wp, aL);
            spread(decay, t0, t1, H, g, R, p, Wp, decL);
            load_bc(args.B, args.C, bc_base, bc_stride, t0, t1, 0, n, bc);
            std::copy(carry, carry + tiles * n, ckpt + c * tiles * n);
            for (int64_t k = 0; k < tiles; ++k) {
                const int64_t lanes = std::min(kLanes, W - k * kLanes);
                TileState<N> S(carry + k * n, n);
                if (N) for (int64_t j = 0; j < n; ++j) S[j] = carry[k * n + j];
                const T* x = args.x + (b * L + t0) * x_stride + g * W + k * kLanes;
                for (int64_t t = 0; t < t1 - t0; ++t, x += x_stride) {
                    const Vec dec = vec_at(decL + t * Wp + k * kLanes);
                    const Vec ax = vec_at(aL + t * Wp + k * kLanes) * load_lanes(x, lanes);
                    for (int64_t j = 0; j < n; ++j) S[j] = dec * S[j] + ax * bc[t * 2 * n + j];
                }
                if (N) for (int64_t j = 0; j < n; ++j) carry[k * n + j] = S[j];
            }
        }
        // Pass 2 (carry now holds the adjoint of each tile).
        std::fill(carry, carry + tiles * n, Vec{});
        for (int64_t c = chunks - 1; c >= 0; --c) {
            const int64_t t0 = c * K, t1 = std::min(L, t0 + K), steps = t1 - t0;
            spread(a, t0, t1, H, g, R, p, Wp, aL);
            spread(decay, t0, t1, H, g, R, p, Wp, decL);
            load_bc(args.B, args.C, bc_base, bc_stride, t0, t1, 0, n, bc);
            std::fill(dBv, dBv + 2 * K * n, Vec{});
            for (int64_t k = 0; k < tiles; ++k) {
                const int64_t lanes = std::min(kLanes, W - k * kLanes), lane0 = k * kLanes;
                const int64_t x0 = (b * L + t0) * x_stride + g * W + lane0;
                // Recompute: buf[t] = state after step t0 + t.
                {
                    TileState<N> S(buf, n);  // for N = 0 the states are written in place, step by step
                    if (N) for (int64_t j = 0; j < n; ++j) S[j] = ckpt[(c * tiles + k) * n + j];
                    else std::copy(ckpt + (c * tiles + k) * n, ckpt + (c * tiles + k + 1) * n, buf);
                    for (int64_t t = 0; t < steps; ++t) {
                        const Vec dec = vec_at(decL + t * Wp + lane0);
                        const Vec ax = vec_at(aL + t * Wp + lane0) * load_lanes(args.x + x0 + t * x_stride, lanes);
                        Vec* out = buf + t * n;
                        if (!N && t > 0) std::copy(out - n, out, out);
                        for (int64_t j = 0; j < n; ++j) {
                            Vec& s = N ? S[j] : out[j];
                            s = dec * s + ax * bc[t * 2 * n + j];
                            if (N) out[j] = s;
                        }
                    }
                }
                TileState<N> Gt(carry + k * n, n);
                if (N) for (int64_t j = 0; j < n; ++j) Gt[j] = carry[k * n + j];
                const Vec Dv = vec_at(DL + lane0);
                for (int64_t t = steps - 1; t >= 0; --t) {
                    const Vec* S_t = buf + t * n;
                    const Vec* S_prev = t > 0 ? S_t - n : ckpt + (c * tiles + k) * n;
                    const Vec gy = load_lanes(args.dy + x0 + t * x_stride, lanes);
                    const Vec xv = load_lanes(args.x + x0 + t * x_stride, lanes);
                    const Vec av = vec_at(aL + t * Wp + lane0), dec = vec_at(decL + t * Wp + lane0);
                    const Vec ax = av * xv;
                    Vec gb{}, gs{};
                    Vec *dB = dBv + t * n, *dC = dCv + t * n;
                    for (int64_t j = 0; j < n; ++j) {
                        const Vec gj = Gt[j] + gy * bc[t * 2 * n + n + j];  // G_t
                        dC[j] += S_t[j] * gy;
                        dB[j] += gj * ax;
                        gb += gj * bc[t * 2 * n + j];
                        gs += gj * S_prev[j];
                        Gt[j] = gj * dec;  // carried to step t - 1
                    }
                    store_lanes(args.dx + x0 + t * x_stride, av * gb + Dv * gy, lanes);
                    std::memcpy(daL + t * Wp + lane0, &(gb *= xv), sizeof(Vec));
                    std::memcpy(dsL + t * Wp + lane0, &gs, sizeof(Vec));
                    const Vec gyx = gy * xv;
                    std::memcpy(gyxL + t * Wp + lane0, &gyx, sizeof(Vec));
                }
                if (N) for (int64_t j = 0; j < n; ++j) carry[k * n + j] = Gt[j];
            }
            for (int64_t t = 0; t < steps; ++t) {
                const int64_t step = b * L + t0 + t;
                for (int64_t j = 0; j < n; ++j) {
                    args.dB[step * bc_stride + g * n + j] = from_float<T>(lane_sum(dBv[t * n + j]));
                    args.dC[step * bc_stride + g * n + j] = from_float<T>(lane_sum(dCv[t * n + j]));
                }
                for (int64_t r = 0; r < R; ++r) {
                    const int64_t h = g * R + r, th = (t0 + t) * H + h;
                    float da = 0.0f, ddecay = 0.0f, dDx = 0.0f;
                    for (int64_t i = 0; i < p; ++i) {
                        da += daL[t * Wp + r * p + i];
                        ddecay += dsL[t * Wp + r * p + i];
                        dDx += gyxL[t * Wp + r * p + i];
                    }
                    const float ddecay_da = ddecay * decay[th];
                    da += ddecay_da * args.A[h];
                    dA_row[h] += double(ddecay_da) * a[th];
                    dD_row[h] += dDx;
                    const float du = da * dadu[th];
                    args.ddt[step * H + h] = from_float<T>(du);
                    dbias_row[h] += du;
                }
            }
        }
    }
    for (int64_t h = 0; h < H; ++h) {
        args.dA[b * H + h] = dA_row[h];
        args.dD[b * H + h] = dD_row[h];
        args.ddt_bias[b * H + h] = dbias_row[h];
    }
}

}  // namespace detail

// Row kernels chosen once per call: the state size at compile time (tile states in registers) for the
// model's two Mamba configurations (node stream n = 16, edge stream n = 8), in memory for any other.
template <class T>
using ForwardRow = void (*)(const ForwardArgs<T>&, int64_t, std::vector<float>&);
template <class T>
using BackwardRow = void (*)(const BackwardArgs<T>&, int64_t, std::vector<float>&);

template <class T>
ForwardRow<T> forward_kernel(const Dims& d) {
    check_dims(d);
    if (d.state == 16) return detail::forward_row<16, T>;
    if (d.state == 8) return detail::forward_row<8, T>;
    return detail::forward_row<0, T>;
}

template <class T>
BackwardRow<T> backward_kernel(const Dims& d) {
    check_dims(d);
    if (d.state == 16) return detail::backward_row<16, T>;
    if (d.state == 8) return detail::backward_row<8, T>;
    return detail::backward_row<0, T>;
}

}  // namespace brr::scan

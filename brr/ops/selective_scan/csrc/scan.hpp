// Selective scan (Mamba-2 SSD recurrence) on the CPU: sequential in time, one batch row per task, the
// state of every head of that row in L1, fp32 arithmetic whatever the storage type.
//
// Layouts (all contiguous): x, y (b, l, h, p); dt (b, l, h); B, C (b, l, g, n); A, D, dt_bias (h,) fp32.
// Forward:  a_t = softplus(dt_t + dt_bias) (or dt_t + dt_bias), S_t = exp(a_t A) S_{t-1} + a_t x_t B_t^T,
//           y_t = S_t C_t + D x_t, S_{-1} = 0.
// Backward: the adjoint recurrence G_t = gy_t C_t^T + exp(a_{t+1} A) G_{t+1}, run from the end; the
//           states it needs are recomputed chunk by chunk from checkpoints kept every kChunk steps.
// This header has no dependency beyond the standard library: the Python module, the OpenVINO
// extension and any other host include it and bring their own threading.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace brr::scan {

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

template <class T>
struct ForwardArgs {
    Dims dims;
    const T *x, *dt, *B, *C;
    const float *A, *D, *dt_bias;
    T* y;
    bool dt_softplus;
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

// Steps of the recurrence between two state checkpoints in the backward pass: the recomputed states of one
// chunk (kChunk x heads x headdim x state floats) stay in L2.
constexpr int64_t kChunk = 64;

// softplus as torch.nn.functional.softplus (threshold 20): exact to fp32 and never exp(large).
inline float softplus(float u) { return u > 20.0f ? u : std::log1p(std::exp(u)); }
inline float sigmoid(float u) { return 1.0f / (1.0f + std::exp(-u)); }

namespace detail {

// Step sizes and decays of one time step for every head: a = softplus(dt + bias), decay = exp(a A).
template <class T>
inline void step_sizes(const T* dt, const float* A, const float* bias, bool softplus, int64_t heads,
                       float* a, float* decay) {
    for (int64_t h = 0; h < heads; ++h) {
        float u = to_float(dt[h]) + bias[h];
        a[h] = softplus ? brr::scan::softplus(u) : u;
        decay[h] = std::exp(a[h] * A[h]);
    }
}

// One step of one head: S = decay S + a x B^T; returns nothing, writes y = S C + D x when Y is non-null.
// P and N are the head dim and state size when known at compile time (0: read them from p, n).
template <int P, int N, class T>
inline void step(float* __restrict S, const T* __restrict x, const float* __restrict Bf,
                 const float* __restrict Cf, float a, float decay, float d, T* __restrict y, int64_t p_, int64_t n_) {
    const int64_t p = P ? P : p_, n = N ? N : n_;
    for (int64_t i = 0; i < p; ++i) {
        const float xv = to_float(x[i]), ax = a * xv;
        float* __restrict row = S + i * n;
        float acc = 0.0f;
        for (int64_t j = 0; j < n; ++j) {
            row[j] = decay * row[j] + ax * Bf[j];
            acc += row[j] * Cf[j];
        }
        if (y) y[i] = from_float<T>(acc + d * xv);
    }
}

template <int P, int N, class T>
void forward_row(const ForwardArgs<T>& args, int64_t b, std::vector<float>& scratch) {
    const Dims& d = args.dims;
    const int64_t H = d.heads, p = P ? P : d.headdim, n = N ? N : d.state, G = d.groups, R = H / G;
    scratch.assign(H * p * n + 2 * H + 2 * G * n, 0.0f);
    float *S = scratch.data(), *a = S + H * p * n, *decay = a + H, *Bf = decay + H, *Cf = Bf + G * n;
    for (int64_t t = 0; t < d.length; ++t) {
        const int64_t row = b * d.length + t;
        step_sizes(args.dt + row * H, args.A, args.dt_bias, args.dt_softplus, H, a, decay);
        for (int64_t k = 0; k < G * n; ++k) {
            Bf[k] = to_float(args.B[row * G * n + k]);
            Cf[k] = to_float(args.C[row * G * n + k]);
        }
        for (int64_t h = 0; h < H; ++h) {
            const int64_t g = h / R;
            step<P, N>(S + h * p * n, args.x + (row * H + h) * p, Bf + g * n, Cf + g * n, a[h], decay[h], args.D[h],
                       args.y + (row * H + h) * p, p, n);
        }
    }
}

// Backward of one batch row, head by head (the row owns its slices of dB and dC, so no races).
template <int P, int N, class T>
void backward_row(const BackwardArgs<T>& args, int64_t b, std::vector<float>& scratch) {
    const Dims& d = args.dims;
    const int64_t L = d.length, H = d.heads, p = P ? P : d.headdim, n = N ? N : d.state, G = d.groups, R = H / G;
    const int64_t pn = p * n, chunks = (L + kChunk - 1) / kChunk;
    // checkpoints (state entering each chunk), the states of one chunk, adjoint, B/C of one step, per-step a/decay.
    scratch.assign(chunks * pn + kChunk * pn + pn + 2 * n + 3 * L, 0.0f);
    float *ckpt = scratch.data(), *buf = ckpt + chunks * pn, *Gs = buf + kChunk * pn, *Bf = Gs + pn, *Cf = Bf + n;
    float *a = Cf + n, *decay = a + L, *du_da = decay + L;
    const int64_t step_stride = H * p, bc_stride = G * n;
    for (int64_t k = 0; k < L * G * n; ++k) {
        args.dB[b * L * G * n + k] = from_float<T>(0.0f);
        args.dC[b * L * G * n + k] = from_float<T>(0.0f);
    }
    // dB/dC are accumulated over a group's heads in fp32 before one store: keep them in fp32 here.
    std::vector<float> dB_acc(L * n), dC_acc(L * n);
    for (int64_t g = 0; g < G; ++g) {
        std::fill(dB_acc.begin(), dB_acc.end(), 0.0f);
        std::fill(dC_acc.begin(), dC_acc.end(), 0.0f);
        for (int64_t h = g * R; h < (g + 1) * R; ++h) {
            const float A = args.A[h], D = args.D[h];
            double dA = 0.0, dD = 0.0, dbias = 0.0;
            for (int64_t t = 0; t < L; ++t) {
                const float u = to_float(args.dt[(b * L + t) * H + h]) + args.dt_bias[h];
                a[t] = args.dt_softplus ? softplus(u) : u;
                du_da[t] = args.dt_softplus ? sigmoid(u) : 1.0f;
                decay[t] = std::exp(a[t] * A);
            }
            auto load_bc = [&](int64_t t) {
                const int64_t base = (b * L + t) * bc_stride + g * n;
                for (int64_t j = 0; j < n; ++j) {
                    Bf[j] = to_float(args.B[base + j]);
                    Cf[j] = to_float(args.C[base + j]);
                }
            };
            const T* xh = args.x + b * L * step_stride + h * p;
            // Pass 1: checkpoints.
            std::fill(Gs, Gs + pn, 0.0f);  // used as the running state here
            for (int64_t t = 0; t < L; ++t) {
                if (t % kChunk == 0) std::copy(Gs, Gs + pn, ckpt + (t / kChunk) * pn);
                load_bc(t);
                step<P, N, T>(Gs, xh + t * step_stride, Bf, Cf, a[t], decay[t], 0.0f, nullptr, p, n);
            }
            // Pass 2: chunks from the last, each recomputed from its checkpoint, then walked backwards.
            std::fill(Gs, Gs + pn, 0.0f);  // the adjoint, carried as exp(a_{t+1} A) G_{t+1}
            for (int64_t c = chunks - 1; c >= 0; --c) {
                const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk);
                std::copy(ckpt + c * pn, ckpt + (c + 1) * pn, buf);
                float* prev = buf;
                for (int64_t t = t0; t < t1; ++t) {
                    float* cur = buf + (t - t0) * pn;
                    if (t > t0) std::copy(prev, prev + pn, cur);
                    load_bc(t);
                    step<P, N, T>(cur, xh + t * step_stride, Bf, Cf, a[t], decay[t], 0.0f, nullptr, p, n);
                    prev = cur;
                }
                for (int64_t t = t1 - 1; t >= t0; --t) {
                    const float* S = buf + (t - t0) * pn;  // state after step t
                    const float* S_prev = t > t0 ? S - pn : ckpt + c * pn;
                    const int64_t xi = (b * L + t) * step_stride + h * p;
                    load_bc(t);
                    float* dB = dB_acc.data() + t * n;
                    float* dC = dC_acc.data() + t * n;
                    float da = 0.0f, ddecay = 0.0f, dDx = 0.0f;
                    for (int64_t i = 0; i < p; ++i) {
                        const float gy = to_float(args.dy[xi + i]), xv = to_float(args.x[xi + i]);
                        float* __restrict Grow = Gs + i * n;
                        const float* __restrict Srow = S + i * n;
                        const float* __restrict Sprev = S_prev + i * n;
                        float gb = 0.0f, gs = 0.0f;
                        for (int64_t j = 0; j < n; ++j) {
                            Grow[j] += gy * Cf[j];
                            dC[j] += Srow[j] * gy;
                            gb += Grow[j] * Bf[j];
                            gs += Grow[j] * Sprev[j];
                            dB[j] += a[t] * xv * Grow[j];
                        }
                        args.dx[xi + i] = from_float<T>(a[t] * gb + D * gy);
                        da += xv * gb;
                        ddecay += gs;
                        dDx += gy * xv;
                    }
                    const float ddecay_da = ddecay * decay[t];
                    da += ddecay_da * A;
                    dA += double(ddecay_da) * a[t];
                    dD += dDx;
                    const float du = da * du_da[t];
                    args.ddt[(b * L + t) * H + h] = from_float<T>(du);
                    dbias += du;
                    for (int64_t k = 0; k < pn; ++k) Gs[k] *= decay[t];
                }
            }
            args.dA[b * H + h] = dA;
            args.dD[b * H + h] = dD;
            args.ddt_bias[b * H + h] = dbias;
        }
        for (int64_t t = 0; t < L; ++t) {
            const int64_t base = (b * L + t) * bc_stride + g * n;
            for (int64_t j = 0; j < n; ++j) {
                args.dB[base + j] = from_float<T>(dB_acc[t * n + j]);
                args.dC[base + j] = from_float<T>(dC_acc[t * n + j]);
            }
        }
    }
}

}  // namespace detail

// Row kernels chosen once per call: compile-time head dim and state size for the model's two Mamba
// configurations (node stream 8 x 16, edge stream 4 x 8), a generic loop for any other.
template <class T>
using ForwardRow = void (*)(const ForwardArgs<T>&, int64_t, std::vector<float>&);
template <class T>
using BackwardRow = void (*)(const BackwardArgs<T>&, int64_t, std::vector<float>&);

template <class T>
ForwardRow<T> forward_kernel(const Dims& d) {
    check_dims(d);
    if (d.headdim == 8 && d.state == 16) return detail::forward_row<8, 16, T>;
    if (d.headdim == 4 && d.state == 8) return detail::forward_row<4, 8, T>;
    return detail::forward_row<0, 0, T>;
}

template <class T>
BackwardRow<T> backward_kernel(const Dims& d) {
    check_dims(d);
    if (d.headdim == 8 && d.state == 16) return detail::backward_row<8, 16, T>;
    if (d.headdim == 4 && d.state == 8) return detail::backward_row<4, 8, T>;
    return detail::backward_row<0, 0, T>;
}

}  // namespace brr::scan

// Step sizes and decays of the selective scan, vectorised over heads, and the SiLUs of its
// convolved inputs and of its gated norm. This file alone is compiled with
// -ffast-math, which lets GCC call glibc's vector expf/log1pf/expm1f (libmvec, within 4 ulp); it is never
// passed to the linker, so loading the library leaves the process' floating-point mode alone.
#include <cmath>

#include "scan.hpp"

namespace brr::scan {

void discretise(float* a, float* decay, float* dadu, const float* A, int64_t steps, int64_t heads, bool softplus) {
    for (int64_t t = 0; t < steps; ++t) {
        float* __restrict at = a + t * heads;
        float* __restrict dt = decay + t * heads;
        if (softplus) {
            // softplus as torch.nn.functional.softplus (linear above 20): never exp(large).
            for (int64_t h = 0; h < heads; ++h) at[h] = at[h] > 20.0f ? at[h] : std::log1p(std::exp(at[h]));
        }
        for (int64_t h = 0; h < heads; ++h) dt[h] = std::exp(at[h] * A[h]);
        if (dadu) {
            // d softplus(u)/du = sigmoid(u) = 1 - exp(-softplus(u)).
            float* __restrict dd = dadu + t * heads;
            for (int64_t h = 0; h < heads; ++h) dd[h] = softplus ? -std::expm1(-at[h]) : 1.0f;
        }
    }
}

void silu(float* v, int64_t count) {
    for (int64_t i = 0; i < count; ++i) v[i] = v[i] / (1.0f + std::exp(-v[i]));
}

void gated_rms_norm(float* y, const float* z, const float* weight, int64_t steps, int64_t width, float eps) {
    for (int64_t t = 0; t < steps; ++t) {
        float* __restrict yt = y + t * width;
        const float* __restrict zt = z + t * width;
        float squares = 0.0f;
        for (int64_t c = 0; c < width; ++c) {
            const float g = yt[c] * zt[c] / (1.0f + std::exp(-zt[c]));
            yt[c] = g;
            squares += g * g;
        }
        const float scale = 1.0f / std::sqrt(squares / float(width) + eps);
        for (int64_t c = 0; c < width; ++c) yt[c] = yt[c] * scale * weight[c];
    }
}

}  // namespace brr::scan

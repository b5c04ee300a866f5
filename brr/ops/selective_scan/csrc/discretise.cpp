// Step sizes and decays of the selective scan, vectorised over heads. This file alone is compiled with
// -ffast-math, which lets GCC call glibc's vector expf/log1pf/expm1f (libmvec, within 4 ulp); it is never
// passed to the linker, so loading the library leaves the process' floating-point mode alone.
#include <cmath>

#include "scan.hpp"

namespace brr::scan {

void discretise(float* a, float* decay, float* dadu, const float* A, int64_t steps, int64_t heads, bool softplus) {
    // Each transcendental over the whole (steps, heads) block at once: per step, a model's 8 or 16 heads are
    // one vector or less, and a vector math call per step cost more than the scan itself.
    const int64_t count = steps * heads;
    if (softplus) {
        // softplus as torch.nn.functional.softplus (linear above 20): never exp(large).
        for (int64_t i = 0; i < count; ++i) a[i] = a[i] > 20.0f ? a[i] : std::log1p(std::exp(a[i]));
    }
    for (int64_t t = 0; t < steps; ++t)
        for (int64_t h = 0; h < heads; ++h) decay[t * heads + h] = a[t * heads + h] * A[h];
    for (int64_t i = 0; i < count; ++i) decay[i] = std::exp(decay[i]);
    if (dadu) {
        // d softplus(u)/du = sigmoid(u) = 1 - exp(-softplus(u)).
        for (int64_t i = 0; i < count; ++i) dadu[i] = softplus ? -std::expm1(-a[i]) : 1.0f;
    }
}

}  // namespace brr::scan

// Symmetric eigendecomposition of small matrices by cyclic Jacobi rotations, in double precision.
// Reads the lower triangle; eigenvalues ascending, eigenvectors as columns (column k for eigenvalue k).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace brr::eigh {

// a: n x n row-major (lower triangle read); values: n; vectors: n x n row-major, columns = eigenvectors.
// work: scratch reused between calls.
template <class In, class Out>
void jacobi(const In* a, int64_t n, Out* values, Out* vectors, std::vector<double>& work) {
    work.assign(2 * n * n + n, 0.0);
    double *m = work.data(), *v = m + n * n, *d = v + n * n;
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j <= i; ++j) m[i * n + j] = m[j * n + i] = double(a[i * n + j]);
        v[i * n + i] = 1.0;
    }
    double scale = 0.0;
    for (int64_t k = 0; k < n * n; ++k) scale = std::max(scale, std::abs(m[k]));
    for (int sweep = 0; sweep < 60; ++sweep) {
        double off = 0.0;
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < i; ++j) off = std::max(off, std::abs(m[i * n + j]));
        if (off <= 1e-15 * scale || off == 0.0) break;
        for (int64_t p = 0; p < n; ++p)
            for (int64_t q = p + 1; q < n; ++q) {
                const double apq = m[p * n + q];
                if (apq == 0.0) continue;
                // The rotation that zeroes m[p][q] (the smaller angle, as in Golub & Van Loan 8.4).
                const double theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                const double t = std::copysign(1.0, theta) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
                const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
                for (int64_t k = 0; k < n; ++k) {  // columns p, q
                    const double mkp = m[k * n + p], mkq = m[k * n + q];
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for (int64_t k = 0; k < n; ++k) {  // rows p, q
                    const double mpk = m[p * n + k], mqk = m[q * n + k];
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for (int64_t k = 0; k < n; ++k) {
                    const double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    for (int64_t i = 0; i < n; ++i) d[i] = m[i * n + i];
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return d[x] < d[y]; });
    for (int64_t k = 0; k < n; ++k) {
        values[k] = Out(d[order[k]]);
        for (int64_t i = 0; i < n; ++i) vectors[i * n + k] = Out(v[i * n + order[k]]);
    }
}

}  // namespace brr::eigh

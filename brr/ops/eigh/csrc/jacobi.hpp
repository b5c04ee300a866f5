// Symmetric eigendecomposition of small matrices by cyclic Jacobi rotations, in double precision, several
// matrices at once: matrix l of a batch in lane l of every vector, so that one vector operation rotates them
// all (a 19 x 19 rotation's row and column updates are too short, and its columns too strided, to vectorise
// within one matrix). Each lane follows the scalar algorithm exactly: the rotations of the same (p, q) order,
// the same angles, and no rotation once its matrix has converged or where its entry is already 0.
// Reads the lower triangle; eigenvalues ascending, eigenvectors as columns (column k for eigenvalue k).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace brr::eigh {

// Matrices per batch: one vector of doubles.
#ifdef __AVX512F__
constexpr int64_t kMatrices = 8;
#else
constexpr int64_t kMatrices = 4;
#endif
typedef double Lanes __attribute__((vector_size(kMatrices * sizeof(double))));
typedef int64_t LaneMask __attribute__((vector_size(kMatrices * sizeof(int64_t))));  // -1 true, 0 false

namespace detail {

inline Lanes broadcast(double v) { return Lanes{} + v; }
inline Lanes abs(Lanes v) { return v < 0.0 ? -v : v; }
// std::max(a, b) lane by lane, NaN handling included: b only where a < b.
inline Lanes max(Lanes a, Lanes b) { return a < b ? b : a; }
inline Lanes sqrt(Lanes v) {
    Lanes r;
    for (int64_t l = 0; l < kMatrices; ++l) r[l] = std::sqrt(v[l]);
    return r;
}
// std::copysign(1.0, v) lane by lane.
inline Lanes sign_of(Lanes v) {
    LaneMask bits, one;
    const Lanes ones = broadcast(1.0);
    std::memcpy(&bits, &v, sizeof bits);
    std::memcpy(&one, &ones, sizeof one);
    const LaneMask signed_one = (bits & int64_t(INT64_MIN)) | one;
    Lanes r;
    std::memcpy(&r, &signed_one, sizeof r);
    return r;
}
inline bool any(LaneMask m) {
    for (int64_t l = 0; l < kMatrices; ++l)
        if (m[l]) return true;
    return false;
}

}  // namespace detail

// The first `count` (<= kMatrices) of the matrices a + l n n, each n x n row-major (lower triangle read), into
// values + l n (n each) and vectors + l n n (n x n row-major, columns = eigenvectors). work: scratch reused
// between calls. The lanes beyond count hold the identity, which has converged before the first rotation.
template <class In, class Out>
void jacobi(const In* a, int64_t count, int64_t n, Out* values, Out* vectors, std::vector<Lanes>& work) {
    using namespace detail;
    work.assign(2 * n * n, Lanes{});
    Lanes *m = work.data(), *v = m + n * n;
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j <= i; ++j)
            for (int64_t l = 0; l < kMatrices; ++l)
                m[i * n + j][l] = m[j * n + i][l] = l < count ? double(a[l * n * n + i * n + j]) : double(i == j);
        v[i * n + i] = broadcast(1.0);
    }
    Lanes scale{};
    for (int64_t k = 0; k < n * n; ++k) scale = max(scale, abs(m[k]));
    LaneMask active = LaneMask{} - 1;
    for (int sweep = 0; sweep < 60; ++sweep) {
        Lanes off{};
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < i; ++j) off = max(off, abs(m[i * n + j]));
        active &= ~((off <= 1e-15 * scale) | (off == 0.0));
        if (!any(active)) break;
        for (int64_t p = 0; p < n; ++p)
            for (int64_t q = p + 1; q < n; ++q) {
                const Lanes apq = m[p * n + q];
                const LaneMask rotate = active & (apq != 0.0);
                if (!any(rotate)) continue;
                // The rotation that zeroes m[p][q] (the smaller angle, as in Golub & Van Loan 8.4); where a lane
                // does not rotate, its entries are kept as they are, not multiplied by c = 1 and s = 0.
                const Lanes theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                const Lanes t = sign_of(theta) / (abs(theta) + sqrt(theta * theta + 1.0));
                const Lanes c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int64_t k = 0; k < n; ++k) {  // columns p, q
                    const Lanes mkp = m[k * n + p], mkq = m[k * n + q];
                    m[k * n + p] = rotate ? c * mkp - s * mkq : mkp;
                    m[k * n + q] = rotate ? s * mkp + c * mkq : mkq;
                }
                for (int64_t k = 0; k < n; ++k) {  // rows p, q
                    const Lanes mpk = m[p * n + k], mqk = m[q * n + k];
                    m[p * n + k] = rotate ? c * mpk - s * mqk : mpk;
                    m[q * n + k] = rotate ? s * mpk + c * mqk : mqk;
                }
                for (int64_t k = 0; k < n; ++k) {
                    const Lanes vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = rotate ? c * vkp - s * vkq : vkp;
                    v[k * n + q] = rotate ? s * vkp + c * vkq : vkq;
                }
            }
    }
    std::vector<int64_t> order(n);
    for (int64_t l = 0; l < count; ++l) {
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return m[x * n + x][l] < m[y * n + y][l]; });
        for (int64_t k = 0; k < n; ++k) {
            values[l * n + k] = Out(m[order[k] * n + order[k]][l]);
            for (int64_t i = 0; i < n; ++i) vectors[l * n * n + i * n + k] = Out(v[i * n + order[k]][l]);
        }
    }
}

}  // namespace brr::eigh

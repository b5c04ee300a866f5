// Python module brr.ops.selective_scan._native: the scan kernels of scan.hpp on raw CPU buffers.
//
// Arguments are any DLPack/buffer-protocol arrays (numpy arrays, torch tensors) that nanobind can view
// without a copy; outputs are allocated by the caller. No torch headers or ABI are involved.
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "scan.hpp"

namespace nb = nanobind;
using namespace brr::scan;

using In = nb::ndarray<nb::ro, nb::device::cpu, nb::c_contig>;
using Out = nb::ndarray<nb::device::cpu, nb::c_contig>;

namespace {

enum class Storage { f32, f16, bf16 };

Storage storage_of(const nb::dlpack::dtype& t, const char* name) {
    if (t.lanes == 1 && t.code == uint8_t(nb::dlpack::dtype_code::Float) && t.bits == 32) return Storage::f32;
    if (t.lanes == 1 && t.code == uint8_t(nb::dlpack::dtype_code::Float) && t.bits == 16) return Storage::f16;
    if (t.lanes == 1 && t.code == uint8_t(nb::dlpack::dtype_code::Bfloat) && t.bits == 16) return Storage::bf16;
    throw nb::type_error((std::string("selective scan: ") + name + " must be float32, float16 or bfloat16").c_str());
}

template <class A>
void expect_shape(const A& a, const char* name, std::initializer_list<int64_t> shape) {
    bool ok = a.ndim() == shape.size();
    size_t i = 0;
    for (int64_t s : shape) ok = ok && int64_t(a.shape(i++)) == s;
    if (!ok) {
        std::string got = "(";
        for (size_t k = 0; k < a.ndim(); ++k) got += std::to_string(a.shape(k)) + (k + 1 < a.ndim() ? ", " : "");
        std::string want = "(";
        i = 0;
        for (int64_t s : shape) want += std::to_string(s) + (++i < shape.size() ? ", " : "");
        throw nb::value_error(("selective scan: " + std::string(name) + " must be " + want + "), got " + got + ")").c_str());
    }
}

void expect_float32(const In& a, const char* name) {
    if (storage_of(a.dtype(), name) != Storage::f32)
        throw nb::type_error((std::string("selective scan: ") + name + " must be float32").c_str());
}

// Rows (batch entries) handed out one at a time to `threads` workers; each worker keeps its scratch.
template <class F>
void parallel_rows(int64_t rows, int threads, F&& body) {
    const int workers = int(std::max<int64_t>(1, std::min<int64_t>(threads, rows)));
    std::atomic<int64_t> next{0};
    std::vector<std::exception_ptr> errors(workers);
    auto work = [&](int w) {
        try {
            std::vector<float> scratch;
            for (int64_t row; (row = next.fetch_add(1)) < rows;) body(row, scratch);
        } catch (...) {
            errors[w] = std::current_exception();
        }
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < workers; ++w) pool.emplace_back(work, w);
    work(0);
    for (auto& t : pool) t.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

Dims dims_of(const In& x, const In& B) {
    if (x.ndim() != 4) throw nb::value_error("selective scan: x must be (b, l, h, p)");
    if (B.ndim() != 4) throw nb::value_error("selective scan: B must be (b, l, g, n)");
    Dims d{int64_t(x.shape(0)), int64_t(x.shape(1)), int64_t(x.shape(2)), int64_t(x.shape(3)),
           int64_t(B.shape(2)), int64_t(B.shape(3))};
    check_dims(d);
    return d;
}

template <class T>
const T* ptr(const In& a) { return static_cast<const T*>(a.data()); }
template <class T>
T* ptr(Out& a) { return static_cast<T*>(a.data()); }

template <class T>
void forward_typed(const Dims& d, const In& x, const In& dt, const In& A, const In& B, const In& C, const In& D,
                   const In& dt_bias, Out& y, bool softplus, int threads) {
    ForwardArgs<T> args{d, ptr<T>(x), ptr<T>(dt), ptr<T>(B), ptr<T>(C), ptr<float>(A), ptr<float>(D),
                        ptr<float>(dt_bias), ptr<T>(y), softplus};
    auto kernel = forward_kernel<T>(d);
    parallel_rows(d.batch, threads, [&](int64_t b, std::vector<float>& s) { kernel(args, b, s); });
}

void forward(const In& x, const In& dt, const In& A, const In& B, const In& C, const In& D, const In& dt_bias,
             Out y, bool dt_softplus, int threads) {
    const Dims d = dims_of(x, B);
    const Storage s = storage_of(x.dtype(), "x");
    expect_shape(dt, "dt", {d.batch, d.length, d.heads});
    expect_shape(C, "C", {d.batch, d.length, d.groups, d.state});
    expect_shape(y, "y", {d.batch, d.length, d.heads, d.headdim});
    for (auto [a, name] : {std::pair{&A, "A"}, {&D, "D"}, {&dt_bias, "dt_bias"}}) {
        expect_shape(*a, name, {d.heads});
        expect_float32(*a, name);
    }
    for (auto [a, name] : {std::pair{&dt, "dt"}, {&B, "B"}, {&C, "C"}})
        if (storage_of(a->dtype(), name) != s) throw nb::type_error("selective scan: x, dt, B, C and y must share one dtype");
    if (storage_of(y.dtype(), "y") != s) throw nb::type_error("selective scan: x, dt, B, C and y must share one dtype");
    nb::gil_scoped_release release;
    switch (s) {
        case Storage::f32: return forward_typed<float>(d, x, dt, A, B, C, D, dt_bias, y, dt_softplus, threads);
        case Storage::f16: return forward_typed<Half>(d, x, dt, A, B, C, D, dt_bias, y, dt_softplus, threads);
        case Storage::bf16: return forward_typed<BFloat16>(d, x, dt, A, B, C, D, dt_bias, y, dt_softplus, threads);
    }
}

template <class T>
void backward_typed(const Dims& d, const In& x, const In& dt, const In& A, const In& B, const In& C, const In& D,
                    const In& dt_bias, const In& dy, Out& dx, Out& ddt, Out& dB, Out& dC, Out& dA, Out& dD,
                    Out& ddt_bias, bool softplus, int threads) {
    BackwardArgs<T> args{d, ptr<T>(x), ptr<T>(dt), ptr<T>(B), ptr<T>(C), ptr<T>(dy), ptr<float>(A),
                         ptr<float>(D), ptr<float>(dt_bias), ptr<T>(dx), ptr<T>(ddt), ptr<T>(dB), ptr<T>(dC),
                         ptr<double>(dA), ptr<double>(dD), ptr<double>(ddt_bias), softplus};
    auto kernel = backward_kernel<T>(d);
    parallel_rows(d.batch, threads, [&](int64_t b, std::vector<float>& s) { kernel(args, b, s); });
}

void backward(const In& x, const In& dt, const In& A, const In& B, const In& C, const In& D, const In& dt_bias,
              const In& dy, Out dx, Out ddt, Out dB, Out dC, Out dA, Out dD, Out ddt_bias, bool dt_softplus,
              int threads) {
    const Dims d = dims_of(x, B);
    const Storage s = storage_of(x.dtype(), "x");
    expect_shape(dt, "dt", {d.batch, d.length, d.heads});
    expect_shape(C, "C", {d.batch, d.length, d.groups, d.state});
    for (auto [a, name] : {std::pair{&dy, "dy"}, {&x, "x"}}) {
        expect_shape(*a, name, {d.batch, d.length, d.heads, d.headdim});
        if (storage_of(a->dtype(), name) != s) throw nb::type_error("selective scan: gradients must have x's dtype");
    }
    expect_shape(dx, "dx", {d.batch, d.length, d.heads, d.headdim});
    expect_shape(ddt, "ddt", {d.batch, d.length, d.heads});
    expect_shape(dB, "dB", {d.batch, d.length, d.groups, d.state});
    expect_shape(dC, "dC", {d.batch, d.length, d.groups, d.state});
    for (auto [a, name] : {std::pair{&dx, "dx"}, {&ddt, "ddt"}, {&dB, "dB"}, {&dC, "dC"}})
        if (storage_of(a->dtype(), name) != s) throw nb::type_error("selective scan: gradients must have x's dtype");
    for (auto [a, name] : {std::pair{&dA, "dA"}, {&dD, "dD"}, {&ddt_bias, "ddt_bias"}}) {
        expect_shape(*a, name, {d.batch, d.heads});
        if (!(a->dtype() == nb::dtype<double>()))
            throw nb::type_error("selective scan: per-row parameter gradients must be float64");
    }
    for (auto [a, name] : {std::pair{&A, "A"}, {&D, "D"}, {&dt_bias, "dt_bias"}}) {
        expect_shape(*a, name, {d.heads});
        expect_float32(*a, name);
    }
    for (auto [a, name] : {std::pair{&dt, "dt"}, {&B, "B"}, {&C, "C"}})
        if (storage_of(a->dtype(), name) != s) throw nb::type_error("selective scan: x, dt, B and C must share one dtype");
    nb::gil_scoped_release release;
    switch (s) {
        case Storage::f32:
            return backward_typed<float>(d, x, dt, A, B, C, D, dt_bias, dy, dx, ddt, dB, dC, dA, dD, ddt_bias,
                                         dt_softplus, threads);
        case Storage::f16:
            return backward_typed<Half>(d, x, dt, A, B, C, D, dt_bias, dy, dx, ddt, dB, dC, dA, dD, ddt_bias,
                                        dt_softplus, threads);
        case Storage::bf16:
            return backward_typed<BFloat16>(d, x, dt, A, B, C, D, dt_bias, dy, dx, ddt, dB, dC, dA, dD, ddt_bias,
                                            dt_softplus, threads);
    }
}

// out <- SiLU(x), elementwise, float32: the scan kernels' own SiLU (scan.hpp's silu_lanes, which the fused
// convolution and gated norm apply to every value), for benchmarks to measure this machine's rate of it.
void silu(const In& x, Out out, int threads) {
    expect_float32(x, "x");
    if (storage_of(out.dtype(), "out") != Storage::f32 || out.size() != x.size())
        throw nb::value_error("silu: out must be float32 of x's size");
    const float* src = ptr<float>(x);
    float* dst = ptr<float>(out);
    const int64_t n = int64_t(x.size()), block = 64 * kLanes * kLanes;
    nb::gil_scoped_release release;
    parallel_rows((n + block - 1) / block, threads, [&](int64_t i, std::vector<float>&) {
        const int64_t stop = std::min(n, (i + 1) * block);
        int64_t j = i * block;
        for (; j + kLanes <= stop; j += kLanes) {
            const Vec v = detail::silu_lanes(detail::vec_at(src + j));
            std::memcpy(dst + j, &v, sizeof v);
        }
        for (; j < stop; ++j) dst[j] = detail::silu(src[j]);
    });
}

}  // namespace

NB_MODULE(_native, m) {
    m.doc() = "Native CPU kernels of brr::selective_scan (see brr/ops/selective_scan/csrc/scan.hpp).";
    m.def("forward", &forward, nb::arg("x"), nb::arg("dt"), nb::arg("A"), nb::arg("B"), nb::arg("C"), nb::arg("D"),
          nb::arg("dt_bias"), nb::arg("y"), nb::arg("dt_softplus"), nb::arg("threads"),
          "y <- scan(x, dt, A, B, C, D, dt_bias); x, dt, B, C, y of one dtype (f32/f16/bf16), A, D, dt_bias f32.");
    m.def("backward", &backward, nb::arg("x"), nb::arg("dt"), nb::arg("A"), nb::arg("B"), nb::arg("C"),
          nb::arg("D"), nb::arg("dt_bias"), nb::arg("dy"), nb::arg("dx"), nb::arg("ddt"), nb::arg("dB"),
          nb::arg("dC"), nb::arg("dA"), nb::arg("dD"), nb::arg("ddt_bias"), nb::arg("dt_softplus"),
          nb::arg("threads"),
          "Gradients of the scan; dA, dD, ddt_bias are (b, h) float64 per-row sums for the caller to reduce.");
    m.def("silu", &silu, nb::arg("x"), nb::arg("out"), nb::arg("threads"),
          "out <- x * sigmoid(x), float32, with the kernels' own vectorised SiLU.");
    m.attr("CHECKPOINT_STEPS") = kChunk;
    // The openvino release the OpenVINO extension next to this module was compiled against.
    m.attr("OPENVINO_VERSION") = BRR_OPENVINO_VERSION;
}

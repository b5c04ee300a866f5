// OpenVINO operations ``SelectiveScan`` and ``ProjectedSelectiveScan`` (brr_opset1) with the CPU kernel of
// scan.hpp, and the ONNX frontend conversions to them of the ``ai.onnx.contrib::SelectiveScan`` custom node
// and of the nodes OpenVINO builds lower Mamba-2 blocks into, ``brr.openvino::Mamba2Scan`` and
// ``Mamba2ProjectedScan`` (why and when: brr/backends/openvino/lowering/__init__.py). Their inputs, by name
// and part, are the table ../lowered_inputs.def, which the lowering reads too. SelectiveScan: the scan's
// inputs, then the causal depthwise convolution (+ SiLU) of x, B and C, which the kernel applies as it reads
// them, then the gated RMS norm's (attribute norm_eps), which it applies to its output.
// ProjectedSelectiveScan computes x, dt, B, C and z itself from the block's input u, then, with its weight,
// the output projection. The attribute reversed runs either backwards in time
// (y = flip(block(flip(inputs))) along l, z read in place).
// Registered by brr/ops/openvino_extension.cpp together with the other ops' extensions.
#include <memory>
#include <string>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/conversion.hpp>
#include <openvino/op/op.hpp>

#include "scan.hpp"

namespace brr {

namespace {

// The operations' inputs by name (ScanInput::x, ProjectedInput::u, ...), each with its part: a node holds
// whole parts, each only with every part before it.
enum class Part { scan, convolution, norm, block, out_projection };
#define BRR_INPUT_NAME(name, part) name,
#define BRR_INPUT_PART(name, part) Part::part,
#define BRR_NO_INPUT(name, part)

struct ScanInput {
#define PROJECTED_SCAN_INPUT BRR_NO_INPUT
#define SCAN_INPUT BRR_INPUT_NAME
    enum : size_t {
#include "../lowered_inputs.def"
        count
    };
#undef SCAN_INPUT
#define SCAN_INPUT BRR_INPUT_PART
    static constexpr Part parts[count] = {
#include "../lowered_inputs.def"
    };
#undef SCAN_INPUT
#undef PROJECTED_SCAN_INPUT
};

struct ProjectedInput {
#define SCAN_INPUT BRR_NO_INPUT
#define PROJECTED_SCAN_INPUT BRR_INPUT_NAME
    enum : size_t {
#include "../lowered_inputs.def"
        count
    };
#undef PROJECTED_SCAN_INPUT
#define PROJECTED_SCAN_INPUT BRR_INPUT_PART
    static constexpr Part parts[count] = {
#include "../lowered_inputs.def"
    };
#undef PROJECTED_SCAN_INPUT
#undef SCAN_INPUT
};

#undef BRR_INPUT_NAME
#undef BRR_INPUT_PART
#undef BRR_NO_INPUT

// The number of inputs of a node that holds the parts up to ``last``.
template <class Inputs>
constexpr size_t inputs_through(Part last) {
    size_t end = 0;
    for (size_t i = 0; i < Inputs::count; ++i)
        if (Inputs::parts[i] == last) end = i + 1;
    return end;
}

// Whether a node of ``size`` inputs holds ``part``.
template <class Inputs>
constexpr bool holds(size_t size, Part part) {
    for (size_t i = 0; i < Inputs::count; ++i)
        if (Inputs::parts[i] == part) return size > i;
    return false;
}

// Whether ``size`` inputs are whole parts.
template <class Inputs>
constexpr bool whole_parts(size_t size) {
    return size > 0 && size <= Inputs::count &&
           (size == Inputs::count || Inputs::parts[size] != Inputs::parts[size - 1]);
}

std::vector<float> to_floats(const ov::Tensor& t) {
    std::vector<float> out(t.get_size());
    const auto type = t.get_element_type();
    for (size_t i = 0; i < out.size(); ++i) {
        if (type == ov::element::f32) out[i] = t.data<const float>()[i];
        else if (type == ov::element::f16) out[i] = scan::to_float(scan::Half{t.data<const ov::float16>()[i].to_bits()});
        else if (type == ov::element::bf16) out[i] = scan::to_float(scan::BFloat16{t.data<const ov::bfloat16>()[i].to_bits()});
        else OPENVINO_THROW("SelectiveScan: unsupported parameter type ", type);
    }
    return out;
}

// The convolution's weights transposed to (width, channels) and its biases, in fp32: x's, and B's and C's
// interleaved by group, (g, [B | C], n), as scan::CausalConv takes them.
struct Convolution {
    std::vector<float> x_weight, x_bias, bc_weight, bc_bias;
    int64_t width = 0;
    scan::CausalConv args() const {
        return {x_weight.data(), x_bias.data(), bc_weight.data(), bc_bias.data(), width};
    }
};

// The convolution of the operation whose inputs are ``Inputs``.
template <class Inputs>
Convolution convolution(const ov::TensorVector& inputs, const scan::Dims& d) {
    const size_t weight_of[3] = {Inputs::x_conv_weight, Inputs::B_conv_weight, Inputs::C_conv_weight};
    const size_t bias_of[3] = {Inputs::x_conv_bias, Inputs::B_conv_bias, Inputs::C_conv_bias};
    const auto& x_shape = inputs[weight_of[0]].get_shape();
    OPENVINO_ASSERT(x_shape.size() == 3 && x_shape[1] == 1, "SelectiveScan: convolution weights must be (channels, 1, width)");
    const int64_t width = int64_t(x_shape[2]), x_channels = d.heads * d.headdim, n = d.state;
    const int64_t channels[3] = {x_channels, d.groups * n, d.groups * n};
    std::vector<float> weights[3], biases[3];
    for (int k = 0; k < 3; ++k) {
        OPENVINO_ASSERT(inputs[weight_of[k]].get_shape() == ov::Shape({size_t(channels[k]), 1, size_t(width)}),
                        "SelectiveScan: convolution weight ", k, " must be (", channels[k], ", 1, ", width, "), got ",
                        inputs[weight_of[k]].get_shape());
        OPENVINO_ASSERT(inputs[bias_of[k]].get_size() == size_t(channels[k]),
                        "SelectiveScan: convolution bias ", k, " must be (", channels[k], ",)");
        weights[k] = to_floats(inputs[weight_of[k]]);
        biases[k] = to_floats(inputs[bias_of[k]]);
    }
    Convolution conv;
    conv.width = width;
    conv.x_weight.resize(width * x_channels);
    for (int64_t c = 0; c < x_channels; ++c)
        for (int64_t j = 0; j < width; ++j) conv.x_weight[j * x_channels + c] = weights[0][c * width + j];
    conv.x_bias = biases[0];
    const int64_t bc_channels = 2 * d.groups * n;
    conv.bc_weight.resize(width * bc_channels);
    conv.bc_bias.resize(bc_channels);
    for (int64_t g = 0; g < d.groups; ++g)
        for (int k = 1; k < 3; ++k)
            for (int64_t i = 0; i < n; ++i) {
                const int64_t from = g * n + i, to = g * 2 * n + (k - 1) * n + i;
                conv.bc_bias[to] = biases[k][from];
                for (int64_t j = 0; j < width; ++j) conv.bc_weight[j * bc_channels + to] = weights[k][from * width + j];
            }
    return conv;
}

}  // namespace

class SelectiveScan : public ov::op::Op {
public:
    OPENVINO_OP("SelectiveScan", "brr_opset1");

    SelectiveScan() = default;

    SelectiveScan(const ov::OutputVector& inputs, bool dt_softplus, int64_t chunk_size, float norm_eps = 0.0f,
                  bool reversed = false)
        : Op(inputs), m_dt_softplus(dt_softplus), m_chunk_size(chunk_size), m_norm_eps(norm_eps), m_reversed(reversed) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, whole_parts<ScanInput>(get_input_size()),
                              "SelectiveScan takes the scan's inputs (x, dt, A, B, C, D, dt_bias), then the "
                              "convolution's weights and biases of x, B and C, then the gated norm's z and "
                              "weight; got ", get_input_size(), " inputs");
        NODE_VALIDATION_CHECK(this, m_chunk_size > 0, "chunk_size must be positive, got ", m_chunk_size);
        const auto type = get_input_element_type(ScanInput::x);
        NODE_VALIDATION_CHECK(this, type.is_dynamic() || type == ov::element::f32 || type == ov::element::f16 ||
                                        type == ov::element::bf16,
                              "SelectiveScan computes f32, f16 or bf16 tensors, got ", type);
        const auto& x = get_input_partial_shape(ScanInput::x);
        NODE_VALIDATION_CHECK(this, x.rank().is_dynamic() || x.rank().get_length() == 4, "x must be (b, l, h, p), got ", x);
        set_output_type(0, type, x);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& inputs) const override {
        return std::make_shared<SelectiveScan>(inputs, m_dt_softplus, m_chunk_size, m_norm_eps, m_reversed);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("dt_softplus", m_dt_softplus);
        visitor.on_attribute("chunk_size", m_chunk_size);
        visitor.on_attribute("norm_eps", m_norm_eps);
        visitor.on_attribute("reversed", m_reversed);
        return true;
    }

    bool has_evaluate() const override {
        const auto type = get_input_element_type(ScanInput::x);
        return type == ov::element::f32 || type == ov::element::f16 || type == ov::element::bf16;
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& x = inputs[ScanInput::x].get_shape();
        const auto& B = inputs[ScanInput::B].get_shape();
        OPENVINO_ASSERT(x.size() == 4 && B.size() == 4, "SelectiveScan: x and B must be 4-D");
        scan::Dims d{int64_t(x[0]), int64_t(x[1]), int64_t(x[2]), int64_t(x[3]), int64_t(B[2]), int64_t(B[3])};
        scan::check_dims(d);
        OPENVINO_ASSERT(inputs[ScanInput::dt].get_shape() == ov::Shape({x[0], x[1], x[2]}),
                        "SelectiveScan: dt must be (b, l, h)");
        OPENVINO_ASSERT(inputs[ScanInput::C].get_shape() == B && B[0] == x[0] && B[1] == x[1],
                        "SelectiveScan: B and C must both be (b, l, g, n)");
        const auto type = inputs[ScanInput::x].get_element_type();
        for (size_t i : {ScanInput::dt, ScanInput::B, ScanInput::C})
            OPENVINO_ASSERT(inputs[i].get_element_type() == type, "SelectiveScan: x, dt, B and C must share one type");
        // The per-head parameters in fp32, whatever their stored type.
        constexpr size_t kParamInputs[3] = {ScanInput::A, ScanInput::D, ScanInput::dt_bias};
        std::vector<float> params[3];
        for (int k = 0; k < 3; ++k) {
            const auto& t = inputs[kParamInputs[k]];
            OPENVINO_ASSERT(t.get_size() == size_t(d.heads), "SelectiveScan: A, D and dt_bias must be (h,)");
            params[k] = to_floats(t);
        }
        const bool convolved = holds<ScanInput>(inputs.size(), Part::convolution);
        Convolution conv;
        if (convolved) conv = convolution<ScanInput>(inputs, d);
        std::vector<float> norm_weight;
        if (holds<ScanInput>(inputs.size(), Part::norm)) {
            const auto& z = inputs[ScanInput::z].get_shape();
            OPENVINO_ASSERT(inputs[ScanInput::z].get_element_type() == type && z.size() >= 3 && z[0] == x[0] &&
                                z[1] == x[1] && inputs[ScanInput::z].get_size() == ov::shape_size(x),
                            "SelectiveScan: the norm's z must be x's type, (b, l, h * p), got ", z);
            OPENVINO_ASSERT(inputs[ScanInput::norm_weight].get_size() == x[2] * x[3],
                            "SelectiveScan: the norm's weight must be (h * p,)");
            norm_weight = to_floats(inputs[ScanInput::norm_weight]);
        }
        outputs[0].set_shape(x);
        const scan::CausalConv conv_args = conv.args();
        const scan::CausalConv* c = convolved ? &conv_args : nullptr;
        const float* w = norm_weight.empty() ? nullptr : norm_weight.data();
        if (type == ov::element::f32) run<float>(d, inputs, outputs[0], params, c, w);
        else if (type == ov::element::f16) run<scan::Half>(d, inputs, outputs[0], params, c, w);
        else if (type == ov::element::bf16) run<scan::BFloat16>(d, inputs, outputs[0], params, c, w);
        else return false;
        return true;
    }

private:
    template <class T>
    void run(const scan::Dims& d, const ov::TensorVector& in, ov::Tensor& y, const std::vector<float>* params,
             const scan::CausalConv* conv, const float* norm_weight) const {
        auto data = [](const ov::Tensor& t) { return static_cast<const T*>(t.data()); };
        const scan::GatedNorm<T> norm{norm_weight ? data(in[ScanInput::z]) : nullptr, norm_weight, m_norm_eps};
        const scan::ForwardArgs<T> args{d, data(in[ScanInput::x]), data(in[ScanInput::dt]),
                                        data(in[ScanInput::B]), data(in[ScanInput::C]), params[0].data(),
                                        params[1].data(), params[2].data(), static_cast<T*>(y.data()), m_dt_softplus,
                                        conv, norm_weight ? &norm : nullptr, nullptr, nullptr, m_reversed};
        auto kernel = scan::forward_kernel<T>(d);
        ov::parallel_for(size_t(d.batch), [&](size_t b) {
            thread_local std::vector<float> scratch;
            kernel(args, int64_t(b), scratch);
        });
    }

    bool m_dt_softplus = true;
    int64_t m_chunk_size = 64;
    float m_norm_eps = 0.0f;
    bool m_reversed = false;
};

// SelectiveScan that computes its own x, dt, B, C and z: Mamba-2's input projection of u, then the
// convolution, scan and gated norm of the lowered SelectiveScan (scan::InProjection), then optionally the
// output projection (ProjectedInput; attributes those of SelectiveScan and groups). h is A's size, h p the x
// convolution's channels, g n the B convolution's. y is (b, l, h, p), or (b, l, outputs) with the output
// projection.
class ProjectedSelectiveScan : public ov::op::Op {
public:
    OPENVINO_OP("ProjectedSelectiveScan", "brr_opset1");

    ProjectedSelectiveScan() = default;

    ProjectedSelectiveScan(const ov::OutputVector& inputs, bool dt_softplus, int64_t chunk_size, float norm_eps,
                           int64_t groups, bool reversed)
        : Op(inputs), m_dt_softplus(dt_softplus), m_chunk_size(chunk_size), m_norm_eps(norm_eps), m_groups(groups),
          m_reversed(reversed) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, whole_parts<ProjectedInput>(get_input_size()),
                              "ProjectedSelectiveScan takes the block's inputs (u, projection weight, A, D, "
                              "dt_bias, the convolution weights and biases of x, B and C, norm weight), then the "
                              "output projection's weight; got ", get_input_size(), " inputs");
        NODE_VALIDATION_CHECK(this, m_chunk_size > 0 && m_groups > 0, "chunk_size and groups must be positive");
        const auto type = get_input_element_type(ProjectedInput::u);
        NODE_VALIDATION_CHECK(this, type.is_dynamic() || type == ov::element::f32 || type == ov::element::f16 ||
                                        type == ov::element::bf16,
                              "ProjectedSelectiveScan computes f32, f16 or bf16 tensors, got ", type);
        const auto& u = get_input_partial_shape(ProjectedInput::u);
        NODE_VALIDATION_CHECK(this, u.rank().is_dynamic() || u.rank().get_length() == 3, "u must be (b, l, features), got ", u);
        const auto& A = get_input_partial_shape(ProjectedInput::A);
        const auto& x_conv = get_input_partial_shape(ProjectedInput::x_conv_weight);
        ov::PartialShape y{ov::Dimension::dynamic(), ov::Dimension::dynamic(), ov::Dimension::dynamic(),
                           ov::Dimension::dynamic()};
        if (u.rank().is_static()) y[0] = u[0], y[1] = u[1];
        if (A.is_static() && x_conv.is_static() && A.size() == 1 && x_conv.size() == 3) {
            NODE_VALIDATION_CHECK(this, A[0].get_length() > 0 && x_conv[0].get_length() % A[0].get_length() == 0,
                                  "the x convolution's channels (", x_conv[0], ") must be a multiple of the heads (", A[0], ")");
            y[2] = A[0];
            y[3] = x_conv[0].get_length() / A[0].get_length();
        }
        if (holds<ProjectedInput>(get_input_size(), Part::out_projection)) {
            const auto& out = get_input_partial_shape(ProjectedInput::out_proj_weight);
            NODE_VALIDATION_CHECK(this, out.rank().is_dynamic() || out.rank().get_length() == 2,
                                  "the output projection's weight must be (h p, outputs), got ", out);
            y = {y[0], y[1], out.rank().is_static() ? out[1] : ov::Dimension::dynamic()};
        }
        set_output_type(0, type, y);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& inputs) const override {
        return std::make_shared<ProjectedSelectiveScan>(inputs, m_dt_softplus, m_chunk_size, m_norm_eps, m_groups,
                                                        m_reversed);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("dt_softplus", m_dt_softplus);
        visitor.on_attribute("chunk_size", m_chunk_size);
        visitor.on_attribute("norm_eps", m_norm_eps);
        visitor.on_attribute("groups", m_groups);
        visitor.on_attribute("reversed", m_reversed);
        return true;
    }

    bool has_evaluate() const override {
        const auto type = get_input_element_type(ProjectedInput::u);
        return type == ov::element::f32 || type == ov::element::f16 || type == ov::element::bf16;
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& u = inputs[ProjectedInput::u].get_shape();
        const auto& weight = inputs[ProjectedInput::in_proj_weight].get_shape();
        const auto& x_conv = inputs[ProjectedInput::x_conv_weight].get_shape();
        const auto& bc_conv = inputs[ProjectedInput::B_conv_weight].get_shape();
        OPENVINO_ASSERT(u.size() == 3 && weight.size() == 2 && weight[0] == u[2] && x_conv.size() == 3 && bc_conv.size() == 3,
                        "ProjectedSelectiveScan: u must be (b, l, features), the projection weight (features, columns)");
        const int64_t heads = int64_t(inputs[ProjectedInput::A].get_size()), width = int64_t(x_conv[0]),
                      bc = int64_t(bc_conv[0]);
        OPENVINO_ASSERT(heads > 0 && width % heads == 0 && bc % m_groups == 0,
                        "ProjectedSelectiveScan: the x convolution's channels must be a multiple of the heads and B's of groups");
        scan::Dims d{int64_t(u[0]), int64_t(u[1]), heads, width / heads, m_groups, bc / m_groups};
        scan::check_dims(d);
        const int64_t columns = 2 * width + 2 * bc + heads;
        OPENVINO_ASSERT(int64_t(weight[1]) == columns, "ProjectedSelectiveScan: the projection weight must have ", columns,
                        " columns (z, x, B, C, dt), got ", weight[1]);
        constexpr size_t kParamInputs[3] = {ProjectedInput::A, ProjectedInput::D, ProjectedInput::dt_bias};
        std::vector<float> params[3];
        for (size_t k = 0; k < 3; ++k) {
            OPENVINO_ASSERT(inputs[kParamInputs[k]].get_size() == size_t(heads),
                            "ProjectedSelectiveScan: A, D and dt_bias must be (h,)");
            params[k] = to_floats(inputs[kParamInputs[k]]);
        }
        const Convolution conv = convolution<ProjectedInput>(inputs, d);
        OPENVINO_ASSERT(inputs[ProjectedInput::norm_weight].get_size() == size_t(width),
                        "ProjectedSelectiveScan: the norm's weight must be (h * p,)");
        const std::vector<float> norm_weight = to_floats(inputs[ProjectedInput::norm_weight]);
        // The weight in fp32, its columns padded to whole vectors.
        const int64_t features = int64_t(u[2]), padded = (columns + scan::kLanes - 1) / scan::kLanes * scan::kLanes;
        const std::vector<float> raw = to_floats(inputs[ProjectedInput::in_proj_weight]);
        std::vector<float> projection_weight(features * padded, 0.0f);
        for (int64_t k = 0; k < features; ++k)
            std::copy(raw.begin() + k * columns, raw.begin() + (k + 1) * columns, projection_weight.begin() + k * padded);
        // The output projection's weight, its columns padded the same way.
        std::vector<float> out_weight;
        scan::OutProjection out{nullptr, 0, 0};
        if (holds<ProjectedInput>(inputs.size(), Part::out_projection)) {
            const auto& shape = inputs[ProjectedInput::out_proj_weight].get_shape();
            OPENVINO_ASSERT(shape.size() == 2 && int64_t(shape[0]) == width,
                            "ProjectedSelectiveScan: the output projection's weight must be (h p, outputs), got ", shape);
            out.outputs = int64_t(shape[1]);
            out.columns = (out.outputs + scan::kLanes - 1) / scan::kLanes * scan::kLanes;
            const std::vector<float> raw_out = to_floats(inputs[ProjectedInput::out_proj_weight]);
            out_weight.assign(width * out.columns, 0.0f);
            for (int64_t k = 0; k < width; ++k)
                std::copy(raw_out.begin() + k * out.outputs, raw_out.begin() + (k + 1) * out.outputs,
                          out_weight.begin() + k * out.columns);
            out.weight = out_weight.data();
            outputs[0].set_shape({u[0], u[1], shape[1]});
        } else {
            outputs[0].set_shape({u[0], u[1], size_t(heads), size_t(width / heads)});
        }
        const auto type = inputs[ProjectedInput::u].get_element_type();
        const Parts parts{d, params, conv.args(), norm_weight.data(), projection_weight.data(), features, padded,
                          out.weight ? &out : nullptr};
        const auto& u_tensor = inputs[ProjectedInput::u];
        if (type == ov::element::f32) run<float>(parts, u_tensor, outputs[0]);
        else if (type == ov::element::f16) run<scan::Half>(parts, u_tensor, outputs[0]);
        else if (type == ov::element::bf16) run<scan::BFloat16>(parts, u_tensor, outputs[0]);
        else return false;
        return true;
    }

private:
    struct Parts {
        scan::Dims dims;
        const std::vector<float>* params;
        scan::CausalConv conv;
        const float *norm_weight, *projection_weight;
        int64_t features, columns;
        const scan::OutProjection* out;
    };

    template <class T>
    void run(const Parts& parts, const ov::Tensor& u, ov::Tensor& y) const {
        const scan::GatedNorm<T> norm{nullptr, parts.norm_weight, m_norm_eps};
        const scan::InProjection<T> projection{static_cast<const T*>(u.data()), parts.projection_weight, parts.features,
                                               parts.columns};
        const scan::ForwardArgs<T> args{parts.dims, nullptr, nullptr, nullptr, nullptr, parts.params[0].data(),
                                        parts.params[1].data(), parts.params[2].data(), static_cast<T*>(y.data()),
                                        m_dt_softplus, &parts.conv, &norm, &projection, parts.out, m_reversed};
        auto kernel = scan::forward_kernel<T>(parts.dims);
        ov::parallel_for(size_t(parts.dims.batch), [&](size_t b) {
            thread_local std::vector<float> scratch;
            kernel(args, int64_t(b), scratch);
        });
    }

    bool m_dt_softplus = true;
    int64_t m_chunk_size = 64;
    float m_norm_eps = 0.0f;
    int64_t m_groups = 1;
    bool m_reversed = false;
};

// The custom node (``lowered`` false: the scan's inputs) or Mamba2Scan (the convolution's too, and the norm's
// where it has the attribute norm_eps).
ov::OutputVector convert_onnx_node(const ov::frontend::NodeContext& node, bool lowered) {
    const auto softplus = node.get_attribute<int64_t>("dt_softplus");
    const auto chunk_size = node.get_attribute<int64_t>("chunk_size");
    FRONT_END_GENERAL_CHECK(softplus == 0 || softplus == 1, "SelectiveScan: dt_softplus must be 0 or 1, got ", softplus);
    FRONT_END_GENERAL_CHECK(chunk_size > 0, "SelectiveScan: chunk_size must be positive, got ", chunk_size);
    const bool norm = lowered && node.has_attribute("norm_eps");
    const auto count = node.get_input_size();
    const Part last = lowered ? (norm ? Part::norm : Part::convolution) : Part::scan;
    const size_t expected = inputs_through<ScanInput>(last);
    FRONT_END_GENERAL_CHECK(count == expected, node.get_op_type(), norm ? " with norm_eps" : "", " takes ",
                            expected, " inputs (lowered_inputs.def), got ", count);
    const auto norm_eps = norm ? node.get_attribute<float>("norm_eps") : 0.0f;
    const auto reversed = lowered ? node.get_attribute<int64_t>("reversed", 0) : 0;
    FRONT_END_GENERAL_CHECK(reversed == 0 || reversed == 1, node.get_op_type(), ": reversed must be 0 or 1, got ", reversed);
    ov::OutputVector inputs;
    for (size_t i = 0; i < count; ++i) inputs.push_back(node.get_input(int(i)));
    return std::make_shared<SelectiveScan>(inputs, softplus == 1, chunk_size, norm_eps, reversed == 1)->outputs();
}

ov::OutputVector convert_projected_onnx_node(const ov::frontend::NodeContext& node) {
    const auto softplus = node.get_attribute<int64_t>("dt_softplus");
    const auto chunk_size = node.get_attribute<int64_t>("chunk_size");
    const auto groups = node.get_attribute<int64_t>("groups");
    const auto reversed = node.get_attribute<int64_t>("reversed", 0);
    FRONT_END_GENERAL_CHECK(softplus == 0 || softplus == 1, "Mamba2ProjectedScan: dt_softplus must be 0 or 1, got ", softplus);
    FRONT_END_GENERAL_CHECK(chunk_size > 0 && groups > 0, "Mamba2ProjectedScan: chunk_size and groups must be positive");
    FRONT_END_GENERAL_CHECK(reversed == 0 || reversed == 1, "Mamba2ProjectedScan: reversed must be 0 or 1, got ", reversed);
    const auto count = node.get_input_size();
    FRONT_END_GENERAL_CHECK(whole_parts<ProjectedInput>(count) && holds<ProjectedInput>(count, Part::block),
                            "Mamba2ProjectedScan takes the block's inputs, then the output projection's "
                            "(lowered_inputs.def); got ", count, " inputs");
    ov::OutputVector inputs;
    for (size_t i = 0; i < count; ++i) inputs.push_back(node.get_input(int(i)));
    return std::make_shared<ProjectedSelectiveScan>(inputs, softplus == 1, chunk_size, node.get_attribute<float>("norm_eps"),
                                                    groups, reversed == 1)->outputs();
}

std::vector<ov::Extension::Ptr> selective_scan_openvino_extensions() {
    return {std::make_shared<ov::OpExtension<SelectiveScan>>(),
            std::make_shared<ov::OpExtension<ProjectedSelectiveScan>>(),
            std::make_shared<ov::frontend::onnx::ConversionExtension>(
                "SelectiveScan", "ai.onnx.contrib", [](const ov::frontend::NodeContext& node) {
                    return convert_onnx_node(node, false);
                }),
            std::make_shared<ov::frontend::onnx::ConversionExtension>(
                "Mamba2Scan", "brr.openvino", [](const ov::frontend::NodeContext& node) {
                    return convert_onnx_node(node, true);
                }),
            std::make_shared<ov::frontend::onnx::ConversionExtension>("Mamba2ProjectedScan", "brr.openvino",
                                                                      convert_projected_onnx_node)};
}

}  // namespace brr

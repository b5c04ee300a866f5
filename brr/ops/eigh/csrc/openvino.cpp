// OpenVINO operation ``SymmetricEigh`` (brr_opset1) with the Jacobi kernel of jacobi.hpp, and the ONNX frontend
// conversion of the ``ai.onnx.contrib::SymmetricEigh`` custom node to it. Registered by
// brr/ops/openvino_extension.cpp together with the other ops' extensions.
#include <algorithm>
#include <memory>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/conversion.hpp>
#include <openvino/op/op.hpp>

#include "jacobi.hpp"

namespace brr {

class SymmetricEigh : public ov::op::Op {
public:
    OPENVINO_OP("SymmetricEigh", "brr_opset1");

    SymmetricEigh() = default;
    explicit SymmetricEigh(const ov::Output<ov::Node>& a) : Op({a}) { constructor_validate_and_infer_types(); }

    void validate_and_infer_types() override {
        const auto type = get_input_element_type(0);
        NODE_VALIDATION_CHECK(this, type.is_dynamic() || type == ov::element::f32,
                              "SymmetricEigh computes f32 matrices, got ", type);
        const auto& shape = get_input_partial_shape(0);
        NODE_VALIDATION_CHECK(this, shape.rank().is_dynamic() || shape.rank().get_length() >= 2,
                              "SymmetricEigh needs (..., n, n), got ", shape);
        ov::PartialShape values = shape;
        if (shape.rank().is_static()) {
            std::vector<ov::Dimension> dims(shape.begin(), shape.end() - 1);
            values = ov::PartialShape(dims);
        }
        set_output_type(0, type, values);
        set_output_type(1, type, shape);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& inputs) const override {
        return std::make_shared<SymmetricEigh>(inputs.at(0));
    }

    bool visit_attributes(ov::AttributeVisitor&) override { return true; }

    bool has_evaluate() const override { return get_input_element_type(0) == ov::element::f32; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& shape = inputs[0].get_shape();
        OPENVINO_ASSERT(shape.size() >= 2 && shape[shape.size() - 1] == shape[shape.size() - 2],
                        "SymmetricEigh needs square matrices, got ", shape);
        const size_t n = shape.back(), matrices = n ? inputs[0].get_size() / (n * n) : 0;
        outputs[0].set_shape(ov::Shape(shape.begin(), shape.end() - 1));
        outputs[1].set_shape(shape);
        const float* a = inputs[0].data<const float>();
        float *values = outputs[0].data<float>(), *vectors = outputs[1].data<float>();
        const size_t batches = (matrices + eigh::kMatrices - 1) / eigh::kMatrices;
        ov::parallel_for(batches, [&](size_t batch) {
            thread_local std::vector<eigh::Lanes> work;
            const size_t first = batch * eigh::kMatrices;
            const int64_t count = std::min<int64_t>(eigh::kMatrices, int64_t(matrices - first));
            eigh::jacobi(a + first * n * n, count, int64_t(n), values + first * n, vectors + first * n * n, work);
        });
        return true;
    }
};

ov::OutputVector convert_symmetric_eigh(const ov::frontend::NodeContext& node) {
    FRONT_END_GENERAL_CHECK(node.get_input_size() == 1, "SymmetricEigh takes 1 input, got ", node.get_input_size());
    return std::make_shared<SymmetricEigh>(node.get_input(0))->outputs();
}

std::vector<ov::Extension::Ptr> eigh_openvino_extensions() {
    return {std::make_shared<ov::OpExtension<SymmetricEigh>>(),
            std::make_shared<ov::frontend::onnx::ConversionExtension>("SymmetricEigh", "ai.onnx.contrib",
                                                                      convert_symmetric_eigh)};
}

}  // namespace brr

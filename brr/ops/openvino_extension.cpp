// The OpenVINO extension library of brr's custom ops (libbrr_openvino.so.1): every op folder's OpenVINO
// operation and ONNX frontend conversion. Loaded with ``ov.Core().add_extension(path)`` before reading an IR
// that holds the ops, and passed to ``ov.convert_model(onnx_path, extension=path)`` for a plugin-mode graph;
// ``brr.ops.registry.openvino_extension()`` finds it.
#include <vector>

#include <openvino/core/extension.hpp>

namespace brr {
std::vector<ov::Extension::Ptr> selective_scan_openvino_extensions();
std::vector<ov::Extension::Ptr> eigh_openvino_extensions();

static std::vector<ov::Extension::Ptr> all_extensions() {
    auto extensions = selective_scan_openvino_extensions();
    for (auto& e : eigh_openvino_extensions()) extensions.push_back(e);
    return extensions;
}
}  // namespace brr

OPENVINO_CREATE_EXTENSIONS(brr::all_extensions());

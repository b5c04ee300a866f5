# GPU deployment image: TensorRT base, brr with the gpu extra (mamba-ssm, tensorrt), onnxruntime-gpu in place of onnxruntime,
# the custom-op plugins registered at start-up by brr's TensorRT runner.
#   docker build -f docker/gpu.Dockerfile -t brr:gpu .
#   docker run --rm --gpus all -v "$PWD/ckpt:/ckpt:ro" -v "$PWD/engines:/engines" \
#       brr:gpu brr-export /ckpt --out /engines/fp16 --engine fp16 --backend tensorrt
#   docker run --rm --gpus all -v "$PWD/engines:/engines:ro" -v "$PWD/edf:/data:ro" -v "$PWD/out:/out" \
#       brr:gpu brr-infer /engines/fp16 /data --out /out
FROM nvcr.io/nvidia/tensorrt:25.10-py3

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/brr
COPY pyproject.toml README.md CMakeLists.txt ./
COPY brr ./brr
# mamba-ssm compiles against the CUDA toolkit of the base image: torch and brr's own build requirements
# first, so that the build without isolation finds them.
RUN pip install "torch>=2.8,<2.15" "scikit-build-core>=0.10" "nanobind>=2.4" "openvino==2026.4.1" \
    && pip install --no-build-isolation -C cmake.define.BRR_MARCH=x86-64-v3 ".[gpu]" \
    && pip uninstall -y onnxruntime onnxruntime-gpu && pip install "onnxruntime-gpu>=1.20"

VOLUME ["/ckpt", "/engines", "/data", "/out"]
ENTRYPOINT []
CMD ["brr-infer", "--help"]

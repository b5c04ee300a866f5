# GPU deployment image: TensorRT 11 base, brr with the gpu extra (mamba-ssm, tensorrt), onnxruntime-gpu in place
# of onnxruntime, the custom-op plugins registered at start-up by brr's TensorRT runner.
#   docker build -f docker/gpu.Dockerfile -t brr:gpu .
#   docker run --rm --gpus all brr:gpu trt-smoke        # AOT plugin engine built by brr-export, run by trtexec
#   docker run --rm --gpus all -v "$PWD/ckpt:/ckpt:ro" -v "$PWD/engines:/engines" \
#       brr:gpu brr-export /ckpt --out /engines --precision fp16 --backend tensorrt
#   docker run --rm --gpus all -v "$PWD/engines:/engines:ro" -v "$PWD/edf:/data:ro" -v "$PWD/out:/out" \
#       brr:gpu brr-infer /engines /data --out /out
# TENSORRT_IMAGE: an NGC TensorRT release with TensorRT 11.x (checked below; brr supports 10.12 to 11.x).
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:26.10-py3
FROM ${TENSORRT_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Where NGC TensorRT images keep trtexec.
ENV PATH="${PATH}:/usr/src/tensorrt/bin:/opt/tensorrt/bin"
WORKDIR /opt/brr
COPY pyproject.toml README.md CMakeLists.txt ./
COPY brr ./brr
# mamba-ssm compiles against the CUDA toolkit of the base image: torch and brr's own build requirements
# first, so that the build without isolation finds them. The base image's TensorRT satisfies the extra.
RUN python -c "from importlib.metadata import version; v = version('tensorrt'); \
assert int(v.split('.')[0]) >= 11, f'TensorRT {v} in the base image; this image is for TensorRT 11.x'" \
    && pip install "torch>=2.8,<2.15" "scikit-build-core>=0.10" "nanobind>=2.4" "openvino==2026.4.1" \
    && pip install --no-build-isolation -C cmake.define.BRR_MARCH=x86-64-v3 ".[gpu]" \
    && pip uninstall -y onnxruntime onnxruntime-gpu && pip install "onnxruntime-gpu>=1.20"
COPY docker/trt_smoke.sh /usr/local/bin/trt-smoke

VOLUME ["/ckpt", "/engines", "/data", "/out"]
ENTRYPOINT []
CMD ["brr-infer", "--help"]

# CPU serving image: brr-infer on ONNX Runtime and OpenVINO engines (standard ops), without PyTorch
# or matplotlib (requirements-serve.txt); the native part is compiled in a build stage.
#   docker build -f docker/cpu.Dockerfile -t brr:cpu .
#   docker run --rm -v "$PWD/engines:/engines:ro" -v "$PWD/edf:/data:ro" -v "$PWD/out:/out" \
#       brr:cpu /engines/fp16 /data --out /out
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md CMakeLists.txt ./
COPY brr ./brr
# A portable build: the image runs on CPUs other than the one that built it.
RUN pip wheel --no-deps -C cmake.define.BRR_MARCH=x86-64-v3 -w /wheels .

FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
COPY requirements-serve.txt /tmp/requirements-serve.txt
RUN pip install -r /tmp/requirements-serve.txt
COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels

VOLUME ["/engines", "/data", "/out"]
ENTRYPOINT ["brr-infer"]
CMD ["--help"]

# CPU deployment image: brr with ONNX Runtime and OpenVINO; runs brr-infer on a mounted folder.
#   docker build -f docker/cpu.Dockerfile -t brr:cpu .
#   docker run --rm -v "$PWD/engines:/engines:ro" -v "$PWD/edf:/data:ro" -v "$PWD/out:/out" \
#       brr:cpu /engines/fp16 /data --out /out
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/brr
# The CPU wheel of torch keeps the image small; the package's own pin admits it.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.8,<2.15"
COPY pyproject.toml README.md ./
COPY brr ./brr
RUN pip install .

VOLUME ["/engines", "/data", "/out"]
ENTRYPOINT ["brr-infer"]
CMD ["--help"]

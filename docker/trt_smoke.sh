#!/usr/bin/env bash
# Smoke test of the GPU image (needs a GPU: docker run --rm --gpus all brr:gpu trt-smoke).
# brr-export builds and verifies a v3-small plugin-mode fp16 engine whose plugins run their AOT kernels; then
# trtexec, which runs no Python, loads and times that engine with the line its manifest records.
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
python -c 'from brr.model import build_detector, save_checkpoint; save_checkpoint(build_detector("v3-small"), "ckpt")'
brr-export ckpt --out out --precision fp16 --ops plugin --backend tensorrt --trt-batch-range 1:1:2
python - > run_engine.sh <<'PY'
import json

settings = json.load(open("out/tensorrt-fp16-plugin/manifest.json"))["settings"]
jit = sorted(plugin for plugin, kind in settings["plugins"].items() if kind != "aot")
if jit or not settings["plugins"]:
    raise SystemExit(f"trt-smoke: the engine's plugins are {settings['plugins']}; every one should be aot")
print(settings["trtexec"]["run"])
PY
bash run_engine.sh
echo "trt-smoke: PASS (AOT plugin engine built by brr-export, run by trtexec)"

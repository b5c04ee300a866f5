"""The trtexec command lines of a TensorRT artifact: what builds its engine outside brr, and what runs it.

The build line parses the artifact's typed graph (``model.onnx``, the bytes the manifest hashes) with
brr's build settings: the batch profile of ``--trt-batch-range``, TF32 off (``--noTF32``), the probes
marked as debug tensors (``--markDebug``), detailed profiling, the artifact's timing cache, and
``--saveEngine`` onto the artifact's ``model.engine``. TensorRT 10.x builds strongly typed networks only
when asked (``--stronglyTyped``); every 11.x network is strongly typed and its line leaves the flag out,
so the manifest records one line per major and brr-export prints the one for the TensorRT it found (both
where it found none). Two limits of trtexec:

- It keeps every output of an ONNX graph as an engine output (it refuses ``--output`` for ONNX), so its
  engine writes the probes as outputs where brr's serving engine has them as debug tensors only.
- It cannot run Python, and brr's plugins are Python-defined (``tensorrt.plugin``): a plugin-mode graph
  does not parse there. brr-export builds that engine; trtexec then loads and times it without Python
  wherever each plugin got its ahead-of-time (AOT) kernel, which the engine embeds.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from brr.model.contract import INPUT_NAME

TRTEXEC = "trtexec"
TENSORRT_MAJORS = (10, 11)
STANDARD_OPS = "standard"
PLUGINS_NOT_BUILT = ("trtexec cannot build this engine: brr's plugins are defined in Python (tensorrt.plugin), "
                     "which trtexec does not run; brr-export builds it")


def major_key(major: int) -> str:
    """The manifest's key for a TensorRT major: "10.x" or "11.x" (later majors build as 11.x does)."""
    return "10.x" if major < 11 else "11.x"


def input_shape(batch: int, n_channels: int, window: int) -> str:
    return f"{INPUT_NAME}:{batch}x{n_channels}x{window}"


def build_command(directory: Path, network: str, engine: str, timing_cache: str, batch: tuple[int, int, int],
                  n_channels: int, window: int, probes: Sequence[str], major: int) -> str:
    """The trtexec line that builds ``directory/engine`` from ``directory/network`` as brr builds it."""
    lo, opt, hi = (input_shape(b, n_channels, window) for b in batch)
    args = [TRTEXEC, f"--onnx={directory / network}"]
    if major < 11:
        args.append("--stronglyTyped")
    args += [f"--minShapes={lo}", f"--optShapes={opt}", f"--maxShapes={hi}", "--noTF32"]
    if probes:
        args.append(f"--markDebug={','.join(probes)}")
    args += ["--profilingVerbosity=detailed", f"--timingCacheFile={directory / timing_cache}",
             f"--saveEngine={directory / engine}", "--skipInference"]
    return shlex.join(args)


def run_command(directory: Path, engine: str, batch: tuple[int, int, int], n_channels: int, window: int) -> str:
    """The trtexec line that loads ``directory/engine`` and times it at the profile's optimum batch."""
    return shlex.join([TRTEXEC, f"--loadEngine={directory / engine}",
                       f"--shapes={input_shape(batch[1], n_channels, window)}"])


def trtexec_record(directory: Path, ops: str, network: str, engine: str, timing_cache: str,
                   batch: tuple[int, int, int], n_channels: int, window: int, probes: Sequence[str]) -> dict:
    """What a manifest records: the build line per TensorRT major (None where trtexec cannot build the
    graph, with why) and the run line."""
    shape = (batch, n_channels, window)
    builds = None if ops != STANDARD_OPS else {
        major_key(major): build_command(directory, network, engine, timing_cache, *shape, probes, major)
        for major in TENSORRT_MAJORS}
    record = {"build": builds, "run": run_command(directory, engine, *shape)}
    if builds is None:
        record["build_note"] = PLUGINS_NOT_BUILT
    return record


def printed_lines(record: Mapping, major: int | None, export_command: str,
                  jit_plugins: Sequence[str] = ()) -> list[str]:
    """What brr-export prints of ``record``: each command after a ``#`` line saying what it does; the build
    line of TensorRT ``major`` (of each major when None); in plugin mode, ``export_command`` builds."""
    lines: list[str] = []
    if record["build"] is None:
        lines += [f"# {PLUGINS_NOT_BUILT} on a machine with TensorRT and a CUDA GPU:", export_command]
    else:
        for key, command in record["build"].items():
            if major is None or key == major_key(major):
                lines += [f"# builds the engine with trtexec (TensorRT {key}):", command]
    if jit_plugins:
        lines.append(f"# trtexec cannot run this engine: {', '.join(jit_plugins)} got its JIT (Python) "
                     "implementation, which only a Python process with brr runs")
    else:
        plugins = " without Python (each plugin's AOT kernel is in the engine)" if record["build"] is None else ""
        lines += [f"# runs and times the engine with trtexec{plugins}:", record["run"]]
    return lines

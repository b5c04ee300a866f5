"""Ctrl-C and SIGTERM after OpenVINO engines were released in another order than compiled (the front and rest
of a split engine): Python's handler runs, the process is not killed by SIGSEGV (``signal_stack``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from brr.backends.openvino.loader import CompiledModel
from brr.backends.openvino.signal_stack import current_signal_stack

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU plugin swaps stacks on Linux")


def _relu_ir(path):
    source = ops.parameter([2, 3], np.float32, name="x")
    ov.save_model(ov.Model([ops.relu(source)], [source]), str(path))
    return path


def test_compiling_leaves_the_threads_signal_stack_as_it_was(tmp_path):
    before = current_signal_stack()
    compiled = CompiledModel(_relu_ir(tmp_path / "relu.xml"))()
    assert current_signal_stack() == before
    del compiled
    assert current_signal_stack() == before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_engines_released_out_of_order_reaches_python(tmp_path, signum):
    """In a process of its own: the planted order kills it with SIGSEGV when compiling lets OpenVINO's stack stay."""
    script = textwrap.dedent(f"""
        import faulthandler, gc, os, signal, sys
        faulthandler.enable()  # as pytest and python -X faulthandler do: Python's own alternate stack
        from brr.backends.openvino.loader import CompiledModel

        def interrupt(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, interrupt)  # as brr-infer does
        front = CompiledModel({str(_relu_ir(tmp_path / "front.xml"))!r})()
        rest = CompiledModel({str(_relu_ir(tmp_path / "rest.xml"))!r})()
        del front; gc.collect()
        del rest; gc.collect()
        try:
            os.kill(os.getpid(), {int(signum)})
        except KeyboardInterrupt:
            print("handled")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout.strip()) == (0, "handled"), run.stderr

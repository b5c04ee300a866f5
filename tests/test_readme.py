"""The README's Python block runs as written: the documented API is the one that works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_block_runs(tmp_path):
    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    check = block + "\nassert logits.shape == (1, 15360) and y.shape == (b, l, h, p)\n" \
                    "assert torch.allclose(values, torch.ones(4))\n"
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()

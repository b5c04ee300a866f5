"""The Dockerfiles copy files that exist and run console scripts the package declares."""

import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def command_words(rest: str) -> list[str]:
    import json

    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


@pytest.mark.parametrize("name", ["cpu.Dockerfile", "gpu.Dockerfile"])
def test_dockerfile_copies_existing_files_and_names_real_entry_points(name):
    rows = instructions(ROOT / "docker" / name)
    # Docker allows only ARG before the first FROM (a base image chosen at build time).
    keywords = [keyword for keyword, _ in rows]
    assert "FROM" in keywords and set(keywords[: keywords.index("FROM")]) <= {"ARG"}, keywords[:3]
    # Copies from the build context (not --from another stage): their sources must exist.
    copies = [command_words(rest) for keyword, rest in rows if keyword == "COPY" and not rest.startswith("--from")]
    assert copies, "the image must copy the package in"
    for words in copies:
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"{name}: COPY source {source} does not exist"
    # The package build compiles the native kernels: it needs the CMake project beside pyproject.toml.
    copied = {Path(source).name for words in copies for source in words[:-1]}
    assert {"pyproject.toml", "CMakeLists.txt", "brr"} <= copied, f"{name}: copies {sorted(copied)}"
    commands = [command_words(rest) for keyword, rest in rows if keyword in ("ENTRYPOINT", "CMD")]
    programs = [words[0] for words in commands if words and words[0].startswith("brr")]
    assert programs, f"{name}: no brr console script as entry point or command"
    assert set(programs) <= SCRIPTS, f"{name}: unknown console scripts {set(programs) - SCRIPTS}"
    # Every brr-* named in the usage lines is a declared console script too.
    usage = set(re.findall(r"\bbrr-[a-z]+", (ROOT / "docker" / name).read_text()))
    assert usage <= SCRIPTS, f"{name}: usage names {usage - SCRIPTS}"

"""A plain ``pip install -e .`` runs every default code path: no module may need an extra to import.

The check runs in a subprocess whose import system refuses every top-level module that only the
optional extras (dev, gpu, ray) provide, as if they were not installed; the extras are read from the
package's own metadata, so a new dev-only dependency is covered without editing this test.
"""

import json
import pkgutil
import re
import subprocess
import sys
import textwrap
from importlib import metadata

import brr

CHECK = textwrap.dedent("""
    import importlib, importlib.abc, json, sys, traceback

    hidden, modules, scripts = json.loads(sys.argv[1])

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in hidden:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    failures = []
    for target in modules + scripts:
        module, _, attribute = target.partition(":")
        try:
            loaded = importlib.import_module(module)
            if attribute:
                getattr(loaded, attribute)
        except ImportError as error:
            # An optional feature may refuse to load, if it says what to install.
            if "pip install" not in str(error):
                failures.append(f"{target}: {error}")
        except Exception:
            failures.append(f"{target}: {traceback.format_exc(limit=3)}")
    print(json.dumps(failures))
""")


def extra_only_modules() -> set[str]:
    """Top-level import names of the distributions that only brr's extras require."""
    base, extra = set(), set()
    for requirement in metadata.requires("brr") or []:
        name = re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        (extra if "extra ==" in requirement else base).add(name)
    extra_only = extra - base
    installed = {module for module, dists in metadata.packages_distributions().items()
                 if {d.lower().replace("_", "-") for d in dists} & extra_only}
    # An extra that is not installed here is hidden by its usual import name all the same.
    return installed | {name.replace("-", "_") for name in extra_only}


def brr_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(brr.__path__, "brr."))


def console_scripts() -> list[str]:
    return sorted(ep.value for ep in metadata.distribution("brr").entry_points if ep.group == "console_scripts")


def test_every_module_and_console_script_imports_without_the_extras():
    hidden = extra_only_modules()
    assert {"pytest", "torch_geometric"} <= hidden
    modules, scripts = brr_modules(), console_scripts()
    assert "brr.diff.report" in modules and "brr.cli.pipeline:main" in scripts
    done = subprocess.run([sys.executable, "-c", CHECK, json.dumps([sorted(hidden), modules, scripts])],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert failures == [], "imports that need an extra:\n" + "\n".join(failures)


def test_the_check_catches_a_module_that_needs_an_extra():
    done = subprocess.run([sys.executable, "-c", CHECK, json.dumps([["pytest"], ["pytest"], []])],
                          capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["pytest: No module named 'pytest'"]

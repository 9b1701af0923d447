"""Build hook: compiles the chunk index's C table (src/strongroom/repository/_chunktable.c).

One small C file with no dependency beyond Python's headers, compiled with the
interpreter's own compiler and flags (``sysconfig``). A regular wheel gets the
extension module and a platform tag; an editable install (``pip install -e``, what
scripts/setup.sh does) gets it built next to the source, where the import finds it.
Without a C compiler or Python's headers the build fails with a message saying what to
install (Debian: gcc python3-dev); ``STRONGROOM_PURE_PYTHON=1`` builds without it, and
strongroom then uses the table written in Python (slower, same results).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/strongroom/repository/_chunktable.c")
MODULE = "strongroom/repository/_chunktable"


def compile_extension(root: Path, out_dir: Path) -> Path:
    """Compile the C table into out_dir; returns the module file."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    out = out_dir / f"_chunktable{suffix}"
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        raise RuntimeError(
            f"strongroom: Python's C headers are missing ({include}/Python.h); on Debian "
            "install python3-dev, or build with STRONGROOM_PURE_PYTHON=1"
        )
    command = [
        *cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
        "-Wno-missing-field-initializers", "-Wno-cast-function-type",
        f"-I{include}", str(root / SOURCE), "-o", str(out),
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(
            f"strongroom: no C compiler ({cc[0]}); on Debian install gcc, or build with "
            "STRONGROOM_PURE_PYTHON=1"
        ) from None
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"strongroom: compiling {SOURCE} failed:\n{e.stderr}") from None
    return out


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("STRONGROOM_PURE_PYTHON") == "1":
            return
        root = Path(self.root)
        if version == "editable":
            compile_extension(root, root / SOURCE.parent)
            return
        out = compile_extension(root, Path(tempfile.mkdtemp(prefix="strongroom-build-")))
        build_data["force_include"][str(out)] = f"{MODULE}{out.name[len('_chunktable') :]}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

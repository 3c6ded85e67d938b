"""Core data modules never import ray (ast scan), and importing them runs nothing heavy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ["safe_pickle.py", "formats.py", "generate.py", "shards.py", "storage.py", "ffcv_io.py"]


@pytest.mark.parametrize("name", CORE)
def test_core_module_does_not_import_ray(name: str) -> None:
    tree = ast.parse((ROOT / "pipeline" / "data" / name).read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module.split(".")[0])
    assert "ray" not in mods
    assert mods <= {"__future__", "numpy", "pyarrow", "torch", "pipeline", "PIL", "ffcv",
                    "hashlib", "json", "math", "os", "posixpath", "uuid", "dataclasses",
                    "pathlib", "typing", "urllib", "re", "codecs", "io", "pickle", "tempfile",
                    "shutil", "collections", "itertools"}, mods

"""Core modules must never import ray (STYLE §2.1): they run on a GPU box without Ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline"

# Worker / driver modules: the only places allowed to import ray.
RAY_ALLOWED = {
    "data/ray_datasets.py",
    "coreset/ray_tasks.py",
    "eval/ray_tasks.py",
    "finetune/loops.py",
    "finetune/driver.py",
    "finetune/ray_tasks.py",
    "train/loops.py",
    "train/driver.py",
    "train/sat_loops.py",
    "train/sat_driver.py",
    "train/segments.py",
    "train/worker.py",
    "tune/sweep.py",
    "ray_utils.py",
    "benchmarks/data.py",
    "benchmarks/rcs.py",
    "benchmarks/workers.py",
}
CORE_PACKAGES = ["models", "losses", "attacks", "coreset", "data", "train", "eval", "finetune", "report"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _core_files() -> list[Path]:
    files = [PIPELINE / "config.py", PIPELINE / "dist.py"]
    for pkg in CORE_PACKAGES:
        files += sorted((PIPELINE / pkg).rglob("*.py"))
    return [f for f in files if f.relative_to(PIPELINE).as_posix() not in RAY_ALLOWED]


def test_core_modules_exist():
    # the scan below must actually look at something: the core packages are populated
    assert len(_core_files()) >= 10


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.relative_to(PIPELINE).as_posix())
def test_core_module_does_not_import_ray(path: Path):
    assert "ray" not in _imports(path), f"{path} imports ray; move that code to a worker/driver module"


def test_scanner_detects_ray_import(tmp_path: Path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom ray import train\n")
    assert "ray" in _imports(f)

"""The package layers, enforced by import-linter (contracts in pyproject.toml), not by convention."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {c["id"]: c["name"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}


def _lint(root: Path) -> subprocess.CompletedProcess:
    # A subprocess: import-linter configures logging process-wide (it disables other loggers).
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    env = {"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run([lint, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, capture_output=True,
                          text=True, env=env)


def test_import_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(CONTRACTS)} kept, 0 broken" in r.stdout


# One import each contract forbids, planted in a copy of the packages: the contract must report it.
VIOLATIONS = {
    "layers": ("export/inputs.py", "import runtime.sampler"),  # export reaching up into the runtime
    "no-apps-below": ("runtime/requests.py", "import runtime.apps.cli"),  # the core knowing its applications
    "no-training-below": ("zoo/registry.py", "import zoo.training.train"),  # the zoo core knowing it is trained
    "torch-free": ("zoo/solvers.py", "import torch"),  # the deployment path loading torch
}


@pytest.mark.parametrize("contract", sorted(CONTRACTS))
def test_each_contract_can_fail(tmp_path, contract):
    for name in ("zoo", "export", "runtime"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path, line = VIOLATIONS[contract]
    target = tmp_path / path
    target.write_text(target.read_text() + f"\n{line}  # planted by test_layers\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    broken = [ln for ln in r.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert any(CONTRACTS[contract] in ln for ln in broken), r.stdout

"""The package layers, enforced by import-linter (contracts in pyproject.toml), not by convention."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path) -> subprocess.CompletedProcess:
    # A subprocess: import-linter configures logging process-wide (it disables other loggers).
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([lint, "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True, text=True)


def test_import_contracts_hold():
    r = _lint(ROOT / "pyproject.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_a_broken_layer_is_caught(tmp_path):
    """The check can fail: a copy of the config that also forbids numpy in the core reports it broken."""
    text = (ROOT / "pyproject.toml").read_text().replace('forbidden_modules = ["torch"]', 'forbidden_modules = ["torch", "numpy"]')
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(text)
    r = _lint(cfg)
    assert r.returncode != 0
    assert "zoo.diffusion is not allowed to import numpy" in r.stdout

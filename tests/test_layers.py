"""The package layers, enforced by import-linter (contracts in pyproject.toml), not by convention.

import-linter sees ``import`` statements. An import made from a string (``importlib.import_module``) or
through a package's lazy attributes (``zoo.train`` after ``import zoo``: its ``_LAZY`` tables) is a door
it cannot see, so the tests first write each such import out as a plain one, in a copy of the packages,
and lint that: a door to a layer a module may not reach breaks the same contract a plain import would.
"""

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "export", "runtime")
CONTRACTS = {c["id"]: c["name"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}


def _lint(root: Path) -> subprocess.CompletedProcess:
    # A subprocess: import-linter configures logging process-wide (it disables other loggers).
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    env = {"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run([lint, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, capture_output=True,
                          text=True, env=env)


def _faces() -> dict[str, dict[str, str]]:
    """Each package's lazy attributes: attribute -> the module importing it loads."""
    faces = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        faces[name] = {**getattr(package, "_LAZY", {}), **getattr(package, "_LAZY_MODULES", {})}
    return faces


def _hidden_imports(path: Path, faces: dict[str, dict[str, str]]) -> set[str]:
    """The modules a file reaches without an import statement of them: string imports and package faces' lazy attributes."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                found.add(arg.values[0].value.rstrip("."))  # f"runtime.apps.commands.{name}": that package
        elif isinstance(node, ast.Import):
            found.update(target for a in node.names if a.name in faces for target in faces[a.name].values())
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in faces:
            found.update(faces[node.module][a.name] for a in node.names if a.name in faces[node.module])
    return found


def _copy_with_hidden_imports_written_out(dest: Path) -> Path:
    faces = _faces()
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for path in (p for name in PACKAGES for p in (dest / name).rglob("*.py")):
        if path.name == "__init__.py" and path.parent.name in faces:
            continue  # a face's own lazy table is where the door is, not a use of it
        hidden = _hidden_imports(path, faces)
        if hidden:
            path.write_text(path.read_text() + "".join(f"\nimport {m}  # hidden import, written out by test_layers"
                                                       for m in sorted(hidden)) + "\n")
    return dest


def test_import_contracts_hold_with_hidden_imports_written_out(tmp_path):
    r = _lint(_copy_with_hidden_imports_written_out(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(CONTRACTS)} kept, 0 broken" in r.stdout


# Imports each contract forbids, planted in a copy of the packages: the contract must report each.
VIOLATIONS = [
    ("layers", "export/inputs.py", "import runtime.sampler"),  # export reaching up into the runtime
    ("layers", "zoo/models.py", "import zoo.solvers"),  # siblings of one layer of the zoo core
    ("layers", "zoo/conditioning.py", "import zoo.models"),  # the declaration reaching up to the models that make it
    ("layers", "runtime/requests.py", "import runtime.feeds"),  # siblings of one layer of the runtime core
    ("layers", "runtime/noise.py", "import runtime.requests"),  # the runtime core reaching up a layer
    ("layers", "zoo/diffusers_model.py", "import zoo.registry"),  # the registry's own entry importing it back
    ("layers", "export/inputs.py", "import importlib; importlib.import_module('runtime.sampler')"),  # from a string
    ("no-apps-below", "runtime/requests.py", "import runtime.apps.cli"),  # the core knowing its applications
    ("no-training-below", "zoo/registry.py", "import zoo.training.train"),  # the zoo core knowing it is trained
    ("no-training-below", "export/verify.py", "from zoo import train"),  # the same through the face's lazy door
    ("torch-free", "zoo/solvers.py", "import torch"),  # the deployment path loading torch
]


@pytest.mark.parametrize("contract,path,line", VIOLATIONS, ids=[f"{c}:{p}:{ln.split()[-1]}" for c, p, ln in VIOLATIONS])
def test_each_contract_can_fail(tmp_path, contract, path, line):
    target = tmp_path / path
    _copy_with_hidden_imports_written_out(tmp_path)
    target.write_text(target.read_text() + f"\n{line}  # planted by test_layers\n")
    # the planted line's own hidden import, written out as the whole copy's were
    for hidden in sorted(_hidden_imports(target, _faces())):
        target.write_text(target.read_text() + f"\nimport {hidden}  # hidden import, written out by test_layers\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    broken = [ln for ln in r.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert any(CONTRACTS[contract] in ln for ln in broken), r.stdout


def test_every_contract_is_planted():
    assert {c for c, _, _ in VIOLATIONS} == set(CONTRACTS)

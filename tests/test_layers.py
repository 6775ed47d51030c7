"""The package layers, enforced by import-linter (contracts in pyproject.toml), not by convention."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(monkeypatch, capsys):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 kept, 0 broken" in out


def test_a_broken_layer_is_caught(tmp_path, monkeypatch, capsys):
    """The check can fail: a copy of the config that forbids zoo.diffusion -> numpy reports it broken."""
    from importlinter.cli import lint_imports

    text = (ROOT / "pyproject.toml").read_text().replace('forbidden_modules = ["torch"]', 'forbidden_modules = ["torch", "numpy"]')
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(text)
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(cfg)) != 0
    assert "zoo.diffusion is not allowed to import numpy" in capsys.readouterr().out

"""The CLI: one line and a non-zero exit for user errors, files written only on success."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from runtime.apps.cli import main


def test_eager_sample_png(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["eager-sample", "--hidden", "8", "--size", "8", "--n", "3", "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).size == (2 + 2 * 66, 2 + 2 * 66)  # 8 px images enlarged 8x to be seen
    assert str(out) in capsys.readouterr().out


def test_eager_sample_npy_is_deterministic(tmp_path):
    args = ["eager-sample", "--hidden", "8", "--size", "8", "--n", "2", "--steps", "3", "--eta", "1"]
    main(args + ["--out", str(tmp_path / "a.npy")])
    main(args + ["--out", str(tmp_path / "b.npy")])
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(a, b)


def test_user_error_is_one_line_no_traceback(tmp_path):
    out = tmp_path / "s.png"
    r = subprocess.run(
        [sys.executable, "-m", "runtime.apps.cli", "eager-sample", "--model", "unet3", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "diffzoo eager-sample: error: unknown model 'unet3': available models are ['conv', 'diffusers_unet', 'residual', 'unet']"
    ]
    assert not out.exists()


def test_readme_python_snippets_run_after_a_plain_import_zoo(tmp_path, monkeypatch):
    """The README writes zoo.train, zoo.data and zoo.metrics after `import zoo`: they are the training package's modules."""
    import zoo

    cfg = zoo.train.TrainConfig(model="unet", model_config={"hidden": 8}, data="digits", size=8, steps=3)
    assert cfg.steps == 3 and zoo.train.train.__module__ == "zoo.training.train"
    assert len(zoo.data.open_dataset("digits", 8, train=False)) == 360  # the held-out fifth of the digits
    assert zoo.metrics.quality_report.__module__ == "zoo.training.metrics"
    assert zoo.build("unet", hidden=8, channels=1).config == zoo.UNetConfig(hidden=8, channels=1)


def test_train_passes_model_config_and_refuses_a_malformed_one(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    args = ["train", "--model", "unet", "--hidden", "8", "--model-config", "levels=1,blocks=2", "--data", "digits",
            "--size", "8", "--steps", "2", "--batch", "4", "--out", str(run)]
    assert main(args) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_config"] == {"hidden": 8, "kernel_size": 3, "levels": 1, "blocks": 2} and cfg["data"] == "digits"
    with pytest.raises(SystemExit) as exit_:  # an argparse usage error: one line, status 2
        main(args[:6] + ["levels"] + args[7:-1] + [str(tmp_path / "b")])
    assert exit_.value.code == 2 and "'levels' is not KEY=VALUE" in capsys.readouterr().err
    assert main(args[:6] + ["depth=2"] + args[7:-1] + [str(tmp_path / "c")]) == 2
    assert "unknown config key(s) ['depth'] for model 'unet'" in capsys.readouterr().err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"diffzoo {version('diffzoo')}"

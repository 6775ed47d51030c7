"""diffzoo eval: a bundle or a training run -> the quality report; the same figures under torchrun."""

import json
import os
import subprocess
import sys

import pytest

import export
from runtime.apps.cli import main
from zoo.training.train import TrainConfig, train
from zoo.weights import load_weights


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    cfg = TrainConfig(model="conv", model_config={"hidden": 8}, data="digits", size=8, steps=20, batch=16,
                      checkpoint_every=20, log_every=20)
    train(cfg, run, progress=False)
    return run


@pytest.fixture(scope="module")
def digits_bundle(digits_run, tmp_path_factory):
    model, schedule, meta = load_weights(digits_run / "last" / "ema.safetensors")
    return export.export_bundle(model, tmp_path_factory.mktemp("eval") / "b", schedule=schedule, example_shape=(1, 8, 8),
                                formats=["onnx"], data_source=meta["data"]["source"])


def _quality(path):
    return json.loads(path.read_text())["quality"]


def test_eval_a_run_and_its_bundle_agree(digits_run, digits_bundle, tmp_path, capsys):
    args = ["--samples", "24", "--steps", "3", "--provider", "cpu"]
    status = main(["eval", str(digits_run), *args, "--json", str(tmp_path / "run.json"), "--grid", str(tmp_path / "g.png")])
    text = capsys.readouterr().out
    assert "against digits" in text and "Frechet distance" in text and "real held-out (floor)" in text
    run_q = _quality(tmp_path / "run.json")
    assert status == (0 if run_q["met"] else 1)  # the exit status is the verdict printed
    assert ("targets met" if run_q["met"] else "targets NOT met (exit status 1)") in text
    assert run_q["n"] == 24 and len(run_q["class_share_samples"]) == 10
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size[0] >= 5 * 64  # 24 images scaled 8x: visible

    assert digits_bundle.manifest["data"]["source"] == "digits"
    assert main(["eval", str(digits_bundle.path), *args, "--json", str(tmp_path / "bundle.json")]) == status
    assert _quality(tmp_path / "bundle.json") == run_q  # the same weights, the same image stream


def test_eval_under_torchrun_merges_the_shards(digits_bundle, tmp_path):
    args = ["eval", str(digits_bundle.path), "--samples", "24", "--steps", "3", "--provider", "cpu"]
    status = main([*args, "--json", str(tmp_path / "one.json")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "runtime.apps.cli",
           *args, "--json", str(tmp_path / "two.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == status, r.stderr[-3000:]
    assert r.stdout.count("Frechet distance") == 1  # rank 0 alone reports
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["processes"] == 2 and two["quality"] == _quality(tmp_path / "one.json")


def test_eval_errors_are_one_line(digits_run, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "neither a bundle nor a training run" in capsys.readouterr().err
    model, schedule, _ = load_weights(digits_run / "last" / "ema.safetensors")
    b = export.export_bundle(model, tmp_path / "b", schedule=schedule, example_shape=(1, 8, 8), formats=["onnx"],
                             solvers=["dpmpp_2m"])  # the cheaper export: the refusal comes before any sampling
    assert main(["eval", str(b.path), "--samples", "4", "--steps", "2", "--provider", "cpu"]) == 2
    assert "does not record its training data: pass --data" in capsys.readouterr().err
    assert main(["eval", str(b.path), "--grid", str(tmp_path / "no" / "g.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_time_to_quality_measures_every_solver_and_backend(digits_bundle):
    """bench --quality: FD against steps per solver, the stated target, and each backend's seconds to it."""
    import numpy as np

    import runtime
    from runtime.apps.bench.time_to_quality import (
        CONFIGS,
        STEPS,
        format_time_to_quality,
        run_time_to_quality,
    )
    from zoo.training.metrics import quality_report

    res = run_time_to_quality(digits_bundle.path, "digits", n=24, batch=4, repeats=1, backends=("eager", "ort-loop"))
    assert list(res["quality"]) == [f"{s} {p}" for s, p in CONFIGS]
    assert all(list(rows) == [str(s) for s in STEPS] for rows in res["quality"].values())
    # the figures are the metric's own: recompute one cell independently
    x = runtime.load(digits_bundle.path, "cpu").sample(24, num_steps=10, solver="dpmpp_2m", spacing="trailing")
    assert res["quality"]["dpmpp_2m trailing"]["10"]["fd"] == pytest.approx(quality_report(x, "digits").fd_samples, rel=1e-6)
    ref = res["reference"]
    assert ref["fd"] == res["quality"]["ddim leading"]["50"]["fd"] and ref["target"] == ref["fd"] + ref["spread"]
    for label, steps in res["steps_to_target"].items():  # the fewest steps within the target, or None
        fds = [res["quality"][label][str(s)]["fd"] for s in STEPS]
        reached = [s for s, f in zip(STEPS, fds) if f <= ref["target"]]
        assert steps == (reached[0] if reached else None)
    assert res["steps_to_target"]["ddim leading"] is not None  # the reference reaches its own quality
    assert set(res["seconds_to_target"]) == {"eager", "ort-loop"}
    assert all(np.isfinite(v) and v > 0 for r in res["ms_per_step"].values() for v in r.values())
    text = format_time_to_quality(res)
    assert "seconds for a batch to reach the target" in text and "dpmpp_2m trailing" in text and "cost per step" in text
    assert set(res["reference_seconds"]) == {"eager", "ort-loop"} and res["skipped"] == []


def test_bench_quality_needs_a_trained_model(capsys):
    assert main(["bench", "--quality"]) == 2
    assert "--quality needs a trained model" in capsys.readouterr().err


def test_eval_guidance_curve_is_the_same_samples_at_each_w(cond_bundle, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from zoo.images import grid_array

    args = ["eval", str(cond_bundle.path), "--samples", "20", "--steps", "2", "--provider", "cpu"]
    assert main([*args, "--guidance", "0,3", "--json", str(tmp_path / "curve.json"), "--grid", str(tmp_path / "g.png")]) == 0
    text = capsys.readouterr().out
    assert "labels: every class in turn (10 classes)" in text and "cond. acc" in text and "worst class" in text
    curve = json.loads((tmp_path / "curve.json").read_text())["curve"]
    assert [c["guidance"] for c in curve] == [0.0, 3.0]
    assert all(len(c["quality"]["conditional_accuracy_per_class"]) == 10 for c in curve)
    assert curve[0]["quality"]["fd_samples"] != curve[1]["quality"]["fd_samples"]  # w steers the samples
    # a point of the curve is the plain eval at that w, with every class in turn
    status = main([*args, "--class", "all", "--guidance", "3", "--json", str(tmp_path / "one.json")])
    assert _quality(tmp_path / "one.json") == curve[1]["quality"] and status == (0 if curve[1]["quality"]["met"] else 1)
    rows = grid_array(np.zeros((40, 1, 8, 8), np.float32), nrow=20, scale=8)  # a row of 20 per w
    assert Image.open(tmp_path / "g.png").size[1] == rows.shape[0]
    # without --class and --guidance a conditional bundle samples its null class: no conditional accuracy
    status = main([*args, "--json", str(tmp_path / "null.json")])
    assert "labels: null class" in capsys.readouterr().out and status == (0 if _quality(tmp_path / "null.json")["met"] else 1)
    assert _quality(tmp_path / "null.json")["conditional_accuracy"] is None


@pytest.mark.parametrize("extra,match", [
    (["--guidance", "1,-1"], "guidance [1.0, -1.0] is invalid"),
    (["--guidance", "nan"], "guidance [nan] is invalid"),
    (["--class", "12"], "label 12 is invalid: expected a class index 0..9"),
    (["--guidance", "one"], "--guidance 'one' is invalid"),
])
def test_eval_bad_classes_and_guidance_are_one_line(cond_bundle, capsys, extra, match):
    assert main(["eval", str(cond_bundle.path), "--samples", "4", "--steps", "2", "--provider", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and "Traceback" not in "\n".join(err)


def test_eval_guidance_needs_a_conditional_bundle(digits_bundle, capsys):
    assert main(["eval", str(digits_bundle.path), "--samples", "4", "--steps", "2", "--guidance", "2"]) == 2
    assert "need a class-conditional bundle" in capsys.readouterr().err


def test_time_to_quality_of_a_conditional_bundle_is_guided(cond_bundle):
    """bench --quality on a class-conditional bundle: every class in turn at w, with the conditional accuracy."""
    import runtime
    from runtime.apps.bench.time_to_quality import format_time_to_quality, run_time_to_quality
    from runtime.apps.evaluate import every_class
    from zoo.training.metrics import quality_report

    res = run_time_to_quality(cond_bundle.path, "digits", n=20, batch=4, repeats=1, backends=("eager", "ort-fused"),
                              guidance=2.0)
    assert res["guidance"] == 2.0
    labels = every_class(cond_bundle.manifest, 20)
    x = runtime.load(cond_bundle.path, "cpu").sample(20, num_steps=10, solver="dpmpp_2m", spacing="trailing",
                                                              labels=labels, guidance=2.0)
    q = quality_report(x, "digits", labels=labels)
    cell = res["quality"]["dpmpp_2m trailing"]["10"]
    assert cell["fd"] == pytest.approx(q.fd_samples, rel=1e-6) and cell["conditional_accuracy"] == q.conditional_accuracy
    text = format_time_to_quality(res)
    assert "every class in turn at guidance 2" in text and "conditional accuracy" in text

"""The trainer: learning, exact resume, crash-safe checkpoints, torchrun, CLI."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import export
import zoo
from runtime.apps.cli import main
from zoo.training.runs import CHECKPOINT_STATE, load_state
from zoo.training.train import TrainConfig, check_replicas, train, weights_digest
from zoo.weights import load_weights

TINY = dict(model_config={"hidden": 8}, size=8, batch=16, lr=2e-3, log_every=5)


def _weights(run):
    _, state = load_state(run)
    return state["model"], state["ema"]


def test_loss_goes_down_on_synthetic(tmp_path):
    cfg = TrainConfig(model_config={"hidden": 16}, size=8, batch=32, lr=2e-3, steps=300, log_every=20, checkpoint_every=300)
    r = train(cfg, tmp_path / "run", progress=False)
    first, last = r.losses[0][1], sum(l for _, l in r.losses[-3:]) / 3
    assert last < 0.6 * first, r.losses
    assert (tmp_path / "run" / "samples" / "step_0000300.png").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 300


def test_exact_resume(tmp_path):
    straight = TrainConfig(steps=20, checkpoint_every=10, **TINY)
    # The uninterrupted run in another process: nothing may depend on process state (seeds). Bit-equality
    # needs the same thread count on both sides (it sets the float reduction order of the conv kernels).
    code = (f"import torch; torch.set_num_threads({torch.get_num_threads()}); from zoo.training.train import TrainConfig, check_replicas, train, weights_digest; "
            f"train(TrainConfig(**{dataclasses.asdict(straight)!r}), {str(tmp_path / 'a')!r}, progress=False)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    train(straight, tmp_path / "b", progress=False, until=10)  # "interrupted" at step 10
    assert load_state(tmp_path / "b")[1]["step"] == 10
    train(straight, tmp_path / "b", resume=True, progress=False)
    (ma, ea), (mb, eb) = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=0, atol=0)
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], rtol=0, atol=0)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import zoo.training.train as zt

    real = zt.write_synced

    def crashing(path, data):
        if path.name == "state.pt" and path.parent.name.startswith(".step_0000020."):
            path.write_bytes(b"partial")  # half a file on disk, then the process "dies"
            raise KeyboardInterrupt("simulated crash")
        return real(path, data)

    monkeypatch.setattr(zt, "write_synced", crashing)
    cfg = TrainConfig(steps=30, checkpoint_every=10, **TINY)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False)
    ckpt, state = load_state(tmp_path / "run")
    assert state["step"] == 10 and ckpt.name == "step_0000010"
    model, _, meta = load_weights(ckpt / "ema.safetensors")
    assert meta["train"]["step"] == 10
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_0000010"]
    monkeypatch.setattr(zt, "write_synced", real)
    train(cfg, tmp_path / "run", resume=True, progress=False)  # and the run goes on from there
    train(cfg, tmp_path / "ref", progress=False)
    for k, v in _weights(tmp_path / "ref")[0].items():
        torch.testing.assert_close(_weights(tmp_path / "run")[0][k], v, rtol=0, atol=0)


def test_state_file_loads_with_weights_only(tmp_path):
    train(TrainConfig(steps=5, checkpoint_every=5, **TINY), tmp_path / "run", progress=False)
    ckpt = (tmp_path / "run" / "last").resolve()
    state = torch.load(ckpt / CHECKPOINT_STATE, weights_only=True)
    assert state["step"] == 5 and "optimizer" in state and "ema" in state


def test_training_errors(tmp_path):
    cfg = TrainConfig(steps=5, checkpoint_every=5, **TINY)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(cfg, tmp_path / "run", resume=True, progress=False)
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="size=8 but this run asks for size=12"):
        train(TrainConfig(steps=9, checkpoint_every=5, **{**TINY, "size": 12}), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(TrainConfig(steps=5, data=f"folder:{tmp_path / 'nope'}", **TINY), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="steps=0"):
        TrainConfig(steps=0)


def test_cli_train_then_export(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--hidden", "8", "--size", "8", "--steps", "6", "--batch", "8", "--checkpoint-every", "3", "--out", str(run)]
    assert main(args) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--data", "cifar10:/nonexistent", "--out", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(run), "--formats", "torchscript", "--out", str(tmp_path / "b")]) == 0
    m = export.load_manifest(tmp_path / "b")
    assert m["model"]["config"]["hidden"] == 8 and m["data"]["shape"] == [3, 8, 8]


def test_torchrun_two_processes_stay_in_sync(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "runtime.apps.cli",
           "train", "--hidden", "8", "--size", "8", "--steps", "6", "--batch", "8", "--checkpoint-every", "3",
           "--device", "cpu", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    # the digest both ranks agreed on is that of the weights the run saved
    _, state = load_state(run)
    model = zoo.build("residual", hidden=8, channels=3)
    model.load_state_dict(state["model"])
    assert summary["weights_sha256"] == weights_digest(model)
    assert r.stdout.count("checkpoint:") == 1  # rank 0 alone reports and writes
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [6]  # log_every=10: only the last step, written once


def test_diverged_replicas_are_a_failure():
    assert check_replicas(["ab", "ab"]) == "ab"
    with pytest.raises(RuntimeError, match=r"replicas diverged: weight digests \['ab', 'cd'\]"):
        check_replicas(["ab", "cd"])


def test_a_second_training_into_the_same_run_is_refused(tmp_path):
    from zoo.files import OutputBusyError, output_lock

    with output_lock(tmp_path / "run"):  # another `diffzoo train --out run` in progress
        with pytest.raises(OutputBusyError, match="being written by another diffzoo process"):
            train(TrainConfig(steps=2, checkpoint_every=2, **TINY), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


class _Planted:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("content,match", [
    (b"", "not a diffzoo training state .*truncated, empty"),
    (b"garbage, not a zip", "not a diffzoo training state"),
    ("planted", "holding objects a weights-only load refuses"),
    ("missing", r"it lacks \['config', 'model', 'ema', 'optimizer'\]"),
])
def test_a_bad_state_file_is_one_line_naming_it(tmp_path, capsys, content, match):
    cfg = TrainConfig(steps=2, checkpoint_every=2, **TINY)
    train(cfg, tmp_path / "run", progress=False)
    path = load_state(tmp_path / "run")[0] / CHECKPOINT_STATE
    if content == "planted":
        torch.save({"step": 2, "x": _Planted()}, path)
    elif content == "missing":
        torch.save({"step": 2}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        load_state(tmp_path / "run")
    assert str(path) in str(e.value) and "\n" not in str(e.value) and "weights_only=False" not in str(e.value)
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("field,value,match", [
    ("seed", -1, r"seed=-1 is invalid: expected an integer in 0..4294967295"),
    ("sample_every", -5, r"sample_every=-5 is invalid: expected an integer >= 0"),
    ("lr", float("inf"), r"lr=inf is invalid: expected a finite number > 0"),
    ("ema_decay", float("nan"), r"ema_decay=nan is invalid: expected a finite number >= 0"),
    ("ema_decay", 1.0, r"ema_decay=1.0 is invalid: expected 0 <= ema_decay < 1"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(**{**TINY, "steps": 2, field: value}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_channels_that_do_not_match_the_data_are_refused(tmp_path, capsys):
    from runtime.apps.cli import main

    args = ["train", "--model", "conv", "--hidden", "8", "--size", "8", "--steps", "2", "--out", str(tmp_path / "run")]
    assert main([*args, "--channels", "1"]) == 2  # synthetic shapes are RGB
    assert "channels=1 does not match the data 'synthetic', which has 3 channel(s)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_training_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    import torch.nn.functional as F

    from zoo.training import NonFiniteLossError

    real, calls = F.mse_loss, []

    def diverging(a, b):
        calls.append(1)
        return real(a, b) * (float("nan") if len(calls) > 7 else 1.0)

    monkeypatch.setattr("zoo.training.train.F.mse_loss", diverging)
    with pytest.raises(NonFiniteLossError, match=r"step 7: loss nan.*the last checkpoint \(step_0000005\) is kept"):
        train(TrainConfig(**{**TINY, "steps": 20, "checkpoint_every": 5}), tmp_path / "run", progress=False)
    ckpt, state = load_state(tmp_path / "run")
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values())

"""runtime: the onnxruntime sampler in all three modes against eager torch, invariance, bundle checks."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

import export
import runtime
from conftest import SOLVER_RUNS
from runtime.apps.cli import main
from runtime.providers import ProviderUnavailableError, cuda_unavailable_reason

CUDA_REASON = cuda_unavailable_reason()
needs_cuda = pytest.mark.skipif(CUDA_REASON is not None, reason=f"CUDA provider unavailable: {CUDA_REASON}")


@pytest.mark.parametrize("solver,eta", SOLVER_RUNS)
def test_all_modes_match_eager(bundle, solver, eta):
    report = runtime.parity(bundle.path, provider="cpu", num_steps=12, batch=3, seed=1, eta=eta, solver=solver)
    assert [m.mode for m in report.modes] == ["loop", "fused", "step"] and report.solver == solver
    assert report.passed, report.format_table()
    for m in report.modes:  # the bound is derived from eager float32's own error against float64
        assert m.final_max <= m.atol and m.atol >= 10 * report.reference_error
    step = report.modes[2]
    assert len(step.steps) == 12 and all(s.eps_max is not None for s in step.steps)
    assert [s.t for s in step.steps] == runtime.load(bundle.path, "cpu").plan(num_steps=12).timesteps.tolist()


@pytest.mark.parametrize("solver,eta", SOLVER_RUNS)
def test_modes_match_each_other(bundle, solver, eta):
    s = runtime.load(bundle.path, provider="cpu")
    out = {mode: s.sample(3, num_steps=8, seed=2, eta=eta, mode=mode, solver=solver) for mode in runtime.MODES}
    bound = runtime.parity(bundle.path, provider="cpu", num_steps=8, batch=3, seed=2, eta=eta, modes=["loop"],
                           solver=solver).modes[0].atol
    for mode in ("fused", "step"):
        np.testing.assert_allclose(out[mode], out["loop"], rtol=0, atol=bound)
    assert out["loop"].shape == (3, 3, 12, 12) and out["loop"].dtype == np.float32
    assert np.abs(out["loop"]).max() <= 1.0


def test_parity_detects_a_broken_graph(bundle, tmp_path):
    """A fused step whose first convolution's weights are off by 2% (re-hashed, so the bundle loads) fails parity."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from export.format.manifest import MANIFEST_NAME, sha256_file

    broken = tmp_path / "broken"
    shutil.copytree(bundle.path, broken)
    path = broken / "fused_step.onnx"
    proto = onnx.load(str(path))
    weight = next(w for w in proto.graph.initializer if len(w.dims) == 4)  # a convolution's weights
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.02, weight.name))
    onnx.save(proto, str(path))
    manifest = json.loads((broken / MANIFEST_NAME).read_text())
    manifest["files"][path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    (broken / MANIFEST_NAME).write_text(json.dumps(manifest))
    report = runtime.parity(broken, provider="cpu", num_steps=3, batch=1)
    verdicts = {m.mode: m.passed for m in report.modes}
    assert verdicts == {"loop": False, "fused": False, "step": True}  # the loop runs the fused step; step mode does not
    assert not report.passed and "FAIL" in report.format_table()


def test_batch_and_shard_invariance(bundles, tmp_path):
    path = bundles["residual"].path
    s = runtime.load(path, provider="cpu")
    for eta in (0.0, 0.5):
        one = s.sample(8, num_steps=6, seed=7, eta=eta, batch_size=8)
        two = s.sample(8, num_steps=6, seed=7, eta=eta, batch_size=4)
        shards = np.concatenate([s.sample(4, num_steps=6, seed=7, eta=eta, start=0), s.sample(4, num_steps=6, seed=7, eta=eta, start=4)])
        np.testing.assert_array_equal(one, two)
        np.testing.assert_array_equal(one, shards)
    # The CLI's --shard i/N splits the same stream.
    outs = []
    for i in range(2):
        f = tmp_path / f"shard{i}.npy"
        assert main(["sample", str(path), "--n", "8", "--steps", "6", "--seed", "7", "--provider", "cpu", "--shard", f"{i}/2", "--out", str(f)]) == 0
        outs.append(np.load(f))
    np.testing.assert_array_equal(np.concatenate(outs), s.sample(8, num_steps=6, seed=7))


def test_different_seeds_and_indices_differ(bundle):
    s = runtime.load(bundle.path, provider="cpu")
    a = s.sample(2, num_steps=4, seed=0)
    b = s.sample(2, num_steps=4, seed=1)
    assert np.abs(a - b).max() > 1e-2 and np.abs(a[0] - a[1]).max() > 1e-2


# --- bundle integrity: refused before any session is created ----------------------------------

@pytest.fixture
def copied_bundle(bundles, tmp_path, monkeypatch):
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(bundles["conv"].path, dst)

    def no_session(*a, **k):
        raise AssertionError("an onnxruntime session was created for an unverified bundle")

    monkeypatch.setattr(ort, "InferenceSession", no_session)
    return dst


def test_tampered_byte_refused(copied_bundle):
    f = copied_bundle / "sampler.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(export.BundleHashMismatchError, match=r"sampler\.onnx.*sha256.*modified"):
        runtime.load(copied_bundle, provider="cpu")


def test_truncated_file_refused(copied_bundle):
    f = copied_bundle / "weights.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(export.BundleHashMismatchError, match=r"weights\.safetensors.*100 bytes.*truncated"):
        runtime.load(copied_bundle, provider="cpu")


def test_missing_file_refused(copied_bundle):
    (copied_bundle / "fused_step.onnx").unlink()
    with pytest.raises(export.BundleFileMissingError, match=r"fused_step\.onnx.*missing"):
        runtime.load(copied_bundle, provider="cpu")


def test_wrong_manifest_version_refused(copied_bundle):
    m = json.loads((copied_bundle / "manifest.json").read_text())
    m["format_version"] = 99
    (copied_bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(export.BundleVersionError, match="format_version=99.*format_version=1"):
        runtime.load(copied_bundle, provider="cpu")


def test_not_a_bundle_refused(tmp_path):
    with pytest.raises(export.BundleFileMissingError, match="manifest.json.*not a diffzoo bundle"):
        runtime.load(tmp_path, provider="cpu")


# --- the deployment path imports no torch -----------------------------------------------------

def test_sampling_path_imports_no_torch(bundles, tmp_path):
    code = textwrap.dedent(f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed in this deployment image")

        sys.meta_path.insert(0, NoTorch())
        import runtime
        from runtime.apps.cli import main
        s = runtime.load({str(bundles['residual'].path)!r}, provider="auto")
        for mode in runtime.MODES:
            x = s.sample(2, num_steps=3, eta=0.5, mode=mode)
            assert x.shape == (2, 3, 12, 12), x.shape
        assert main(["sample", {str(bundles['residual'].path)!r}, "--n", "2", "--steps", "3",
                     "--out", {str(tmp_path / 'grid.png')!r}]) == 0
        assert main(["doctor"]) == 0
        assert "torch" not in sys.modules
        print("TORCH-FREE OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "TORCH-FREE OK" in r.stdout
    assert (tmp_path / "grid.png").exists()


# --- providers ----------------------------------------------------------------------------------

@pytest.mark.skipif(CUDA_REASON is None, reason="CUDA loads here: the fallback path cannot be exercised")
def test_cuda_unavailable_is_explained(bundle, caplog, monkeypatch):
    monkeypatch.setattr("runtime.providers._warned", set())  # earlier tests may have warned already
    with pytest.raises(ProviderUnavailableError, match="CUDA execution provider unavailable: .+"):
        runtime.load(bundle.path, provider="cuda")
    with pytest.raises(ProviderUnavailableError):
        runtime.load(bundle.path, provider="auto", strict=True)
    with caplog.at_level("WARNING"):
        s = runtime.load(bundle.path, provider="auto")
    assert s.providers == ["CPUExecutionProvider"]
    assert any(CUDA_REASON in r.getMessage() for r in caplog.records)


def test_unknown_provider(bundle):
    with pytest.raises(ValueError, match=r"'tpu'.*\['auto', 'cuda', 'cpu'\]"):
        runtime.load(bundle.path, provider="tpu")


@needs_cuda
@pytest.mark.parametrize("solver,eta", SOLVER_RUNS)
def test_cuda_modes_match_eager(bundle, solver, eta):
    report = runtime.parity(bundle.path, provider="cuda", num_steps=20, batch=4, eta=eta, solver=solver)
    assert report.providers[0] == "CUDAExecutionProvider"
    assert report.passed, report.format_table()


@needs_cuda
@pytest.mark.parametrize("solver,eta", SOLVER_RUNS)
def test_cuda_graph_fused_matches_plain_fused(bundle, solver, eta):
    plain = runtime.load(bundle.path, provider="cuda")
    graph = runtime.load(bundle.path, provider="cuda", cuda=runtime.CudaOptions(cuda_graph=True))
    a = plain.sample(4, num_steps=10, eta=eta, mode="fused", solver=solver)
    b = graph.sample(4, num_steps=10, eta=eta, mode="fused", solver=solver)
    bound = runtime.parity(bundle.path, provider="cuda", num_steps=10, batch=4, eta=eta, modes=["fused"],
                           solver=solver).modes[0].atol
    np.testing.assert_allclose(a, b, rtol=0, atol=bound)  # the same graph, replayed: float32 noise only
    # replays on the buffers each batch size was captured with: a later call, another batch size (5 = 3 + 2),
    # other seeds, and the first batch size again (a server's batches vary from call to call)
    for n, seed in ((5, 1), (4, 2), (3, 3)):
        want = plain.sample(n, num_steps=10, eta=eta, mode="fused", solver=solver, seed=seed, batch_size=3)
        got = graph.sample(n, num_steps=10, eta=eta, mode="fused", solver=solver, seed=seed, batch_size=3)
        np.testing.assert_allclose(got, want, rtol=0, atol=bound)


# --- CLI ----------------------------------------------------------------------------------------

def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "runtime.apps.cli", *args], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize(
    "args,match",
    [
        (["--n", "0"], "--n: '0' is invalid"),
        (["--steps", "1001"], "num_steps=1001 (--steps) is invalid: the bundle's model has 1000 training timesteps (expected 1..1000)"),
        (["--eta", "-0.5"], "--eta: '-0.5' is invalid"),
        (["--shard", "2/2"], "--shard: '2/2' is invalid"),
        (["--shard", "x"], "not a shard spec"),
        (["--mode", "unrolled"], "invalid choice: 'unrolled'"),
        (["--provider", "tpu"], "invalid choice: 'tpu'"),
        (["--solver", "euler"], "invalid choice: 'euler'"),
        (["--spacing", "bogus"], "invalid choice: 'bogus'"),
        (["--cuda-graph"], "--cuda-graph replays the fused step on CUDA: it needs --mode fused (here: --mode loop)"),
        (["--solver", "dpmpp_2m", "--eta", "0.5"], "eta=0.5 is invalid with solver 'dpmpp_2m', which is deterministic"),
        (["--solver", "euler_ancestral", "--eta", "1"], "eta=1.0 is invalid with solver 'euler_ancestral', which sets its "
                                                        "own noise on every step: use eta=0, or solver 'ddim'"),
    ],
)
def test_cli_sample_user_errors(bundles, tmp_path, args, match):
    out = tmp_path / "s.png"
    rc, _, err = _cli("sample", str(bundles["conv"].path), "--provider", "cpu", *args, "--out", str(out))
    assert rc == 2 and match in err
    assert "Traceback" not in err and len([l for l in err.splitlines() if "error" in l]) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["sample", "parity"])
def test_cli_checks_steps_before_choosing_a_provider(bundles, tmp_path, command):
    """--steps beyond the model's T is named as the flag, alone on stderr: no provider fallback warning before it."""
    out = ["--out", str(tmp_path / "s.png")] if command == "sample" else []
    rc, _, err = _cli(command, str(bundles["conv"].path), "--steps", "5000", *out)
    assert rc == 2 and err.strip() == (f"diffzoo {command}: error: num_steps=5000 (--steps) is invalid: the bundle's model "
                                       "has 1000 training timesteps (expected 1..1000)")
    assert list(tmp_path.iterdir()) == []


def test_cli_sample_bad_bundles(copied_bundle, tmp_path):
    out = tmp_path / "s.png"
    rc, _, err = _cli("sample", str(tmp_path / "missing"), "--out", str(out))
    assert rc == 2 and "does not exist" in err and not out.exists()
    (copied_bundle / "denoiser.onnx").write_bytes(b"garbage")
    rc, _, err = _cli("sample", str(copied_bundle), "--out", str(out))
    assert rc == 2 and "denoiser.onnx" in err and "Traceback" not in err and not out.exists()


def test_cli_sample_outputs(bundle, tmp_path):
    for name in ("grid.png", "first.ppm", "raw.npy"):
        rc, out, err = _cli("sample", str(bundle.path), "--n", "3", "--steps", "4", "--provider", "cpu", "--out", str(tmp_path / name))
        assert rc == 0, err
        assert "img/s" in out
    assert (tmp_path / "first.ppm").read_text().startswith("P3\n12 12\n255\n")
    assert np.load(tmp_path / "raw.npy").shape == (3, 3, 12, 12)


def test_cli_parity_and_doctor(bundle, capsys):
    assert main(["parity", str(bundle.path), "--provider", "cpu", "--steps", "5", "--batch", "2"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "loop" in text and "max|d eps|" in text
    assert main(["parity", str(bundle.path), "--provider", "cpu", "--steps", "3", "--json", "--modes", "step"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime" in text and "CUDA" in text
    if CUDA_REASON:
        assert CUDA_REASON in text


@pytest.mark.slow
def test_full_size_bundle_parity(tmp_path):
    """The full-size path (residual hidden=64, 32x32, 50 steps) within the named tolerances."""
    import torch

    import zoo

    torch.manual_seed(0)
    bundle = export.export_bundle(zoo.build("residual", hidden=64), tmp_path / "b", example_shape=(3, 32, 32))
    assert all(c["passed"] for c in bundle.checks)
    for eta in (0.0, 1.0):
        report = runtime.parity(bundle.path, provider="cpu", num_steps=50, batch=2, eta=eta)
        assert report.passed, report.format_table()


def test_sampler_refuses_non_finite_output(bundles, monkeypatch):
    from zoo.diffusion import NonFiniteSampleError

    s = runtime.load(bundles["conv"].path, provider="cpu")
    monkeypatch.setattr(s, "run_batch", lambda plan, x_T, *a, **k: np.full_like(x_T, np.nan))
    with pytest.raises(NonFiniteSampleError, match=r"images 0\.\.2 \(ddim, loop mode, 4 steps\): 1296 non-finite"):
        s.sample(3, num_steps=4)


def test_bundle_without_dpmpp_graphs_still_samples_ddim(bundles, tmp_path):
    """A bundle exported before DPM-Solver++(2M) existed: DDIM runs as before, the new solver is refused by name."""
    import shutil

    path = tmp_path / "old"
    shutil.copytree(bundles["conv"].path, path)
    manifest = json.loads((path / "manifest.json").read_text())
    for name in [n for n, a in manifest["artifacts"].items() if "dpmpp" in n]:
        for f in manifest["artifacts"].pop(name)["files"].values():
            (path / f).unlink()
            del manifest["files"][f]
    for a in manifest["artifacts"].values():  # older manifests had neither field
        a.pop("kind", None), a.pop("solver", None), a.pop("body", None)
    (path / "manifest.json").write_text(json.dumps(manifest))
    s = runtime.load(path, provider="cpu")
    for mode in runtime.MODES:
        assert s.sample(2, num_steps=4, mode=mode).shape[0] == 2
        with pytest.raises(ValueError, match="no DPM-Solver\\+\\+\\(2M\\) graphs.*re-export"):
            s.sample(2, num_steps=4, mode=mode, solver="dpmpp_2m")



def test_a_file_replaced_after_load_is_refused_not_run(bundles, tmp_path):
    """Sessions are built from the bytes checked at that moment: a bundle changed under a loaded sampler is refused."""
    import shutil

    from export.format.manifest import BundleHashMismatchError

    path = tmp_path / "b"
    shutil.copytree(bundles["conv"].path, path)
    s = runtime.load(path, provider="cpu")
    s.sample(1, num_steps=2, mode="loop")  # some sessions exist, others are made later
    shutil.copy(bundles["residual"].path / "fused_step.onnx", path / "fused_step.onnx")  # another model's graph
    with pytest.raises(BundleHashMismatchError, match="fused_step.onnx.*changed after the bundle was loaded"):
        s.sample(1, num_steps=2, mode="fused")


@pytest.mark.parametrize("target", ["../other/fused_step.onnx", "/tmp/fused_step.onnx", "unlisted.onnx"])
def test_manifest_paths_outside_the_hashed_files_are_refused(bundles, tmp_path, target):
    import shutil

    path = tmp_path / "b"
    shutil.copytree(bundles["conv"].path, path)
    shutil.copy(path / "fused_step.onnx", path / "unlisted.onnx")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["artifacts"]["fused_step"]["files"]["onnx"] = target
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(export.BundleError, match=r"artifacts\.fused_step\.files\.onnx = .* is not one of the bundle's hashed files"):
        runtime.load(path, provider="cpu")


@pytest.mark.parametrize("edit", [("schedule", "beta_end", 0.03), ("data", "shape", [3, 16, 16]), ("model", "name", "conv")])
def test_manifest_settings_edited_after_export_are_refused(bundles, tmp_path, edit):
    import shutil

    path = tmp_path / "b"
    shutil.copytree(bundles["residual"].path, path)
    manifest = json.loads((path / "manifest.json").read_text())
    section, key, value = edit
    manifest[section][key] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(export.BundleError, match=rf"{section}.* differs from the hashed weights'.*edited after export"):
        runtime.load(path, provider="cpu")


def test_weights_without_the_data_shape_in_their_header_are_refused(bundles, tmp_path):
    """The settings check compares every setting: a header that lacks one is refused, not skipped."""
    import shutil

    from export.format.manifest import sha256_file
    from zoo.weights import load_weights, save_weights

    path = tmp_path / "b"
    shutil.copytree(bundles["residual"].path, path)
    model, schedule, _ = load_weights(path / "weights.safetensors")
    save_weights(path / "weights.safetensors", model, schedule)  # no data={"shape": ...} in the header
    manifest = json.loads((path / "manifest.json").read_text())
    w = path / "weights.safetensors"
    manifest["files"][w.name] = {"sha256": sha256_file(w), "size": w.stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(export.BundleError, match=r"data\.shape = \[3, 12, 12\] differs from the hashed weights' None"):
        runtime.load(path, provider="cpu")


def test_cli_sample_checks_its_output_before_sampling(tmp_path):
    import torch

    import zoo

    torch.manual_seed(0)
    b = export.export_bundle(zoo.build("conv", hidden=8, channels=4), tmp_path / "b4", example_shape=(4, 8, 8), formats=["onnx"],
                             solvers=["dpmpp_2m"])
    args = ["sample", str(b.path), "--provider", "cpu", "--n", "2", "--steps", "2", "--solver", "dpmpp_2m"]
    rc, _, err = _cli(*args, "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "cannot write 4-channel images to" in err and "use a .npy output" in err
    assert _cli(*args, "--out", str(tmp_path / "x.npy"))[0] == 0
    rc, _, err = _cli("sample", str(b.path), "--provider", "cpu")
    assert rc == 2 and "the following arguments are required: --out" in err  # never a silent ./samples.png

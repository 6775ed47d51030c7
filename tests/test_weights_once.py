"""Weights once: every ONNX graph of a bundle refers to its one weights file, which each process reads and checks once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import runtime
import zoo
from conftest import EXAMPLE_SHAPE, SMALL
from export.format.graphs import Weights, external_tensors
from export.format.manifest import IDENTITY_KEY, BundleError, sha256_file

MODES = ("step", "fused", "loop")


def _graphs(path: Path) -> dict[str, onnx.ModelProto]:
    return {p.name: onnx.load(str(p), load_external_data=False) for p in sorted(path.glob("*.onnx"))}


def _rehash(path: Path, *names: str) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    for name in names:
        manifest["files"][name] = {"sha256": sha256_file(path / name), "size": (path / name).stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))


def _samples(path: Path, **kw) -> dict[str, np.ndarray]:
    sampler = runtime.load(path, provider="cpu", threads=1)
    return {f"{solver}/{mode}": sampler.sample(2, seed=3, num_steps=3, solver=solver, mode=mode, **kw)
            for solver in zoo.solvers.SOLVERS for mode in MODES}


def as_inline_bundle(path: Path) -> None:
    """The bundle at ``path``, in place, as exported before its graphs referred to the weights file: each graph holding
    its weights itself, its stamped identity without the weights' hash, the hashes redone."""
    manifest = json.loads((path / "manifest.json").read_text())
    weights = Weights.of_file(path / manifest["weights"])
    for name, graph in _graphs(path).items():
        graph = weights.inline(graph)
        for prop in graph.metadata_props:
            if prop.key == IDENTITY_KEY:
                identity = json.loads(prop.value)
                del identity["weights"]
                prop.value = json.dumps(identity, sort_keys=True)
        onnx.save(graph, str(path / name))
    _rehash(path, *_graphs(path))


def test_every_graph_refers_to_the_weights_file_and_holds_no_weight_itself(bundles, model_name):
    path = bundles[model_name].path
    weights = Weights.of_file(path / "weights.safetensors")
    stored = {(s.offset, s.length) for s in weights.stored.values()}
    contents = {weights.raw(key) for key in weights.stored}

    def references(graph: onnx.ModelProto) -> set[tuple[int, int]]:
        refs = [{e.key: e.value for e in t.external_data} for t in external_tensors(graph)]
        assert all(ref["location"] == "weights.safetensors" for ref in refs)
        return {(int(ref["offset"]), int(ref["length"])) for ref in refs}

    graphs = _graphs(path)
    network = references(graphs["denoiser.onnx"])
    assert network and network <= stored  # every reference is one whole stored tensor
    for name, graph in graphs.items():
        kind = bundles[model_name].manifest["artifacts"][name.removesuffix(".onnx")]["kind"]
        assert references(graph) == (set() if kind == "step" else network), name
        inline = [onnx.numpy_helper.to_array(t).tobytes() for t in graph.graph.initializer
                  if t.data_location != onnx.TensorProto.EXTERNAL]
        assert not any(raw in contents for raw in inline if len(raw) >= 64), name  # no weight is held inside
        assert not any(node.metadata_props for node in graph.graph.node), name  # no exporter's stack traces


def test_graphs_without_their_weights_are_a_small_part_of_the_bundle(bundles):
    path = bundles["unet"].path
    onnx_bytes = sum(p.stat().st_size for p in path.glob("*.onnx"))
    weights = (path / "weights.safetensors").stat().st_size
    graphs_with_network = len(list(path.glob("sampler*.onnx"))) + len(list(path.glob("fused_step*.onnx"))) + 1
    # hidden=8: 40 KB of weights against 11 graphs of structure; before, every graph carried the 40 KB once more
    assert onnx_bytes < graphs_with_network * weights, (onnx_bytes, weights)


def test_a_bundle_whose_graphs_hold_their_weights_samples_the_same(bundles, tmp_path):
    path = tmp_path / "inline"
    shutil.copytree(bundles["unet"].path, path)
    as_inline_bundle(path)
    assert all(not external_tensors(g) for g in _graphs(path).values())
    assert (path / "denoiser.onnx").stat().st_size > (path / "weights.safetensors").stat().st_size / 2
    new, old = _samples(bundles["unet"].path), _samples(path)
    for key in new:
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)


def test_a_graph_cannot_be_paired_with_other_weights(bundles, tmp_path):
    """Two bundles of one architecture: the first's graphs with the second's weights (hashes redone) are refused."""
    import export

    torch.manual_seed(1)
    other = export.export_bundle(zoo.build("conv", **SMALL), tmp_path / "other", example_shape=EXAMPLE_SHAPE,
                                 formats=["onnx"], solvers=["ddim"])
    path = tmp_path / "paired"
    shutil.copytree(bundles["conv"].path, path)
    shutil.copyfile(other.path / "weights.safetensors", path / "weights.safetensors")
    _rehash(path, "weights.safetensors")
    sampler = runtime.load(path, provider="cpu", threads=1)  # the weights' header agrees: the same model config
    with pytest.raises(BundleError, match=r"fused_step.onnx.*exported with other weights"):
        sampler.sample(1, num_steps=2, mode="fused")


@pytest.mark.parametrize("edit, message", [
    ({"offset": "999999999"}, "not a tensor of the file"),
    ({"location": "../weights.safetensors"}, "refers to '../weights.safetensors'"),
    ({"length": "4"}, "not a tensor of the file"),
])
def test_a_reference_outside_the_weights_file_is_refused(bundles, tmp_path, edit, message):
    from conftest import replace_graph

    def forge(graph: onnx.ModelProto) -> onnx.ModelProto:
        tensor = external_tensors(graph)[0]
        for e in tensor.external_data:
            e.value = edit.get(e.key, e.value)
        return graph

    path = replace_graph(bundles["conv"], tmp_path, "fused_step.onnx", forge)
    sampler = runtime.load(path, provider="cpu", threads=1)
    with pytest.raises(BundleError, match=message):
        sampler.sample(1, num_steps=2, mode="fused")


def test_the_weights_file_is_read_once_per_process_and_shared(bundles, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(bundles["conv"].path, path)
    first, second = (runtime.load(path, provider="cpu", threads=1) for _ in range(2))
    expected = first.sample(2, seed=0, num_steps=2, mode="fused")
    assert second.sessions.weights is first.sessions.weights
    # The file on disk changes after the check: nothing reads it again, every later session takes the checked bytes.
    (path / "weights.safetensors").write_bytes(b"\0" * (path / "weights.safetensors").stat().st_size)
    np.testing.assert_array_equal(second.sample(2, seed=0, num_steps=2, mode="fused"), expected)
    np.testing.assert_array_equal(second.sample(2, seed=0, num_steps=2, mode="step"),
                                  first.sample(2, seed=0, num_steps=2, mode="step"))


def _export(model, path: Path, **kw):
    import export

    return export.export_bundle(model, path, example_shape=EXAMPLE_SHAPE, solvers=["ddim", "dpmpp_2m"], **kw)


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_weights_swapped_into_a_bundle_sample_as_a_fresh_export_of_them(tmp_path):
    """A fine-tune (the same architecture, other weights) swapped into a bundle: every graph kept and verified again, and
    every mode samples what a fresh export of the new weights samples; the TorchScript denoiser carries them too."""
    import export
    from export.format.manifest import load_manifest
    from export.torchscript import load_traced

    torch.manual_seed(0)
    old = _export(zoo.build("unet", **SMALL), tmp_path / "bundle")
    torch.manual_seed(1)
    tuned = zoo.build("unet", **SMALL).eval()
    fresh = _export(tuned, tmp_path / "fresh")
    swapped = export.swap_weights(old.path, tuned, zoo.schedules.linear_schedule(1000), source="tuned")
    assert swapped.path == old.path
    assert (old.path / "weights.safetensors").read_bytes() == (fresh.path / "weights.safetensors").read_bytes()
    manifest = load_manifest(old.path)
    assert manifest["extra"]["weights_swapped"]["from_sha256"] == old.manifest["files"]["weights.safetensors"]["sha256"]
    assert {c["artifact"] for c in swapped.checks} == {c["artifact"] for c in old.checks}
    assert all(c["passed"] for c in swapped.checks)
    kw = dict(provider="cpu", threads=1)
    for solver in ("ddim", "dpmpp_2m"):
        for mode in MODES:
            got = runtime.load(old.path, **kw).sample(2, seed=4, num_steps=3, solver=solver, mode=mode)
            np.testing.assert_array_equal(got, runtime.load(fresh.path, **kw).sample(2, seed=4, num_steps=3, solver=solver,
                                                                                      mode=mode), err_msg=f"{solver}/{mode}")
    x, t = torch.randn(2, *EXAMPLE_SHAPE), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(load_traced((old.path / "denoiser.pt").read_bytes())(x, t), tuned(x, t))


def test_weights_of_another_architecture_or_schedule_are_refused_by_name_and_the_bundle_is_untouched(bundles):
    import export

    path = bundles["unet"].path
    before = _files(path)
    with pytest.raises(ValueError, match=r"hidden 16 here, 8 in the bundle.*same architecture"):
        export.swap_weights(path, zoo.build("unet", hidden=16))
    with pytest.raises(ValueError, match=r"'conv' here, 'unet' in the bundle"):
        export.swap_weights(path, zoo.build("conv", **SMALL))
    with pytest.raises(ValueError, match="schedule .*bake"):
        export.swap_weights(path, zoo.build("unet", **SMALL), zoo.schedules.cosine_schedule(1000))
    assert _files(path) == before


def test_a_bundle_whose_graphs_hold_their_weights_cannot_take_new_ones(bundles, tmp_path):
    import export

    path = tmp_path / "inline"
    shutil.copytree(bundles["conv"].path, path)
    as_inline_bundle(path)
    with pytest.raises(ValueError, match="exported before its graphs referred to one weights file"):
        export.swap_weights(path, zoo.build("conv", **SMALL))


def test_the_cli_swaps_a_checkpoints_weights_in_and_refuses_what_does_not_apply(bundles, tmp_path, capsys):
    from runtime.apps.cli import main
    from zoo.weights import save_weights

    path = tmp_path / "b"
    shutil.copytree(bundles["conv"].path, path)
    torch.manual_seed(5)
    ckpt = tmp_path / "tuned.safetensors"
    save_weights(ckpt, zoo.build("conv", **SMALL), zoo.schedules.linear_schedule(1000))
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(path), "--swap-weights"]) == 0
    assert "swapped into" in capsys.readouterr().out
    assert (path / "weights.safetensors").read_bytes()[-64:] == ckpt.read_bytes()[-64:]  # the same tensors, last bytes
    for extra, message in ((["--int8"], "--int8 cannot be given"), ([], None)):
        argv = ["export", "--out", str(path), "--swap-weights", *extra]
        argv += ["--checkpoint", str(ckpt)] if message else []
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and (message or "needs the weights to put in") in err


def test_the_network_is_traced_once_and_every_fused_step_runs_the_denoisers_own_graph(cond_bundle):
    """The fused steps hold the denoiser graph's nodes, spliced in where the network goes (the guided batch, 2B, in a
    graph whose batch is B): no placeholder is left, and a fused step computes what the denoiser plus the step compute."""
    graphs = _graphs(cond_bundle.path)
    denoiser = [n.op_type for n in graphs["denoiser.onnx"].graph.node]
    fused = [name for name in graphs if name.startswith("fused_step")]
    assert fused and not any(n.domain == "diffzoo" for g in graphs.values() for n in g.graph.node)
    for name in fused:
        assert [n.op_type for n in graphs[name].graph.node if n.name.startswith("network/")] == denoiser, name
    sampler = runtime.load(cond_bundle.path, provider="cpu", threads=1)
    rows = dict(labels=np.array([0, 3, 9]), guidance=np.array([1.0, 3.0, 0.0], np.float32))
    for solver in zoo.solvers.SOLVERS:
        step, fused = (sampler.sample(3, seed=5, num_steps=3, solver=solver, mode=m, **rows) for m in ("step", "fused"))
        np.testing.assert_array_equal(fused, step, err_msg=solver)


@pytest.mark.slow
def test_a_model_past_2_gb_exports_verifies_and_samples_in_every_mode(tmp_path):
    """A diffusers UNet2DModel with 2.09 GiB of fp32 weights (random init: a 19,000-wide time embedding and 10,000
    classes hold most of them, so it runs in minutes on 2 cores): no graph could hold them in one protobuf, and none
    does, the CPU loop's rebuilt graph included. About 12 GB of memory at its peak."""
    import export

    unet = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=8,
                time_embedding_dim=19_000)
    torch.manual_seed(0)
    model = zoo.build("diffusers_unet", unet=unet, num_classes=10_000).eval()
    assert sum(p.numel() for p in model.parameters()) * 4 > 2**31
    bundle = export.export_bundle(model, tmp_path / "b", example_shape=(3, 8, 8), formats=["onnx"], solvers=["ddim"])
    del model
    assert all(c["passed"] for c in bundle.manifest["verification"])
    assert (bundle.path / "weights.safetensors").stat().st_size > 2**31
    assert all(p.stat().st_size < 2**20 for p in bundle.path.glob("*.onnx"))
    sampler = runtime.load(bundle.path, provider="cpu")
    rows = dict(labels=np.array([0, 9_999]), guidance=np.array([1.0, 3.0], np.float32))
    images = {m: sampler.sample(2, seed=3, num_steps=3, mode=m, **rows) for m in MODES}
    np.testing.assert_array_equal(images["fused"], images["step"])
    atol = max(c["atol"] for c in bundle.manifest["verification"] if c["artifact"] == "fused_step")
    np.testing.assert_allclose(images["loop"], images["fused"], rtol=0, atol=3 * atol)

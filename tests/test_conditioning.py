"""A model declares its conditioning once (zoo.conditioning): the table, exporters, Loop, manifest, runtime and server read it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import export
import runtime
import zoo
from conftest import as_older_bundle
from export.format.artifacts import artifact_specs
from runtime.apps.serve.protocol import inputs_of
from zoo.conditioning import ConditionInput, Conditions, class_labels, guided_eps
from zoo.configs import ConvConfig
from zoo.models import ConvDenoiser
from zoo.solvers import get_solver, solve


def _names(spec) -> list[str]:
    return [i.name for i in spec.inputs]


def test_class_labels_are_one_declaration_and_the_table_names_every_graph_input_from_it():
    labels = class_labels(4)
    assert labels == Conditions.from_dict(json.loads(json.dumps(labels.to_dict())))  # what the manifest records
    assert class_labels(0) is None  # unconditional
    table = artifact_specs(1, conditions=labels)
    assert _names(table["denoiser"]) == ["x", "t", "labels"]  # one branch per call
    assert _names(table["fused_step_unipc"])[-3:] == ["t_last2", "labels", "guidance"]
    assert _names(table["sampler_eta"]) == ["x_T", "timesteps", "labels", "guidance", "noise", "eta"]
    assert table["sampler_eta"].conditioning == ("labels", "guidance") and table["ddim_step"].conditioning == ()
    # a tensor conditioning (an embedding) carries its unconditional branch as an input of its own
    emb = Conditions((ConditionInput("emb", "float32", (4,), "tensor"),))
    table = artifact_specs(1, conditions=emb)
    assert [(i.name, i.dims) for i in table["denoiser"].inputs][2:] == [("emb", ("batch", 4))]
    assert _names(table["sampler"])[2:] == ["emb", "negative_emb", "guidance"]


@pytest.mark.parametrize("bad", [
    None, {"inputs": []}, {"inputs": [{"name": "labels", "dtype": "int64", "dims": [], "kind": "class", "null": 0}]},
    {"inputs": [{"name": "labels", "dtype": "int64", "dims": [], "kind": "prompt"}]},
    {"inputs": [{"name": "x y", "dtype": "float32", "dims": [4], "kind": "tensor"}]},
    {"inputs": [{"name": "emb", "dtype": "float32", "dims": [-1], "kind": "tensor"}]},
])
def test_a_declaration_that_is_not_one_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="is invalid"):
        Conditions.from_dict(bad)


def test_a_declaration_is_checked_where_it_is_made():
    with pytest.raises(ValueError, match=r"ConditionInput\(name='labels', dtype='float32'.* is invalid"):
        ConditionInput("labels", "float32", (), "class", 3)  # class labels are indices
    with pytest.raises(ValueError, match=r"\['guidance', 'negative_guidance', 'guidance'\] are invalid"):
        Conditions((ConditionInput("guidance", "float32", (2,), "tensor"),))  # the guided graphs' w has that name
    with pytest.raises(ValueError, match=r"\['emb', 'emb', .* are invalid"):
        Conditions((ConditionInput("emb", "float32", (2,), "tensor"),) * 2)


class _Embedded(ConvDenoiser):
    """The conv denoiser conditioned on a per-row embedding (B, 4): a tensor conditioning, not class labels."""

    conditioning = Conditions((ConditionInput("emb", "float32", (4,), "tensor"),))

    def __init__(self, config: ConvConfig) -> None:
        super().__init__(config)
        self.proj = nn.Linear(4, config.channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return super().forward(x, t) + self.proj(emb)[:, :, None, None]


def test_a_model_that_declares_another_conditioning_exports_every_graph_and_its_loop_guides_on_it(tmp_path):
    """Nothing names its input: the table, the random inputs of verification, the guided wrappers and the Loop take
    it from the declaration; the whole loop is the eager guided loop, and the negative input is the other branch."""
    torch.manual_seed(0)
    model = _Embedded(ConvConfig(channels=1, hidden=4, num_train_timesteps=100)).eval()
    b = export.export_bundle(model, tmp_path / "b", example_shape=(1, 8, 8), solvers=("ddim", "unipc"))
    assert b.manifest["conditioning"] == model.conditioning.to_dict()
    assert {c["artifact"] for c in b.manifest["verification"]} >= {"denoiser", "fused_step", "sampler", "sampler_unipc"}

    g = torch.Generator().manual_seed(1)
    x_T, emb, neg = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    w = torch.tensor([0.0, 1.5, 4.0])
    ts = np.array([90, 61, 30, 4])
    sess = ort.InferenceSession(str(b.path / "sampler_unipc.onnx"), providers=["CPUExecutionProvider"])

    def loop(negative: torch.Tensor) -> np.ndarray:
        feed = {"x_T": x_T, "timesteps": torch.from_numpy(ts), "emb": emb, "negative_emb": negative, "guidance": w}
        return sess.run(None, {k: v.numpy() for k, v in feed.items()})[0]

    feed = {"emb": emb, "negative_emb": neg, "guidance": w}
    alphas = torch.from_numpy(zoo.linear_schedule(100).alphas_cumprod.copy()).float()  # export's default schedule, in float32
    with torch.inference_mode():
        want = solve(get_solver("unipc"), lambda x, t: guided_eps(model, x, torch.full((3,), t), model.conditioning, feed),
                     x_T, ts, alphas, check=False).numpy()
    got = loop(neg)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    other = loop(neg + 1)
    assert np.abs(other - got)[0].max() > 1e-3  # w = 0: the negative branch alone
    assert np.abs(other - got)[1].max() > 1e-4  # w = 1.5 still reads it

    with pytest.raises(ValueError, match=r"conditioned on \['emb \(tensor\)'\]: sample it with zoo.solvers.solve"):
        zoo.sample(model, zoo.linear_schedule(100), x_T, 2)  # the eager samplers make class labels only
    # the runtime samples class labels from requests; it says so instead of feeding zeros
    with pytest.raises(ValueError, match=r"conditioned on 'emb' \(tensor\), which this runtime cannot make"):
        runtime.load(b.path, "cpu").sample(1, num_steps=2)
    assert [i.name for i in inputs_of(b.manifest)] == ["seed", "index", "steps", "solver", "eta", "spacing", "guidance"]


def test_the_manifest_records_the_declaration_stamps_it_and_reads_older_bundles_by_their_classes(cond_bundle, tmp_path):
    m = cond_bundle.manifest
    assert m["conditioning"] == class_labels(10).to_dict()
    assert [i.name for i in inputs_of(m)][-2:] == ["label", "guidance"]
    out = tmp_path / "b"
    shutil.copytree(cond_bundle.path, out)
    want = runtime.load(out, "cpu").sample(3, num_steps=3, labels=[1, 2, 3], guidance=2.0)

    edited = tmp_path / "edited"  # another null class in the manifest alone: the classes table disagrees
    shutil.copytree(out, edited)
    bad = json.loads((edited / "manifest.json").read_text())
    bad["conditioning"]["inputs"][0]["null"] = 3
    (edited / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(export.BundleError, match="its class input must have the null class of the bundle's classes"):
        runtime.load(edited, "cpu")
    bad["conditioning"]["inputs"][0].update(null=10, name="class_index")  # consistent, but not what the graphs were made of
    (edited / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(export.BundleError, match=r"differ on \['conditioning'\]"):
        runtime.load(edited, "cpu").sample(1, num_steps=2)

    as_older_bundle(out, "conditioning")  # as exported before the declaration: manifest and stamps without it
    assert export.load_manifest(out)["conditioning"] == class_labels(10).to_dict()
    np.testing.assert_array_equal(runtime.load(out, "cpu").sample(3, num_steps=3, labels=[1, 2, 3], guidance=2.0), want)

"""Shared fixtures: small models and seeded inputs so the suite stays fast on 2 cores."""

from __future__ import annotations

import pytest
import torch

import zoo

SMALL = {"hidden": 8}

# The zoo's own networks, built from `hidden` (SMALL): the generic tests run over these. The "diffusers_unet" entry
# wraps a diffusers config instead, and tests/test_diffusers.py covers it (one small UNet2DModel bundle a session).
ZOO_MODELS = [name for name in zoo.available() if "hidden" in zoo.registry.config_fields(name)]


@pytest.fixture(params=ZOO_MODELS)
def model_name(request) -> str:
    return request.param


@pytest.fixture
def small_model(model_name):
    torch.manual_seed(0)
    return zoo.build(model_name, **SMALL).eval()


EXAMPLE_SHAPE = (3, 12, 12)


INT8_MODELS = [name for name in ZOO_MODELS if zoo.build(name, **SMALL).supports_int8]


def _export_all(tmp_path_factory, names, int8: bool, **kwargs) -> dict:
    import export

    out = {}
    for name in names:
        torch.manual_seed(0)
        model = zoo.build(name, **SMALL)
        out[name] = export.export_bundle(model, tmp_path_factory.mktemp("bundles") / name, example_shape=EXAMPLE_SHAPE,
                                         int8=int8, **kwargs)
    return out


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict:
    """One fp32 bundle per zoo model (hidden=8), exported once per test session."""
    return _export_all(tmp_path_factory, ZOO_MODELS, int8=False)


@pytest.fixture(scope="session")
def int8_bundles(tmp_path_factory) -> dict:
    """One bundle with int8 variants per model that supports them (hidden=8; ONNX and DDIM only: what int8 covers)."""
    return _export_all(tmp_path_factory, INT8_MODELS, int8=True, formats=["onnx"], solvers=["ddim"])


@pytest.fixture(autouse=True, scope="session")
def _classifier_cache(tmp_path_factory):
    """Quality classifiers are trained into a per-session cache, never the user's ~/.cache."""
    import os

    os.environ["DIFFZOO_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def bundle(bundles, model_name):
    return bundles[model_name]

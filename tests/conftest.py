"""Shared fixtures: small models and seeded inputs so the suite stays fast on 2 cores."""

from __future__ import annotations

import pytest
import torch

import zoo

SMALL = {"hidden": 8}


@pytest.fixture(params=zoo.available())
def model_name(request) -> str:
    return request.param


@pytest.fixture
def small_model(model_name):
    torch.manual_seed(0)
    return zoo.build(model_name, **SMALL).eval()


EXAMPLE_SHAPE = (3, 12, 12)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict:
    """One full bundle per zoo model (hidden=8), int8 variants included, exported once per test session."""
    import export

    out = {}
    for name in zoo.available():
        torch.manual_seed(0)
        model = zoo.build(name, **SMALL)
        out[name] = export.export_bundle(model, tmp_path_factory.mktemp("bundles") / name, example_shape=EXAMPLE_SHAPE, int8=True)
    return out


@pytest.fixture
def bundle(bundles, model_name):
    return bundles[model_name]

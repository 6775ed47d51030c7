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

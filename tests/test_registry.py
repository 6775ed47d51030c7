import dataclasses

import pytest
import torch

import zoo
from zoo.registry import register


def test_available_is_sorted_and_has_both_models():
    names = zoo.available()
    assert names == sorted(names)
    assert {"conv", "residual"} <= set(names)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match=r"'resnet'.*\['conv', 'diffusers_unet', 'residual'"):
        zoo.build("resnet")


def test_unknown_key_names_accepted_keys():
    with pytest.raises(TypeError, match=r"'hiden'.*accepted keys are \['channels', 'hidden'"):
        zoo.build("conv", hiden=8)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("hidden", 0, "hidden=0"),
        ("channels", 0, "channels=0"),
        ("kernel_size", 4, "kernel_size=4.*odd"),
        ("kernel_size", 0, "kernel_size=0"),
        ("num_train_timesteps", -1, "num_train_timesteps=-1"),
        ("hidden", 8.0, "hidden=8.0"),
        ("hidden", True, "hidden=True"),
    ],
)
def test_invalid_values_name_the_key(model_name, key, value, match):
    with pytest.raises(ValueError, match=match):
        zoo.build(model_name, **{key: value})


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="'conv' is already registered"):

        @register("conv")
        class Again(torch.nn.Module):
            config_class = zoo.ConvConfig


def test_model_carries_name_and_config_and_rebuilds(model_name):
    m = zoo.build(model_name, hidden=12, kernel_size=5, channels=1)
    assert m.name == model_name
    assert dataclasses.is_dataclass(m.config) and m.config.hidden == 12
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.config.hidden = 3
    again = zoo.build(m.name, **dataclasses.asdict(m.config))
    assert type(again) is type(m) and again.config == m.config
    assert [(k, v.shape) for k, v in again.state_dict().items()] == [(k, v.shape) for k, v in m.state_dict().items()]
    again.load_state_dict(m.state_dict())  # strict: same architecture


def test_defaults():
    m = zoo.build("residual")
    assert (m.config.channels, m.config.hidden, m.config.kernel_size, m.config.num_train_timesteps) == (3, 64, 3, 1000)


def test_numpy_integers_are_accepted_as_ints():
    import json

    import numpy as np

    m = zoo.build("unet", hidden=np.int64(8), levels=np.int32(2))
    assert m.config == zoo.UNetConfig(hidden=8, levels=2) and type(m.config.hidden) is int
    json.dumps(dataclasses.asdict(m.config))  # stays serialisable for manifests and checkpoints
    with pytest.raises(ValueError, match=r"hidden=8\.0 is invalid: expected an integer >= 1"):
        zoo.build("conv", hidden=8.0)

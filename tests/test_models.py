import pytest
import torch
from torch import nn

import zoo


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 3, 9, 7), (3, 1, 5, 11), (2, 4, 16, 16)])
def test_output_shape(model_name, shape):
    b, c, h, w = shape
    torch.manual_seed(0)
    m = zoo.build(model_name, channels=c, hidden=8).eval()
    out = m(torch.randn(shape), torch.randint(0, 1000, (b,)))
    assert out.shape == shape and out.dtype == torch.float32


def test_float_and_int_timesteps_agree(small_model):
    x = torch.randn(2, 3, 8, 8)
    a = small_model(x, torch.tensor([5, 700]))
    b = small_model(x, torch.tensor([5.0, 700.0]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_time_channel_is_used(small_model):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    a = small_model(x, torch.tensor([0, 0]))
    b = small_model(x, torch.tensor([999, 999]))
    assert (a - b).abs().max() > 1e-4


def test_append_time_channel():
    x = torch.randn(2, 3, 4, 5)
    y = zoo.append_time_channel(x, torch.tensor([250, 1000]), 1000)
    assert y.shape == (2, 4, 4, 5)
    torch.testing.assert_close(y[:, :3], x)
    assert torch.all(y[0, 3] == 0.25) and torch.all(y[1, 3] == 1.0)


def _convs(m: nn.Module) -> list[tuple[int, int]]:
    return [(c.in_channels, c.out_channels) for c in m.modules() if isinstance(c, nn.Conv2d)]


def test_conv_structure():
    m = zoo.build("conv", channels=3, hidden=16, kernel_size=5)
    assert _convs(m) == [(4, 16), (16, 16), (16, 16), (16, 3)]
    kinds = [type(l) for l in m.net]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) for c in m.net if isinstance(c, nn.Conv2d))


def test_residual_structure():
    m = zoo.build("residual", channels=1, hidden=16)
    assert _convs(m) == [(2, 16)] + [(16, 16)] * 4 + [(16, 1)]
    assert [name for name, _ in m.named_children()] == ["stem", "block1", "block2", "out"]


def test_residual_block_with_zero_convs_is_identity():
    torch.manual_seed(0)
    from zoo.models import ResidualBlock

    block = ResidualBlock(8, 3)
    x = torch.randn(2, 8, 6, 6)
    assert (block(x) - x).abs().max() > 0  # live block changes its input
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_no_python_branching_on_values(small_model):
    """A trace at one shape must reproduce eager at other batch/height/width."""
    x = torch.randn(2, 3, 8, 8)
    traced = torch.jit.trace(small_model, (x, torch.tensor([1, 2])))
    for shape in [(1, 3, 5, 7), (4, 3, 12, 10)]:
        x2, t2 = torch.randn(shape), torch.randint(0, 1000, (shape[0],))
        torch.testing.assert_close(traced(x2, t2), small_model(x2, t2))

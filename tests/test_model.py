"""The network against the paper (Ronneberger et al. 2015, Fig. 1) and its size arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from napari_unet.config import ModelInfo, UNetConfig
from napari_unet.model import UNet, fan_in


@pytest.fixture(scope="module")
def paper_net() -> UNet:
    torch.manual_seed(0)
    return UNet()


def convs(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if type(m) is kind]


def test_paper_defaults():
    assert UNetConfig() == UNetConfig(
        in_channels=1, n_classes=2, base_channels=64, depth=4, dropout=0.5
    )


def test_parameter_count_of_the_paper_network(paper_net):
    assert sum(p.numel() for p in paper_net.parameters()) == 31_030_658


def test_23_conv_layers_as_in_the_paper(paper_net):
    conv2d = convs(paper_net, nn.Conv2d)
    up = convs(paper_net, nn.ConvTranspose2d)
    assert sum(c.kernel_size == (3, 3) for c in conv2d) == 18
    assert sum(c.kernel_size == (1, 1) for c in conv2d) == 1
    assert len(conv2d) == 19
    assert len(up) == 4
    assert all(c.kernel_size == (2, 2) and c.stride == (2, 2) for c in up)
    assert all(c.padding == (0, 0) for c in conv2d)  # unpadded ("valid") convolutions
    # channels double per level in the contracting path: 64 ... 1024
    widths = [c.out_channels for c in conv2d if c.kernel_size == (3, 3)][::2]
    assert widths == [64, 128, 256, 512, 1024, 512, 256, 128, 64]
    assert [c.out_channels for c in up] == [512, 256, 128, 64]


def test_572_input_gives_388_output():
    # meta tensors propagate shapes through the real network without computing
    with torch.device("meta"):
        net = UNet()
        assert net(torch.empty(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_forward_on_cpu_returns_logits_per_class():
    config = UNetConfig(in_channels=3, n_classes=4, base_channels=2, depth=2)
    net = UNet(config).eval()
    size, wider = config.min_input_size(), config.min_input_size() + config.pool_factor
    out = net(torch.rand(2, 3, size, wider))
    assert out.shape == (2, 4, config.output_size(size), config.output_size(wider))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_paper_size_arithmetic():
    config = UNetConfig()
    assert config.pool_factor == 16
    assert config.shrink == 184
    assert config.context_margin == 92
    assert config.min_input_size() == 188
    assert config.output_size(572) == 388
    assert config.input_size_for_output(388) == 572
    assert config.input_size_for_output(389) == 588
    assert config.input_size_for_output(1) == 188
    # paper/issue: valid inputs are 16 b + 124 with b >= 4
    assert config.valid_input_sizes(100, 1000) == [16 * b + 124 for b in range(4, 55)]
    assert config.nearest_valid_inputs(572) == (572, 572)
    assert config.nearest_valid_inputs(573) == (572, 588)
    assert config.nearest_valid_inputs(100) == (None, 188)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_shrink_follows_the_closed_form(depth):
    # 4 px per level on the way down and up, at that level's scale, plus the bottom:
    # 8 (2^d - 1) + 4 * 2^d
    config = UNetConfig(depth=depth)
    assert config.shrink == 12 * 2**depth - 8
    assert config.context_margin == config.shrink // 2
    for size in config.valid_input_sizes(1, 600):
        assert config.output_size(size) == size - config.shrink
        assert config.input_size_for_output(size - config.shrink) == size


def traced_run(net: UNet, height: int, width: int) -> tuple[int, list[int]] | None:
    """Run ``net`` without its size check on meta tensors: output height and the
    heights every max-pool saw, or None where the network cannot run at all."""
    seen: list[int] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-2]))
        for m in net.modules()
        if isinstance(m, nn.MaxPool2d)
    ]
    net.check_input = lambda x: None  # let torch do what it would silently do
    try:
        return net(torch.empty(1, 1, height, width, device="meta")).shape[-2], seen
    except RuntimeError:  # a convolution got an input smaller than its kernel
        return None
    finally:
        del net.check_input
        for hook in hooks:
            hook.remove()


@pytest.mark.slow
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_valid_sizes_agree_with_running_the_network(depth):
    config = UNetConfig(base_channels=2, depth=depth)
    with torch.device("meta"):
        net = UNet(config)
    width = config.min_input_size()
    valid, outputs = [], {}
    for size in range(100, 1001):
        result = traced_run(net, size, width)
        if result is not None and all(s % 2 == 0 for s in result[1]):
            valid.append(size)
            outputs[size] = result[0]
    assert valid == config.valid_input_sizes(100, 1000)
    assert outputs == {s: config.output_size(s) for s in valid}

    # and the real computation on CPU for the smallest and largest valid sizes
    cpu_net = UNet(config).eval()
    with torch.no_grad():
        for size in [*valid[:3], valid[-1]]:
            out = cpu_net(torch.zeros(1, 1, size, width))
            assert out.shape[-2:] == (config.output_size(size), config.output_size(width))


def test_invalid_sizes_raise_naming_the_nearest_valid_sizes():
    net = UNet(UNetConfig(base_channels=2))
    with pytest.raises(ValueError, match=r"573.*572 or 588"):
        net(torch.zeros(1, 1, 572, 573))
    with pytest.raises(ValueError, match="188"):
        net(torch.zeros(1, 1, 100, 100))
    with pytest.raises(ValueError, match=r"572 or 588"):
        UNetConfig().output_size(580)
    assert not UNetConfig().is_valid_input(574)


def test_wrong_channels_or_rank_raise_clearly():
    net = UNet(UNetConfig(base_channels=2, depth=1))
    size = net.config.min_input_size()
    with pytest.raises(ValueError, match=r"1 channel\(s\) but this image has 3"):
        net(torch.zeros(1, 3, size, size))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        net(torch.zeros(1, size, size))
    net.config.check_channels(1)  # no error
    with pytest.raises(ValueError, match="has 2"):
        net.config.check_channels(2)


def test_he_initialisation(paper_net):
    # paper, Sec. 3: Gaussian with std sqrt(2 / N), N = inputs of one neuron
    for module in paper_net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            expected = math.sqrt(2.0 / fan_in(module))
            weights = module.weight.detach()
            tolerance = 0.05 if weights.numel() > 10_000 else 0.3
            assert weights.std().item() == pytest.approx(expected, rel=tolerance)
            assert abs(weights.mean().item()) < 0.1 * expected
            assert torch.count_nonzero(module.bias) == 0


def test_fan_in_counts_inputs_of_one_output_neuron():
    assert fan_in(nn.Conv2d(64, 128, 3)) == 9 * 64
    assert fan_in(nn.Conv2d(64, 2, 1)) == 64
    # 2x2 stride-2 up-convolution: every output pixel sees exactly one input pixel
    assert fan_in(nn.ConvTranspose2d(1024, 512, 2, stride=2)) == 1024


def test_dropout_at_the_end_of_the_contracting_path():
    config = UNetConfig(base_channels=2, depth=2, dropout=0.5)
    net = UNet(config)
    assert isinstance(net.dropout, nn.Dropout) and net.dropout.p == 0.5
    x = torch.rand(1, 1, config.min_input_size(), config.min_input_size())
    net.train()
    assert not torch.equal(net(x), net(x))  # dropout active while training
    net.eval()
    assert torch.equal(net(x), net(x))
    assert UNet(UNetConfig(base_channels=2, dropout=0.0)).dropout.p == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0},
        {"n_classes": 1},
        {"base_channels": 2.5},
        {"depth": 0},
        {"depth": True},
        {"dropout": 1.0},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="UNetConfig"):
        UNetConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    config = UNetConfig(in_channels=3, n_classes=4, base_channels=8, depth=3, dropout=0.1)
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({**config.to_dict(), "padding": 1})


def test_model_info_matches_the_classes():
    assert UNet(UNetConfig(base_channels=2)).info == ModelInfo()
    info = UNet(UNetConfig(n_classes=3, base_channels=2)).info
    assert info.task == "semantic" and len(info.class_names) == 3
    with pytest.raises(ValueError, match="3 classes"):
        UNet(UNetConfig(base_channels=2), ModelInfo(class_names=["a", "b", "c"]))
    with pytest.raises(ValueError, match="task"):
        ModelInfo(task="panoptic")
    with pytest.raises(ValueError, match="normalization"):
        ModelInfo(normalization={"low": 99.0, "high": 1.0})

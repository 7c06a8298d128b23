"""Tests of insta_rs.models and conf/model/*.yaml: shapes, normalisation first, validation messages,
parameter counts against a closed-form count, memory formats, determinism and learnability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from insta_rs.errors import ConfigError, DataError
from insta_rs.models import CifarResNet, Normalize, ResNet50, SmallCNN, check_input, count_parameters

MODEL_CONF = Path(__file__).resolve().parents[1] / "conf" / "model"

# Each config with the inputs it is meant for: (input_shape, num_classes). ResNet-50 at 64x64 keeps it fast.
INTENDED = {
    "small_cnn": [((1, 8, 8), 10), ((1, 28, 28), 10)],
    "cifar_resnet20": [((3, 32, 32), 10)],
    "cifar_vgg": [((3, 32, 32), 10)],
    "cifar_resnet110": [((3, 32, 32), 10)],
    "resnet50": [((3, 64, 64), 7)],
}
CASES = [(name, shape, k) for name, shapes in INTENDED.items() for shape, k in shapes]


def stats(channels: int):
    """A distinct (mean, std) per channel, so that mixing channels up would show."""
    return tuple(0.1 + 0.2 * c for c in range(channels)), tuple(0.2 + 0.1 * c for c in range(channels))


def build(name: str, shape, num_classes: int):
    mean, std = stats(shape[0])
    cfg = OmegaConf.load(MODEL_CONF / f"{name}.yaml")
    return instantiate(cfg, num_classes=num_classes, input_shape=tuple(shape), mean=mean, std=std)


def test_every_config_has_an_intended_input():
    assert sorted(p.stem for p in MODEL_CONF.glob("*.yaml")) == sorted(INTENDED)


@pytest.mark.parametrize("name,shape,num_classes", CASES)
def test_config_instantiates_and_gives_logits(name, shape, num_classes):
    torch.manual_seed(0)
    model = build(name, shape, num_classes)
    assert model.num_classes == num_classes and type(model.num_classes) is int
    assert model.input_shape == shape and all(type(v) is int for v in model.input_shape)
    assert model.name == name
    x = torch.rand(3, *shape)
    model.train()
    out = model(x)
    assert out.shape == (3, num_classes) and torch.isfinite(out).all()
    out.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters())


def test_normalize_matches_hand_computation():
    mean, std = (0.5, 0.25, 0.125), (0.5, 2.0, 0.25)
    norm = Normalize(mean, std)
    x = torch.rand(2, 3, 4, 5)
    expected = x.numpy().copy()
    for c in range(3):
        expected[:, c] = (expected[:, c] - mean[c]) / std[c]
    np.testing.assert_allclose(norm(x).numpy(), expected, rtol=1e-6, atol=1e-6)
    # a single scalar value for one channel, as OmegaConf or a user may give it
    np.testing.assert_allclose(Normalize(0.5, 0.25)(torch.ones(1, 1, 2, 2)).numpy(), 2.0)
    # buffers: saved in checkpoints, follow .to()
    assert set(norm.state_dict()) == {"mean", "std"}
    assert norm.to(torch.float64)(x.double()).dtype == torch.float64


@pytest.mark.parametrize("name,shape,num_classes", [("small_cnn", (1, 8, 8), 10), ("cifar_resnet20", (3, 16, 16), 10),
                                                    ("resnet50", (3, 32, 32), 5)])
def test_normalize_is_the_first_layer(name, shape, num_classes):
    model = build(name, shape, num_classes).eval()
    assert isinstance(next(iter(model.children())), Normalize)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = {}
    first_conv.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0].detach().clone()))
    x = torch.rand(2, *shape)
    model(x)
    mean, std = stats(shape[0])
    expected = x.numpy().copy()
    for c in range(shape[0]):
        expected[:, c] = (expected[:, c] - mean[c]) / std[c]
    np.testing.assert_allclose(seen["x"].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_normalize_rejects_bad_statistics():
    with pytest.raises(ConfigError, match=r"^std=.*expected 3 values"):
        Normalize((0.1, 0.2, 0.3), (0.5, 0.5))
    with pytest.raises(ConfigError, match=r"^std=.*positive"):
        Normalize((0.1,), (0.0,))
    with pytest.raises(ConfigError, match=r"^mean=.*has 3 value\(s\) but the input has 1 channel"):
        Normalize((0.1, 0.2, 0.3), (1.0, 1.0, 1.0), channels=1)
    with pytest.raises(ConfigError, match=r"^mean=\[\] is invalid"):
        Normalize([], [])
    # a 3-channel normaliser must not broadcast silently over a 1-channel batch
    with pytest.raises(DataError, match="does not match the model"):
        Normalize((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))(torch.rand(2, 1, 4, 4))


@pytest.mark.parametrize("depth", [21, 19, 2, 0, -4, 20.5, "deep"])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ConfigError) as info:
        CifarResNet(10, (3, 32, 32), *stats(3), depth=depth)
    message = str(info.value)
    assert message == f"depth={depth!r} is invalid: expected 6n+2 with n >= 1, e.g. 20, 32, 44, 56 or 110"


@pytest.mark.parametrize("depth", [8, 20, 32])
def test_depth_counts_the_layers(depth):
    model = CifarResNet(10, (3, 8, 8), *stats(3), depth=depth)
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs3) + len(linears) == depth  # main-path weighted layers, as He et al. count them
    assert model.name == f"cifar_resnet{depth}"


def resnet_parameters_by_hand(depth: int, width: int = 16, channels: int = 3, classes: int = 10) -> int:
    """Closed-form parameter count of the CIFAR ResNet: 3x3 convs, BN (2 per channel), 1x1 projections, FC."""
    n = (depth - 2) // 6
    total = 9 * channels * width + 2 * width  # stem conv + BN
    cin = width
    for cout in (width, 2 * width, 4 * width):
        for _ in range(n):
            total += 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
            if cin != cout:
                total += cin * cout + 2 * cout  # projection shortcut + BN
            cin = cout
    return total + cin * classes + classes


@pytest.mark.parametrize("depth,published", [(20, 0.27e6), (110, 1.7e6)])
def test_cifar_resnet_parameter_counts(depth, published):
    model = CifarResNet(10, (3, 32, 32), *stats(3), depth=depth)
    count = count_parameters(model)
    assert count == resnet_parameters_by_hand(depth)
    assert abs(count - published) / published < 0.025  # He et al. 2016, Table 6


def test_too_small_image_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        SmallCNN(10, (1, 3, 3), *stats(1))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model=small_cnn cannot take input_shape=(1, 3, 3): height and width must be at least 4")
    assert "; expected (C, H, W) with H, W >= 4" in message
    SmallCNN(10, (1, 4, 4), *stats(1))  # the smallest it takes


def test_wrong_channel_count_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        ResNet50(10, (1, 64, 64), *stats(1))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model=resnet50 cannot take input_shape=(1, 64, 64): it takes 3-channel images, not 1;")
    # and the statistics must match the channels of input_shape, for every model
    for cls in (SmallCNN, CifarResNet):
        with pytest.raises(ConfigError, match=r"^mean=\(0\.5, 0\.25, 0\.5\) has 3 value\(s\) but the input has 1"):
            cls(10, (1, 28, 28), (0.5, 0.25, 0.5), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("kwargs,setting", [(dict(num_classes=1), "num_classes=1"),
                                            (dict(input_shape=(1, 8)), "input_shape=(1, 8)"),
                                            (dict(input_shape=(1, 0, 8)), "input_shape=(1, 0, 8)"),
                                            (dict(width=0), "width=0"), (dict(hidden=2.5), "hidden=2.5")])
def test_other_bad_settings_name_the_setting(kwargs, setting):
    args = dict(num_classes=10, input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,)) | kwargs
    with pytest.raises(ConfigError) as info:
        SmallCNN(**args)
    assert str(info.value).startswith(f"{setting} is invalid: expected") and "\n" not in str(info.value)


class _FlatNet(nn.Module):
    """A model with no declared limits: only the dry run can find out what it takes."""

    name = "flat"

    def __init__(self, features: int, outputs: int):
        super().__init__()
        self.num_classes = 10
        self.bn = nn.BatchNorm1d(features)
        self.fc = nn.Linear(features, outputs)

    def forward(self, x):
        return self.fc(self.bn(x.flatten(1)))


def test_check_input_dry_run():
    model = _FlatNet(16, 10)
    check_input(model, (1, 4, 4))
    assert model.training  # training flag restored
    assert model.bn.num_batches_tracked.item() == 0  # eval mode: statistics untouched
    with pytest.raises(ConfigError) as info:
        check_input(model, (1, 5, 5))
    message = str(info.value)
    assert message.startswith("model=flat cannot take input_shape=(1, 5, 5): ") and "\n" not in message
    assert message.endswith("; expected an input shape its layers accept")
    with pytest.raises(ConfigError, match=r"a batch of 1 gives output \(1, 9\), not logits of shape \(1, 10\)"):
        check_input(_FlatNet(16, 9), (1, 4, 4))


def test_deterministic_given_seed():
    def make(seed):
        torch.manual_seed(seed)
        return CifarResNet(10, (3, 16, 16), *stats(3), depth=8)

    a, b, c = make(1), make(1), make(2)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name,shape", [("small_cnn", (1, 28, 28)), ("cifar_resnet20", (3, 32, 32))])
def test_channels_last_gives_the_same_logits(name, shape):
    torch.manual_seed(0)
    model = build(name, shape, 10).eval()
    x = torch.rand(4, *shape)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,shape", [("small_cnn", (1, 28, 28)), ("cifar_resnet20", (3, 32, 32)),
                                        ("resnet50", (3, 64, 64))])
def test_cuda_matches_cpu(name, shape):
    torch.manual_seed(0)
    model = build(name, shape, 10).eval()
    x = torch.rand(2, *shape)
    expected = model(x)
    gpu = model.to("cuda", memory_format=torch.channels_last)
    check_input(gpu, shape)  # the dry run follows the model's device
    out = gpu(x.to("cuda").contiguous(memory_format=torch.channels_last)).cpu()
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-3)


def test_small_cnn_learns_a_separable_problem():
    torch.manual_seed(0)
    n = 32
    y = torch.arange(n) % 2
    x = 0.1 * torch.rand(n, 1, 8, 8)
    x[y == 0, :, :, :4] += 0.8  # class 0: bright left half
    x[y == 1, :, :, 4:] += 0.8  # class 1: bright right half
    model = SmallCNN(2, (1, 8, 8), (0.5,), (0.5,), width=8, hidden=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert (model.eval()(x).argmax(1) == y).all()

"""Base classifiers f for randomized smoothing, each with the data set's normalisation as its first layer.

Inputs are in [0, 1] pixel space and every model starts with ``Normalize`` (x -> (x - mean) / std per
channel), so Gaussian noise x + sigma * e is added *before* normalisation and sigma and certified radii
are in pixel units, as in Cohen et al. (ALGORITHMS.md section 0, "Units").

Every model takes ``num_classes``, ``input_shape`` = (C, H, W), ``mean`` and ``std`` (one value per
channel), filled in by the caller from the data set, plus its own options; it exposes ``.num_classes``,
``.input_shape`` and ``.name`` (the ``model=`` choice it belongs to), returns logits of shape
(B, num_classes), and checks at the end of its constructor, with one cheap dry forward pass
(``check_input``), that it can take ``input_shape``: if not, a one-line ``ConfigError`` says why.

- ``SmallCNN``: three 3x3 conv + BN + ReLU layers and two max-pools, then an MLP head; for digits
  (1x8x8) and MNIST (1x28x28), fast on a CPU.
- ``CifarVGG``: a narrow VGG-style network for 32x32 colour images, about 8x fewer multiply-adds than
  ResNet-20: CIFAR-sized experiments a CPU can certify.
- ``CifarResNet``: the CIFAR ResNet of He et al. (2016), depth = 6n + 2 (20: 0.27M parameters,
  110: 1.7M, the base model of Cohen et al.).
- ``ResNet50``: torchvision's ImageNet ResNet-50, randomly initialised (no weights are ever downloaded).

No device is hard-coded: move a model with ``.to(device)`` / ``.to(memory_format=torch.channels_last)``.
Initialisation draws only from torch's global generator, so ``torch.manual_seed(s)`` fixes the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError, DataError, check

__all__ = ["Normalize", "SmallCNN", "CifarVGG", "CifarResNet", "ResNet50", "check_input", "count_parameters"]


def _as_shape(input_shape) -> tuple[int, int, int]:
    """(C, H, W) as a tuple of positive ints (accepts lists and OmegaConf ListConfigs); ConfigError otherwise."""
    try:
        shape = tuple(input_shape)
        ok = len(shape) == 3 and all(int(v) == v and int(v) >= 1 for v in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        shown = tuple(input_shape) if isinstance(input_shape, Sequence) and not isinstance(input_shape, str) \
            else input_shape
        raise ConfigError(f"input_shape={shown!r} is invalid: expected (channels, height, width), three positive "
                          "integers")
    return tuple(int(v) for v in shape)


def _as_floats(values, setting: str) -> tuple[float, ...]:
    """A sequence of numbers (or one number) as a tuple of floats; ConfigError otherwise."""
    if isinstance(values, (int, float)):
        return (float(values),)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out:
        raise ConfigError(f"{setting}={values!r} is invalid: expected a non-empty list of numbers, one per channel")
    return out


class Normalize(nn.Module):
    """x -> (x - mean[c]) / std[c] for each channel c of an (B, C, H, W) batch.

    The first layer of every model, so that the smoothing noise lives in [0, 1] pixel space
    (ALGORITHMS.md section 0, "Units"). ``mean`` and ``std`` are stored as buffers of shape (1, C, 1, 1),
    so they follow ``.to(device/dtype)``, broadcast over any memory format, and are saved in checkpoints.
    With ``channels`` given, ``len(mean)`` must equal it (ConfigError otherwise); at run time an input
    with another channel count raises DataError instead of being broadcast silently.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int | None = None):
        super().__init__()
        mean_t, std_t = _as_floats(mean, "mean"), _as_floats(std, "std")
        check(len(std_t) == len(mean_t), "std", std_t, f"{len(mean_t)} values, one per channel like mean={mean_t}")
        check(all(s > 0 for s in std_t), "std", std_t, "positive values")
        if channels is not None and len(mean_t) != channels:
            raise ConfigError(f"mean={mean_t} has {len(mean_t)} value(s) but the input has {channels} channel(s): "
                              "expected one mean and one std per channel of input_shape")
        self.channels = len(mean_t)
        self.register_buffer("mean", torch.tensor(mean_t, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_t, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise DataError(f"input of shape {tuple(x.shape)} does not match the model: expected (batch, "
                            f"{self.channels}, height, width) images in [0, 1]")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _input_description(shape) -> str:
    return "(" + ", ".join(str(v) for v in shape) + ")"


def _fail_for(model: nn.Module, shape: tuple[int, int, int]):
    """The function that raises check_input's one-line ConfigError with a given reason."""
    name = getattr(model, "name", type(model).__name__)
    expected = getattr(model, "expected_input", "an input shape its layers accept")

    def fail(reason: str):
        reason = " ".join(str(reason).split())  # one line
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise ConfigError(f"model={name} cannot take input_shape={_input_description(shape)}: {reason}; "
                          f"expected {expected}")

    return fail


def _check_declared_limits(model: nn.Module, shape: tuple[int, int, int], fail=None) -> None:
    """The cheap part of check_input: the model's ``in_channels`` and ``min_side``, when it declares them."""
    fail = fail or _fail_for(model, shape)
    channels, height, width = shape
    in_channels = getattr(model, "in_channels", None)
    if in_channels is not None and channels != in_channels:
        fail(f"it takes {in_channels}-channel images, not {channels}")
    min_side = getattr(model, "min_side", None)
    if min_side is not None and min(height, width) < min_side:
        fail(f"height and width must be at least {min_side} pixels")


def check_input(model: nn.Module, input_shape) -> None:
    """Check that ``model`` maps a (B, C, H, W) = (1, *input_shape) batch to logits of shape (1, num_classes).

    First the model's declared limits (``in_channels``, ``min_side``, when it has them), then one dry
    forward pass on a zero batch in eval mode without gradients, on the model's device and dtype (so
    batch-norm statistics are untouched and the training flag is restored). Any failure raises
    ``ConfigError("model=<name> cannot take input_shape=(C, H, W): <reason>; expected <what it takes>")``.
    """
    shape = _as_shape(input_shape)
    fail = _fail_for(model, shape)
    _check_declared_limits(model, shape, fail)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape, device=device, dtype=dtype))
    except Exception as exc:  # noqa: BLE001 - any failure of the dry run is reported as one line
        fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    finally:
        model.train(was_training)
    num_classes = getattr(model, "num_classes", None)
    want = f"(1, {num_classes})" if num_classes is not None else "(1, num_classes)"
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1 or \
            (num_classes is not None and out.shape[1] != num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        fail(f"a batch of 1 gives output {got}, not logits of shape {want}")


class _ImageClassifier(nn.Module):
    """Shared bookkeeping: validates num_classes and input_shape, builds ``self.normalize`` first."""

    name = "model"
    expected_input = "(C, H, W) images"
    min_side: int | None = None

    def __init__(self, num_classes: int, input_shape, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        try:
            ok = int(num_classes) == num_classes and int(num_classes) >= 2
        except (TypeError, ValueError):
            ok = False
        check(ok, "num_classes", num_classes, "an integer >= 2")
        self.num_classes = int(num_classes)
        self.input_shape = _as_shape(input_shape)
        self.normalize = Normalize(mean, std, channels=self.input_shape[0])  # registered first: the first layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


def _positive_int(value, setting: str) -> int:
    try:
        ok = int(value) == value and int(value) >= 1
    except (TypeError, ValueError):
        ok = False
    check(ok, setting, value, "a positive integer")
    return int(value)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _init_weights(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation of convolutions (fan_out, ReLU); BN starts at the identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SmallCNN(_ImageClassifier):
    """A small CNN for small grey-scale images (digits 1x8x8, MNIST 1x28x28); any channel count works.

    Normalize -> [conv3x3(C, w) BN ReLU] -> [conv3x3(w, w) BN ReLU] -> maxpool 2 -> [conv3x3(w, 2w) BN ReLU]
    -> maxpool 2 -> adaptive average pool to 2x2 -> Linear(8w, hidden) ReLU -> Linear(hidden, num_classes).
    Two 2x2 max-pools need H, W >= 4. With w = 32, hidden = 128: about 62k parameters.
    """

    name = "small_cnn"
    expected_input = "(C, H, W) with H, W >= 4 (any C, one mean/std per channel)"
    min_side = 4

    def __init__(self, num_classes: int, input_shape, mean: Sequence[float], std: Sequence[float],
                 width: int = 32, hidden: int = 128):
        super().__init__(num_classes, input_shape, mean, std)
        w = _positive_int(width, "width")
        hidden = _positive_int(hidden, "hidden")
        self.in_channels = self.input_shape[0]
        self.features = nn.Sequential(
            *_conv_bn_relu(self.in_channels, w), *_conv_bn_relu(w, w), nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(8 * w, hidden), nn.ReLU(), nn.Linear(hidden, self.num_classes))
        _init_weights(self)
        check_input(self, self.input_shape)


class BlockAverage(nn.Module):
    """A low-pass filter: every k x k block of pixels replaced by its mean (the image keeps its shape). On
    x + sigma e the block mean's noise has standard deviation sigma / k, so a network behind it sees k times
    less noise; any fixed function of the noisy input is still a valid base classifier (SOUND.md 3d).
    H and W must be multiples of k."""

    def __init__(self, k: int):
        super().__init__()
        self.k = _positive_int(k, "pool")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return x
        mean = F.avg_pool2d(x, self.k)
        return mean.repeat_interleave(self.k, dim=-2).repeat_interleave(self.k, dim=-1)


class CifarVGG(_ImageClassifier):
    """A narrow VGG-style network for 32x32 colour images that a CPU can certify: per stage one
    3x3 conv + BN + ReLU then a 2x2 max-pool, widths w, 2w, 4w, 8w (32 -> 16 -> 8 -> 4 -> 2), global average
    pool, Linear(8w, num_classes). With w = 8 (the default): about 25k parameters and 1M multiply-adds per
    image (CIFAR ResNet-20: 0.27M and 41M), 12x ResNet-20's forward throughput on this CPU. Any channel count; H, W >= 16.
    """

    name = "cifar_vgg"
    expected_input = "(C, H, W) with H, W >= 16 (any C, one mean/std per channel)"
    min_side = 16

    def __init__(self, num_classes: int, input_shape, mean: Sequence[float], std: Sequence[float], width: int = 8):
        super().__init__(num_classes, input_shape, mean, std)
        w = _positive_int(width, "width")
        layers, cin = [], self.input_shape[0]
        for cout in (w, 2 * w, 4 * w, 8 * w):
            layers += [*_conv_bn_relu(cin, cout), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(8 * w, self.num_classes)
        _init_weights(self)
        check_input(self, self.input_shape)


class _BasicBlock(nn.Module):
    """He et al.'s basic residual block: relu(BN(conv3x3(relu(BN(conv3x3(x))))) + shortcut(x)).

    The shortcut is the identity, or a strided 1x1 conv + BN when the shape changes (projection, option B).
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(_ImageClassifier):
    """The CIFAR ResNet of He et al. (2016, section 4.2), depth = 6n + 2.

    Normalize -> conv3x3(C, w) BN ReLU -> 3 stages of n basic blocks with w, 2w, 4w channels (the first
    block of stages 2 and 3 has stride 2) -> global average pool -> Linear(4w, num_classes). Depth counts
    the 6n + 1 convolutions on the main path plus the linear layer: 20 (0.27M parameters), 56, 110 (1.7M,
    the base model of Cohen et al. on CIFAR-10). Built for 32x32 inputs, it takes any size and channel
    count. A depth that is not 6n + 2 raises ConfigError.
    """

    expected_input = "(C, H, W) images (any C and size; built for 32x32), one mean/std per channel"

    def __init__(self, num_classes: int, input_shape, mean: Sequence[float], std: Sequence[float],
                 depth: int = 20, width: int = 16):
        super().__init__(num_classes, input_shape, mean, std)
        try:
            ok = int(depth) == depth and int(depth) >= 8 and (int(depth) - 2) % 6 == 0
        except (TypeError, ValueError):
            ok = False
        check(ok, "depth", depth, "6n+2 with n >= 1, e.g. 20, 32, 44, 56 or 110")
        self.depth = int(depth)
        self.name = f"cifar_resnet{self.depth}"
        w = _positive_int(width, "width")
        n = (self.depth - 2) // 6
        self.in_channels = self.input_shape[0]
        layers: list[nn.Module] = _conv_bn_relu(self.in_channels, w)
        cin = w
        for stage, cout in enumerate((w, 2 * w, 4 * w)):
            for block in range(n):
                layers.append(_BasicBlock(cin, cout, stride=2 if stage > 0 and block == 0 else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(4 * w, self.num_classes)
        _init_weights(self)
        check_input(self, self.input_shape)


class ResNet50(_ImageClassifier):
    """torchvision's ResNet-50 (He et al. 2016, ImageNet variant), randomly initialised, after Normalize.

    ``torchvision.models.resnet50(weights=None, num_classes=num_classes)``: no weights are downloaded.
    It takes 3-channel (RGB) images of any size (built for 224x224); ``self.net`` holds the torchvision
    model, so its state dict keys are torchvision's with a ``net.`` prefix.
    """

    name = "resnet50"
    expected_input = "(3, H, W) RGB images (built for 224x224), one mean/std per channel"
    in_channels = 3

    def __init__(self, num_classes: int, input_shape, mean: Sequence[float], std: Sequence[float]):
        super().__init__(num_classes, input_shape, mean, std)
        _check_declared_limits(self, self.input_shape)  # fail before building 25M parameters
        from torchvision.models import resnet50

        self.net = resnet50(weights=None, num_classes=self.num_classes)
        check_input(self, self.input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

"""Real networks written in the package (no torchvision): a CIFAR-style ResNet-20 and an MLP with a ReLU head.

Both end in one ``nn.Linear`` classifier named ``classifier`` reading the ``penultimate`` features, which is what
:mod:`implicit_geometry.measure` taps. :func:`build` makes one by name (for saved state dicts), :func:`save_model`
writes a file ``igeom measure --model`` can read back.

>>> net = build("mlp", in_shape=(1, 8, 8), num_classes=10, width=32, depth=3)
>>> tuple(net(torch.zeros(2, 1, 8, 8)).shape)
(2, 10)
>>> [type(m).__name__ for m in build("mlp", in_shape=(4,), num_classes=3, width=8, depth=1, batch_norm=True).head]
['Linear', 'BatchNorm1d', 'ReLU']
>>> tuple(build("resnet20", in_shape=(3, 8, 8), num_classes=4, width=4)(torch.zeros(2, 3, 8, 8)).shape)
(2, 4)
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from implicit_geometry._validation import InvalidParameterError, check_choice, check_int, one_line


class ReLUHeadMLP(nn.Module):
    """``flatten -> [Linear(in, trunk) -> ReLU] -> L x [Linear(width) -> ReLU] -> classifier``.

    ``depth`` L counts the ReLU layers of width ``width`` in the head (the depth paper's head); ``trunk`` is the
    width of one optional input layer before it (0: none). The penultimate features are the last ReLU's output.
    ``batch_norm`` puts a ``BatchNorm1d`` between every hidden ``Linear`` and its ReLU (the layers then have no
    bias). That makes the hidden layers scale-invariant, as in the ResNet: under weight decay their effective step
    stays large in the terminal phase, which is what keeps NC1 falling once the data are fitted (docs/measure.md).
    """

    def __init__(self, in_dim: int, num_classes: int, width: int = 128, depth: int = 2, trunk: int = 0,
                 batch_norm: bool = False) -> None:
        super().__init__()
        in_dim, width = check_int("in_dim", in_dim, minimum=1), check_int("width", width, minimum=1)
        depth, trunk = check_int("depth", depth, minimum=1), check_int("trunk", trunk, minimum=0)

        def hidden(d_in: int, d_out: int) -> list[nn.Module]:
            if batch_norm:
                return [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU()]
            return [nn.Linear(d_in, d_out), nn.ReLU()]

        layers: list[nn.Module] = [nn.Flatten()]
        d = in_dim
        if trunk:
            layers += hidden(d, trunk)
            d = trunk
        self.trunk = nn.Sequential(*layers)
        head: list[nn.Module] = []
        for _ in range(depth):
            head += hidden(d, width)
            d = width
        self.head = nn.Sequential(*head)
        self.classifier = nn.Linear(d, check_int("num_classes", num_classes, minimum=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.trunk(x)))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.short is None else self.short(x)))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet (6n+2 layers, n = 3): widths w, 2w, 4w over three stages, global average pooling,
    a linear classifier. Works for any input size >= 4 pixels and any number of channels."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, blocks: int = 3) -> None:
        super().__init__()
        w = check_int("width", width, minimum=1)
        n = check_int("blocks", blocks, minimum=1)
        self.stem = nn.Sequential(nn.Conv2d(check_int("in_channels", in_channels, minimum=1), w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        stages, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w)):
            blocks_i = [_Block(cin if j == 0 else cout, cout, 2 if (j == 0 and i > 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks_i))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(cin, check_int("num_classes", num_classes, minimum=2))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))))


ARCHITECTURES = ("mlp", "resnet20")


def normalized_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights that feed a batch norm directly: a bias-free ``Linear``/``Conv2d`` registered just before a
    ``BatchNorm`` in the same parent module (how both networks here are written).

    In training mode the network's output does not change when one of them is scaled, so weight decay on them does
    not regularize the function: it only shrinks their norm and so raises their effective step size (the mechanism
    Lobacheva et al., 2021, give for the periodic loss spikes of batch-normalized networks; docs/measure.md).

    >>> len(normalized_weights(build("resnet20", in_shape=(1, 8, 8), num_classes=3, width=4)))  # stem + 18 convs + 2 shortcuts
    21
    >>> normalized_weights(build("mlp", in_shape=(4,), num_classes=3, width=8, depth=2))
    []
    """
    found: list[nn.Parameter] = []
    for parent in model.modules():
        children = list(parent.children())
        for layer, after in itertools.pairwise(children):
            if isinstance(layer, (nn.Linear, nn.Conv2d)) and layer.bias is None and isinstance(after, nn.modules.batchnorm._BatchNorm):
                found.append(layer.weight)
    return found


def check_architecture(name: str, batch_norm: bool = False) -> str:
    """The architecture name, checked together with the options that only some architectures take."""
    name = check_choice("model", name, ARCHITECTURES)
    if batch_norm and name != "mlp":
        raise InvalidParameterError(f"batch_norm applies to model mlp only (resnet20 is always batch-normalized; got model {name!r})")
    return name


def build(name: str, *, in_shape: tuple[int, ...], num_classes: int, width: int | None = None, depth: int = 2, trunk: int = 0,
          batch_norm: bool = False) -> nn.Module:
    """A network by name: ``mlp`` (width default 128, ``depth`` ReLU head layers, optional ``batch_norm``) or
    ``resnet20`` (width default 16, always batch-normalized); ``in_shape`` is one input's shape (C, H, W) or (D,)."""
    name = check_architecture(name, batch_norm)
    in_shape = tuple(int(s) for s in in_shape)
    if name == "mlp":
        return ReLUHeadMLP(math.prod(in_shape), num_classes, width=width or 128, depth=depth, trunk=trunk, batch_norm=batch_norm)
    if len(in_shape) != 3:
        raise InvalidParameterError(f"data for resnet20 must be images (C, H, W) (got input shape {in_shape})")
    return ResNet20(in_shape[0], num_classes, width=width or 16)


def save_model(path: Path | str, model: nn.Module, name: str, **kwargs: Any) -> None:
    """Write ``{"architecture": name, "kwargs": kwargs, "state_dict": ...}`` (what ``igeom measure`` reads)."""
    from implicit_geometry.io import write_torch

    write_torch(Path(path), {"architecture": name, "kwargs": kwargs, "state_dict": model.state_dict()})


def load_model(path: Path | str) -> nn.Module:
    """A TorchScript file, or a file written by :func:`save_model` (a state dict with a named architecture)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"model must be an existing file (got {str(path)!r})")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception:  # noqa: BLE001 - not TorchScript: try our own format
        pass
    accepted = "TorchScript or a file from implicit_geometry.models.save_model (keys architecture/kwargs/state_dict)"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input, not our bug
        raise InvalidParameterError(f"model must be {accepted} (got {str(path)!r}: {type(exc).__name__}: {one_line(exc, 120)})") from None
    if not (isinstance(obj, dict) and "architecture" in obj and "state_dict" in obj and isinstance(obj.get("kwargs", {}), dict)):
        raise InvalidParameterError(f"model must be {accepted} (got {str(path)!r})")
    try:
        net = build(obj["architecture"], **obj.get("kwargs", {}))
        net.load_state_dict(obj["state_dict"])
    except (TypeError, RuntimeError) as exc:  # unknown keyword, or weights of another shape than the kwargs say
        why = one_line(exc) or type(exc).__name__
        raise InvalidParameterError(f"model file {str(path)!r} does not match its architecture {obj['architecture']!r} and kwargs: {why}") from None
    return net

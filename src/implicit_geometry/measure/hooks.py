"""Forward hooks that capture named layers of any ``torch.nn.Module`` (and remove themselves afterwards).

Layer names are module names from ``model.named_modules()`` (the module's output is captured), or
``"penultimate"`` (the input of the last ``nn.Linear``: the features the classifier reads) and ``"logits"`` (the
model's output). Outputs with more than two dimensions (conv maps N x C x H x W, sequences N x T x C) are
average-pooled over every axis after the channel axis (conv) or over the sequence axis, so every tap is a
rows x features matrix.

TorchScript modules accept no hooks: for them only ``"logits"`` (the output) and ``"penultimate"`` exist, and
``"penultimate"`` needs the scripted model to return ``(features, logits)``.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
>>> with LayerTaps(net, ["1", "penultimate", "logits"]) as taps:
...     _ = net(torch.randn(4, 3))
>>> {k: tuple(v.shape) for k, v in taps.captured.items()}
{'1': (4, 5), 'penultimate': (4, 5), 'logits': (4, 2)}
>>> len(net[2]._forward_pre_hooks) + len(net[1]._forward_hooks)
0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from implicit_geometry._validation import InvalidParameterError

SPECIAL = ("penultimate", "logits")


def last_linear(model: torch.nn.Module) -> tuple[str, torch.nn.Linear]:
    """The model's last ``nn.Linear`` (in registration order): taken to be its classifier."""
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) or getattr(m, "original_name", None) == "Linear"]  # TorchScript keeps the class name
    if not found:
        raise InvalidParameterError("model must contain an nn.Linear classifier for 'penultimate' (got none)")
    return found[-1]


def pool(x: Any, conv: bool | None = None) -> torch.Tensor:
    """A rows x features view of a captured activation: N x C x ... maps are averaged over the spatial axes; a
    3-D N x T x C output (``conv=False``, the default for 3-D) is averaged over T."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if hasattr(x, "logits"):
        x = x.logits
    x = x.detach()
    if x.ndim <= 2:
        return x.reshape(x.shape[0], -1) if x.ndim == 2 else x[:, None]
    if x.ndim == 3 and not conv:
        return x.mean(1)
    return x.flatten(2).mean(2)


class LayerTaps:
    """Context manager capturing the named layers' outputs on each forward pass into ``captured``."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[str]) -> None:
        self.model = model
        self.layers = list(layers)
        self.script = isinstance(model, torch.jit.ScriptModule)
        if self.script and not set(self.layers) <= set(SPECIAL):
            raise InvalidParameterError(f"layers of a TorchScript model must be penultimate and/or logits (got {self.layers}: hooks are not supported on ScriptModules)")
        modules = dict(model.named_modules())
        for name in self.layers:
            if name not in SPECIAL and name not in modules:
                some = ", ".join(list(n for n in modules if n)[:8])
                raise InvalidParameterError(f"layers must be module names of the model or penultimate/logits (got {name!r}; e.g. {some})")
        self.modules = modules
        self.captured: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def forward(self, x: torch.Tensor) -> Any:
        """Run the model on x, filling ``captured`` (also for TorchScript models, which take no hooks)."""
        out = self.model(x)
        if self.script:
            if isinstance(out, (tuple, list)) and len(out) == 2:
                self.captured["penultimate"], self.captured["logits"] = pool(out[0]), pool(out[1])
            else:
                if "penultimate" in self.layers:
                    raise InvalidParameterError("a TorchScript model must return (features, logits) for the penultimate layer (got one output); measure layers=logits only")
                self.captured["logits"] = pool(out)
        return out

    def __enter__(self) -> LayerTaps:
        if self.script:
            return self
        for name in self.layers:
            if name == "penultimate":
                _, lin = last_linear(self.model)
                self._handles.append(lin.register_forward_pre_hook(self._pre(name)))
            elif name == "logits":
                self._handles.append(self.model.register_forward_hook(self._post(name)))
            else:
                self._handles.append(self.modules[name].register_forward_hook(self._post(name)))
        return self

    def _pre(self, name: str):
        def hook(module: Any, args: Any) -> None:
            self.captured[name] = pool(args[0])

        return hook

    def _post(self, name: str):
        def hook(module: Any, args: Any, output: Any) -> None:
            self.captured[name] = pool(output)

        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

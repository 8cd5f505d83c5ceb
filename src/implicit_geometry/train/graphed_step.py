"""A supervised training step (forward, loss, backward, optimizer step) captured once as a CUDA graph and replayed
for every full mini-batch.

Why: a small network such as ResNet-20 at batch 128 spends most of an eager step issuing a few hundred kernels from
Python (about 10 ms per step on an H100, docs/measure.md); a replayed graph issues them all at once. The numbers stay
those of the eager step: the same kernels run on the same data, only launched differently.

How it keeps the eager semantics:

* mini-batches are copied into static input tensors; a batch of another size (the last, partial one) runs eagerly,
  accumulating into the same gradient tensors the graph writes;
* the learning rate is a Python float inside the optimizer, so the graph is captured again whenever it changes;
* capture needs a few warm-up steps (cuDNN algorithm choice, allocator pools); they run on a copy of the state: the
  parameters, buffers and optimizer state are restored in place afterwards, so warming up does not train;
* the first step after construction runs eagerly, so optimizer state created lazily (SGD's momentum buffers) exists
  before the graph is captured (a captured first step would replay "create the buffer" every time).

``graphs="off"`` runs every step eagerly (the CPU path); ``graphs="emulate"`` runs the same bookkeeping with the
captured step replaced by an eager closure, so the CPU test suite checks the orchestration bit for bit where no GPU
is present.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from implicit_geometry._validation import check_choice

WARMUP_STEPS = 3


class GraphedStep:
    """``step(x, y) -> loss``: one optimizer step on a mini-batch, replayed from a CUDA graph for full batches.

    The returned loss is a 0-d tensor that the next call overwrites: read or copy it before calling again.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, graphs: str = "cuda") -> None:
        self.model, self.opt, self.loss_fn = model, optimizer, loss_fn
        self.graphs = check_choice("graphs", graphs, ["cuda", "emulate", "off"])
        self._graph: torch.cuda.CUDAGraph | Callable[[], None] | None = None
        self._key: tuple | None = None  # (batch shape, learning rates) the graph was captured for
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None
        self._stepped = False  # the first step runs eagerly: it creates the optimizer's lazy state
        self.captures = 0  # how many times a graph was captured (tests and diagnostics)

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # with a graph alive its gradient tensors must stay the ones it writes: zero them instead of dropping them
        self.opt.zero_grad(set_to_none=self._graph is None)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), tuple(y.shape), x.dtype, tuple(g["lr"] for g in self.opt.param_groups))
        if self.graphs == "off" or not self._stepped or (self._key is not None and key[:3] != self._key[:3]):
            self._stepped = True
            return self._eager(x, y)  # the first step (lazy optimizer state), or a batch of another size
        if key != self._key:
            self._capture(x, y, key)
        assert self._x is not None and self._y is not None
        self._x.copy_(x)
        self._y.copy_(y)
        if self.graphs == "emulate":
            self._graph()  # type: ignore[operator]
        else:
            self._graph.replay()  # type: ignore[union-attr]
        assert self._loss is not None
        return self._loss

    def _state_tensors(self) -> list[torch.Tensor]:
        """Every tensor a step changes in place: parameters, buffers (batch-norm statistics), optimizer state."""
        out = [*self.model.parameters(), *self.model.buffers()]
        for state in self.opt.state.values():
            out += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return out

    def _capture(self, x: torch.Tensor, y: torch.Tensor, key: tuple) -> None:
        self._graph = None  # release the previous graph (and its memory pool) first
        self._x, self._y = x.detach().clone(), y.detach().clone()
        tensors = self._state_tensors()
        saved = [t.detach().clone() for t in tensors]
        side = None
        if self.graphs == "emulate":
            for _ in range(WARMUP_STEPS):
                self._eager(self._x, self._y)
        else:
            # warm up on the stream that will capture: cuBLAS/cuDNN handles and workspaces are created per stream,
            # and creating one during capture fails
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._eager(self._x, self._y)
            torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():  # undo the warm-up: it must not train
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)
        self.opt.zero_grad(set_to_none=True)  # the captured backward allocates (and from then on writes) the gradients
        if self.graphs == "emulate":
            captured: list[torch.Tensor | None] = []

            def step() -> None:
                # a real graph keeps writing the gradient tensors of its capture: fail where those were replaced
                grads = [p.grad for p in self.model.parameters()]
                if captured and any(g is not c for g, c in zip(grads, captured, strict=True)):
                    raise RuntimeError("the gradient tensors were replaced since the graph was captured")
                self.opt.zero_grad(set_to_none=False)
                loss = self.loss_fn(self.model(self._x), self._y)
                loss.backward()
                self.opt.step()
                if not captured:
                    captured.extend(p.grad for p in self.model.parameters())
                if self._loss is None:
                    self._loss = loss.detach().clone()
                else:
                    self._loss.copy_(loss.detach())

            self._loss = None
            self._graph = step
        else:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                loss = self.loss_fn(self.model(self._x), self._y)
                loss.backward()
                self.opt.step()
            self._loss = loss.detach()
            self._graph = graph
        self._key = key
        self.captures += 1

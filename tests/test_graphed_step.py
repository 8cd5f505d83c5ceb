"""The graph-replayed training step keeps the eager numbers: checked bit for bit on the CPU with the captured step
emulated (the CUDA capture itself is checked in test_cuda.py where a GPU is present)."""

from __future__ import annotations

import pytest
import torch

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.experiments.network import NetworkConfig, NetworkTrainer, prepare_data
from implicit_geometry.train.graphed_step import GraphedStep


def _trainer(graphs: str, **kw) -> NetworkTrainer:
    # 200 rows at batch 16: 12 full batches and a partial one of 8 per epoch; the lr drops at epochs 1 and 2
    c = NetworkConfig(dataset="digits", per_class=20, width=24, depth=2, batch_size=16, epochs=4, lr_drops=[0.25, 0.5],
                      **kw).validate()
    t = NetworkTrainer(c, prepare_data(c), seed=3, device=torch.device("cpu"))
    t.step.graphs = graphs
    return t


def _state(t: NetworkTrainer) -> list[torch.Tensor]:
    return [v.clone() for v in t.model.state_dict().values()] + [
        s["momentum_buffer"].clone() for s in t.opt.state.values()]


@pytest.mark.parametrize("kw", [{}, {"batch_norm": True, "weight_decay_normalized": 1e-3}])
def test_emulated_graph_replay_is_bit_identical_to_eager(kw):
    eager, graphed = _trainer("off", **kw), _trainer("emulate", **kw)
    for _ in range(4):  # epoch 3 replays epoch 2's graph after its partial batch ran eagerly
        assert eager.run_epoch(lambda: False) and graphed.run_epoch(lambda: False)
        assert eager.end_epoch() == graphed.end_epoch()
    for a, b in zip(_state(eager), _state(graphed), strict=True):
        assert torch.equal(a, b)
    assert graphed.step.captures == 3  # one graph per learning rate (0.05, 0.005, 0.0005)
    assert eager.step.captures == 0


def test_emulated_graph_resumes_mid_epoch_bit_identically():
    ref = _trainer("emulate", batch_norm=True)
    losses = []
    for _ in range(2):
        ref.run_epoch(lambda: False)
        losses.append(ref.end_epoch())
    first = _trainer("emulate", batch_norm=True)
    first.run_epoch(lambda: False)
    first.end_epoch()
    calls = iter(range(100))
    assert not first.run_epoch(lambda: next(calls) >= 5)  # stopped after 5 batches of epoch 2
    second = _trainer("emulate", batch_norm=True)
    second.load_state_dict(first.state_dict())
    assert second.run_epoch(lambda: False)
    assert second.end_epoch() == losses[1]
    for a, b in zip(_state(ref), _state(second), strict=True):
        assert torch.equal(a, b)


def test_warm_up_before_capture_does_not_train():
    t = _trainer("emulate")
    x, y = t.x[:16], t.y[:16]
    t.step(x, y)  # the first step runs eagerly
    before = _state(t)
    t.step._capture(x, y, (tuple(x.shape), tuple(y.shape), x.dtype, (0.05,)))
    for a, b in zip(before, _state(t), strict=True):
        assert torch.equal(a, b)


def test_bad_graphs_mode_is_refused():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(InvalidParameterError, match="graphs"):
        GraphedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.functional.cross_entropy, graphs="yes")


def test_cuda_graphs_option_is_validated_and_ignored_on_cpu():
    with pytest.raises(InvalidParameterError, match="cuda_graphs"):
        NetworkConfig(cuda_graphs="maybe").validate()
    c = NetworkConfig(dataset="digits", per_class=5, cuda_graphs=True).validate()
    assert NetworkTrainer(c, prepare_data(c), seed=0, device=torch.device("cpu")).step.graphs == "off"

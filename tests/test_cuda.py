"""CUDA against CPU: run where a GPU is present (skipped elsewhere). The rest of the suite also runs on CUDA there,
since experiments default to ``device="auto"``."""

import numpy as np
import pytest
import torch

from conftest import stop_after

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_stats_cuda_equals_cpu(dtype):
    from implicit_geometry.measure.accumulators import ClassStats

    g = torch.Generator().manual_seed(0)
    h = (torch.randn(3000, 48, generator=g) * 3 + 1).to(dtype)
    y = torch.randint(0, 7, (3000,), generator=g)
    cpu = ClassStats(48, 7).update(h, y).compute()
    gpu = ClassStats(48, 7, device="cuda")
    for i in range(0, 3000, 700):  # batches on the device, merged there
        gpu.update(h[i : i + 700].cuda(), y[i : i + 700].cuda())
    gpu = gpu.compute()
    for key in ("counts", "means", "within_scatter", "class_var"):
        a, b = cpu[key].double(), gpu[key].double().cpu()
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10 * float(a.abs().max())), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measure_network_on_cuda(dtype):
    from implicit_geometry.measure.api import measure
    from implicit_geometry.measure.data import TensorBatches
    from implicit_geometry.models.networks import build

    torch.manual_seed(0)
    net = build("mlp", in_shape=(20,), num_classes=5, width=32, depth=2)
    x, y = torch.randn(600, 20), torch.arange(600) % 5
    ref = measure(net, TensorBatches(x, y, 128), 5, permutations=0)
    gpu_net = build("mlp", in_shape=(20,), num_classes=5, width=32, depth=2)
    gpu_net.load_state_dict(net.state_dict())
    gpu_net = gpu_net.to("cuda", dtype)
    got = measure(gpu_net, TensorBatches(x.cuda().to(dtype), y.cuda(), 128), 5, permutations=0)
    assert not any(m._forward_hooks for m in gpu_net.modules())  # hooks removed afterwards
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for key in ("nc1", "cdnv", "etf_dist_means", "effective_rank_mean_logits"):
        assert got["layers"]["penultimate"][key] == pytest.approx(ref["layers"]["penultimate"][key], rel=tol), key


@pytest.mark.parametrize("bn", [{}, {"batch_norm": True, "weight_decay_normalized": 0.0}, {"batch_norm": True, "cuda_graphs": True}])
def test_network_experiment_on_cuda_resumes(tmp_path, monkeypatch, bn):
    from implicit_geometry.experiments import network as network_mod
    from implicit_geometry.experiments.base import Interrupted
    from implicit_geometry.io import read_csv

    cfg = dict(dataset="digits", per_class=20, width=32, depth=2, epochs=4, batch_size=16, measure_every=1, permutations=2, device="cuda", **bn)
    full = network_mod.run_network(network_mod.NetworkConfig(**cfg), tmp_path / "a", progress=False)
    network_mod.run_network(network_mod.NetworkConfig(**{**cfg, "device": "cpu"}), tmp_path / "c", progress=False)

    def numeric(path):
        return [{k: float(v) if v else None for k, v in r.items()} for r in read_csv(path)]

    ha, hc = numeric(tmp_path / "a" / "history.csv"), numeric(tmp_path / "c" / "history.csv")
    assert [r["epoch"] for r in ha] == [r["epoch"] for r in hc]
    # the same mini-batches and initialization: CUDA and CPU agree up to float32 rounding
    assert np.allclose([r["train_loss"] for r in ha[1:]], [r["train_loss"] for r in hc[1:]], rtol=1e-3)
    assert full["seconds"] > 0

    stop_after(monkeypatch, network_mod, 30)
    with pytest.raises(Interrupted):
        network_mod.run_network(network_mod.NetworkConfig(**cfg), tmp_path / "b", progress=False)
    monkeypatch.undo()
    network_mod.run_network(resume=tmp_path / "b", progress=False)
    hb = numeric(tmp_path / "b" / "history.csv")
    assert np.allclose([r["nc1"] for r in ha], [r["nc1"] for r in hb], rtol=1e-5)


def test_ufm_simulation_cuda_matches_cpu(tmp_path):
    from implicit_geometry.experiments.seli import SeliConfig, run_seli

    # float64 on both; reductions round differently on the GPU, and this run is long enough for rounding to
    # grow (the chaotic regime of large steps), so the two distances (both ~1e-3) agree to about 1e-4, not to the last digit
    small = dict(counts=[6, 3, 1, 1], dim=5, steps=2000, records=5)
    a = run_seli(SeliConfig(**small, device="cpu"), tmp_path / "cpu", progress=False)
    b = run_seli(SeliConfig(**small, device="cuda"), tmp_path / "cuda", progress=False)
    for key in ("dist_W", "dist_H", "dist_Z"):
        assert abs(b[key] - a[key]) < 2e-4 and b[key] < 5e-3, key


@pytest.mark.parametrize("model", ["mlp", "resnet20"])
def test_cuda_graph_step_matches_eager(model):
    from implicit_geometry.experiments.network import NetworkConfig, NetworkTrainer, prepare_data

    def trainer(graphs):
        c = NetworkConfig(dataset="digits", per_class=20, model=model, width=8 if model == "resnet20" else 24, batch_size=16,
                          epochs=4, lr_drops=[0.25, 0.5], batch_norm=model == "mlp", cuda_graphs=graphs).validate()
        return NetworkTrainer(c, prepare_data(c), seed=1, device=torch.device("cuda"))

    eager, graphed = trainer(False), trainer(True)
    assert graphed.step.graphs == "cuda"
    for _ in range(4):  # partial last batches run eagerly; epoch 3 replays epoch 2's graph
        eager.run_epoch(lambda: False)
        graphed.run_epoch(lambda: False)
        assert graphed.end_epoch() == pytest.approx(eager.end_epoch(), rel=1e-5)
    assert graphed.step.captures == 3
    for a, b in zip(eager.model.state_dict().values(), graphed.model.state_dict().values(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-6)

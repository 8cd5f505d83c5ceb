"""Tests of the depth topic: softmax codes, reading a learned geometry, norm efficiency, path stepping, `igeom run depth`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from implicit_geometry._validation import InvalidParameterError
from implicit_geometry.depth.codes import (
    code_value,
    known_optimum,
    min_norm_point,
    one_vs_rest_distances,
    regular_polygon,
    simplex_code,
    softmax_code,
)
from implicit_geometry.depth.curvature import (
    GaussNewtonSystem,
    flatten,
    hessian_vector_product,
    logit_hessian_apply,
    param_dot,
    softmax_root,
    tangent_logits,
    unflatten,
)
from implicit_geometry.depth.efficiency import (
    balanced_factors,
    class_margin,
    code_logits,
    compare_geometries,
    factorization_cost,
    margin_at_norm,
    overtaking_depth,
)
from implicit_geometry.depth.reading import adjacent_angles, code_distance, gram_factor, numerical_rank, read_geometry
from implicit_geometry.depth.stepping import (
    CODE_ASCENT,
    CODE_DONE,
    CODE_SETTLE,
    PathSimulator,
    backward_euler_step,
    slow_manifold_step,
)
from implicit_geometry.geometry.metrics import effective_rank, normalized_distance
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.train.losses import CrossEntropy
from implicit_geometry.train.simulator import OptimizerConfig, Simulator

RNG = np.random.default_rng(0)


# -- softmax codes -----------------------------------------------------------------------------------------------
def test_min_norm_point_matches_cvxpy():
    cp = pytest.importorskip("cvxpy")
    for trial in range(3):
        P = RNG.standard_normal((4, 7)) + 0.5
        x, lam = min_norm_point(P)
        v = cp.Variable(7)
        prob = cp.Problem(cp.Minimize(cp.sum_squares(P @ v)), [v >= 0, cp.sum(v) == 1])
        prob.solve()
        assert abs(np.linalg.norm(x) - math.sqrt(prob.value)) < 1e-5
        assert lam.min() >= 0 and abs(lam.sum() - 1) < 1e-12
        assert np.allclose(P @ lam, x)


def test_one_vs_rest_closed_forms_and_invariances():
    for K in (3, 5, 8):
        assert np.allclose(one_vs_rest_distances(regular_polygon(K)), 1 - math.cos(2 * math.pi / K), atol=1e-12)
        assert np.allclose(one_vs_rest_distances(simplex_code(K)), K / (K - 1), atol=1e-12)
    W = RNG.standard_normal((6, 3))
    Q = np.linalg.qr(RNG.standard_normal((3, 3)))[0]
    perm = RNG.permutation(6)
    d = one_vs_rest_distances(W)
    assert np.allclose(one_vs_rest_distances(W @ Q.T), d)
    assert np.allclose(one_vs_rest_distances(W[perm]), d[perm])
    assert np.allclose(one_vs_rest_distances(2.5 * W), 2.5 * d)
    # at the scale of learned logits too (directional convergence reaches 1e15): once every distance came out 0 there
    for scale in (1e-8, 1e4, 1e15):
        assert np.allclose(one_vs_rest_distances(scale * W), scale * d, rtol=1e-9, atol=1e-12 * scale)
        assert abs(code_value(scale * regular_polygon(6)) - 0.5) < 1e-12
    # A point inside the hull of the others has distance 0.
    W2 = np.vstack([regular_polygon(4), [[0.1, 0.0]]])
    assert one_vs_rest_distances(W2)[-1] < 1e-12


@pytest.mark.parametrize("K", [3, 4, 6, 7, 9, 12])
def test_softmax_code_polygon(K):
    code = softmax_code(K, 2, restarts=4)
    assert abs(code.distance - (1 - math.cos(2 * math.pi / K))) < 1e-6
    assert np.linalg.norm(code.points, axis=1).max() <= 1 + 1e-9
    assert np.allclose(np.sort(adjacent_angles(code.points.T)), 360 / K, atol=1e-3)


def test_softmax_code_simplex_and_cross_polytope():
    for K, r in [(3, 2), (4, 5), (6, 5)]:
        code = softmax_code(K, r)
        assert abs(code.distance - K / (K - 1)) < 1e-9 and code.points.shape == (K, r)
    code = softmax_code(6, 3, restarts=4)
    assert abs(code.distance - 1.0) < 1e-6 and known_optimum(6, 3) == 1.0
    # Solver not told the answer: a code it finds for an unknown case is no worse than random points.
    c = softmax_code(7, 3, restarts=3)
    assert c.known is None and c.distance >= max(code_value(RNG.standard_normal((7, 3))) for _ in range(20))
    with pytest.raises(InvalidParameterError, match="K must be"):
        softmax_code(1, 2)


# -- reading ------------------------------------------------------------------------------------------------------
def test_read_etf_and_polygon():
    K = 6
    S = np.eye(K) - 1 / K
    g = read_geometry(3 * S, restarts=2)
    assert g.numerical_rank == K - 1 and abs(g.effective_rank - (K - 1)) < 1e-9 and g.etf_distance < 1e-12
    assert g.code_distance < 1e-6 and abs(g.code_value_ratio - 1) < 1e-6
    P = regular_polygon(K)
    perm = RNG.permutation(K)
    Zp = (P @ P.T)[np.ix_(perm, perm)] * 7
    g = read_geometry(Zp)
    assert g.numerical_rank == 2 and abs(g.effective_rank - 2) < 1e-9 and abs(g.stable_rank - 2) < 1e-9
    # the solver's code is exact in value (1e-16) but its points only to about sqrt(eps): a max-min optimum is flat to first order
    assert np.allclose(g.adjacent_angles, 360 / K) and g.code_distance < 1e-7 and abs(g.code_value_ratio - 1) < 1e-9
    assert g.etf_distance > 0.5
    X = gram_factor(Zp, 2)
    assert np.allclose(X.T @ X, Zp)  # Gram factor reproduces the PSD logits
    # An irregular polygon is detected.
    a = np.sort(RNG.uniform(0, 2 * np.pi, K))
    Q = np.stack([np.cos(a), np.sin(a)], 1)
    g2 = read_geometry(Q @ Q.T)
    assert g2.code_distance > 1e-3 and g2.code_value_ratio < 1 and np.abs(g2.adjacent_angles - 60).max() > 1


def test_code_distance_general_rank_and_numerical_rank():
    C = softmax_code(6, 3, restarts=3).points
    Q = np.linalg.qr(RNG.standard_normal((3, 3)))[0]
    perm = RNG.permutation(6)
    assert code_distance(2 * Q @ C[perm].T, C) < 1e-8
    assert numerical_rank(np.diag([1, 0.2, 0.01])) == 2 and numerical_rank(np.diag([1, 0.2, 0.01]), tol=1e-3) == 3


# -- norm efficiency ----------------------------------------------------------------------------------------------
def test_factorization_cost_and_margin_by_explicit_factors():
    Z = code_logits(softmax_code(5, 2, restarts=2).points)
    for L in (1, 2, 4):
        F = balanced_factors(Z, L)
        prod = F[0]
        for W in F[1:]:
            prod = W @ prod
        assert np.allclose(prod, Z)
        cost = sum((f**2).sum() for f in F)
        assert abs(cost - factorization_cost(Z, L)) < 1e-9
        # scale the factors to total squared norm B and read the margin off the product
        B = 3.0
        c = math.sqrt(B / cost)
        scaled = F[0] * c
        for W in F[1:]:
            scaled = (c * W) @ scaled
        assert abs(class_margin(scaled) - margin_at_norm(Z, L, B)) < 1e-9 * margin_at_norm(Z, L, B)
    # factor costs are a minimum: random rotations between factors never beat the balanced SVD split
    assert factorization_cost(Z, 1) <= sum((f**2).sum() for f in [np.eye(5) @ Z, np.eye(5)]) + 1e-12


def test_imbalance_of_balanced_and_gauge_transformed_factors():
    """The cheapest factorization is balanced (every D_l = 0); a rotation between two factors keeps the product and
    rotates D_l (same spectrum), a non-orthogonal change of basis keeps the product and unbalances it."""
    Z = code_logits(softmax_code(5, 2, restarts=2).points)
    F = [torch.as_tensor(f)[None] for f in balanced_factors(Z, 3)]
    m = DeepUFM(F)
    assert max(float(D.abs().max()) for D in m.imbalance()) < 1e-12 * float(F[1].abs().max()) ** 2
    d = F[1].shape[1]
    Q = torch.linalg.qr(torch.as_tensor(RNG.standard_normal((d, d))))[0][None]
    A = torch.eye(d, dtype=torch.float64)[None] + 0.3 * torch.as_tensor(RNG.standard_normal((d, d)))[None]
    for G, Ginv, balanced in ((Q, Q.transpose(1, 2), True), (A, torch.linalg.inv(A), False)):
        g = DeepUFM([F[0], G @ F[1], F[2] @ Ginv, F[3]])  # the gauge between factors 1 and 2
        assert torch.allclose(g.logits(), m.logits(), atol=1e-12)
        moved = float(torch.linalg.matrix_norm(g.imbalance()[1]).max())
        assert (moved < 1e-10) == balanced


def test_rank2_closed_form_and_depth1_nuclear_norm():
    K = 8
    for L in (1, 3, 6):
        t = compare_geometries(K, L, ranks=[2], restarts=2)
        gamma2 = (1 - math.cos(2 * math.pi / K)) / (2 ** ((L + 1) / 2) * (K / 2) / 1) / (L + 1) ** ((L + 1) / 2)
        etf = (K - 1) ** (-(L + 1) / 2) / (L + 1) ** ((L + 1) / 2)
        assert abs(t.codes[2] - gamma2) < 1e-9 * gamma2 and abs(t.etf - etf) < 1e-12
    # Depth 1: the ETF is the max-margin geometry (nuclear-norm program, solved independently by cvxpy).
    cp = pytest.importorskip("cvxpy")
    K = 5
    Z = cp.Variable((K, K))
    cons = [Z[k, k] - Z[j, k] >= 1 for k in range(K) for j in range(K) if j != k]
    val = cp.Problem(cp.Minimize(cp.normNuc(Z)), cons).solve()
    assert abs(val - (K - 1)) < 1e-4
    t = compare_geometries(K, 1, restarts=2)
    assert t.best_rank == K - 1 and max(t.codes.values()) < t.etf
    # margin at budget 2*nuc = 1 for the cvxpy optimum as well
    assert abs(margin_at_norm(Z.value, 1, 2 * val) - 1) < 1e-3


def test_overtaking_depth():
    L, tables = overtaking_depth(4, ranks=[2], restarts=2)
    assert L == 3 and tables[-1].best_rank == 2 and tables[0].best_rank == 3


# -- stepping -----------------------------------------------------------------------------------------------------
def _small(L=3, std=0.3, batch=2, K=4, d=6):
    m = DeepUFM.random(num_classes=K, num_samples=K, dim=d, depth=L, batch=batch, init_std=std)
    return m, CrossEntropy(np.arange(K), K)


def test_tangent_logits_matches_finite_difference():
    m, loss = _small()
    chain = m.chain()
    G, ls = loss.scaled_gradient(chain.logits)
    grads = chain.pullback(G)
    T = tangent_logits(chain, grads)
    eps = 1e-6
    m2 = m.clone()
    for F, g in zip(m2.factors, grads):
        F.sub_(eps * g)
    fd = (m2.logits() - chain.logits) / eps
    assert torch.allclose(T, fd, atol=1e-5 * float(T.abs().max()))


def _run_until_norm(sim, target, max_steps):
    out = [None] * sim.model.batch
    with torch.no_grad():
        for _ in range(max_steps):
            Z = sim.model.logits()
            nz = torch.linalg.matrix_norm(Z)
            for b in range(len(out)):
                if out[b] is None and nz[b] >= target:
                    out[b] = Z[b].numpy().copy()
            if all(o is not None for o in out):
                return out
            sim.update()
    raise AssertionError("did not reach the target norm")


def test_path_stepping_follows_small_step_gd():
    """The adaptive step reaches the same solution as plain small-step GD (compared at equal logit norm)."""
    m, loss = _small()
    gd = _run_until_norm(Simulator(m.clone(), loss, OptimizerConfig("gd", lr=1e-3)), 8.0, 4000)
    path = _run_until_norm(PathSimulator(m.clone(), loss, eta=0.005), 8.0, 4000)
    coarse = _run_until_norm(PathSimulator(m.clone(), loss, eta=0.02), 8.0, 4000)
    for a, b, c in zip(path, gd, coarse):
        assert normalized_distance(a, b) < 0.02
        assert normalized_distance(a, b) < normalized_distance(c, b) + 1e-3  # error shrinks with eta
        assert abs(effective_rank(a) - effective_rank(b)) < 0.05


def test_path_stepping_runs_at_depth_where_gd_diverges():
    m, loss = _small(L=8, std=0.5, K=5, d=8)
    gd = Simulator(m.clone(), loss, OptimizerConfig("gd", lr=0.5))
    with torch.no_grad():
        for _ in range(30):
            gd.update()
    assert not torch.isfinite(gd.model.logits()).all() or torch.linalg.matrix_norm(gd.model.logits()).max() > 1e8
    path = PathSimulator(m.clone(), loss, eta=0.01)
    with torch.no_grad():
        for _ in range(800):
            path.update()
    Z = path.model.logits()
    assert torch.isfinite(Z).all()
    assert float(loss.log_loss(Z).max()) < math.log(1e-3)
    # frozen runs do not move
    path.active = torch.tensor([False, True])
    before = [F.clone() for F in path.model.factors]
    with torch.no_grad():
        path.update()
    assert all(torch.equal(F[0], F0[0]) for F, F0 in zip(path.model.factors, before))


def _gradient(m, loss):
    chain = m.chain()
    G, ls = loss.scaled_gradient(chain.logits)
    g = G * torch.exp(ls)[:, None, None]
    return chain, g, chain.pullback(g)


def _shifted_weighted_loss():
    return CrossEntropy(np.arange(4), 4, weights=[1.0, 2.0, 0.5, 1.5], additive=[0.1, 0.0, -0.2, 0.3])


def _direction(m, seed=0):
    return [torch.randn(F.shape, dtype=F.dtype, generator=torch.Generator().manual_seed(seed + i)) for i, F in enumerate(m.factors)]


@pytest.mark.parametrize("L", [1, 2, 3, 5])
def test_hessian_vector_product_matches_finite_differences(L):
    """The hand-written forward-over-reverse product against central differences of the gradient and against
    autograd's double backward, with a weighted, shifted loss (the Gauss-Newton part alone would fail: the residual
    part is of the same size at these logits)."""
    m, _ = _small(L=L, std=0.8, K=4, d=5)
    loss = _shifted_weighted_loss()
    v = _direction(m)
    chain, g, _ = _gradient(m, loss)
    Hv = hessian_vector_product(chain, g, softmax_root(loss, chain.logits), v)
    eps = 1e-5
    plus = _gradient(DeepUFM([F + eps * u for F, u in zip(m.factors, v)]), loss)[2]
    minus = _gradient(DeepUFM([F - eps * u for F, u in zip(m.factors, v)]), loss)[2]
    for h, a, b in zip(Hv, plus, minus):
        assert torch.allclose(h, (a - b) / (2 * eps), atol=1e-7 * float(h.abs().max()))
    factors = [F.clone().requires_grad_(True) for F in m.factors]
    total = torch.exp(loss.log_loss(DeepUFM(factors).logits())).sum()
    grads = torch.autograd.grad(total, factors, create_graph=True)
    auto = torch.autograd.grad(grads, factors, v)
    for h, a in zip(Hv, auto):
        assert torch.allclose(h, a, atol=1e-10 * float(a.abs().max()))
    S_Jv = logit_hessian_apply(softmax_root(loss, chain.logits), chain.push(v))
    gn_only = chain.pullback(S_Jv)
    assert max(float((h - x).abs().max()) for h, x in zip(Hv, gn_only)) > 1e-3 * max(float(h.abs().max()) for h in Hv)


def test_gauss_newton_inverse_solves_its_system():
    """``x = (I + dt J^T S J)^{-1} v`` checked by applying ``I + dt J^T S J`` through forward/backward products."""
    m, _ = _small(L=3, std=0.7, K=4, d=5)
    loss = _shifted_weighted_loss()
    chain = m.chain()
    dt = torch.tensor([0.3, 5.0], dtype=torch.float64)
    system = GaussNewtonSystem(loss, chain, dt)
    v = _direction(m, 7)
    x = system.inverse(v)
    SJx = logit_hessian_apply(system.C, chain.push(x))
    for xx, a, vv in zip(x, chain.pullback(SJx), v):
        assert torch.allclose(xx + dt[:, None, None] * a, vv, atol=1e-10 * float(vv.abs().max()))


def test_flat_vectors_and_the_flat_inverse():
    """``flatten``/``unflatten`` are inverse (the latter gives views), and the flat Gauss-Newton inverse is the list one."""
    m, _ = _small(L=3, std=0.7, K=4, d=5)
    loss = _shifted_weighted_loss()
    v = _direction(m, 3)
    flat = flatten(v)
    assert flat.shape == (2, sum(x[0].numel() for x in v))
    back = unflatten(flat, v)
    assert all(torch.equal(a, b) for a, b in zip(back, v))
    back[1][0, 0, 0] = 123.0  # a view: writes reach the flat vector
    assert 123.0 in flat[0]
    system = GaussNewtonSystem(loss, m.chain(), torch.tensor([0.3, 5.0], dtype=torch.float64))
    v = _direction(m, 4)
    assert torch.allclose(system.inverse_flat(flatten(v), v), flatten(system.inverse(v)), rtol=1e-13, atol=0)


def test_push_partials_are_the_left_products_derivatives():
    """``push_with_partials`` returns ``J v`` and ``dA_l``, the derivative of ``A_l = F_L ... F_{l+1}`` along v."""
    m, _ = _small(L=4, std=0.7, K=4, d=5)
    v = _direction(m, 5)
    chain = m.chain()
    Jv, dA = chain.push_with_partials(v)
    assert torch.equal(Jv, chain.push(v))
    _, tangents = torch.func.jvp(lambda *fs: tuple(DeepUFM(list(fs)).chain().left), tuple(m.factors), tuple(v))
    assert len(dA) == m.depth
    for a, b in zip(dA, tangents):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_bdf2_plateau_steps_are_second_order():
    """Gradient flow integrated by the plateau steps' BDF2 rule (``bdf2_center`` + the proximal solve; the first step
    backward Euler) converges like dt^2 to an independent reference (scipy's DOP853 on autograd gradients), backward
    Euler alone like dt, on a deep UFM with O(1) logits and a varying step ratio."""
    from scipy.integrate import solve_ivp

    from implicit_geometry.depth.curvature import flatten, unflatten
    from implicit_geometry.depth.stepping import bdf2_center

    loss = CrossEntropy(np.arange(3), 3)
    m = DeepUFM.random(num_classes=3, num_samples=3, dim=4, depth=3, batch=1, init_std=0.6, seeds=[1])
    like, T = m.factors, 0.6

    def grad(x):
        t = torch.tensor(x, dtype=torch.float64)[None].requires_grad_(True)
        total = torch.exp(loss.log_loss(DeepUFM(unflatten(t, like)).logits())).sum()
        return -torch.autograd.grad(total, t)[0][0].numpy()

    ref = solve_ivp(lambda _, x: grad(x), (0.0, T), flatten(like)[0].numpy(), method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]

    def integrate(n, bdf2):
        # steps alternating between 0.8 and 1.2 of the mean: the variable-step formula is exercised
        dts = [T / n * (0.8 if i % 2 else 1.2) for i in range(n)]
        model, prev, prev_dt = m, None, 0.0
        for dt in dts:
            theta = flatten(model.factors)
            if bdf2 and prev is not None:
                center, dt_eff = bdf2_center(theta, prev, dt, prev_dt)
                new, _ = backward_euler_step(model, loss, dt_eff, center=center)
            else:
                new, _ = backward_euler_step(model, loss, dt)
            assert new is not None
            model, prev, prev_dt = new, theta, dt
        return float(np.linalg.norm(flatten(model.factors)[0].numpy() - ref))

    be = [integrate(n, False) for n in (16, 32)]
    bdf = [integrate(n, True) for n in (16, 32)]
    assert 1.7 < be[0] / be[1] < 2.3
    assert 3.4 < bdf[0] / bdf[1] < 4.6
    assert bdf[1] < be[1] / 10


def _small_saddle():
    """A rank-1 saddle of the paper's kind, small (K = 4, n = 2, d = 8, L = 6; sigma_1 of the logits ~258, sigma_2
    ~5e-3): 90 explicit path steps, then 6 backward-Euler steps of flow time 0.5. Not explicit steps throughout: from
    ~100 on, the explicit steps are unstable on the stiff directions and amplify rounding ~10x a step, so a saddle
    made of 200 of them moved by ~2% with the last bits of a matrix product (MKL's or OpenBLAS's order of summation)
    and so did these tests' errors. The implicit steps damp the stiff directions: the saddle is the same to ~1e-15."""
    labels = np.repeat(np.arange(4), 2)
    loss = CrossEntropy(labels, 4)
    m = DeepUFM.random(num_classes=4, num_samples=8, dim=8, depth=6, batch=1, init_std=0.15, seeds=[0])
    sim = PathSimulator(m, loss, eta=0.01, plateau=False)
    with torch.no_grad():
        for _ in range(90):
            sim.update()
    model = sim.model
    for _ in range(6):
        model, _ = backward_euler_step(model, loss, 0.5)
    return loss, model


def test_backward_euler_step_solves_its_equation():
    """``theta + dt grad L(theta) = theta_k`` at the returned point, the loss did not rise, and a tiny dt gives the
    explicit Euler step to first order; from a rank-1 saddle of the paper's kind, where the Gauss-Newton model is poor."""
    loss, base = _small_saddle()
    for dt in (0.05, 1.0):
        new, iterations = backward_euler_step(base, loss, dt)
        assert new is not None and iterations >= 1
        _, _, g = _gradient(new, loss)
        resid = [t + dt * gg - b for t, gg, b in zip(new.factors, g, base.factors)]
        step = [t - b for t, b in zip(new.factors, base.factors)]
        # Newton stops when its Gauss-Newton correction z is below 1e-8 ||theta||: the equation's residual, about
        # (I + dt H) z, is then within a few times that (measured 4.7e-8 ||theta||, 1.8e-5 of the step at dt = 0.05;
        # 3e-8 ||theta||, 8e-7 of the step at dt = 1), far below the O(dt) error of backward Euler itself
        residual = math.sqrt(float(param_dot(resid, resid)[0]))
        assert residual < 1e-6 * float(torch.linalg.vector_norm(flatten(new.factors)))
        assert residual < 1e-4 * math.sqrt(float(param_dot(step, step)[0]))
        assert float(loss.log_loss(new.logits())[0]) <= float(loss.log_loss(base.logits())[0])
    tiny = 1e-7
    new, _ = backward_euler_step(base, loss, tiny)
    _, _, g0 = _gradient(base, loss)
    for t, b, gg in zip(new.factors, base.factors, g0):
        assert torch.allclose((t - b) / tiny, -gg, atol=1e-3 * float(gg.abs().max()))


def test_backward_euler_trace_records_each_newton_step_without_changing_it():
    """The diagnostic trace: one entry per Newton step taken, its last iterate is the returned point, and asking for
    it leaves the result bit for bit the same."""
    loss, model = _small_saddle()
    plain, iterations = backward_euler_step(model, loss, 1.0)
    trace: list = []
    traced, again = backward_euler_step(model, loss, 1.0, trace=trace)
    assert again == iterations and 1 <= len(trace) <= iterations
    assert all(torch.equal(a, b) for a, b in zip(plain.factors, traced.factors))
    assert torch.equal(trace[-1]["theta"][0], torch.cat([F[0].reshape(-1) for F in traced.factors]))
    assert all(e["residual"] > 0 and e["cg"] >= 1 and 0 < e["alpha"] <= 1 for e in trace)
    assert all(e["curvature"] is None or e["curvature"] < 0 for e in trace)


def _margins(Z, labels):
    y = torch.as_tensor(labels).expand(Z.shape[0], 1, -1)
    return (Z.gather(1, y).squeeze(1) - Z.scatter(1, y, -math.inf).amax(dim=1)).amin(dim=1)


def test_stiff_kernel_spectrum_matches_the_formed_kernel(monkeypatch):
    """Where the formed logit kernel is accurate (a small saddle), its square root gives the same stiff eigenvalues
    and eigenspace, and a frame built from it (forced: the rounding trigger set to always fire) is orthonormal and
    takes the same slow-manifold step. (Where the formed kernel is not accurate, late on L = 10 seed 0's saddle, the
    root's lifted directions keep norm 1 while the formed kernel's fall to 0.001-0.3: docs/depth.md, session 23.)"""
    from implicit_geometry.depth import stepping
    from implicit_geometry.depth.curvature import scaled_logit_kernel, stiff_kernel_spectrum
    from implicit_geometry.depth.stepping import _loss_gradient, _StiffFrame

    loss, model = _small_saddle()
    like = model.factors
    chain, g, _ = _loss_gradient(flatten(like), like, loss)
    C, M = scaled_logit_kernel(loss, chain, torch.ones(1, dtype=torch.float64))
    lam_m, E_m = torch.linalg.eigh(M[0])
    lam, E = stiff_kernel_spectrum(chain, C, 1.0)
    keep = lam_m > 1.0
    assert lam.numel() == int(keep.sum()) >= 2
    assert torch.allclose(lam, lam_m[keep].flip(0), rtol=1e-9)
    assert torch.allclose(E @ E.T, E_m[:, keep] @ E_m[:, keep].T, atol=1e-8)
    formed = _StiffFrame(loss, chain, g, 1.0)
    monkeypatch.setattr(stepping, "KERNEL_ROUNDING", 1.0)
    root = _StiffFrame(loss, chain, g, 1.0, root_spectrum=True)
    eye = torch.eye(root.size, dtype=torch.float64)
    V = torch.stack([root.lift(eye[j])[0] for j in range(root.size)])
    assert torch.allclose(V @ V.T, eye, atol=1e-9)
    assert torch.allclose(torch.linalg.eigvalsh(root.hessian), torch.linalg.eigvalsh(formed.hessian), rtol=1e-7)
    a, _ = slow_manifold_step(model, loss, 0.5, root_spectrum=True)
    monkeypatch.setattr(stepping, "KERNEL_ROUNDING", 0.0)
    b, _ = slow_manifold_step(model, loss, 0.5, root_spectrum=True)
    assert float(torch.linalg.vector_norm(flatten(a.factors) - flatten(b.factors))) < 1e-8 * float(
        torch.linalg.vector_norm(flatten(b.factors) - flatten(model.factors)))


def test_slow_manifold_steps_follow_gradient_flow_on_the_saddle():
    """On a rank-1 saddle of the paper's kind the slow-manifold steps follow gradient flow: against a reference
    independent of them (BDF2 plateau steps at dt = T/800, Richardson-extrapolated with T/400) their error shrinks
    with dt and stays within 3e-3 of the distance moved (what is left at small dt is the stiff modes' relaxation,
    O(slow rate / stiff curvature), which the steps neglect); each result sits on the slow manifold of its start (the
    gradient's stiff components vanish there). Where nothing is stiff the step declines, ``(None, 0)``."""
    from implicit_geometry.depth.curvature import flatten
    from implicit_geometry.depth.stepping import _loss_gradient, _StiffFrame, bdf2_center

    loss, base = _small_saddle()
    T = 2.0

    def bdf2(n):
        model, prev, prev_dt = base, None, 0.0
        for _ in range(n):
            theta, dt = flatten(model.factors), T / n
            if prev is None:
                new, _ = backward_euler_step(model, loss, dt)
            else:
                center, dt_eff = bdf2_center(theta, prev, dt, prev_dt)
                new, _ = backward_euler_step(model, loss, dt_eff, center=center)
            model, prev, prev_dt = new, theta, dt
        return flatten(model.factors)

    coarse, fine = bdf2(400), bdf2(800)
    reference = fine + (fine - coarse) / 3
    start = flatten(base.factors)
    moved = float(torch.linalg.vector_norm(reference - start))
    errors = []
    for n in (4, 16):
        model = base
        for _ in range(n):
            before = model
            model, iterations = slow_manifold_step(model, loss, T / n)
            assert model is not None and iterations >= 2
        errors.append(float(torch.linalg.vector_norm(flatten(model.factors) - reference)))
        like = before.factors
        chain, g, _ = _loss_gradient(flatten(like), like, loss)
        frame = _StiffFrame(loss, chain, g, 1.0)
        _, _, grad = _loss_gradient(flatten(model.factors), like, loss)
        assert float(torch.linalg.vector_norm(frame.coords(grad))) < 1e-4 * float(torch.linalg.vector_norm(grad))
    assert errors[1] < errors[0] < 3e-3 * moved
    labels = np.repeat(np.arange(4), 2)
    fresh = DeepUFM.random(num_classes=4, num_samples=8, dim=8, depth=6, batch=1, init_std=0.15, seeds=[0])
    assert slow_manifold_step(fresh, CrossEntropy(labels, 4), 0.1) == (None, 0)


def test_plateau_steps_escape_rank1_saddle_and_resume_exactly():
    """At L = 6 from small init the runs first collapse to rank-1 logits (a saddle: rank 1 cannot separate K = 4
    classes). In 500 steps the explicit path rule is still there (margin <= 0); the implicit plateau steps are out
    and well into the terminal phase. A checkpoint taken mid-plateau resumes to identical factors."""
    labels = np.repeat(np.arange(4), 2)

    def sim(plateau):
        m = DeepUFM.random(num_classes=4, num_samples=8, dim=8, depth=6, batch=2, init_std=0.15, seeds=[0, 1])
        return PathSimulator(m, CrossEntropy(labels, 4), eta=0.01, plateau=plateau)

    old, new = sim(False), sim(True)
    with torch.no_grad():
        for _ in range(220):
            old.update()
            new.update()
        Z = new.model.logits()
        assert bool(new.stiff.any()) and float(_margins(Z, labels).max()) <= 0  # mid-plateau, implicit steps
        assert effective_rank((Z[0] @ torch.as_tensor(np.kron(np.eye(4), np.ones((2, 1))) / 2)).numpy()) < 1.2
        state = new.state_dict()
        for _ in range(280):
            old.update()
            new.update()
        resumed = sim(True)
        resumed.load_state_dict(state)
        for _ in range(280):
            resumed.update()
    assert float(_margins(old.model.logits(), labels).max()) <= 0.0
    assert float(_margins(new.model.logits(), labels).min()) > 2.0
    assert bool((new.plateau_steps > 0).all()) and not bool(new.stiff.any())
    assert all(torch.equal(a, b) for a, b in zip(new.model.factors, resumed.model.factors))
    assert torch.equal(new.dt, resumed.dt) and torch.equal(new.plateau_steps, resumed.plateau_steps)


def test_path_and_plateau_steps_conserve_gradient_flows_imbalance():
    """Gradient flow conserves each ``D_l = F_{l+1}^T F_{l+1} - F_l F_l^T`` (the balancedness of a deep linear
    network), an independent check that the explicit and implicit steps follow it: through the rank-1 saddle to
    margin 2 (every factor's Gram matrix grows 7x or more), ``D_l`` drifts by a few % of its size, and the drift halves
    with eta (first order, as the step rule is)."""
    labels = np.repeat(np.arange(4), 2)

    def drift(eta):
        m = DeepUFM.random(num_classes=4, num_samples=8, dim=8, depth=6, batch=2, init_std=0.15, seeds=[0, 1])
        D0, gram0 = m.imbalance(), [F @ F.transpose(1, 2) for F in m.factors]
        sim = PathSimulator(m, CrossEntropy(labels, 4), eta=eta)
        with torch.no_grad():
            while float(_margins(m.logits(), labels).min()) < 2.0 and sim.step < 3000:
                sim.update()
        assert bool((sim.plateau_steps > 0).all())  # both runs went through the saddle on implicit steps
        growth = min(float(torch.linalg.matrix_norm(F @ F.transpose(1, 2)).min() / torch.linalg.matrix_norm(g).max())
                     for F, g in zip(m.factors, gram0))
        assert growth > 5.0
        return max(float((torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b)).max())
                   for a, b in zip(m.imbalance(), D0))

    coarse, fine = drift(0.02), drift(0.01)
    assert fine < 0.06
    assert 1.6 < coarse / fine < 2.5


def test_slow_step_failures_cap_dt(monkeypatch):
    """After a slow-manifold step fails at dt, dt stays below 0.75 dt (the cap growing 1.1x per accepted step), so
    a run whose projection fails beyond some dt does not double back onto it after every success."""
    from implicit_geometry.depth import stepping

    K = 4
    labels = np.arange(K)
    m = DeepUFM.random(num_classes=K, num_samples=K, dim=6, depth=3, batch=1, init_std=0.1, seeds=[0])
    limit, tried = 3.0, []

    def fake_step(model, loss, dt, cut=1.0, root_spectrum=False, info=None):  # converges below `limit` (a tiny move: the move cap never binds)
        tried.append(dt)
        return (DeepUFM([F * (1 + 1e-9) for F in model.factors]), 3) if dt <= limit else (None, 5)

    monkeypatch.setattr(stepping, "slow_manifold_step", fake_step)

    def failures(shrink):
        monkeypatch.setattr(stepping, "SLOW_CAP_SHRINK", shrink)
        sim = PathSimulator(m.clone(), CrossEntropy(labels, K))
        sim.stiff[0], sim.dt[0] = True, 1.0
        tried.clear()
        for _ in range(30):
            sim._implicit_steps(torch.tensor([0]))
        return sum(dt > limit for dt in tried)

    assert failures(math.inf) >= 13  # no cap: fail, halve, succeed, double onto the failing dt again ...
    assert failures(0.75) <= 7
    i = tried.index(4.0)  # the first failure (1, 2, 4): then half of it, then at most 0.75 of it, growing 1.1x
    assert tried[i + 1] == 2.0 and tried[i + 2] <= 3.0 and tried[i + 3] <= 3.0 * 1.1 + 1e-12


def test_bdf2_failures_cap_dt_in_the_root_regime(monkeypatch):
    """Where the last stiff frame came from the kernel's root, a BDF2 step whose Newton solve fails at dt caps dt as a
    failed slow-manifold step does; elsewhere BDF2 keeps doubling back onto the failing dt (as before)."""
    from implicit_geometry.depth import stepping

    K = 4
    labels = np.arange(K)
    m = DeepUFM.random(num_classes=K, num_samples=K, dim=6, depth=3, batch=1, init_std=0.1, seeds=[0])
    limit, tried = 3.0, []

    def declining_step(model, loss, dt, cut=1.0, root_spectrum=False, info=None):  # no stable stiff equilibrium: BDF2
        if info is not None:
            info["root"] = root_spectrum
        return None, 0

    def fake_bdf2(model, loss, dt, center=None, **kw):  # converges below `limit`, a tiny move
        tried.append(dt)
        return (DeepUFM([F * (1 + 1e-9) for F in model.factors]), 3) if dt <= limit else (None, 20)

    monkeypatch.setattr(stepping, "slow_manifold_step", declining_step)
    monkeypatch.setattr(stepping, "backward_euler_step", fake_bdf2)
    monkeypatch.setattr(stepping, "bdf2_center", lambda theta, prev, dt, prev_dt: (theta, dt))

    def failures(root):
        sim = PathSimulator(m.clone(), CrossEntropy(labels, K), root_spectrum=root)
        sim.stiff[0], sim.dt[0] = True, 1.0
        tried.clear()
        for _ in range(30):
            sim._implicit_steps(torch.tensor([0]))
        assert bool(sim.root_regime[0]) == root
        return sum(dt > limit for dt in tried)

    assert failures(False) >= 13
    assert failures(True) <= 7


def test_stall_rule_late_on_judges_by_the_recent_steps():
    """From STALL_LATE implicit steps on, the budget is valued at the flow time per step since the last check, with
    no 1.5x allowance: a run whose steps have collapsed stops, a run still covering ~1 unit a step goes on, with the
    same predicted escape. The steps since the last check are counted, not assumed to be 25: checks are skipped on
    refused steps, which a collapsing run has many of."""
    from implicit_geometry.depth.stepping import STALL_LATE

    K, L = 4, 3
    labels = np.arange(K)
    m = DeepUFM.random(num_classes=K, num_samples=K, dim=6, depth=L, batch=1, init_std=0.1, seeds=[0])

    def stall(t_ref, t=155.0, steps=STALL_LATE + 100, budget=800, since=25):
        sim = PathSimulator(m.clone(), CrossEntropy(labels, K), plateau_budget=budget)
        sim.ref_log_sigma2[0], sim.ref_time[0], sim.plateau_time[0] = 0.0, t_ref, t
        sim.plateau_steps[0], sim.ref_steps[0], sim.stiff[0], sim.dt[0] = steps, steps - since, True, 0.5
        # sigma_2 grew by e^(0.005 (t - t_ref)): rate 0.005, p - 1 = 1/2, 400 units to go
        Z = torch.diag(torch.tensor([1e3, math.exp(0.005 * (t - t_ref)), 0.0, 0.0], dtype=torch.float64))[None]
        sim._check_stall(0, Z)
        return sim

    crawl = stall(153.0)  # 2 units in 25 steps: 500 steps left buy 40 units
    assert bool(crawl.stalled[0]) and abs(float(crawl.predicted_escape[0]) - 555.0) < 1e-6
    assert not bool(stall(130.0).stalled[0])  # 25 units in 25 steps: 500 left buy 500 > 400
    s = stall(130.0, since=75)  # the same 25 units over 75 steps (two checks skipped): 500 left buy 167
    assert bool(s.stalled[0]) and int(s.ref_steps[0]) == STALL_LATE + 100
    # before STALL_LATE the optimistic rule holds: max(0.5, dt, t / steps = 1.04) x 651 steps left x 1.5 > 400
    assert not bool(stall(153.0, steps=STALL_LATE - 51).stalled[0])


def test_stall_rule_predicts_the_blow_up_of_the_second_mode():
    """A plateau run gives up when the blow-up of ``d sigma_2/dt = c sigma_2^p`` (p = 2L/(L+1)), extrapolated from
    sigma_2's growth rate since the last check, lies beyond 1.5x the flow time its remaining budget buys (implicit
    steps left at max(0.5, dt, mean dt) each), and more than 10 units away."""
    K, L = 4, 3
    labels = np.arange(K)
    m = DeepUFM.random(num_classes=K, num_samples=K, dim=6, depth=L, batch=1, init_std=0.1, seeds=[0])

    def stall(budget, dt=0.1, t=10.0, log_growth=0.1):
        sim = PathSimulator(m.clone(), CrossEntropy(labels, K), plateau_budget=budget)
        sim.ref_log_sigma2[0], sim.ref_time[0], sim.plateau_time[0] = 0.0, 0.0, t
        sim.plateau_steps[0], sim.stiff[0], sim.dt[0] = 50, True, dt
        Z = torch.diag(torch.tensor([1e3, math.exp(log_growth), 0.0, 0.0], dtype=torch.float64))[None]
        sim._check_stall(0, Z)
        return sim

    # rate 0.01 per unit, p - 1 = 1/2: 200 more units, escape predicted at flow time 210; the budget buys
    # (200 - 50) x max(0.5, 0.1, 10/50) = 75 units, 1.5 x 75 < 200
    s = stall(200)
    assert abs(float(s.predicted_escape[0]) - 210.0) < 1e-9 and float(s.ref_time[0]) == 10.0
    assert bool(s.stalled[0]) and not bool(s.stiff[0]) and int(s.plateau_steps[0]) == 50  # the steps it took
    assert not bool(stall(350).stalled[0])  # 1.5 x 300 x 0.5 = 225 > 200: it goes on
    assert not bool(stall(200, dt=0.9).stalled[0])  # the present dt buys 1.5 x 150 x 0.9 = 202.5
    s = stall(200, t=0.5)  # under one unit of flow time since the last check: no rate yet
    assert not bool(s.stalled[0]) and math.isnan(float(s.predicted_escape[0]))
    assert not bool(stall(200, log_growth=-0.1).stalled[0])  # sigma_2 dipped: no judgement before 20 units
    assert bool(stall(200, t=25.0, log_growth=-0.1).stalled[0])  # not growing after 25: hopeless
    assert not bool(stall(51, log_growth=5.0).stalled[0])  # 4 units to go: an escape under way is never stopped

    # a run that gave up never re-enters plateau mode, though its budget is not spent and it still sits on a flat,
    # stiff, unseparated stretch (the same state enters when not stalled)
    for stalled in (False, True):
        s = stall(200, dt=0.9) if not stalled else stall(200)
        s.stiff[0], s.step = False, 0
        Z = torch.zeros(1, K, K, dtype=torch.float64)
        s.ref_log_loss = s.loss.log_loss(Z)
        one = torch.ones(1, dtype=torch.float64)
        enters = s._plateau_modes(Z, 1e-6 * one, one, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.bool))
        assert bool(enters[0]) is not stalled and int(s.plateau_steps[0]) == 50


def _train_with_code(sim, labels, margin, max_steps=30000, stop=None):
    """Path steps until each run's margins reach ``margin``, then its code phase, until every run is done (or ``stop``
    steps, to checkpoint mid-way)."""
    with torch.no_grad():
        while sim.step < (stop if stop is not None else max_steps):
            sim.start_code(_margins(sim.model.logits(), labels) >= margin)
            sim.active = sim.code_phase != CODE_DONE
            if not bool(sim.active.any()):
                break
            sim.update()
    return sim


def test_code_phase_end_freezes_the_run_and_start_code_ends_its_plateau():
    """A run whose settle stage ends is frozen by the simulator itself (the experiment looks only every few steps), and
    a run moved into the code phase leaves plateau mode (else the experiment would check every step)."""
    K, n = 3, 2
    labels = np.repeat(np.arange(K), n)
    m = DeepUFM.random(num_classes=K, num_samples=K * n, dim=4, depth=2, batch=2, init_std=0.5, seeds=[0, 1])
    sim = PathSimulator(m, CrossEntropy(labels, K), settle_steps=3)
    sim.stiff[:] = True
    sim.start_code(torch.tensor([True, False]))
    assert sim.stiff.tolist() == [False, True] and int(sim.code_phase[0]) == CODE_ASCENT
    sim.stiff[:] = False
    sim.code_phase[0], sim.settled[0] = CODE_SETTLE, 2
    with torch.no_grad():
        sim.update()
        assert int(sim.code_phase[0]) == CODE_DONE and sim.active.tolist() == [False, True]
        frozen = [F[0].clone() for F in sim.model.factors]
        sim.update()
    assert all(torch.equal(F[0], F0) for F, F0 in zip(sim.model.factors, frozen))


def test_code_phase_reaches_the_etf_at_depth_1_and_the_regular_polygon_at_depth_4():
    """The code phase converges in direction to the max-margin geometry, checked against independent answers: at depth 1
    the nuclear-norm max-margin solution, whose class-mean logits are the ETF's ``I - 11^T/K`` (theory section 1-2); at
    depth 4 with K = 6 classes a rank-2 code, whose points must be the softmax code that the solver of codes.py finds
    on its own (the regular hexagon: adjacent angles of 60 degrees, one-vs-rest value at the known optimum)."""
    K, n = 4, 2
    labels = np.repeat(np.arange(K), n)
    avg = torch.as_tensor(np.kron(np.eye(K), np.ones((n, 1))) / n)
    m = DeepUFM.random(num_classes=K, num_samples=K * n, dim=6, depth=1, batch=2, init_std=0.1, seeds=[0, 1])
    sim = _train_with_code(PathSimulator(m, CrossEntropy(labels, K), code_margin=5.0, settle_steps=200), labels, 5.0)
    assert bool(sim.code_converged.all()) and bool((sim.code_phase == CODE_DONE).all())
    etf = np.eye(K) - 1.0 / K
    for b in range(2):
        M = (sim.model.logits()[b] @ avg).numpy()
        assert normalized_distance(M, etf) < 2e-3
    K = 6
    labels = np.arange(K)
    m = DeepUFM.random(num_classes=K, num_samples=K, dim=8, depth=4, batch=2, init_std=0.15, seeds=[0, 1])
    sim = PathSimulator(m, CrossEntropy(labels, K), code_margin=5.0, settle_steps=300)
    with torch.no_grad():  # a snapshot at the terminal margin is still far from the limit code: that is what the phase is for
        while float(_margins(sim.model.logits(), labels).min()) < 5.0:
            sim.update()
    lopsided = read_geometry(sim.model.logits()[0].numpy(), fit_code=False)
    sim = _train_with_code(sim, labels, 5.0)
    assert bool(sim.code_converged.all())
    solver = softmax_code(K, 2, restarts=6)
    for b in range(2):
        g = read_geometry(sim.model.logits()[b].numpy(), fit_code=False)
        assert g.numerical_rank == 2 and abs(g.effective_rank - 2) < 1e-3
        assert np.abs(g.adjacent_angles - 60.0).max() < 0.5
        assert code_distance(g.gram_factor, solver.points) < 5e-3
        assert code_value(g.gram_factor.T) / solver.distance > 0.97  # a min over points: first order in the angle errors
    assert np.abs(lopsided.adjacent_angles - 60.0).max() > 3 * np.abs(g.adjacent_angles - 60.0).max()


def test_code_phase_resumes_exactly_and_keeps_other_runs_apart():
    """A checkpoint taken mid-way through the code phase (one run ascending, its bookkeeping in the state) resumes to the
    same bits; a run's code phase does not depend on what else is in the batch."""
    labels = np.repeat(np.arange(4), 2)
    loss = CrossEntropy(labels, 4)

    def sim(seeds):
        m = DeepUFM.random(num_classes=4, num_samples=8, dim=8, depth=3, batch=len(seeds), init_std=0.1, seeds=seeds)
        return PathSimulator(m, loss, code_margin=5.0, code_window=100, settle_steps=100)

    full = _train_with_code(sim([0, 1]), labels, 5.0)
    half = _train_with_code(sim([0, 1]), labels, 5.0, stop=400)
    assert bool((half.code_phase == CODE_ASCENT).any() | (half.code_phase == CODE_SETTLE).any())
    resumed = sim([0, 1])
    resumed.load_state_dict(half.state_dict())
    _train_with_code(resumed, labels, 5.0)
    assert all(torch.equal(a, b) for a, b in zip(full.model.factors, resumed.model.factors))
    for name in ("code_phase", "code_steps", "settled", "best_log_gamma", "code_converged"):
        assert torch.equal(getattr(full, name), getattr(resumed, name)), name
    alone = _train_with_code(sim([1]), labels, 5.0)
    assert torch.allclose(alone.model.logits()[0], full.model.logits()[1], rtol=1e-9, atol=0)
    assert int(alone.code_steps[0]) == int(full.code_steps[1])


# -- experiment -----------------------------------------------------------------------------------------------------
def _small_config(**kw):
    from implicit_geometry.experiments.depth import DepthConfig

    base = dict(classes=4, samples_per_class=2, dims=[8], depths=[1, 3], init_std=0.1, seeds=2, max_steps=3000,
                target_margin=5.0, device="cpu")
    base.update(kw)
    return DepthConfig(**base)


def test_depth_experiment_run_and_resume(tmp_path):
    from implicit_geometry.experiments.depth import DepthRun, run_depth

    s = run_depth(_small_config(), tmp_path / "a", progress=False)
    folder = tmp_path / "a"
    for name in ("config.json", "history.csv", "summary.json", "final.npz", "figures/rank_vs_depth.png", "figures/singular_values.png"):
        assert (folder / name).exists(), name
    assert "NaN" not in (folder / "summary.json").read_text()
    rows = {r["depth"]: r for r in s["table"]}
    assert rows[1]["terminal_runs"] == 2 and abs(rows[1]["effective_rank_mean"] - 3) < 0.2  # depth 1: ETF, rank K-1
    for r in s["runs"]:
        assert r["terminal"] and r["min_margin"] >= 5.0 and 0 <= r["init_dz_etf_distance"] <= 2
        assert r["code_converged"] and r["code_steps"] > 0
        assert 0 < r["imbalance_drift"] < 0.2  # the steps kept what gradient flow conserves to within a few %
    # depth 3, K = 4: at the terminal margin a lopsided rank-2 code; at directional convergence the square (the
    # rank-2 softmax code of 4 points), which the verdict reports beside the terminal reading
    for r in (r for r in s["runs"] if r["depth"] == 3):
        assert r["numerical_rank"] == 2 and abs(r["effective_rank"] - 2) < 1e-3 and r["max_angle_error_deg"] < 0.5
        assert r["terminal_effective_rank"] < 1.9 and r["terminal_max_angle_error_deg"] > 2
    assert any("L=3" in line and "rank-2 angles within" in line and "[1." in line for line in s["verdict"])
    # interrupted mid-cell (checkpoint after a short time budget), then resumed: same numbers
    cfg = _small_config()
    cfg.validate()
    (tmp_path / "b").mkdir()
    from implicit_geometry.io import write_json

    write_json(tmp_path / "b" / "config.json", cfg.to_dict())
    run = DepthRun(cfg, tmp_path / "b")
    run.cell = __import__("implicit_geometry.experiments.depth", fromlist=["_Cell"])._Cell(run, 8, 1)

    class _Stop:
        requested = False

    class _Bar:
        def update(self, n):
            pass

    import time as _t

    assert run.cell.train(_Stop(), _t.perf_counter() - 1, _Bar()) is False  # stopped before finishing
    for _ in range(5):
        run.cell.sim.update()
    run.save_checkpoint()
    s2 = run_depth(resume=tmp_path / "b", progress=False)
    a = [(r["effective_rank"], r["steps"], r["min_margin"], r["imbalance_drift"]) for r in s["runs"]]
    b = [(r["effective_rank"], r["steps"], r["min_margin"], r["imbalance_drift"]) for r in s2["runs"]]
    assert a and a == b


def test_depth_flags_non_terminal_runs(tmp_path):
    from implicit_geometry.experiments.depth import run_depth

    s = run_depth(_small_config(depths=[3], max_steps=5), tmp_path / "c", progress=False)
    assert s["table"][0]["terminal_runs"] == 0 and s["table"][0]["effective_rank_mean"] is None
    assert any("NOT in the terminal phase" in line for line in s["verdict"])
    assert s["table"][0]["saddle_runs"] == 0  # 5 steps from a random init: not separated, but not rank 1 either
    # depth 6 with explicit steps only: both runs sit on the rank-1 saddle, and the verdict says so
    s = run_depth(_small_config(depths=[6], max_steps=300, plateau=False), tmp_path / "s", progress=False, figures=False)
    assert s["table"][0]["saddle_runs"] == 2
    assert all(r["numerical_rank"] == 1 and r["min_margin"] < 0 for r in s["runs"])
    assert "2 run(s) on the rank-1 saddle" in s["verdict"][1]


def test_depth_width_sweep_figure(tmp_path):
    """Several widths: effective rank against width (log axis when the widths span a decade), one line per depth."""
    from implicit_geometry.experiments.depth import run_depth

    s = run_depth(_small_config(dims=[4, 40], depths=[1], seeds=1), tmp_path / "w", progress=False)
    assert sorted(r["dim"] for r in s["table"]) == [4, 40]
    assert (tmp_path / "w" / "figures" / "rank_vs_width.png").stat().st_size > 0


def test_polygon_frame_invariances():
    """The reference K-gon of polygons.png: independent of class order and scale, turning with the points."""
    from implicit_geometry.depth.plots import _polygon_frame

    rng = np.random.default_rng(0)
    K = 10
    t = 0.1 + 2 * np.pi * np.arange(K) / K + rng.normal(0, 0.01, K)
    X = (1 + rng.normal(0, 0.05, K)) * np.stack([np.cos(t), np.sin(t)])
    _, a0, spread = _polygon_frame(X)
    assert abs(a0 - 0.1) < 0.01 and 0.01 < spread < 0.1
    _, a1, s1 = _polygon_frame(7.0 * X[:, rng.permutation(K)])
    assert abs(a1 - a0) < 1e-12 and abs(s1 - spread) < 1e-12
    phi = 0.25  # rotate the points by phi: the polygon turns with them (modulo 2 pi / K)
    R = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    _, a2, _ = _polygon_frame(R @ X)
    assert abs((a2 - a0 - phi + np.pi / K) % (2 * np.pi / K) - np.pi / K) < 1e-9


def test_depth_verdict_on_runs_stopped_on_the_saddle():
    """Runs the stall rule stopped did not use up --max-steps: the verdict asks for a larger --plateau-budget, not more
    steps, and gives one predicted escape time as one number."""
    from implicit_geometry.experiments.depth import verdict

    row = {"dim": 100, "depth": 10, "runs": 2, "terminal_runs": 0, "diverged_runs": 0, "steps_max": 8180,
           "saddle_runs": 2, "stalled_runs": 2, "predicted_escape_flow_times": [316.2, 315.9]}
    summary = {"K": 10, "n": 5, "init_std": 0.03, "seeds": [0, 1], "optimizer": "path", "plateau": True,
               "seconds": 1.0, "code": True, "target_margin": 10.0, "table": [row]}
    line = verdict(summary)[1]
    assert "NOT in the terminal phase" in line and "--max-steps" not in line
    assert "flow time of 316 from the saddle" in line and "raise it to follow them" in line
    # one run stalled, the other ran out of --max-steps: both pieces of advice, the range of predictions
    line = verdict({**summary, "table": [{**row, "stalled_runs": 1, "predicted_escape_flow_times": [192.4]}]})[1]
    assert "raise --max-steps" in line and "1 stopped early" in line and "flow time of 192 from" in line
    line = verdict({**summary, "table": [{**row, "predicted_escape_flow_times": [192.4, 356.6]}]})[1]
    assert "flow time of 192-357 from the saddle" in line


def test_depth_without_code_phase_and_unconverged_codes(tmp_path):
    from implicit_geometry.experiments.depth import run_depth

    # --no-code: the geometry is read where the run became terminal, and no code-phase step is taken
    s = run_depth(_small_config(depths=[3], code=False), tmp_path / "n", progress=False, figures=False)
    for r in s["runs"]:
        assert r["code_steps"] is None and r["code_converged"] is None
        assert r["effective_rank"] == r["terminal_effective_rank"] and r["min_margin"] < 10
    # a code phase cut short: terminal, but no limit geometry; flagged and left out of the rank statistics
    s = run_depth(_small_config(depths=[3], code_max_steps=1), tmp_path / "u", progress=False, figures=False)
    row = s["table"][0]
    assert row["terminal_runs"] == 2 and row["code_unconverged_runs"] == 2 and row["effective_rank_mean"] is None
    assert row["terminal_effective_rank_mean"] is not None
    assert "code phase did not converge" in s["verdict"][1]
    with pytest.raises(InvalidParameterError, match=r"code_step must be a number <= 0.1 \(got 0.5\)"):
        _small_config(code_step=0.5).validate()


def test_depth_flags_diverged_runs_without_nan(tmp_path):
    from implicit_geometry.experiments.depth import run_depth
    from implicit_geometry.io import read_csv

    # plain GD with a step far too large for depth 4 (fine at depth 1): the depth-4 runs blow up to non-finite
    # logits; they are flagged, frozen and left out, and the sweep finishes with the depth-1 cell intact
    s = run_depth(_small_config(depths=[1, 4], optimizer="gd", lr=1.0, max_steps=400), tmp_path / "d", progress=False)
    rows = {r["depth"]: r for r in s["table"]}
    assert rows[4]["diverged_runs"] == 2 and rows[4]["effective_rank_mean"] is None
    assert rows[1]["diverged_runs"] == 0
    assert any("L=4" in line and "DIVERGED in all 2 runs" in line for line in s["verdict"])
    text = (tmp_path / "d" / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    hist = read_csv(tmp_path / "d" / "history.csv")
    assert all(math.isfinite(float(r[k])) for r in hist for k in ("log10_loss", "logit_norm", "min_margin"))
    assert all(r["diverged"] == (r["depth"] == 4) for r in s["runs"])


def test_depth_cli_errors_and_run(tmp_path):
    import subprocess
    import sys

    from implicit_geometry.cli import main
    from implicit_geometry.experiments.depth import DepthConfig
    from implicit_geometry._validation import parse_int_list

    assert parse_int_list("depths", "1..3,5") == [1, 2, 3, 5]
    with pytest.raises(InvalidParameterError, match="dims must be comma-separated integers"):
        parse_int_list("dims", "a,b")
    r = subprocess.run([sys.executable, "-m", "implicit_geometry.cli", "run", "depth", "--depths", "0..2", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "depth must be an integer >= 1 (got 0)" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["run", "depth", "--classes", "4", "--n", "1", "--dims", "6", "--depths", "1", "--init-std", "0.1",
                                  "--target-margin", "3", "--quiet", "--json", "--out", str(tmp_path / "y")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["table"][0]["terminal_runs"] == 1
    r = subprocess.run([sys.executable, "-m", "implicit_geometry.cli", "run", "depth", "--plateau-budget", "-1", "--out",
                        str(tmp_path / "z")], capture_output=True, text=True)
    assert r.returncode == 2 and "plateau_budget must be an integer >= 0 (got -1)" in r.stderr
    with pytest.raises(InvalidParameterError, match=r"plateau must be true or false \(got 'yes'\)"):
        DepthConfig(plateau="yes").validate()
    with pytest.raises(InvalidParameterError, match=r"slow_steps must be true or false \(got 'no'\)"):
        DepthConfig(slow_steps="no").validate()
    with pytest.raises(InvalidParameterError, match=r"dim must be an integer >= 2 \(got 1\)"):  # rank-1 logits never separate K >= 3
        DepthConfig(dims=[1]).validate()


def test_predict_codes_and_efficiency_cli(capsys):
    from conftest import assert_one_line_error, run_cli

    from implicit_geometry.cli import cli

    def run_json(*args):
        capsys.readouterr()
        cli([str(a) for a in args] + ["--json"])
        return json.loads(capsys.readouterr().out)

    # the regular 10-gon: distance recomputed exactly from the printed points, every adjacent angle 36 degrees
    c = run_json("predict", "codes", "--classes", 10, "--rank", 2)
    assert c["known_name"] == "regular 10-gon"
    assert abs(c["distance"] - (1 - np.cos(2 * np.pi / 10))) < 1e-9
    P = np.array(c["points"])
    assert one_vs_rest_distances(P).min() == pytest.approx(c["distance"], abs=1e-12)
    assert np.linalg.norm(P, axis=1).max() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(c["adjacent_angles_deg"], 36.0, atol=1e-5)
    c = run_json("predict", "codes", "--classes", 6, "--rank", 3, "--restarts", 3)  # cross-polytope, no angles
    assert c["known_name"] == "cross-polytope" and abs(c["distance"] - 1.0) < 1e-6 and c["adjacent_angles_deg"] is None
    c = run_json("predict", "codes", "--classes", 7, "--rank", 3, "--restarts", 2)  # no closed form: value still exact
    assert c["known_optimum"] is None and c["known_name"] is None
    assert one_vs_rest_distances(np.array(c["points"])).min() == pytest.approx(c["distance"], abs=1e-12)
    assert c["distance"] == pytest.approx(max(c["restart_distances"]))

    # K = 4: the ETF wins at L = 1, 2 (nuclear-norm max margin at L = 1) and the square from L = 3
    e = run_json("predict", "efficiency", "--classes", 4, "--depths", "1..4", "--restarts", 2)
    assert [t["best_rank"] for t in e["tables"]] == [3, 3, 2, 2] and e["first_low_rank_depth"] == 3
    square = np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    assert e["tables"][2]["codes"]["2"] == pytest.approx(margin_at_norm(code_logits(square), 3), rel=1e-6)
    code, _ = run_cli(["predict", "efficiency", "--classes", 4, "--depths", 1, "--quiet"], capsys)
    assert code in (0, None)

    for args, needle in [(["codes", "--classes", 1, "--rank", 2], "classes must be an integer >= 2 (got 1)"),
                         (["codes", "--classes", 5, "--rank", 0], "rank must be an integer >= 1 (got 0)"),
                         (["codes", "--classes", 5, "--rank", 2, "--restarts", 0], "restarts must be an integer >= 1 (got 0)"),
                         (["efficiency", "--classes", 2], "classes must be an integer >= 3 (got 2)"),
                         (["efficiency", "--depths", "0..2"], "depth must be an integer >= 1 (got 0)"),
                         (["efficiency", "--depths", ","], "depths must list at least one depth"),
                         (["efficiency", "--depths", "3..1"], "depths must be comma-separated integers or ranges a..b")]:
        assert_one_line_error(*run_cli(["predict", *args], capsys), needle)

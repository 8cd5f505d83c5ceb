"""Experiment (session 4, rejected): backward-Euler (proximal-point) plateau steps for the depth experiment.

Replaces ``PathSimulator._implicit_steps`` (one linearly implicit Euler step) by a true backward-Euler step of
gradient flow, ``theta+ = argmin L(theta) + ||theta - theta_k||^2 / (2 dt)``, solved by Gauss-Newton iterations
(the same ``NK x NK`` Cholesky as the linearly implicit step, now with the proximal term in the right-hand side),
a per-iteration trust radius ``TR ||theta||`` and backtracking on the proximal objective, so the loss never rises
whatever ``dt``. ``dt`` doubles after a solve that converged in <= 4 iterations, halves after one that did not, and
is capped by ``DTMAX`` and by a whole-step length ``CAP * eta * ||theta||``. Findings are in docs/depth.md
("Backward Euler on plateaus").

    OMP_NUM_THREADS=1 DTMAX=10 CAP=10 python benchmarks/prox_plateau_check.py 6      # depths, 5 seeds, paper setting
"""
import os, sys, time, json
import torch
from implicit_geometry.depth.stepping import PathSimulator, softmax_root, logit_kernel, tangent_logits
from implicit_geometry.models.ufm import DeepUFM

ITERS = int(os.environ.get("ITERS", 10))
DTMAX = float(os.environ.get("DTMAX", 10))
TR = float(os.environ.get("TR", 0.05))      # trust radius of one GN iteration, relative to ||theta||
CAP = float(os.environ.get("CAP", 1.0))     # cap of a whole step, relative to ||theta||
STATS = {"iters": 0, "steps": 0}

def sqn(fs):
    return sum(torch.linalg.vector_norm(f, dim=(1, 2)) ** 2 for f in fs)

def prox_objective(sub, loss, base, dt):
    return torch.exp(loss.log_loss(sub.logits())) + sqn([F - B for F, B in zip(sub.factors, base)]) / (2 * dt)

def _implicit_steps(self, idx, chain, tnorm):
    loss = self.loss
    sub = DeepUFM([F[idx].clone() for F in self.model.factors])
    base = [F.clone() for F in sub.factors]
    dt = self.dt[idx].clamp(max=DTMAX)
    d = dt[:, None, None]
    radius = TR * tnorm
    Fobj = prox_objective(sub, loss, base, dt)
    done = torch.zeros_like(dt, dtype=torch.bool)
    conv = torch.zeros_like(done)
    nit = torch.zeros_like(dt)
    for it in range(ITERS):
        chain = sub.forward_chain()
        Z = chain[-1]
        Bsz, k, N = Z.shape
        G, log_scale = loss.scaled_gradient(Z)
        r = G * torch.exp(log_scale)[:, None, None]
        g = sub.backward(chain, r)
        v = [gi + (F - B) / d for gi, F, B in zip(g, sub.factors, base)]
        C = softmax_root(loss, Z)
        K = logit_kernel(sub, chain)
        M = torch.einsum("bjde,biajd->biaje", C, torch.einsum("bica,bcdij->biajd", C, K)).reshape(Bsz, N * k, N * k)
        chol, info = torch.linalg.cholesky_ex(torch.eye(N * k, dtype=Z.dtype) + d * M)
        Jv = -tangent_logits(sub, chain, v)
        y = torch.cholesky_solve(torch.einsum("bica,bci->bia", C, Jv).reshape(Bsz, N * k, 1), chol).reshape(Bsz, N, k)
        JtCy = sub.backward(chain, torch.einsum("bica,bia->bci", C, y))
        delta = [-d * (vi - d * w) for vi, w in zip(v, JtCy)]
        dn = torch.sqrt(sqn(delta)).clamp_min(1e-300)
        alpha = torch.clamp(radius / dn, max=1.0)
        old = [F.clone() for F in sub.factors]
        accepted = torch.zeros_like(done)
        for ls in range(8):
            a = torch.where(done | accepted, torch.zeros_like(alpha), alpha)
            for F, O, s in zip(sub.factors, old, delta):
                F.copy_(torch.where(accepted[:, None, None], F, O + a[:, None, None] * s))
            Fnew = prox_objective(sub, loss, base, dt)
            ok = torch.isfinite(Fnew) & (Fnew <= Fobj) & ~done & ~accepted
            accepted |= ok
            if bool((accepted | done).all()):
                break
            alpha = torch.where(accepted, alpha, alpha * 0.25)
        failed = ~accepted & ~done
        for F, O in zip(sub.factors, old):
            F.copy_(torch.where(failed[:, None, None], O, F))
        Fobj = torch.where(accepted, prox_objective(sub, loss, base, dt), Fobj)
        nit += (~done).double()
        # converged when the full GN step was small (inside 1% of the trust radius)
        conv |= accepted & (alpha * dn <= 0.01 * radius) 
        done |= failed | conv
        if bool(done.all()):
            break
    STATS["iters"] += float(nit.sum()); STATS["steps"] += len(idx)
    size = torch.sqrt(sqn([F - B for F, B in zip(sub.factors, base)])).clamp_min(1e-300)
    newdt = torch.where(conv & (nit <= 4), dt * 2, torch.where(conv, dt, dt * 0.5))
    newdt = torch.minimum(newdt, dt * (CAP * self.eta * tnorm / size).clamp(max=2.0))
    # a step that did not converge is still a descent step for F, so the loss did not rise: keep it
    self.dt[idx] = newdt
    for F, Fs in zip(self.model.factors, sub.factors):
        F[idx] = Fs
    self.plateau_steps[idx] += 1

PathSimulator._implicit_steps = _implicit_steps

if __name__ == "__main__":
    from implicit_geometry.experiments.depth import DepthConfig, run_depth
    depths = [int(x) for x in sys.argv[1].split(",")]
    extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    t = time.perf_counter()
    s = run_depth(DepthConfig(depths=depths, seeds=5, **extra), f"/tmp/prox_plateau_check_{sys.argv[1]}_{int(t*1000)}", progress=False)
    print("seconds", round(time.perf_counter() - t, 1), STATS)
    for r in s["runs"]:
        print(r["depth"], r["seed"], r["terminal"], r["steps"], r["plateau_steps"], round(r["effective_rank"], 4), r["numerical_rank"], round(r["min_margin"], 2))

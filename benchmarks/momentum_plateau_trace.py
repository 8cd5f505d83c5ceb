"""Experimental: trace one run (flow-time proxy, singular values, restarts). Usage: python benchmarks/momentum_plateau_trace.py L METHOD BETA STEPS [SEED] (env RESTART, MSTEP)."""
import sys, math, numpy as np, torch
torch.set_num_threads(1)
from implicit_geometry.depth.stepping import PathSimulator
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.train.losses import CrossEntropy
L=int(sys.argv[1]); method=sys.argv[2]; beta=float(sys.argv[3]); steps=int(sys.argv[4]); seed=int(sys.argv[5]) if len(sys.argv)>5 else 0
K,n=10,5; labels=np.repeat(np.arange(K),n)
m=DeepUFM.random(num_classes=K,num_samples=K*n,dim=100,depth=L,batch=1,init_std=0.03,seeds=[seed])
loss=CrossEntropy(labels,K)
sim=PathSimulator(m,loss,eta=0.01,plateau_method=method,momentum=beta,plateau_budget=100000, momentum_step=float(__import__('os').environ.get('MSTEP','1')), restart=__import__('os').environ.get('RESTART','1')=='1')
y=torch.as_tensor(labels).expand(1,1,-1)
dn=0.0; T=0.0; PR=len(sys.argv)>6
for it in range(steps):
    if it%100==0 or (it>=190 and it%5==0 and PR):
        Z=m.logits(); mg=(Z.gather(1,y).squeeze(1)-Z.scatter(1,y,-math.inf).amax(1)).amin(1)
        s=torch.linalg.svdvals(Z[0]).numpy()
        print(it, f"T {T:.4g} logl {float(loss.log_loss(Z)):.4f} margin {float(mg):.3f} sv {s[0]:.1f} {s[1]:.3f} {s[2]:.3f} stiff {bool(sim.stiff[0])} dt {float(sim.dt[0]):.3g} pl {int(sim.plateau_steps[0])} rs {int(sim.restarts[0])} vrel {float(torch.sqrt(sum((v**2).sum() for v in sim.velocity)))/(0.01*float(torch.sqrt(m.squared_norm()[0]))):.3g} steprel {dn/(0.01*float(torch.sqrt(m.squared_norm()[0]))) if it else 0:.3g}", flush=True)
        if float(mg)>10: break
    chain=m.forward_chain(); G,ls=loss.scaled_gradient(chain[-1]); gr=m.backward(chain,G)
    gn=float(torch.sqrt(sum((g**2).sum() for g in gr)))*math.exp(float(ls[0]))
    old=[F.clone() for F in m.factors]
    sim.update()
    dn=float(torch.sqrt(sum(((F-F0)**2).sum() for F,F0 in zip(m.factors,old))))
    T+=dn/max(gn,1e-300)

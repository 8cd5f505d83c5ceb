#!/bin/bash
# Fashion-MNIST 60k terminal-phase runs on a lent GPU machine (the `device` tool), as session 3 ran them.
#
# Prepare here, once (both folders are git-ignored through .git/info/exclude):
#   printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
#   mkdir -p .gpu/fmnist && cp /usr/share/datasets/fashion-mnist/train-* .gpu/fmnist/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl mnist1d cvxpy clarabel osqp qdldl highspy sparsediffpy   # test extras
# Then run there with carry [".gpu", ".whl"]:
#   T=540 bash benchmarks/gpu/network_60k.sh NAME "igeom-run-network-options" [NAME2 "options2" ...]
#   RESUME="NAME ..." T=540 bash benchmarks/gpu/network_60k.sh      # after copying runs.tgz/ckpt.tgz back into .gpu/
# Next session with a GPU (docs/measure.md, sessions 5-6):
#   1. check the CUDA graphs (session 6 wrote them without a GPU): `TESTS=1 bash benchmarks/gpu/network_60k.sh`
#      with no runs times them ($OUT/bench_graphed.txt) and runs the suite, CUDA tests included ($OUT/pytest.log);
#   2. if both pass, add --cuda-graphs to the runs. The run that ended at zero error, for 300 epochs, alone:
#   T=560 bash benchmarks/gpu/network_60k.sh \
#     x3long "--model resnet20 --width 32 --batch-size 128 --lr 0.05 --weight-decay 5e-4 --weight-decay-normalized 5e-3 --epochs 300 --lr-drops 0.05,0.05 --cuda-graphs"
#   (lr 0.05 for 15 epochs, then 5e-4. Its NC1 fell about 2% per epoch after the fit at epoch 46.) Beside it, the
#   run that fitted first (epoch 29) and had no spike in its 39 epochs, NC1 falling 1.7% per epoch, for 250 epochs:
#     x3fit "--model resnet20 --width 32 --batch-size 128 --lr 0.05 --weight-decay 2e-3 --weight-decay-normalized 0 --epochs 250 --lr-drops 0.06 --cuda-graphs"
# ckpt.tgz must stay under 16 MB to come back: with more than one width-32 run it does not, so resume those in the
# next call while the machine is still warm (runs/ stays there); each run's history comes back as history_partial.csv.
# Runs stop cleanly after T seconds (SIGINT: checkpoint written) so the next call resumes them; run folders come
# back in $OUT/runs.tgz (no checkpoints) and $OUT/ckpt.tgz (checkpoints under 15 MB). TESTS=1 also runs the suite.
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT" runs logs
T=${T:-540}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/smi.txt" 2>&1
IG="python3 -m implicit_geometry.cli run network"
DATA="--dataset fashion-mnist --data-dir .gpu/fmnist --per-class 0 --measure-every 1 --quiet"
if [ -n "$RESUME" ]; then
  tar xzf .gpu/ckpt.tgz; tar xzf .gpu/runs.tgz
  for d in $RESUME; do OMP_NUM_THREADS=2 timeout -s INT "$T" $IG --resume "runs/$d" --quiet > "logs/$d.resume.log" 2>&1 & done
fi
while [ $# -ge 2 ]; do
  name=$1; opts=$2; shift 2
  # shellcheck disable=SC2086 # the options are meant to split
  OMP_NUM_THREADS=2 timeout -s INT "$T" $IG $DATA $opts --out "runs/$name" > "logs/$name.log" 2>&1 &
done
if [ -n "$TESTS" ]; then
  python3 benchmarks/bench_graphed_step.py > "$OUT/bench_graphed.txt" 2>&1
  timeout 330 python3 -m pytest -q -n 6 --dist loadgroup -p no:cacheprovider tests src/implicit_geometry > "$OUT/pytest.log" 2>&1
fi
wait
# an interrupted run's history lives only in its checkpoint: copy it out as CSV, so runs.tgz carries it even when the
# checkpoint is too large to come back (session 5 lost a call's histories that way)
for d in runs/*/; do
  [ -f "$d/checkpoint.pt" ] && python3 -c "import sys, torch; from implicit_geometry.io import write_csv; from pathlib import Path; \
write_csv(Path(sys.argv[1]) / 'history_partial.csv', torch.load(Path(sys.argv[1]) / 'checkpoint.pt', weights_only=False)['history'])" "$d"
done
tar czf "$OUT/runs.tgz" --exclude=checkpoint.pt runs logs
find runs -name checkpoint.pt -size -15M | tar czf "$OUT/ckpt.tgz" -T -
tail -n 4 logs/*.log

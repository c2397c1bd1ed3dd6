#!/usr/bin/env bash
# The Decision Transformer runs recorded in docs/rl-experiments.md, in order (one seed each;
# every process takes under about 3 minutes on one CPU thread). Needs $UNICOMP_DATA/sb3-agents
# for the CartPole data and .venv-d3rlpy for CQL (see docs/rl-experiments.md).
#   scripts/dt_experiments.sh [OUT]      (default runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs}
export OMP_NUM_THREADS=1
U=.venv/bin/unicomp
done_() { [ -f "$1/metrics.json" ]; }

# --- Key-to-Door: DT vs BC vs %BC vs CQL on 4,000 random-policy episodes
K=$OUT/ktd
[ -d $K/random-4k/data ] || $U dt collect --env KeyToDoor-v0 --policy random --episodes 4000 \
  --out $K/random-4k --n-envs 100
kc="--data $K/random-4k --max-ep-len 16 --hidden-size 64 --n-layer 2 --dropout 0
  --steps 2000 --lr 1e-3 --warmup-steps 100 --batch-size 64 --eval-every 500 --eval-targets 1
  --eval-episodes 500 --eval-envs 100 --no-progress"
kc1="$kc --rtg-scale 1"
done_ $K/dt-s0 || $U dt train $kc1 --context 16 --out $K/dt-s0
done_ $K/bc-s0 || $U dt train $kc1 --context 16 --algo bc --out $K/bc-s0
done_ $K/pbc5-s0 || $U dt train $kc1 --context 16 --algo pbc --top-percent 5 --out $K/pbc5-s0
done_ $K/pbc10-s0 || $U dt train $kc1 --context 16 --algo pbc --top-percent 10 --out $K/pbc10-s0
done_ $K/dt-k1-s0 || $U dt train $kc1 --context 1 --out $K/dt-k1-s0
done_ $K/dt-rtg0.1-s0 || $U dt train $kc --context 16 --rtg-scale 0.1 --out $K/dt-rtg0.1-s0
for s in 1 2; do  # seeds 1 and 2 of the three-seed rows (DT at scale 0.1, BC, K=1)
  done_ $K/dt-rtg0.1-s$s || $U dt train $kc --context 16 --rtg-scale 0.1 --seed $s \
    --out $K/dt-rtg0.1-s$s
  done_ $K/bc-s$s || $U dt train $kc1 --context 16 --algo bc --seed $s --out $K/bc-s$s
done
for s in 0 1 2; do
  done_ $K/dt-k1-rtg0.1-s$s || $U dt train $kc --context 1 --rtg-scale 0.1 --seed $s \
    --out $K/dt-k1-rtg0.1-s$s
done
if ! grep -qs '"steps": 4000' $K/dt4k-s0/metrics.json; then  # the DT continued to 4,000 steps
  [ -d $K/dt4k-s0 ] || cp -r $K/dt-s0 $K/dt4k-s0
  $U dt train --resume --out $K/dt4k-s0 --steps 4000
fi
for steps in 3000 30000; do
  name=cql$([ $steps = 3000 ] || echo 30k)-s0
  done_ $K/$name || $U dt external --algo cql --data $K/random-4k \
    --steps $steps --eval-episodes 500 --eval-envs 100 --out $K/$name
done
$U dt compare --runs $K/*-s? --out $K/compare

# --- CartPole-v1: discrete actions; DT vs BC; delayed reward and K = 1
C=$OUT/cartpole
[ -d $C/dqn-noise0.3/data ] || $U dt collect --env CartPole-v1 --policy dqn --noise 0.3 \
  --episodes 300 --agents "${UNICOMP_DATA:?set UNICOMP_DATA}/sb3-agents" \
  --out $C/dqn-noise0.3 --n-envs 50
cc="--data $C/dqn-noise0.3 --max-ep-len 500 --rtg-scale 100 --hidden-size 64 --n-layer 2
  --steps 1500 --lr 1e-3 --warmup-steps 100 --batch-size 64 --eval-every 500
  --eval-targets 500,250 --eval-episodes 20 --eval-envs 20 --no-progress"
done_ $C/dt-s0 || $U dt train $cc --context 20 --out $C/dt-s0
done_ $C/bc-s0 || $U dt train $cc --context 20 --algo bc --out $C/bc-s0
done_ $C/dt-delayed-s0 || $U dt train $cc --context 20 --delayed-reward --out $C/dt-delayed-s0
done_ $C/dt-k1-s0 || $U dt train $cc --context 1 --out $C/dt-k1-s0
$U dt compare --runs $C/*-s0 --out $C/compare

# --- shortest paths on a random graph
.venv/bin/python scripts/graph_shortest_path.py | tee $OUT/graph-shortest-path.txt

#!/usr/bin/env bash
# The Decision Transformer runs recorded in docs/results.md (the Hopper table) and
# docs/rl-experiments.md (Key-to-Door, CartPole, shortest paths), one unicomp command each.
# A finished run (its metrics.json) is skipped and a killed DT run resumes from its
# checkpoint, so the script can be started again after an interruption.
#   scripts/dt_experiments.sh [OUT [PART ...]]
#     OUT: default runs; PART: hopper, hopper-me, dt-lm, hopper-sac, ktd, cartpole, graph (default: all,
#     in that order). DT_JOBS: runs at a time in the Hopper parts (default 2, one thread each);
#     DT_SEEDS: the training seeds of hopper-me, dt-lm and hopper-sac (default "0 1 2")
# Needs $UNICOMP_DATA/sb3-agents (the Hopper and CartPole data) and .venv-d3rlpy (CQL and
# IQL: docs/rl-experiments.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs}
PARTS=${*:2}
export OMP_NUM_THREADS=1
U=.venv/bin/unicomp
SEEDS=${DT_SEEDS:-0 1 2}  # the training seeds of hopper-me, dt-lm and hopper-sac

train() {  # RUN ARGS...: unicomp dt train ARGS into RUN, unless it has finished
  local run=$1 resume=
  shift
  [ ! -f $run/metrics.json ] || return 0
  [ ! -f $run/checkpoint.pt ] || resume=--resume
  $U dt train "$@" --no-progress --out $run $resume
}

external() {  # RUN ARGS...: unicomp dt external ARGS into RUN, unless it has finished
  local run=$1
  shift
  [ -f $run/metrics.json ] || $U dt external "$@" --out $run
}

two_at_a_time() {  # train|quick|external RUN ARGS...: in the background, output added to RUN.log
  while [ "$(jobs -rp | wc -l)" -ge ${DT_JOBS:-2} ]; do wait -n || true; done
  mkdir -p "$(dirname $2)"
  "$@" >> $2.log 2>&1 &
}

# --- Hopper-v5 medium and medium-replay: DT, BC, %BC (10%), CQL; DT K=1 and IQL on
# medium-replay; 3 training seeds each; two runs at a time (one CPU thread each)
quick() {  # RUN ARGS...: train with configs/dt-gym-quick.yaml, then act in 50 episodes
  train $1 --config configs/dt-gym-quick.yaml "${@:2}"
  # 10 episodes per target while training; the table uses 50 (the same first 10 and 40 more)
  [ -f $1/eval.json ] || $U dt eval --run $1 --eval-episodes 50 --eval-envs 50 --threads 1
}

hopper() {
  local H=$OUT/hopper d s log
  [ -d $H/medium/data ] || $U dt collect --env Hopper-v5 --suite medium --episodes 1000 \
    --n-envs 50 --out $H/medium --agents "${UNICOMP_DATA:?set UNICOMP_DATA}/sb3-agents"
  [ -d $H/medium-replay/data ] || $U dt collect --env Hopper-v5 --suite medium-replay \
    --episodes 2000 --n-envs 50 --out $H/medium-replay \
    --agents "${UNICOMP_DATA:?set UNICOMP_DATA}/sb3-agents"
  # does a longer budget widen DT's lead? 10,000 steps, two seeds (the CPU budget)
  for s in 0 1; do
    two_at_a_time quick $H/medium-replay/dt-10k-s$s --data $H/medium-replay --seed $s \
      --steps 10000 --warmup-steps 1000
  done
  for d in medium-replay medium; do
    for s in 0 1 2; do
      two_at_a_time quick $H/$d/dt-s$s --data $H/$d --seed $s
      two_at_a_time quick $H/$d/bc-s$s --data $H/$d --seed $s --algo bc
    done
  done
  for s in 0 1 2; do
    two_at_a_time quick $H/medium-replay/dt-k1-s$s --data $H/medium-replay --seed $s --context 1
  done
  for d in medium-replay medium; do
    for s in 0 1 2; do
      two_at_a_time quick $H/$d/pbc10-s$s --data $H/$d --seed $s --algo pbc --top-percent 10
    done
  done
  for d in medium-replay medium; do
    for s in 0 1 2; do
      two_at_a_time external $H/$d/cql-s$s --algo cql --data $H/$d --seed $s --steps 2000 \
        --eval-episodes 50 --eval-envs 50
    done
  done
  for s in 0 1 2; do
    two_at_a_time external $H/medium-replay/iql-s$s --algo iql --data $H/medium-replay \
      --seed $s --steps 10000 --eval-episodes 50 --eval-envs 50
  done
  wait
  for d in medium-replay medium; do check_runs $H/$d; done
  for d in medium-replay medium; do $U dt compare --runs $H/$d/*-s? --out $H/$d/compare; done
}

check_runs() {  # DIR: name every run in DIR that has a log but no metrics.json
  for log in $1/*-s?.log; do
    [ -f ${log%.log}/metrics.json ] || echo "FAILED: ${log%.log} (see $log)"
  done
}

# --- Hopper-v5 medium-expert (half SAC + noise 0.1, half TQC): delayed rewards (paper sec.
# 5.5: all of an episode's reward at its last step). DT with and without, BC, 3 seeds; BC
# never reads rewards, so its delayed-reward run (seed 0) must equal its plain one
hopper_me() {
  local M=$OUT/hopper/medium-expert s
  [ -d $M/data ] || $U dt collect --env Hopper-v5 --suite medium-expert --episodes 1000 \
    --n-envs 50 --out $M --agents "${UNICOMP_DATA:?set UNICOMP_DATA}/sb3-agents"
  for s in $SEEDS; do
    two_at_a_time quick $M/dt-s$s --data $M --seed $s
    two_at_a_time quick $M/dt-delayed-s$s --data $M --seed $s --delayed-reward
    two_at_a_time quick $M/bc-s$s --data $M --seed $s --algo bc
  done
  if [[ " $SEEDS " == *" 0 "* ]]; then
    two_at_a_time quick $M/bc-delayed-s0 --data $M --seed 0 --algo bc --delayed-reward
    # the paper's CQL with delayed rewards (9.0), and without, at the Hopper table's budget
    two_at_a_time external $M/cql-s0 --algo cql --data $M --seed 0 --steps 2000 \
      --eval-episodes 50 --eval-envs 50
    two_at_a_time external $M/cql-delayed-s0 --algo cql --data $M --seed 0 --steps 2000 \
      --eval-episodes 50 --eval-envs 50 --delayed-reward
  fi
  wait
  check_runs $M
  $U dt compare --runs $M/*-s? --out $M/compare
}

# --- Hopper-v5 medium-replay made D4RL's way: the replay buffer of one SAC run trained until
# its evaluation return reaches the medium level (a third of the expert's: 981), capped at
# 400k environment steps (seed 0 reached it at 150k, in 45 minutes on one core); DT, BC and
# %BC (10%) with the quick preset
hopper_sac() {
  local R=$OUT/hopper/medium-replay-sac s
  [ -d $R/data ] || $U dt collect --env Hopper-v5 --suite medium-replay --from-training \
    --seed 0 --max-train-steps 400000 --out $R
  for s in $SEEDS; do
    two_at_a_time quick $R/dt-s$s --data $R --seed $s
    two_at_a_time quick $R/bc-s$s --data $R --seed $s --algo bc
    two_at_a_time quick $R/pbc10-s$s --data $R --seed $s --algo pbc --top-percent 10
  done
  wait
  check_runs $R
  $U dt compare --runs $R/*-s? --out $R/compare
}

# --- A frozen pretrained language model as the DT's backbone (minilm-l6, FPT's freezing:
# input, output, positions and norms train) against the paper's DT from scratch, same data
# (Hopper medium-expert) and budget. A minilm-l6 step costs ~25x a scratch step on this CPU
# (3 s for batch 64 on one core), so the budget is 500 steps of batch 16 (3% of the quick
# preset's samples), validation every 100 steps; 10 evaluation episodes at target 3600
dt_lm() {
  local M=$OUT/hopper/medium-expert s
  local lc="--config configs/dt-gym-quick.yaml --data $M --steps 500 --batch-size 16
    --warmup-steps 50 --eval-every 100 --eval-targets 3600 --eval-episodes 10 --eval-envs 10"
  for s in $SEEDS; do
    two_at_a_time train $M/lm-minilm-paper-500-s$s $lc --seed $s --backbone minilm-l6 --freeze paper
    two_at_a_time train $M/dt-500-s$s $lc --seed $s
    # Reid et al.'s setting: the language model's initialisation, every weight trained
    two_at_a_time train $M/lm-minilm-full-500-s$s $lc --seed $s --backbone minilm-l6 --freeze full
    # its control: the same architecture from a random init, every weight trained
    two_at_a_time train $M/lm-random-full-500-s$s $lc --seed $s --backbone random:minilm-l6 \
      --freeze full
  done
  wait
  check_runs $M
  $U dt compare --runs $M/lm-*-s? $M/dt-500-s? --out $M/compare-lm
}

# --- Key-to-Door: DT vs BC vs %BC vs CQL on 4,000 random-policy episodes
ktd() {
  local K=$OUT/ktd s steps
  [ -d $K/random-4k/data ] || $U dt collect --env KeyToDoor-v0 --policy random \
    --episodes 4000 --out $K/random-4k --n-envs 100
  local kc="--data $K/random-4k --max-ep-len 16 --hidden-size 64 --n-layer 2 --dropout 0
    --steps 2000 --lr 1e-3 --warmup-steps 100 --batch-size 64 --eval-every 500
    --eval-targets 1 --eval-episodes 500 --eval-envs 100"
  local kc1="$kc --rtg-scale 1"
  train $K/dt-s0 $kc1 --context 16
  train $K/bc-s0 $kc1 --context 16 --algo bc
  train $K/pbc5-s0 $kc1 --context 16 --algo pbc --top-percent 5
  train $K/pbc10-s0 $kc1 --context 16 --algo pbc --top-percent 10
  train $K/dt-k1-s0 $kc1 --context 1
  train $K/dt-rtg0.1-s0 $kc --context 16 --rtg-scale 0.1
  for s in 1 2; do  # seeds 1 and 2 of the three-seed rows (DT at scale 0.1, BC, K=1)
    train $K/dt-rtg0.1-s$s $kc --context 16 --rtg-scale 0.1 --seed $s
    train $K/bc-s$s $kc1 --context 16 --algo bc --seed $s
  done
  for s in 0 1 2; do
    train $K/dt-k1-rtg0.1-s$s $kc --context 1 --rtg-scale 0.1 --seed $s
  done
  if ! grep -qs '"steps": 4000' $K/dt4k-s0/metrics.json; then  # the DT continued to 4,000 steps
    [ -d $K/dt4k-s0 ] || cp -r $K/dt-s0 $K/dt4k-s0
    $U dt train --resume --out $K/dt4k-s0 --steps 4000
  fi
  for steps in 3000 30000; do
    external $K/cql$([ $steps = 3000 ] || echo 30k)-s0 --algo cql --data $K/random-4k \
      --steps $steps --eval-episodes 500 --eval-envs 100
  done
  $U dt compare --runs $K/*-s? --out $K/compare
}

# --- CartPole-v1: discrete actions; DT vs BC; delayed reward and K = 1
cartpole() {
  local C=$OUT/cartpole
  [ -d $C/dqn-noise0.3/data ] || $U dt collect --env CartPole-v1 --policy dqn --noise 0.3 \
    --episodes 300 --agents "${UNICOMP_DATA:?set UNICOMP_DATA}/sb3-agents" \
    --out $C/dqn-noise0.3 --n-envs 50
  local cc="--data $C/dqn-noise0.3 --max-ep-len 500 --rtg-scale 100 --hidden-size 64
    --n-layer 2 --steps 1500 --lr 1e-3 --warmup-steps 100 --batch-size 64 --eval-every 500
    --eval-targets 500,250 --eval-episodes 20 --eval-envs 20"
  train $C/dt-s0 $cc --context 20
  train $C/bc-s0 $cc --context 20 --algo bc
  train $C/dt-delayed-s0 $cc --context 20 --delayed-reward
  train $C/dt-k1-s0 $cc --context 1
  $U dt compare --runs $C/*-s0 --out $C/compare
}

# --- shortest paths on a random graph: BC and DT runs in OUT/graph, the table in a file
graph() {
  mkdir -p $OUT
  .venv/bin/python scripts/graph_shortest_path.py --out $OUT/graph |
    tee $OUT/graph-shortest-path.txt
}

PARTS=${PARTS:-hopper hopper-me dt-lm hopper-sac ktd cartpole graph}
for part in $PARTS; do
  case $part in
    hopper | hopper-me | dt-lm | hopper-sac | ktd | cartpole | graph) ;;
    *) echo "unknown part $part: choose from hopper, hopper-me, dt-lm, hopper-sac, ktd, cartpole, graph" >&2 && exit 2 ;;
  esac
done
for part in $PARTS; do ${part//-/_}; done

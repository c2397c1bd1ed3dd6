#!/usr/bin/env bash
# The Hopper table in docs/results.md: DT, BC, %BC (10%), CQL on our Hopper-v5 medium and
# medium-replay sets, DT with K=1 and IQL on medium-replay, 3 training seeds each, two runs at
# a time (one CPU thread each). Skips finished runs and evaluations, so it can be started
# again after an interruption (a killed DT run resumes from its checkpoint).
# Needs $UNICOMP_DATA/sb3-agents (the data) and .venv-d3rlpy (CQL/IQL, see
# docs/rl-experiments.md).
#   scripts/dt_hopper.sh [OUT]      (default runs/hopper)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/hopper}
U=.venv/bin/unicomp
export OMP_NUM_THREADS=1 OUT U
for suite in medium medium-replay; do
  n=$([ $suite = medium ] && echo 1000 || echo 2000)
  [ -d $OUT/$suite/data ] || $U dt collect --env Hopper-v5 --suite $suite --episodes $n \
    --n-envs 50 --out $OUT/$suite --agents "${UNICOMP_DATA:?set UNICOMP_DATA}/sb3-agents"
done

jobs() {  # one line per run: NAME DATA ARGS...
  # does a longer budget widen DT's lead? 10,000 steps, two seeds (the CPU budget)
  for s in 0 1; do
    echo "medium-replay/dt-10k-s$s medium-replay --seed $s --steps 10000 --warmup-steps 1000"
  done
  for d in medium-replay medium; do
    for s in 0 1 2; do
      echo "$d/dt-s$s $d --seed $s"
      echo "$d/bc-s$s $d --seed $s --algo bc"
    done
  done
  for s in 0 1 2; do echo "medium-replay/dt-k1-s$s medium-replay --seed $s --context 1"; done
  for d in medium-replay medium; do
    for s in 0 1 2; do echo "$d/pbc10-s$s $d --seed $s --algo pbc --top-percent 10"; done
  done
  for d in medium-replay medium; do
    for s in 0 1 2; do echo "$d/cql-s$s $d --seed $s --steps 2000 D3RLPY=cql"; done
  done
  for s in 0 1 2; do echo "medium-replay/iql-s$s medium-replay --seed $s --steps 10000 D3RLPY=iql"; done
}

run_one() {
  name=$1 data=$2; shift 2
  run=$OUT/$name
  mkdir -p "$(dirname $run)"
  case "$*" in
    *D3RLPY=*)
      algo=${!#}; set -- "${@:1:$#-1}"  # the last word is D3RLPY=<algo>
      [ -f $run/metrics.json ] || $U dt external \
        --algo ${algo#D3RLPY=} --data $OUT/$data "$@" --eval-episodes 50 --eval-envs 50 \
        --out $run > $run.log 2>&1 ;;
    *)
      if [ ! -f $run/metrics.json ]; then
        [ -f $run/checkpoint.pt ] && resume=--resume || resume=
        $U dt train --config configs/dt-gym-quick.yaml --data $OUT/$data "$@" --no-progress \
          --out $run $resume > $run.log 2>&1
      fi
      # 10 episodes per target while training; the table uses 50 (the same first 10 and 40 more)
      [ ! -f $run/metrics.json ] || [ -f $run/eval.json ] ||
        $U dt eval --run $run --eval-episodes 50 --eval-envs 50 --threads 1 > $run.eval.log ;;
  esac
  [ -f $run/metrics.json ] && echo "done: $name" || echo "FAILED: $name (see $run.log)"
}
export -f run_one
jobs | xargs -P 2 -L 1 bash -c 'run_one "$@"' _

for d in medium-replay medium; do $U dt compare --runs $OUT/$d/*-s? --out $OUT/$d/compare; done

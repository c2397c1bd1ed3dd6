#!/usr/bin/env bash
# The time-series measurement campaign (docs/timeseries.md): every classification set aeon
# ships and its forecasting series, 3 seeds, FPT (minilm-l6, smollm2-135m) beside the baselines.
#   scripts/ts_campaign.sh                 run it (each run folder under $OUT; runs already
#                                          finished are skipped, so it can be re-started)
#   DRY_RUN=1 scripts/ts_campaign.sh       print the commands only
# OUT (default runs/ts), SEEDS (default "0 1 2"), BACKBONES (default "minilm-l6 smollm2-135m")
# FPT_ARGS (extra fpt train flags, e.g. "--steps 500 --device cuda") and UNICOMP (the command,
# default .venv/bin/unicomp) override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/ts}"
SEEDS="${SEEDS:-0 1 2}"
BACKBONES="${BACKBONES:-minilm-l6 smollm2-135m}"
FPT_ARGS="${FPT_ARGS:-}"
UNICOMP="${UNICOMP:-.venv/bin/unicomp}"
run() {  # run FOLDER COMMAND...: skipped where FOLDER already holds a finished run
  local folder="$1"; shift
  if [ -n "${DRY_RUN:-}" ]; then echo "$* --out $folder"; return; fi
  [ -f "$folder/metrics.json" ] && return
  "$@" --out "$folder" --overwrite
}
sets=$($UNICOMP ts list | awk '/^classification/{c=1;next} /^forecasting/{c=0} c{print $1}')
series=$($UNICOMP ts list | awk '/^forecasting/{f=1;next} /^your own/{f=0} f{print $1}')
for name in $sets; do
  for seed in $SEEDS; do
    for backbone in $BACKBONES; do
      run "$OUT/ucr-$name-$backbone-s$seed" $UNICOMP fpt train --task ucr \
        --task-arg "name=$name" --backbone "$backbone" --seed "$seed" --no-progress $FPT_ARGS
    done
    for method in minirocket 1nn-dtw; do
      [ "$method" = 1nn-dtw ] && [ "$seed" != "$(echo $SEEDS | cut -d' ' -f1)" ] && continue  # deterministic
      run "$OUT/ucr-$name-$method-s$seed" $UNICOMP ts baseline --task ucr \
        --task-arg "name=$name" --method "$method" --seed "$seed" --no-progress
    done
  done
done
for name in $series; do
  for seed in $SEEDS; do
    for backbone in $BACKBONES; do
      run "$OUT/forecast-$name-$backbone-s$seed" $UNICOMP fpt train --task forecast \
        --task-arg "name=$name" --backbone "$backbone" --seed "$seed" --no-progress $FPT_ARGS
    done
    for method in naive seasonal-naive dlinear; do
      [ "$method" != dlinear ] && [ "$seed" != "$(echo $SEEDS | cut -d' ' -f1)" ] && continue
      run "$OUT/forecast-$name-$method-s$seed" $UNICOMP ts baseline --task forecast \
        --task-arg "name=$name" --method "$method" --seed "$seed" --no-progress
    done
  done
done
[ -n "${DRY_RUN:-}" ] || $UNICOMP report --by-seed "$OUT"/*

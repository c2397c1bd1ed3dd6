#!/usr/bin/env bash
# The time-series measurement campaign (docs/timeseries.md): every classification set aeon
# ships and its forecasting series, 3 seeds, FPT beside the field's baselines and its own
# controls, one run folder each under $OUT (records committed under results/timeseries/).
#   scripts/ts_campaign.sh                 run it (runs already finished are skipped, so it
#                                          can be stopped and re-started at any point)
#   DRY_RUN=1 scripts/ts_campaign.sh       print the commands only
#   scripts/ts_campaign.sh && unicomp ts report results/timeseries   the tables and verdicts
# The order is the order of importance, so a partial campaign is a complete part: per seed,
# every set with minilm-l6 and the baselines; then the controls (frozen random init, LSTM),
# then smollm2-135m (its first 6 layers, as GPT4TS keeps GPT-2's first 6), then full
# fine-tuning. OUT (default results/timeseries), SEEDS (default "0 1 2"), ROWS (default all:
# "fpt baselines random lstm smollm2 full"), FPT_ARGS (extra fpt train flags, e.g.
# "--device cuda") and UNICOMP (the command, default .venv/bin/unicomp) override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/timeseries}"
SEEDS="${SEEDS:-0 1 2}"
ROWS="${ROWS:-fpt baselines random lstm smollm2 full}"
FPT_ARGS="${FPT_ARGS:-}"
UNICOMP="${UNICOMP:-.venv/bin/unicomp}"
# The budget of every FPT row (a CPU's: GPT4TS trains classification 50 epochs, forecasting
# 10 epochs of batch 256, on a GPU): classification 500 steps of batch 16, forecasting 300
# steps of batch 64; the checkpoint is selected on the validation split.
CLS_TRAIN="--steps 500 --eval-every 50"
FC_TRAIN="--steps 300 --eval-every 25"
DLINEAR_LRS="0.0003 0.001 0.003"  # DLinear's rate, chosen on validation per seed
run() {  # run FOLDER COMMAND...: skipped where FOLDER already holds a finished run
  local folder="$1"; shift
  if [ -n "${DRY_RUN:-}" ]; then echo "$* --out $folder"; return; fi
  [ -f "$folder/metrics.json" ] && return
  "$@" --out "$folder" --overwrite
}
patching() {  # the long series as at most about 50 tokens (the default patch 8, stride 4 else);
  # JapaneseVowels' channels (cepstrum coefficients) carry the class in their levels, which the
  # default per-series z-normalisation removes: its values are kept as they are
  case "$1" in
    ACSF1) echo "--task-arg patch=64 --task-arg stride=32" ;;
    ArrowHead | OSULeaf | PickupGestureWiimoteZ) echo "--task-arg patch=16 --task-arg stride=8" ;;
    JapaneseVowels) echo "--task-arg normalize=none" ;;
    *) echo "" ;;
  esac
}
has() { case " $ROWS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
sets=$($UNICOMP ts list | awk '/^classification/{c=1;next} /^forecasting/{c=0} c{print $1}')
series=$($UNICOMP ts list | awk '/^forecasting/{f=1;next} /^your own/{f=0} f{print $1}')
fpt_ucr() {  # fpt_ucr ROW BACKBONE SEED NAME EXTRA...: one FPT run on a classification set
  local row="$1" backbone="$2" seed="$3" name="$4"; shift 4
  # shellcheck disable=SC2046
  run "$OUT/ucr-$name-$row-s$seed" $UNICOMP fpt train --task ucr --task-arg "name=$name" \
    $(patching "$name") --backbone "$backbone" "$@" --seed "$seed" --no-progress \
    $CLS_TRAIN $FPT_ARGS
}
fpt_forecast() {  # fpt_forecast ROW BACKBONE SEED NAME EXTRA...: one FPT run on a series
  local row="$1" backbone="$2" seed="$3" name="$4"; shift 4
  run "$OUT/forecast-$name-$row-s$seed" $UNICOMP fpt train --task forecast \
    --task-arg "name=$name" --backbone "$backbone" "$@" --seed "$seed" --no-progress \
    $FC_TRAIN $FPT_ARGS
}
fpt_rows() {  # fpt_rows ROW BACKBONE EXTRA...: every set and series with one FPT setting
  local row="$1" backbone="$2"; shift 2
  for seed in $SEEDS; do
    for name in $sets; do fpt_ucr "$row" "$backbone" "$seed" "$name" "$@"; done
    for name in $series; do fpt_forecast "$row" "$backbone" "$seed" "$name" "$@"; done
  done
}
if has fpt || has baselines; then
  for seed in $SEEDS; do
    for name in $sets; do
      if has fpt; then fpt_ucr minilm-l6 minilm-l6 "$seed" "$name"; fi
      if has baselines; then
        for method in minirocket 1nn-dtw; do
          # shellcheck disable=SC2046
          run "$OUT/ucr-$name-$method-s$seed" $UNICOMP ts baseline --task ucr \
            --task-arg "name=$name" $(patching "$name") --method "$method" --seed "$seed" \
            --no-progress
        done
      fi
    done
    for name in $series; do
      if has fpt; then fpt_forecast minilm-l6 minilm-l6 "$seed" "$name"; fi
      if has baselines; then
        for method in naive seasonal-naive; do
          run "$OUT/forecast-$name-$method-s$seed" $UNICOMP ts baseline --task forecast \
            --task-arg "name=$name" --method "$method" --seed "$seed" --no-progress
        done
        for lr in $DLINEAR_LRS; do
          run "$OUT/forecast-$name-dlinear-lr$lr-s$seed" $UNICOMP ts baseline --task forecast \
            --task-arg "name=$name" --method dlinear --lr "$lr" --seed "$seed" --no-progress
        done
      fi
    done
  done
fi
if has random; then fpt_rows random random:minilm-l6; fi
if has lstm; then fpt_rows lstm lstm; fi
if has smollm2; then fpt_rows smollm2-135m-l6 smollm2-135m --backbone-layers 6; fi
if has full; then fpt_rows full minilm-l6 --freeze full; fi

#!/usr/bin/env bash
# The GPU measurements: the fast recipes by the speed-record protocol, and
# the whole seed ladder at full length.
#
#   benchmarks/gpu.sh PHASE...     (from the repository root, after
#                                   pip install -e '.[cuda]')
#
# PHASEs, run in the order given:
#   fast94   benchmarks/speedrun.py --config configs/fast94.py, 25 seeds
#   fast96   benchmarks/speedrun.py --config configs/fast96.py, 5 seeds
#   ladder   python -m cifar_jax.ladder --parallel 8: all eight rungs, 625
#            epochs (run it again to resume an interrupted ladder)
# Environment:
#   DATA      a CIFAR-10 image folder or a .zip of one; unset: CIFAR-10
#             from TFDS
#   OUT       where the logs, the speedrun JSONs and the ladder go
#             (default runs/gpu)
#   SMOKE=1   every phase at toy size: checks the setup in a minute, on a
#             CPU as well
set -u -o pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

data=()
if [ -n "${DATA:-}" ]; then
  data=(--config.data.name=image_folder "--config.data.dir=$DATA")
fi
if [ "${SMOKE:-0}" = 1 ]; then
  small=(--config.data.train_split='train[:2048]' --config.data.eval_split='test[:1000]')
  fast94=(--runs 2 --config.num_epochs=1 --config.batch_size=512 "${small[@]}")
  fast96=(--runs 1 --warmup_runs 0 --config.num_epochs=1
          --config.batch_size=512 "${small[@]}")
  ladder=(--configs simple,deep_adam,deep_adam_aug --epochs_scale 0.01
          --config.steps_per_epoch=3 "${small[@]}")
else
  fast94=(--runs 25)
  fast96=(--runs 5 --warmup_runs 0)
  ladder=()
fi

python3 -c 'import jax; print("jax", jax.__version__, jax.devices())' \
  | tee "$OUT/machine.txt"
nvidia-smi -L 2>/dev/null | tee -a "$OUT/machine.txt"

for phase in "$@"; do
  echo "### $phase"
  case "$phase" in
    fast94|fast96)
      extra="${phase}[@]"
      python3 benchmarks/speedrun.py --config "configs/$phase.py" \
        "${!extra}" "${data[@]}" --json "$OUT/$phase.json" \
        2>&1 | tee "$OUT/$phase.log" ;;
    ladder)
      python3 -m cifar_jax.ladder --parallel 8 --root "$OUT/ladder" \
        "${ladder[@]}" "${data[@]}" 2>&1 | tee "$OUT/ladder.log" ;;
    *) echo "unknown phase $phase (fast94, fast96, ladder)"; exit 2 ;;
  esac
done

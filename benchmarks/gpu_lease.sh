#!/usr/bin/env bash
# The fast recipes' GPU measurements, as one script for one short GPU lease.
#
#   benchmarks/gpu_lease.sh PHASE...     (from the repository root)
#
# PHASEs, run in the order given:
#   fast94   benchmarks/speedrun.py, configs/fast94.py, 25 seeds
#   fast96   benchmarks/speedrun.py, configs/fast96.py, 5 seeds
#   ladder   python -m cifar_jax.ladder --parallel 8, all 625 epochs (resumes
#            an interrupted ladder in the same WORK folder)
#   pack     tars the ladder's report, histories and logs into $OUT
# Environment:
#   DATA      the CIFAR-10 image folder, a .zip of it, or a .tar.xz of it
#             (unpacked once into $WORK); default .gpu/cifar10-jpeg.tar.xz
#   OUT       where logs and results go (default /tmp/cifar_jax_out)
#   WORK      scratch: data, decoded cache, ladder runs (default /tmp/cifar_jax)
#   DEADLINE  seconds from the start of this script after which no phase
#             runs on (each is cut with SIGTERM, so the ladder checkpoints)
#   SMOKE=1   a tiny dry run of every phase (for a CPU, before a lease)
# Wheels in .whl/ (packages the GPU image lacks) are installed first.
set -u -o pipefail
start=$(date +%s)
OUT=${OUT:-/tmp/cifar_jax_out}
WORK=${WORK:-/tmp/cifar_jax}
DATA=${DATA:-.gpu/cifar10-jpeg.tar.xz}
DEADLINE=${DEADLINE:-540}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# Compiled programs persist in WORK, so a resumed ladder does not recompile.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}

if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d "$WORK/site" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$WORK/site" .whl/*.whl || exit 1
fi
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

case "$DATA" in
  *.tar.xz)
    if [ ! -d "$WORK/data" ]; then
      mkdir -p "$WORK/data" && tar -xJf "$DATA" -C "$WORK/data" || exit 1
    fi
    DATA_DIR=$(ls -d "$WORK"/data/*/ | head -1) ;;
  *) DATA_DIR=$DATA ;;
esac
data=(--config.dataset=image_folder "--config.data_dir=${DATA_DIR%/}"
      "--config.cache_dir=$WORK/cache")

if [ "${SMOKE:-0}" = 1 ]; then
  small=(--config.train_split='train[:2048]' --config.eval_split='test[:1000]')
  fast94=(--runs 2 --config.num_epochs=1 --config.batch_size=512 "${small[@]}")
  fast96=(--runs 1 --warmup_runs 0 --config.num_epochs=1
          --config.batch_size=512 "${small[@]}")
  ladder=(--configs simple,deep_adam,deep_adam_aug --epochs-scale 0.01
          --config.steps_per_epoch=3 "${small[@]}")
else
  fast94=(--runs 25)
  fast96=(--runs 5 --warmup_runs 0)
  ladder=()
fi

left() { echo $(( DEADLINE - ($(date +%s) - start) )); }

run_phase() {  # name, cap in seconds, command...
  local name=$1 cap=$2; shift 2
  local limit; limit=$(left)
  (( limit > cap )) && limit=$cap
  if (( limit < 20 )); then
    echo "### $name: skipped, ${limit}s left"; return
  fi
  echo "### $name: up to ${limit}s, $(date -u +%T)"
  local t0; t0=$(date +%s)
  timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  echo "### $name: exit ${PIPESTATUS[0]} after $(( $(date +%s) - t0 ))s" \
    | tee -a "$OUT/$name.log"
}

nvidia-smi -L 2>/dev/null | tee "$OUT/machine.txt"
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax",
  flax.__version__, "optax", optax.__version__, jax.devices())' \
  | tee -a "$OUT/machine.txt"

for phase in "$@"; do
  case "$phase" in
    fast94)
      run_phase fast94 240 python3 benchmarks/speedrun.py \
        --config configs/fast94.py "${fast94[@]}" "${data[@]}" \
        --json "$OUT/fast94.json" ;;
    fast96)
      run_phase fast96 300 python3 benchmarks/speedrun.py \
        --config configs/fast96.py "${fast96[@]}" "${data[@]}" \
        --json "$OUT/fast96.json" ;;
    ladder)
      run_phase ladder 600 python3 -m cifar_jax.ladder --parallel 8 \
        --root "$WORK/ladder" "${ladder[@]}" "${data[@]}" ;;
    pack)
      (cd "$WORK" && tar -czf "$OUT/ladder.tar.gz" --exclude=checkpoints \
        ladder 2>/dev/null) ;;
    *) echo "unknown phase $phase"; exit 2 ;;
  esac
done

echo "### summary ($(( $(date +%s) - start ))s in all)"
grep -h -E '^(### |accuracy:|time:|compilation|setup|mean >=|warm-up)' \
  "$OUT"/fast9*.log 2>/dev/null
[ -f "$WORK/ladder/REPORT.md" ] && grep -E '^\| |^Total|^Wall' \
  "$WORK/ladder/REPORT.md"
tail -n 12 "$OUT/ladder.log" 2>/dev/null | grep '==='
exit 0

#!/bin/bash
# The headline grid (launch/reproduce.py, leak-free refit protocol) on one lent H100/H200, in
# priority order, inside a time limit; what finished comes back as one archive.
#
#   bash launch/device_grid.sh DATA_DIR OUT_DIR [SECONDS]
#
# From the device tool (docs/performance.md has the recipe): copy ../shared/data/{tmall,retailrocket}
# into an ignored folder of the checkout (e.g. device_data/), carry it, and run
#   bash launch/device_grid.sh device_data $OUT 540
# with PYTHONPATH=. (that machine has its own JAX with CUDA; nothing is installed). Priority:
# 1. Tmall teacher, main student seed 0; 2. the same for RetailRocket; 3. main seeds 1, 2 of both;
# 4. the ~100x students; 5. Tmall's five ablations. A run cut off by the limit is left as it is
# (its checkpoints stay on that machine only). OUT_DIR gets results.tar.gz (every finished run's
# results.json and config.json, ROOT/DATASET/RUN/) and grid.log.
set -u
DATA=${1:?DATA_DIR}
OUT=${2:?OUT_DIR}
LIMIT=${3:-540}
ROOT=${DEVICE_GRID_ROOT:-/tmp/odrec_device}
EXTRA=${DEVICE_GRID_ARGS:-}  # e.g. --smoke, to try the script on a CPU
PYTHON=${PYTHON:-python}  # the device machine's python has JAX with CUDA
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$ROOT"
deadline=$((SECONDS + LIMIT))

step() {  # one reproduce call, given what is left of the limit
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "device_grid: time limit reached before: $*"
    return 1
  fi
  echo "device_grid: $(date -u +%T) ${left}s left: $*"
  timeout -s TERM -k 20 "$left" "$PYTHON" -m launch.reproduce --root="$ROOT" --data_dir="$DATA" $EXTRA "$@"
}

{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  "$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())"
  # One step failing does not stop the next (a student whose teacher did not finish fails fast);
  # once the limit is reached, every later step returns at once.
  step --datasets=tmall --rows=teacher,main --seeds=0
  step --datasets=retailrocket --rows=teacher,main --seeds=0
  step --datasets=tmall,retailrocket --rows=main --seeds=1,2
  step --datasets=tmall,retailrocket --rows=x100 --seeds=0
  step --datasets=tmall --rows=ce,dense,kd,kd_cl,tt --seeds=0
  echo "device_grid: done at $(date -u +%T), $SECONDS s"
} 2>&1 | tee "$OUT/grid.log"

(cd "$ROOT" && find . \( -name results.json -o -name config.json \) -print0 | tar --null -czf "$OUT/results.tar.gz" -T -)
echo "device_grid: archived $(tar -tzf "$OUT/results.tar.gz" | grep -c results.json) finished runs" | tee -a "$OUT/grid.log"

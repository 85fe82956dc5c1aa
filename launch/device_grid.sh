#!/bin/bash
# The headline grid (launch/reproduce.py, leak-free refit protocol) on one lent H100/H200, several
# runs at a time, inside a time limit; then a short GPU throughput benchmark (launch/bench.py).
# What finished comes back as one archive.
#
#   bash launch/device_grid.sh DATA_DIR OUT_DIR [SECONDS]
#
# From the device tool (docs/performance.md has the recipe): copy ../shared/data/{tmall,retailrocket}
# into an ignored folder of the checkout (device_data/), download the two pure-Python packages that
# machine lacks into .whl/ (ml_collections, tensorboardX), carry both, and run
#   bash launch/device_grid.sh device_data $OUT 560
# That machine has its own JAX with CUDA; nothing else is installed. At batch 100 one run leaves
# the GPU mostly idle, so runs share it. One chain per dataset: its teacher, then its main students
# (seeds 0, 1, 2) and ~100x student, GRID_PARALLEL at a time in that priority order; beside them,
# once the Tmall teacher has finished, Tmall's five ablations, ABLATION_PARALLEL at a time. At the
# limit every run is stopped (SIGTERM) and the benchmark runs alone for
# BENCH_SECONDS. OUT_DIR gets results.tar.gz (every run's results.json, config.json, metrics.jsonl
# and stdout.log, ROOT/DATASET/RUN/), bench_BATCH.json and grid.log.
set -u
DATA=${1:?DATA_DIR}
OUT=${2:?OUT_DIR}
LIMIT=${3:-560}
ROOT=$(realpath -m "${DEVICE_GRID_ROOT:-/tmp/odrec_device}")  # absolute: the runs' command lines name it
EXTRA=${DEVICE_GRID_ARGS:-}  # e.g. --smoke, to try the script on a CPU
PYTHON=${PYTHON:-python3}  # the device machine's python3 has JAX with CUDA
GRID_PARALLEL=${GRID_PARALLEL:-3}
ABLATION_PARALLEL=${ABLATION_PARALLEL:-2}
BENCH_SECONDS=${BENCH_SECONDS:-140}
BENCH_BATCH_SIZES=${BENCH_BATCH_SIZES:-1024 100}  # one launch.bench process each, in this order
BENCH_ARGS=${BENCH_ARGS:---members=1 --seconds=3 --floor_calls=20 --eval=false}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
# Runs share the GPU: no process may take most of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Seeds of one row compile the same programs: compile once.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/rec_kd_jax_cache}
mkdir -p "$OUT" "$ROOT"
started=$SECONDS
grid_deadline=$((SECONDS + LIMIT - BENCH_SECONDS - 30))

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rec_kd_site .whl/*.whl || exit 1
  export PYTHONPATH=$PYTHONPATH:/tmp/rec_kd_site
fi

reproduce() {
  "$PYTHON" -m launch.reproduce --root="$ROOT" --data_dir="$DATA" $EXTRA "$@"
}

ablations_after_teacher() {  # waits for the Tmall teacher (or the deadline), then runs the ablations
  until [ -f "$ROOT/tmall/teacher_s0/results.json" ]; do
    [ "$SECONDS" -ge "$grid_deadline" ] && return 1
    sleep 5
  done
  reproduce --datasets=tmall --rows=ce,dense,kd,kd_cl,tt --seeds=0 --parallel="$ABLATION_PARALLEL"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c "import jax, flax, optax, orbax.checkpoint as ocp; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" || exit 1
  echo "device_grid: $(date -u +%T) grid until +$((grid_deadline - started))s"
  pids=()
  for dataset in tmall retailrocket; do
    reproduce --datasets=$dataset --rows=teacher,main,x100 --seeds=0,1,2 --parallel="$GRID_PARALLEL" &
    pids+=($!)
  done
  ablations_after_teacher &
  pids+=($!)
  while kill -0 "${pids[@]}" 2>/dev/null; do  # true while any chain runs
    if [ "$SECONDS" -ge "$grid_deadline" ]; then
      echo "device_grid: $(date -u +%T) time limit: stopping the grid (SIGTERM)"
      kill -TERM "${pids[@]}" 2>/dev/null
      # Only this grid's processes: their command lines name its root.
      pkill -TERM -f "launch.reproduce --root=$ROOT" 2>/dev/null
      sleep 20
      pkill -KILL -f -- "--workdir=$ROOT/" 2>/dev/null
      break
    fi
    sleep 5
  done
  wait
  echo "device_grid: grid ended at +$((SECONDS - started))s"
  for log in "$ROOT"/*/*/stdout.log; do
    [ -f "$(dirname "$log")/results.json" ] && continue
    echo "--- unfinished: $log"
    tail -c 1500 "$log" | tr '\r' '\n' | tail -n 8
  done
  bench_deadline=$((SECONDS + BENCH_SECONDS))
  for batch_size in $BENCH_BATCH_SIZES; do
    left=$((bench_deadline - SECONDS))
    [ "$left" -lt 15 ] && break
    echo "device_grid: $(date -u +%T) benchmark at batch $batch_size, ${left}s at most"
    timeout -s TERM -k 5 "$left" "$PYTHON" -m launch.bench --data_dir="$DATA" --batch_sizes="$batch_size" $BENCH_ARGS > "$OUT/bench_$batch_size.json"
    echo "device_grid: benchmark exit $?"
    cat "$OUT/bench_$batch_size.json"
  done
  echo "device_grid: done at +$((SECONDS - started))s"
} 2>&1 | tee "$OUT/grid.log"

(cd "$ROOT" && find . \( -name results.json -o -name config.json -o -name metrics.jsonl -o -name stdout.log \) -print0 |
  tar --null -czf "$OUT/results.tar.gz" -T -)
echo "device_grid: archived $(tar -tzf "$OUT/results.tar.gz" | grep -c results.json) finished runs" | tee -a "$OUT/grid.log"

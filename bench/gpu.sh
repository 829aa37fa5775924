#!/usr/bin/env bash
# On a CUDA machine: the merge on the GPU against the CPU, and eval throughput with lm-eval's hf
# and vLLM backends on the same tasks and limit. Offline: parents are synthetic (bench's builder),
# the default task ships with publisher. Prints a Markdown table (and writes it to $OUT/gpu.md
# when OUT is set) to paste into bench/README.md with the GPU's name.
#
#   bench/gpu.sh                                # 1.2B bf16 parents, publisher_tiny_qa, limit 20
#   SIZE=800M DTYPE=float32 TASKS=publisher_tiny_qa LIMIT=20 RUNS=2 bench/gpu.sh
#
# Needs: .venv with publisher installed (make test), torch with CUDA; vLLM rows need
# `pip install 'lm-eval[vllm]'` and are reported as skipped without it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PUBLISHER=${PUBLISHER:-.venv/bin/publisher}
SIZE=${SIZE:-1.2B}
DTYPE=${DTYPE:-bfloat16}
TASKS=${TASKS:-publisher_tiny_qa}
LIMIT=${LIMIT:-20}
RUNS=${RUNS:-1}
WORK=${WORK:-build/bench/gpu}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
mkdir -p "$WORK"

gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')
[ -n "$gpu" ] || { echo "no CUDA device visible to torch: nothing to measure" >&2; exit 2; }

# Parents (cached under build/bench/) and a recipe that evaluates TASKS.
recipe=$("$PY" - "$SIZE" "$DTYPE" "$WORK" "$TASKS" <<'EOF'
import sys
sys.path.insert(0, "bench")
import _benchlib as lib
size, dtype, work, tasks = sys.argv[1:]
label = size if dtype == "float32" else f"{size}-{dtype}"
parents = lib.ensure_parents(label, lib.spec_for_params(lib.parse_count(size)), dtype=dtype)
path = f"{work}/gpu-recipe.yaml"
task_list = ", ".join(t.strip() for t in tasks.split(","))
with open(path, "w") as f:
    f.write(lib.slerp_config_yaml(parents, dtype))
    f.write(f"publish:\n  repo_id: bench/gpu\n  license: apache-2.0\n  eval:\n    tasks: [{task_list}]\n")
print(path)
EOF
)
run_dir="$WORK/run"
"$PUBLISHER" run "$recipe" --out "$run_dir" --stages plan >/dev/null

# seconds, CPU seconds and peak RSS of one command (GNU time's format; python fallback).
measure() {
  "$PY" - "$@" <<'EOF'
import os, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=open(os.environ.get("LOG", "/dev/null"), "w"))
_, status, usage = os.wait4(proc.pid, 0)
code = os.waitstatus_to_exitcode(status)
print(f"{time.perf_counter() - start:.1f} {usage.ru_utime + usage.ru_stime:.1f} {usage.ru_maxrss / 2**20:.2f} {code}")
EOF
}

rows=()
row() {  # name, command...
  local name=$1; shift
  for i in $(seq "$RUNS"); do
    read -r wall cpu rss code < <(LOG="$WORK/$name.log" measure "$@")
    if [ "$code" != 0 ]; then
      rows+=("| $name | failed (exit $code, see $WORK/$name.log) | | |")
    else
      rows+=("| $name | $wall | $cpu | $rss GiB |")
    fi
  done
}

row "merge cpu" "$PUBLISHER" run "$recipe" --out "$run_dir" --stages merge --force --device cpu
row "merge cuda" "$PUBLISHER" run "$recipe" --out "$run_dir" --stages merge --force --device cuda
for backend in hf vllm; do
  if [ "$backend" = vllm ] && ! "$PY" -c 'import vllm' 2>/dev/null; then
    rows+=("| eval vllm | skipped: vllm not installed (pip install 'lm-eval[vllm]') | | |")
    continue
  fi
  row "eval $backend" "$PUBLISHER" run "$recipe" --out "$run_dir" --stages eval --force \
    --device cuda --eval-backend "$backend" --eval-limit "$LIMIT"
done

{
  echo "GPU: $gpu; parents: $SIZE $DTYPE; eval: $TASKS, limit $LIMIT; $RUNS run(s) each"
  echo
  echo "| what | wall s | CPU s | peak RSS |"
  echo "|---|--:|--:|--:|"
  printf '%s\n' "${rows[@]}"
} | tee "${OUT:-$WORK}/gpu.md"

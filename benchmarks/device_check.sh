#!/usr/bin/env bash
# One-shot GPU check (issue 18): in under 8 minutes on one GPU it runs
#   1. the CUDA tests: the suite's `gpu` marker (pyproject.toml), `pytest -m gpu tests`;
#   2. the embedded envs' throughput at N = 65,536 (benchmarks/env_throughput.py);
#   3. the learner throughput grid at N = 24,576, M = 6 and 64, eager and torch.compile'd, with the
#      per-phase profile and the FLOP floor (benchmarks/throughput.py; no memory subprocesses);
# and writes <out>/env_throughput_cuda.json, <out>/throughput_cuda.json and a summary
# <out>/device_check_cuda.json (each step's command, exit status and seconds; the test counts).
#
#   bash benchmarks/device_check.sh                    # on a GPU machine -> benchmarks/results/*_cuda.json
#   bash benchmarks/device_check.sh --out /tmp/check   # elsewhere
#   bash benchmarks/device_check.sh --dry-run          # the same steps on CPU at tiny sizes (seconds),
#                                                      # into a temp dir (or --out): *_dryrun.json
#
# Every step runs even if an earlier one failed; the script exits non-zero if any failed.
# PYTHON (default: python) picks the interpreter. docs/throughput.md describes the outputs.
set -euo pipefail

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1; shift ;;
        --out) [[ $# -ge 2 ]] || { echo "--out needs a directory" >&2; exit 2; }; OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ "$DRY_RUN" == 1 ]]; then
    DEVICE=cpu
    SUFFIX=dryrun
    NOTE="benchmarks/device_check.sh --dry-run (CPU, tiny sizes: tests the script, not the device)"
    [[ -n "$OUT" ]] || OUT="$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    ENV_ARGS=(--tasks pendulum --num-envs 64 --steps 5 --warmup 1 --repeats 1)
    # tiny sizes; torch.compile with the eager backend (dynamo tracing only: no C++ / Triton codegen)
    TP_ARGS=(--num-envs 32 --num-policies 4 8 --horizon 4 --hidden 32 32 --epochs 1 --minibatches 2
             --warmup 1 --repeats 1 --e2e-iters 1 --profile-iters 1 --compile-warmup 1 --compile-backend eager
             --compile-timeout 120 --gemm-seconds 0.02 --no-memory --in-process --threads 1)
else
    DEVICE=cuda
    SUFFIX=cuda
    NOTE="benchmarks/device_check.sh"
    OUT="${OUT:-benchmarks/results}"
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "device_check.sh: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU machine" >&2
        exit 1
    fi
    ENV_ARGS=(--num-envs 65536)
    TP_ARGS=(--num-envs 24576 --num-policies 6 64 --warmup 1 --repeats 3 --e2e-iters 2 --profile-iters 2
             --compile-warmup 2 --compile-timeout 240 --no-memory)
fi
mkdir -p "$OUT"
STEPS="$(mktemp "${TMPDIR:-/tmp}/device_check_steps.XXXXXX")"
JUNIT="$(mktemp "${TMPDIR:-/tmp}/device_check_junit.XXXXXX")"
trap 'rm -f "$STEPS" "$JUNIT"' EXIT
FAILED=0
START=$(date +%s.%N)

# step NAME COMMAND...: run it, print and record its seconds and exit status; never abort the script
step() {
    local name="$1" t0 t1 rc secs
    shift
    echo "== [$name] $*"
    t0=$(date +%s.%N)
    if "$@"; then rc=0; else rc=$?; FAILED=1; fi
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    echo "== [$name] exit $rc, ${secs} s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$*" >> "$STEPS"
}

step tests "$PY" -m pytest -m gpu tests -q -p no:cacheprovider --junitxml="$JUNIT"
step env_throughput "$PY" benchmarks/env_throughput.py --device "$DEVICE" "${ENV_ARGS[@]}" \
    --out "$OUT/env_throughput_${SUFFIX}.json"
step throughput "$PY" benchmarks/throughput.py --device "$DEVICE" "${TP_ARGS[@]}" \
    --note "$NOTE" \
    --out "$OUT/throughput_${SUFFIX}.json"

TOTAL=$(awk -v a="$START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
"$PY" - "$STEPS" "$JUNIT" "$OUT" "$SUFFIX" "$DEVICE" "$DRY_RUN" "$TOTAL" <<'EOF'
import json, os, platform, subprocess, sys, xml.etree.ElementTree as ET
from datetime import datetime, timezone

import torch

steps_path, junit, out_dir, suffix, device, dry_run, total = sys.argv[1:]
out = os.path.join(out_dir, f"device_check_{suffix}.json")
steps = []
for line in open(steps_path):
    name, rc, secs, cmd = line.rstrip("\n").split("\t", 3)
    steps.append({"step": name, "exit_status": int(rc), "seconds": float(secs), "command": cmd})
tests = None
if os.path.getsize(junit):
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    tests["selection"] = "pytest -m gpu tests (the suite's CUDA marker, pyproject.toml)"
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
except Exception:  # no git on the device machine's copy
    commit = None
name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
summary = {
    "benchmark": "one-shot device check (benchmarks/device_check.sh)", "dry_run": dry_run == "1",
    "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device, "device_name": name,
    "torch_version": torch.__version__, "git_commit": commit, "total_seconds": float(total),
    "budget_seconds": 480, "steps": steps, "tests": tests,
    "outputs": [p for p in (f"env_throughput_{suffix}.json", f"throughput_{suffix}.json")
                if os.path.isfile(os.path.join(out_dir, p))],
}
with open(out, "w") as f:
    json.dump(summary, f, indent=2)
print(f"wrote {out}")
EOF

echo "== device check: ${TOTAL} s in all (budget 480 s on one GPU); outputs in $OUT"
awk -F'\t' '{ printf "   %-16s exit %s  %8s s\n", $1, $2, $3 }' "$STEPS"
if [[ "$FAILED" != 0 ]]; then
    echo "== device check: a step FAILED" >&2
    exit 1
fi

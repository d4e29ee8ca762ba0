#!/usr/bin/env bash
# Every benchmark, one after the other, each printing its tables under the command that produced it, the
# machine, the date and the load average at its start and end.
#
#   benchmarks/run_all.sh                    # the full runs (about 30 minutes on 2 cores)
#   benchmarks/run_all.sh --quick            # small sizes, a few minutes
#   benchmarks/run_all.sh [--quick] --record # also rewrite every section of benchmarks/RESULTS.md
#
# Run from anywhere; uses the repository's .venv when there is one. Timings on a shared machine are noisy:
# every figure that compares two things is a ratio measured within one run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python="python3"

quick=0
record=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --record) record=(--record) ;;
        *) echo "usage: $0 [--quick] [--record]" >&2; exit 2 ;;
    esac
done

cd "$repo"
run() {
    echo
    echo "### $* (load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown))"
    "$python" "$@" "${record[@]}"
}

# On a GPU host the full-size TRELLIS comparison (docs/gpu.md); elsewhere a CPU smoke run of both modes.
trellis_speed() {
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        run benchmarks/bench_trellis_speed.py --prompts image --repeats 2 --deadline 560
    else
        run benchmarks/bench_trellis_speed.py --size tiny --device cpu --steps 6/6,4/4 --repeats 2 --prompts text
    fi
}

if [[ $quick == 1 ]]; then
    run benchmarks/bench_ply.py --gaussians 400000 --repeat 8 --slow-repeat 1
    run benchmarks/bench_render.py --gaussians 100000 --repeat 2
    run benchmarks/bench_service.py --counts 100000 400000 --reps 5 --checks 200
    run benchmarks/bench_throughput.py --seconds 8 --warmup 2 --clients 1 4
    run benchmarks/bench_memory.py --generations 120 --gaussians 20000 --warmup 30 --history-size 5
    run benchmarks/record_reliability.py
    trellis_speed
else
    run benchmarks/bench_ply.py
    run benchmarks/bench_render.py
    run benchmarks/bench_service.py
    run benchmarks/bench_throughput.py
    run benchmarks/bench_memory.py
    run benchmarks/record_reliability.py --long
    trellis_speed
fi

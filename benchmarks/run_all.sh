#!/usr/bin/env bash
# Every benchmark, one after the other, each printing its tables under the command that produced them.
#
#   benchmarks/run_all.sh            # the full runs recorded in benchmarks/RESULTS.md (about 30 minutes)
#   benchmarks/run_all.sh --quick    # small sizes, a few minutes: checks that everything still runs
#   benchmarks/run_all.sh --record   # also let bench_ply / bench_render rewrite their RESULTS.md sections
#
# Run from anywhere; uses the repository's .venv when there is one. Timings on a shared machine are noisy:
# the tables print the load average next to the machine line.
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
    echo "### $*"
    "$python" "$@"
}

if [[ $quick == 1 ]]; then
    [[ -f benchmarks/bench_ply.py ]] && run benchmarks/bench_ply.py --gaussians 100000 --repeat 3 "${record[@]}"
    [[ -f benchmarks/bench_render.py ]] && run benchmarks/bench_render.py --gaussians 100000 --repeat 2 "${record[@]}"
    run benchmarks/bench_service.py --counts 100000 400000 --reps 3 --checks 100
    run benchmarks/bench_throughput.py --seconds 5 --warmup 2 --clients 1 4
    run benchmarks/bench_memory.py --generations 60 --gaussians 20000 --warmup 15 --history-size 5
else
    [[ -f benchmarks/bench_ply.py ]] && run benchmarks/bench_ply.py "${record[@]}"
    [[ -f benchmarks/bench_render.py ]] && run benchmarks/bench_render.py "${record[@]}"
    run benchmarks/bench_service.py
    run benchmarks/bench_throughput.py
    run benchmarks/bench_memory.py
fi

"""TRELLIS stock against the optimised mode: seconds per stage, peak VRAM and their ratio, in one run.

Built on the GPU self-check (``generation.gpu_check``): the same random-weight models of the released
architectures (``--size full`` on a GPU; ``tiny`` on a CPU, where the ratio is only a smoke figure), the real worker
and front end. Each mode gets its own worker process (``SPLATGEN_TRELLIS_MODE``), warmed up before it reports
healthy, so warm-up and compilation are excluded; then ``--repeats`` generations per prompt and step setting are
timed through the front end, with the worker's seconds per stage and its peak GPU memory (the process's peak,
warm-up included, so the same for both modes' measure). The table gives medians; the repeats are printed. Also
printed: the FLOP floor of the two flow models at 60/50 steps, derived from the full-size image-large architecture.

    python benchmarks/bench_trellis_speed.py                                    # a GPU host (docs/gpu.md)
    python benchmarks/bench_trellis_speed.py --size tiny --device cpu --steps 6/6,4/4 --repeats 2 --prompts text
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import print_header, print_table, record_printed, say

from generation.gpu_check import (
    TEXT_PROMPT,
    Deadline,
    _generate,
    _image_prompt,
    _parse_steps,
    _service,
    _wait_healthy,
    build_models,
    worker_environment,
)

SECTION = "## TRELLIS speed: stock vs optimised"
STAGES = ("conditioning", "ss_sampling", "ss_decoding", "slat_sampling", "gaussian_decoding", "conversion")
MODES: dict[str, dict[str, str]] = {
    "stock": {"SPLATGEN_TRELLIS_MODE": "stock"},
    "optimised": {"SPLATGEN_TRELLIS_MODE": "optimised"},
    # The two switches that change the numbers, measured so their defaults can be decided on a GPU.
    "optimised+bf16+tf32": {
        "SPLATGEN_TRELLIS_MODE": "optimised",
        "SPLATGEN_TRELLIS_BF16": "true",
        "SPLATGEN_TRELLIS_TF32": "true",
    },
}


def measure_mode(
    mode: str,
    built: dict[str, Any],
    args: argparse.Namespace,
    work: Path,
    deadline: Deadline,
) -> dict[str, Any]:
    env = {**worker_environment(built, args.device, args.warmup_steps, "text" in args.prompts), **MODES[mode]}
    if "image" not in args.prompts:
        env["SPLATGEN_TRELLIS_IMAGE_MODEL"] = "none"
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with _service("worker", env, work / f"worker-{mode}.log") as (worker, worker_proc):
        _wait_healthy(worker, worker_proc, deadline, work / f"worker-{mode}.log")
        ready = time.perf_counter() - started
        optimisations = httpx.get(f"{worker}/health", timeout=10).json()["backend"].get("optimisations")
        front_env = {
            "SPLATGEN_WORKERS": worker,
            "SPLATGEN_HISTORY_SIZE": "0",
            "SPLATGEN_WORKER_TIMEOUT_S": "600",
        }
        with _service("front", front_env, work / f"front-{mode}.log") as (front, front_proc):
            _wait_healthy(front, front_proc, deadline, work / f"front-{mode}.log")
            bodies = {"text": {"prompt": TEXT_PROMPT}, "image": {"image_b64": _image_prompt()}}
            prompts = [(kind, bodies[kind]) for kind in args.prompts]
            for ss_steps, slat_steps in args.steps:
                for kind, body in prompts:
                    for _ in range(args.repeats):
                        runs.append(_generate(front, worker, kind, body, ss_steps, slat_steps, deadline))
    return {"mode": mode, "ready_seconds": ready, "optimisations": optimisations, "runs": runs}


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    out = {"seconds": statistics.median(r["seconds"] for r in runs)}
    for stage in STAGES:
        values = [r["stages"][stage] for r in runs if stage in r["stages"]]
        if values:
            out[stage] = statistics.median(values)
    return out


def gib(value: Any) -> str:
    return "-" if value is None else f"{value / 1024**3:.2f}"


# -- the FLOP floor ---------------------------------------------------------------------------------------------

# The full-size image-large flow models (trellis_models.RELEASED) and their released samplers (pipeline.json).
DINOV2_TOKENS = 1 + 4 + (518 // 14) ** 2  # class token, 4 registers, 37 x 37 patches
FLOW_MODELS = {
    "sparse structure (ss_flow_img_dit_L_16l8)": {"width": 1024, "cond": 1024, "blocks": 24, "interval": (0.5, 0.95)},
    "SLAT (slat_flow_img_dit_L_64l8p2)": {"width": 1024, "cond": 1024, "blocks": 24, "interval": (0.5, 1.0)},
}  # fmt: skip
RESCALE_T = 3.0


def guided_steps(steps: int, interval: tuple[float, float]) -> int:
    """Steps whose t (TRELLIS's rescaled schedule) lies in the guidance interval: each costs a second pass."""
    guided = 0
    for i in range(steps):
        t = 1 - i / steps
        t = RESCALE_T * t / (1 + (RESCALE_T - 1) * t)
        guided += interval[0] <= t <= interval[1]
    return guided


def block_params(width: int, cond: int) -> int:
    """One ModulatedTransformerCrossBlock: self-attention, cross-attention, 4x MLP, adaLN modulation, norm2."""
    d = width
    self_attn = 3 * d * d + 3 * d + d * d + d
    cross_attn = d * d + d + 2 * cond * d + 2 * d + d * d + d
    mlp = 4 * d * d + 4 * d + 4 * d * d + d
    return self_attn + cross_attn + mlp + 6 * d * d + 6 * d + 2 * d


def block_flops(tokens: int, width: int, cond: int, cond_tokens: int) -> float:
    """Multiply-adds x 2 of one block's matrix products and attention at ``tokens`` tokens."""
    d, n, m = width, tokens, cond_tokens
    projections = n * (3 + 1 + 1 + 1) * d * d + 2 * m * cond * d  # qkv, out; q, out; kv of the condition
    mlp = n * 8 * d * d
    attention = 2 * n * n * d + 2 * n * m * d  # QK^T and AV, self and cross
    return 2.0 * (projections + mlp + attention)


def flop_floor(ss_steps: int, slat_steps: int, voxels: int, peak_tflops: float) -> list[list[object]]:
    rows: list[list[object]] = []
    total = 0.0
    # Sparse structure: 16^3 tokens (patch 1). SLAT: the 64^3 voxels pooled 2x2x2 (patch 2); a surface one voxel
    # thick puts about 4 voxels in each occupied cell, hence voxels / 4 tokens.
    for (name, spec), steps, tokens in zip(
        FLOW_MODELS.items(), (ss_steps, slat_steps), (16**3, max(1, voxels // 4)), strict=True
    ):
        passes = steps + guided_steps(steps, spec["interval"])
        per_pass = spec["blocks"] * block_flops(tokens, spec["width"], spec["cond"], DINOV2_TOKENS)
        params = spec["blocks"] * block_params(spec["width"], spec["cond"])
        total += passes * per_pass
        rows.append([name, f"{params / 1e6:.0f}M", f"{tokens:,}", DINOV2_TOKENS, f"{steps} + {passes - steps}",
                     f"{per_pass / 1e12:.2f}", f"{passes * per_pass / 1e12:.0f}",
                     f"{passes * per_pass / (peak_tflops * 1e12):.3f}"])  # fmt: skip
    rows.append(["both", "", "", "", "", "", f"{total / 1e12:.0f}", f"{total / (peak_tflops * 1e12):.3f}"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=_parse_steps, default=_parse_steps("60/50,25/25"))
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed generations per prompt and step setting"
    )
    parser.add_argument("--modes", default="stock,optimised", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--prompts", default="text,image", help="text, image or both, comma-separated")
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=1500.0, help="seconds for everything")
    parser.add_argument("--work", type=Path, help="models and logs (default: a temporary folder)")
    parser.add_argument("--voxels", type=int, default=12_500, help="occupied voxels for the SLAT FLOP floor")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense fp16 peak for the floor (H100 SXM)"
    )
    parser.add_argument("--record", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    args = parser.parse_args()
    modes = sorted({m.strip() for m in args.modes.split(",") if m.strip()}, key=lambda m: m != "stock")
    args.prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    if not args.prompts or not set(args.prompts) <= {"text", "image"}:
        parser.error(f"--prompts must be text, image or both; got {args.prompts}")
    unknown = [m for m in modes if m not in MODES]
    if unknown or "stock" not in modes:
        parser.error(f"--modes must include stock and be among {', '.join(MODES)}; got {args.modes}")

    deadline = Deadline(args.deadline)
    print_header(f"TRELLIS speed, stock vs optimised ({args.size} random-weight models on {args.device})")
    with tempfile.TemporaryDirectory(prefix="bench-trellis-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        results: list[dict[str, Any]] = []
        failure = None
        try:
            built = build_models(work, args.size, args.device, deadline, text="text" in args.prompts)
            build_seconds = time.perf_counter() - started
            for mode in modes:
                failure = f"{mode}: "
                results.append(measure_mode(mode, built, args, work, deadline))
            failure = None
        except Exception as exc:  # the deadline, a worker that did not start: say so, keep what was measured
            failure = f"{failure or 'building the models: '}{type(exc).__name__}: {exc}"
    if not results:
        say(f"NOT FINISHED: {failure}")
        return 1

    say(
        f"Models built in {build_seconds:.0f} s (~{built['calibrated_voxels']:,.0f} occupied voxels calibrated). "
        f"{args.repeats} timed repeats per prompt and step setting, after each worker's warm-up "
        f"({args.warmup_steps} steps; compilation happens there); medians below."
    )
    if args.device == "cpu":
        say(
            "**CPU smoke run**: tiny models on the CPU; the ratio shows that both modes run, not what a GPU gains. "
            "No GPU measurement is recorded yet: the command for a GPU host is in docs/gpu.md (Optimised mode)."
        )
    say()
    for result in results:
        say(f"- {result['mode']}: worker ready (load + warm-up) in {result['ready_seconds']:.1f} s; "
            f"optimisations {result['optimisations']}")  # fmt: skip
    say()
    rows, ratio_rows = [], []
    groups = sorted({(r["prompt"], r["ss_steps"], r["slat_steps"]) for r in results[0]["runs"]},
                    key=lambda g: (-g[1], g[0]))  # fmt: skip
    for prompt, ss, slat in groups:
        per_mode = {}
        for result in results:
            runs = [
                r
                for r in result["runs"]
                if (r["prompt"], r["ss_steps"], r["slat_steps"]) == (prompt, ss, slat)
            ]
            per_mode[result["mode"]] = (medians(runs), runs)
            m = per_mode[result["mode"]][0]
            peak = max((r["gpu_peak_bytes"] or 0 for r in runs), default=0) or None
            rows.append([result["mode"], prompt, f"{ss}/{slat}", len(runs),
                         int(statistics.median(r["gaussians"] for r in runs)), m["seconds"],
                         *(m.get(s, float("nan")) for s in STAGES), gib(peak),
                         " ".join(f"{r['seconds']:.2f}" for r in runs)])  # fmt: skip
        base = per_mode["stock"][0]
        for mode, (m, _runs) in per_mode.items():
            if mode == "stock":
                continue
            ratio_rows.append([mode, prompt, f"{ss}/{slat}", f"{base['seconds'] / m['seconds']:.2f}x",
                               *(f"{base[s] / m[s]:.2f}x" if m.get(s) and base.get(s) else "-" for s in STAGES)])  # fmt: skip
    print_table(
        [
            "mode",
            "prompt",
            "ss/slat",
            "repeats",
            "gaussians",
            "total s",
            *STAGES,
            "peak VRAM GiB",
            "each run s",
        ],
        rows,
    )
    say("\nSpeed-up, stock / mode (medians; above 1 is faster):\n")
    print_table(["mode", "prompt", "ss/slat", "total", *STAGES], ratio_rows)
    say(
        f"\nFLOP floor of the two flow models at 60/50 steps (full-size image-large architecture; the transformer "
        f"blocks' matrix products and attention only, so a lower bound; guided steps cost two passes, batched or "
        f"not; SLAT tokens = {args.voxels:,} voxels / 4; time at {args.peak_tflops:g} dense TFLOP/s):\n"
    )
    print_table(
        ["flow model", "block params", "tokens", "cond tokens", "steps + guided", "TFLOP per pass",
         "TFLOP per generation", "floor s"],
        flop_floor(60, 50, args.voxels, args.peak_tflops),
    )  # fmt: skip
    if failure:
        say(f"\nNOT FINISHED: {failure}")
    record_printed(SECTION, args.record and failure is None)
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Install microsoft/TRELLIS (pinned) and what its Gaussian output needs into this project's venv, then verify.
# Run on the GPU host, from anywhere: scripts/install_trellis.sh --help
#   --runtime portable (default): the host's current CUDA build of torch, spconv-triton, SDPA attention; no
#                                 compiler, no compiled extensions (generation/worker/backends/trellis_runtime.py)
#   --runtime reference:          TRELLIS's own recipe (torch 2.4 + CUDA 12.1, xformers, spconv, kaolin, flash-attn)
set -euo pipefail

# main on 2025-08-05 ("Update README.md"); bump deliberately, after a test generation on a GPU.
TRELLIS_COMMIT_DEFAULT="6b0d64751ad54d9c32d7b05fec482eb29178f56f"
TRELLIS_REPO_URL="https://github.com/microsoft/TRELLIS.git"
# TRELLIS's setup.sh picks xformers and kaolin wheels by torch's exact version string: the default index's
# Linux wheels of torch 2.4.0 are CUDA 12.1 builds that report plain "2.4.0", which it knows.
TORCH_VERSION="2.4.0"
TORCHVISION_VERSION="0.19.0"
# setup.sh runs a plain `pip install flash-attn`, which fails without --no-build-isolation; this release
# supports torch 2.4.
FLASH_ATTN_VERSION="2.6.3"
# The portable runtime: torch from PyTorch's CUDA index for the driver (Blackwell needs CUDA 12.8 builds, torch
# >= 2.7); spconv-triton is verified by its authors on torch 2.4-2.13.
PORTABLE_TORCH_SPEC="torch>=2.7,<2.14"
PORTABLE_TORCHVISION_SPEC="torchvision>=0.22,<0.29"
PORTABLE_MIN_TORCH="2.4"
SPCONV_TRITON_VERSION="1.0.0"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO_ROOT}/.venv"
TRELLIS_DIR="${XDG_DATA_HOME:-${HOME}/.local/share}/splatgen/TRELLIS"
TRELLIS_COMMIT="${TRELLIS_COMMIT_DEFAULT}"
INSTALL_TORCH=true
FLASH_ATTN=true
RENDERERS=false
FETCH_MODELS=false
RUNTIME=portable
DRY_RUN=false
CUDA_OVERRIDE=""

usage() {
    cat <<EOF
Usage: scripts/install_trellis.sh [OPTIONS]

Installs TRELLIS at a pinned commit into the project's venv so that SPLATGEN_BACKEND=trellis can start.

--runtime portable (default): a CUDA build of torch (${PORTABLE_TORCH_SPEC}; the venv's own when it
is a CUDA build >= ${PORTABLE_MIN_TORCH}) from PyTorch's index for the driver's CUDA version,
spconv-triton ${SPCONV_TRITON_VERSION}, the splatgen[trellis] extra (transformers, rembg, easydict,
safetensors, ...), a TRELLIS checkout at the pinned commit on the venv's path, then the files
checked against the pin and the SDPA attention and sparse convolution checked on the GPU.
No compiler, no compiled extensions: minutes. Any GPU current PyTorch supports (Turing to Blackwell).

--runtime reference: TRELLIS's own recipe: torch ${TORCH_VERSION} (CUDA 12.1), a checkout with its
submodules, what its setup.sh installs for Gaussian output (--basic --xformers --spconv --kaolin),
flash-attn ${FLASH_ATTN_VERSION}. Ampere to Hopper on a CUDA 12.x driver; nvcc when flash-attn builds.

Needs: an NVIDIA GPU with at least 16 GB (24 GB+ recommended), its driver, git.

Options:
  --runtime NAME        portable (default) or reference
  --dry-run             print what would be installed and checked; change nothing
  --cuda X.Y            the driver's CUDA version for torch's index (default: from nvidia-smi)
  --venv DIR            the venv to install into (default: ${VENV})
  --dir DIR             where to clone TRELLIS (default: ${TRELLIS_DIR})
  --commit SHA          TRELLIS commit to check out (default: ${TRELLIS_COMMIT_DEFAULT})
  --keep-torch          (reference) keep the venv's torch (it must be a CUDA build whose version string
                        TRELLIS's setup.sh knows, e.g. 2.4.0 with CUDA 12.1)
  --no-flash-attn       skip flash-attn (then set SPLATGEN_TRELLIS_ATTN_BACKEND=xformers and
                        SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND=xformers; needed on pre-Ampere GPUs)
  --with-renderers      also install diffoctreerast, mip-splatting and nvdiffrast (TRELLIS's
                        video and mesh renderers; not needed for Gaussian output)
  --fetch-models        pre-fetch the weights for an offline start (see docs/gpu.md)
  -h, --help            show this help

Example:
  scripts/install_trellis.sh && SPLATGEN_BACKEND=trellis .venv/bin/splatgen worker
EOF
}

say() { printf '[install_trellis] %s\n' "$*"; }
fail() {
    printf '[install_trellis] error: %s\n' "$*" >&2
    exit 1
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --venv) VENV="${2:?--venv needs a directory}"; shift 2 ;;
        --dir) TRELLIS_DIR="${2:?--dir needs a directory}"; shift 2 ;;
        --commit) TRELLIS_COMMIT="${2:?--commit needs a sha}"; shift 2 ;;
        --keep-torch) INSTALL_TORCH=false; shift ;;
        --no-flash-attn) FLASH_ATTN=false; shift ;;
        --with-renderers) RENDERERS=true; shift ;;
        --fetch-models) FETCH_MODELS=true; shift ;;
        --runtime) RUNTIME="${2:?--runtime needs portable or reference}"; shift 2 ;;
        --dry-run) DRY_RUN=true; shift ;;
        --cuda) CUDA_OVERRIDE="${2:?--cuda needs a version such as 12.8}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) fail "unknown option: $1 (see --help)" ;;
    esac
done

case "${RUNTIME}" in
    portable | reference) ;;
    *) fail "--runtime must be portable or reference, not ${RUNTIME}" ;;
esac

# run CMD...: runs it, or with --dry-run prints it.
run() {
    if [ "${DRY_RUN}" = true ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

# The driver's CUDA version (nvidia-smi's header), or --cuda.
driver_cuda() {
    if [ -n "${CUDA_OVERRIDE}" ]; then
        printf '%s\n' "${CUDA_OVERRIDE}"
    elif command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
        nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1
    fi
}

# PyTorch's wheel index for a driver CUDA version: the newest CUDA build that driver runs.
torch_index_for() {
    local major minor
    major="${1%%.*}"
    minor="${1#*.}"
    if [ "${major}" -ge 13 ] || { [ "${major}" -eq 12 ] && [ "${minor}" -ge 8 ]; }; then
        echo "https://download.pytorch.org/whl/cu128"
    elif [ "${major}" -eq 12 ] && [ "${minor}" -ge 6 ]; then
        echo "https://download.pytorch.org/whl/cu126"
    elif [ "${major}" -eq 12 ] || { [ "${major}" -eq 11 ] && [ "${minor}" -ge 8 ]; }; then
        echo "https://download.pytorch.org/whl/cu118"
    else
        return 1
    fi
}

# The venv's torch as "VERSION CUDA" (CUDA empty for a CPU build); nothing when torch is missing.
venv_torch() {
    [ -x "${VENV}/bin/python" ] || return 0
    "${VENV}/bin/python" -c 'import torch; print(torch.__version__.split("+")[0], torch.version.cuda or "")' 2>/dev/null || true
}

# version_at_least A B: A >= B, for dotted versions.
version_at_least() {
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

if [ "${RUNTIME}" = portable ]; then
    [ "${DRY_RUN}" = true ] && say "dry run: nothing is installed or changed"
    PYTHON="${VENV}/bin/python"
    if [ "${DRY_RUN}" = false ]; then
        [ -x "${PYTHON}" ] || fail "no Python at ${PYTHON}: create the venv first (python3.11 -m venv .venv)"
        command -v git >/dev/null || fail "git is not installed"
    fi
    CUDA="$(driver_cuda)"
    if [ -z "${CUDA}" ]; then
        [ "${DRY_RUN}" = true ] || fail "nvidia-smi finds no GPU (or no CUDA version): TRELLIS needs an NVIDIA GPU and its driver"
        CUDA="12.8"
        say "check: no GPU visible; assuming a CUDA ${CUDA} driver (set --cuda)"
    else
        say "check: driver CUDA ${CUDA}"
    fi
    INDEX="$(torch_index_for "${CUDA}")" ||
        fail "the driver's CUDA ${CUDA} is older than any current torch build: update the driver (or use --runtime reference)"
    HAVE_TORCH=""
    HAVE_CUDA=""
    read -r HAVE_TORCH HAVE_CUDA <<<"$(venv_torch)" || true
    if [ -n "${HAVE_TORCH}" ] && [ -n "${HAVE_CUDA}" ] && version_at_least "${HAVE_TORCH}" "${PORTABLE_MIN_TORCH}" &&
        version_at_least "${CUDA}" "${HAVE_CUDA}"; then
        say "check: keeping the venv's torch ${HAVE_TORCH} (a CUDA ${HAVE_CUDA} build, >= ${PORTABLE_MIN_TORCH}, which the driver runs)"
    else
        say "check: the venv's torch is ${HAVE_TORCH:-missing}${HAVE_TORCH:+ (${HAVE_CUDA:-a CPU-only} build)}, not a CUDA build >= ${PORTABLE_MIN_TORCH} this CUDA ${CUDA} driver runs: installing one from ${INDEX}"
        run "${PYTHON}" -m pip install "${PORTABLE_TORCH_SPEC}" "${PORTABLE_TORCHVISION_SPEC}" --index-url "${INDEX}"
    fi
    run "${PYTHON}" -m pip install -e "${REPO_ROOT}[trellis]" "spconv-triton==${SPCONV_TRITON_VERSION}" onnxruntime-gpu
    if [ -d "${TRELLIS_DIR}/.git" ]; then
        run git -C "${TRELLIS_DIR}" fetch --quiet origin
    else
        run mkdir -p "$(dirname "${TRELLIS_DIR}")"
        run git clone --quiet "${TRELLIS_REPO_URL}" "${TRELLIS_DIR}"
    fi
    # No submodules: FlexiCubes (the only one) serves mesh output, which the portable runtime leaves out.
    run git -C "${TRELLIS_DIR}" checkout --quiet --detach "${TRELLIS_COMMIT}"
    if [ "${DRY_RUN}" = true ]; then
        say "would add ${TRELLIS_DIR} to the venv's site-packages/splatgen-trellis.pth"
        say "would check: torch is a CUDA build >= ${PORTABLE_MIN_TORCH} that sees the GPU; the TRELLIS files equal ${TRELLIS_COMMIT:0:7}'s (generation/worker/backends/trellis_pinned_files.py); SDPA attention and sparse convolution pass their start-up checks on the GPU"
        say "dry run done"
        exit 0
    fi
    SITE="$("${PYTHON}" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%s\n' "${TRELLIS_DIR}" >"${SITE}/splatgen-trellis.pth"
    say "added ${TRELLIS_DIR} to ${SITE}/splatgen-trellis.pth"
    "${PYTHON}" - <<'PYCHECK' || fail "the portable runtime's checks failed (see above)"
import hashlib
import importlib.util
from pathlib import Path

import torch

from generation.worker.backends.trellis_pinned_files import TRELLIS_FILE_SHA256
from generation.worker.backends.trellis_runtime import import_trellis, prepare, self_check
from generation.settings import WorkerSettings

assert torch.version.cuda, f"torch {torch.__version__} is a CPU-only build"
assert torch.cuda.is_available(), "torch sees no CUDA device"
root = Path(importlib.util.find_spec("trellis").submodule_search_locations[0]).parent
changed = [p for p, h in TRELLIS_FILE_SHA256.items() if hashlib.sha256((root / p).read_bytes()).hexdigest() != h]
assert not changed, f"these TRELLIS files differ from the pinned commit: {changed}"
report = prepare(WorkerSettings(backend="trellis"))
import_trellis(report)
self_check(report, torch, "cuda")
name = torch.cuda.get_device_name(0)
print(f"[install_trellis] torch {torch.__version__} (CUDA {torch.version.cuda}) on {name}: {report.summary()}")
print(f"[install_trellis] checks: {report.checks}")
PYCHECK
    say "done: start the worker with SPLATGEN_BACKEND=trellis ${VENV}/bin/splatgen worker"
    exit 0
fi

if [ "${DRY_RUN}" = true ]; then
    say "dry run (reference): would install torch ${TORCH_VERSION} + torchvision ${TORCHVISION_VERSION}, clone TRELLIS at ${TRELLIS_COMMIT} with submodules, run its setup.sh --basic --xformers --spconv --kaolin, then flash-attn ${FLASH_ATTN_VERSION} (--no-build-isolation)"
    say "would check: nvidia-smi finds a GPU; torch is a CUDA build; torch torchvision spconv xformers kaolin utils3d rembg onnxruntime open3d transformers easydict safetensors huggingface_hub import; trellis.pipelines imports"
    exit 0
fi

PYTHON="${VENV}/bin/python"
[ -x "${PYTHON}" ] || fail "no Python at ${PYTHON}: create the venv first (python3.11 -m venv .venv && .venv/bin/pip install -e '.[trellis]')"
command -v git >/dev/null || fail "git is not installed"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    fail "nvidia-smi finds no GPU: TRELLIS needs an NVIDIA GPU and its driver"
fi
say "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1)"
if [ "${FLASH_ATTN}" = true ] && ! command -v nvcc >/dev/null; then
    say "warning: nvcc is not on PATH; if no prebuilt flash-attn wheel matches, its build fails (use --no-flash-attn)"
fi

# 1. torch: a CUDA build first, so that setup.sh picks the matching xformers, spconv and kaolin wheels.
if [ "${INSTALL_TORCH}" = true ]; then
    say "installing torch ${TORCH_VERSION} and torchvision ${TORCHVISION_VERSION}"
    "${PYTHON}" -m pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
fi
"${PYTHON}" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' ||
    fail "the venv's torch is a CPU-only build: rerun without --keep-torch"

# 2. The TRELLIS checkout, at the pinned commit, with its submodules.
if [ -d "${TRELLIS_DIR}/.git" ]; then
    say "updating the checkout in ${TRELLIS_DIR}"
    git -C "${TRELLIS_DIR}" fetch --quiet origin
else
    say "cloning TRELLIS into ${TRELLIS_DIR}"
    mkdir -p "$(dirname "${TRELLIS_DIR}")"
    git clone --quiet "${TRELLIS_REPO_URL}" "${TRELLIS_DIR}"
fi
git -C "${TRELLIS_DIR}" checkout --quiet --detach "${TRELLIS_COMMIT}"
git -C "${TRELLIS_DIR}" submodule update --quiet --init --recursive
say "TRELLIS at $(git -C "${TRELLIS_DIR}" rev-parse HEAD)"

# 3. TRELLIS's own setup.sh, sourced (as it expects) in a shell whose pip and python are the venv's.
FLAGS=(--basic --xformers --spconv --kaolin)
[ "${RENDERERS}" = true ] && FLAGS+=(--diffoctreerast --mipgaussian --nvdiffrast)
say "running TRELLIS's setup.sh ${FLAGS[*]}"
# setup.sh is not written for errexit or nounset, so it runs in a plain child shell.
# shellcheck disable=SC2016  # $1 and $@ belong to that child shell
env VIRTUAL_ENV="${VENV}" PATH="${VENV}/bin:${PATH}" bash -c 'cd "$1" && shift && . ./setup.sh "$@"' \
    setup "${TRELLIS_DIR}" "${FLAGS[@]}"
if [ "${FLASH_ATTN}" = true ]; then
    say "installing flash-attn ${FLASH_ATTN_VERSION} (a prebuilt wheel when one matches, else a long nvcc build)"
    "${PYTHON}" -m pip install ninja packaging wheel setuptools
    "${PYTHON}" -m pip install "flash-attn==${FLASH_ATTN_VERSION}" --no-build-isolation
fi

# 4. TRELLIS is not a pip package: a .pth file puts the checkout on the venv's path.
SITE="$("${PYTHON}" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n' "${TRELLIS_DIR}" >"${SITE}/splatgen-trellis.pth"
say "added ${TRELLIS_DIR} to ${SITE}/splatgen-trellis.pth"

# 5. Verify: every module the Gaussian path imports, then trellis itself, with the attention backend chosen.
ATTN="flash_attn"
[ "${FLASH_ATTN}" = true ] || ATTN="xformers"
MODULES=(torch torchvision spconv xformers kaolin utils3d rembg onnxruntime open3d transformers easydict safetensors huggingface_hub)
[ "${FLASH_ATTN}" = true ] && MODULES+=(flash_attn)
MISSING="$("${PYTHON}" - "${MODULES[@]}" <<'EOF'
import importlib, sys
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
print("; ".join(missing))
EOF
)"
[ -z "${MISSING}" ] || fail "setup.sh left these modules unimportable: ${MISSING}"
ATTN_BACKEND="${ATTN}" SPARSE_ATTN_BACKEND="${ATTN}" "${PYTHON}" - <<'EOF' || fail "trellis does not import or CUDA is unusable (see above)"
import torch
import trellis.pipelines  # noqa: F401

assert torch.cuda.is_available(), "torch sees no CUDA device"
name = torch.cuda.get_device_name(0)
total = torch.cuda.get_device_properties(0).total_memory / 1024**3
print(f"[install_trellis] trellis imports; torch {torch.__version__} (CUDA {torch.version.cuda}) on {name}, {total:.0f} GiB")
if total < 16:
    print("[install_trellis] warning: TRELLIS needs at least 16 GiB of GPU memory")
EOF

# 6. Optional: weights into the caches an offline start reads (docs/gpu.md, "Offline start").
if [ "${FETCH_MODELS}" = true ]; then
    say "pre-fetching weights (Hugging Face cache, torch hub cache, rembg's u2net)"
    "${PYTHON}" - <<'EOF' || fail "pre-fetching weights failed (see above)"
import json
import os
from pathlib import Path

import rembg
import torch
from huggingface_hub import snapshot_download

dinov2 = set()
for setting, default in (
    ("SPLATGEN_TRELLIS_IMAGE_MODEL", "microsoft/TRELLIS-image-large"),
    ("SPLATGEN_TRELLIS_TEXT_MODEL", "microsoft/TRELLIS-text-xlarge"),
):
    repo = os.environ.get(setting, default).strip()
    if repo.lower() in ("", "none"):
        continue
    folder = Path(repo) if Path(repo, "pipeline.json").is_file() else Path(snapshot_download(repo))
    print(f"[install_trellis] {repo} -> {folder}")
    args = json.loads((folder / "pipeline.json").read_text())["args"]
    for ref in args["models"].values():
        parts = ref.split("/")
        if len(parts) >= 3 and not (folder / f"{ref}.safetensors").is_file():
            # Checkpoints borrowed from another repo (the text models use the image model's decoders).
            name = "/".join(parts[2:])
            snapshot_download("/".join(parts[:2]), allow_patterns=[f"{name}.json", f"{name}.safetensors"])
    if "text_cond_model" in args:
        snapshot_download(args["text_cond_model"], allow_patterns=["*.json", "*.txt", "*.safetensors"])
    if "image_cond_model" in args:
        dinov2.add(args["image_cond_model"])
for name in sorted(dinov2):
    torch.hub.load("facebookresearch/dinov2", name, pretrained=True)
if dinov2:
    rembg.new_session("u2net")  # image prompts without alpha go through rembg's u2net
print("[install_trellis] weights cached; start with HF_HUB_OFFLINE=1 to stay offline")
EOF
fi

if [ "${FLASH_ATTN}" = false ]; then
    say "set SPLATGEN_TRELLIS_ATTN_BACKEND=xformers and SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND=xformers for the worker"
fi
say "done: start the worker with SPLATGEN_BACKEND=trellis ${VENV}/bin/splatgen worker"

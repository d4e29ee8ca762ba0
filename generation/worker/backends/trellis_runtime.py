"""The portable TRELLIS runtime: what TRELLIS reads at import, chosen and checked before ``import trellis``.

TRELLIS picks its sparse convolution, sparse attention and dense attention from environment variables when its
modules are first imported, and imports several modules that Gaussian output never calls. ``prepare()`` makes
every one of those choices from settings and from what is installed, registers the modules TRELLIS will import
under the names it imports them by, and returns a ``RuntimeReport``; ``self_check()`` then runs each chosen
component once on the device on a tiny known case (attention against a naive softmax, convolution against a
dense ``conv3d``) so a broken kernel is one clear line at start-up, not a failed first generation.

Choices (settings in brackets):
- sparse convolution [SPLATGEN_TRELLIS_SPARSE_CONV=auto|spconv|spconv-triton]: an installed ``spconv`` (2.x),
  else ``spconv-triton`` (pure Python + Triton, any CUDA GPU torch supports) registered as ``spconv``;
- sparse attention [SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND=auto|flash_attn|xformers|sdpa]: flash-attn or xformers
  when installed, else ``sdpa`` (``trellis_sdpa``, registered as ``flash_attn``);
- dense attention [SPLATGEN_TRELLIS_ATTN_BACKEND]: TRELLIS's own ``sdpa`` by default;
- mesh-only modules: placeholders where missing (``trellis_placeholders``).

Long because each choice, its registration under TRELLIS's import names, its on-device check and its
one-line failure message belong together: splitting them would separate a choice from its check.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from generation.settings import WorkerSettings
from generation.worker.backends.trellis_placeholders import install_placeholders

SPARSE_CONV_CHOICES = ("auto", "spconv", "spconv_triton")
SPARSE_ATTN_CHOICES = ("auto", "flash_attn", "xformers", "sdpa")
DENSE_ATTN_CHOICES = ("auto", "flash_attn", "xformers", "sdpa", "naive")
SPCONV_ALGOS = ("auto", "implicit_gemm", "native")
DEVICES = ("cuda", "cpu")

# Tolerances of the start-up checks: fp16 kernels on the GPU, fp32 on the CPU.
ATTENTION_TOLERANCE = {"float16": 1e-2, "float32": 1e-4}
CONV_TOLERANCE = {"float16": 2e-2, "float32": 1e-4}


class RuntimeProblem(Exception):
    """A runtime choice that cannot work; ``str()`` is one line naming the component and its setting."""


@dataclass
class RuntimeReport:
    """What ``prepare()`` chose and ``self_check()`` verified; reported by describe(), /health and the log."""

    sparse_conv: str = ""
    sparse_conv_version: str = ""
    sparse_attention: str = ""
    dense_attention: str = ""
    spconv_algo: str = ""
    device: str = "cuda"
    placeholders: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        placeholders = ", ".join(self.placeholders) or "none"
        return (
            f"sparse conv {self.sparse_conv} {self.sparse_conv_version} (algo {self.spconv_algo}), "
            f"sparse attention {self.sparse_attention}, dense attention {self.dense_attention}, "
            f"device {self.device}, placeholders: {placeholders}"
        )


def _normal(value: str) -> str:
    return value.strip().lower().replace("-", "_")


def _installed(name: str) -> bool:
    module = sys.modules.get(name)
    if module is not None:
        return not getattr(module, "SPLATGEN_SDPA", False)
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def setting_problems(settings: WorkerSettings) -> list[str]:
    """Values TRELLIS would silently ignore, refused here instead (checked without importing anything)."""
    problems: list[str] = []
    for setting, value, allowed in (
        ("SPLATGEN_TRELLIS_SPARSE_CONV", settings.trellis_sparse_conv, SPARSE_CONV_CHOICES),
        ("SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND", settings.trellis_sparse_attn_backend, SPARSE_ATTN_CHOICES),
        ("SPLATGEN_TRELLIS_ATTN_BACKEND", settings.trellis_attn_backend, DENSE_ATTN_CHOICES),
        ("SPLATGEN_TRELLIS_SPCONV_ALGO", settings.trellis_spconv_algo, SPCONV_ALGOS),
        ("SPLATGEN_TRELLIS_DEVICE", settings.trellis_device, DEVICES),
    ):
        if _normal(value) not in allowed:
            problems.append(f"{setting}={value!r} is not one of {', '.join(allowed)}")
    return problems


def choose(settings: WorkerSettings) -> RuntimeReport:
    """Resolve ``auto`` against what is installed; raises ``RuntimeProblem`` for a choice that is missing."""
    problems = setting_problems(settings)
    if problems:
        raise RuntimeProblem("; ".join(problems))
    report = RuntimeReport(
        device=_normal(settings.trellis_device), spconv_algo=_normal(settings.trellis_spconv_algo)
    )

    conv = _normal(settings.trellis_sparse_conv)
    if conv == "auto":
        conv = "spconv" if _installed("spconv") else "spconv_triton"
    if not _installed(conv):
        raise RuntimeProblem(
            f"sparse convolution: {conv.replace('_', '-')} is not installed (SPLATGEN_TRELLIS_SPARSE_CONV="
            f"{settings.trellis_sparse_conv}): run scripts/install_trellis.sh --runtime portable"
        )
    report.sparse_conv = conv.replace("_", "-")
    report.sparse_conv_version = _version(report.sparse_conv)

    attn = _normal(settings.trellis_sparse_attn_backend)
    if attn == "auto":
        attn = next((name for name in ("flash_attn", "xformers") if _installed(name)), "sdpa")
    elif attn in ("flash_attn", "xformers") and not _installed(attn):
        raise RuntimeProblem(
            f"sparse attention: {attn} is not installed (SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND="
            f"{settings.trellis_sparse_attn_backend}): install it or set SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND=sdpa"
        )
    report.sparse_attention = attn

    dense = _normal(settings.trellis_attn_backend)
    if dense == "auto":
        dense = "sdpa"
    elif (
        dense in ("flash_attn", "xformers")
        and not _installed(dense)
        and (dense, attn) != ("flash_attn", "sdpa")
    ):
        # (dense flash_attn beside sdpa sparse attention: TRELLIS's dense module binds the SDPA version too)
        raise RuntimeProblem(
            f"dense attention: {dense} is not installed (SPLATGEN_TRELLIS_ATTN_BACKEND="
            f"{settings.trellis_attn_backend}): install it or set SPLATGEN_TRELLIS_ATTN_BACKEND=sdpa"
        )
    report.dense_attention = dense
    return report


def prepare(settings: WorkerSettings) -> RuntimeReport:
    """Make every import-time choice and register the modules TRELLIS imports; call before ``import trellis``."""
    report = choose(settings)
    if report.sparse_conv == "spconv-triton" and not _installed("spconv"):
        import spconv_triton
        import spconv_triton.pytorch

        # TRELLIS imports `spconv.pytorch`; spconv-triton is its drop-in under another name.
        sys.modules["spconv"] = spconv_triton
        sys.modules["spconv.pytorch"] = spconv_triton.pytorch
    report.environment = {
        "ATTN_BACKEND": report.dense_attention,
        "SPARSE_ATTN_BACKEND": "flash_attn" if report.sparse_attention == "sdpa" else report.sparse_attention,
        "SPARSE_BACKEND": "spconv",
        "SPCONV_ALGO": report.spconv_algo,
    }
    os.environ.update(report.environment)
    report.placeholders = install_placeholders()
    return report


# Imported before the SDPA module briefly takes flash_attn's name: they probe for flash-attn at import.
_FLASH_ATTN_PROBES = ("transformers.models.clip.modeling_clip", "transformers.models.auto.tokenization_auto")
TRELLIS_ATTENTION_MODULES = (
    "trellis.modules.attention.full_attn",
    "trellis.modules.sparse.attention.full_attn",
    "trellis.modules.sparse.attention.windowed_attn",
    "trellis.modules.sparse.attention.serialized_attn",
)


def import_trellis(report: RuntimeReport) -> Any:
    """Import ``trellis.pipelines`` with the choices ``prepare()`` made; returns the module.

    With the ``sdpa`` sparse attention, TRELLIS's attention modules bind the SDPA version under the name
    ``flash_attn`` while they import; it is removed from ``sys.modules`` again afterwards, so nothing else
    (transformers probes for flash-attn) ever mistakes it for the real package.
    """
    if (
        report.sparse_attention.startswith("sdpa")
        and "trellis.modules.sparse.attention.full_attn" not in sys.modules
    ):
        from generation.worker.backends.trellis_sdpa import as_flash_attn_module

        for name in _FLASH_ATTN_PROBES:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        previous = sys.modules.get("flash_attn")
        sys.modules["flash_attn"] = as_flash_attn_module()
        try:
            pipelines = importlib.import_module("trellis.pipelines")
            for name in TRELLIS_ATTENTION_MODULES:
                importlib.import_module(name)
        finally:
            if previous is None:
                sys.modules.pop("flash_attn", None)
            else:
                sys.modules["flash_attn"] = previous
        return pipelines
    return importlib.import_module("trellis.pipelines")


def sparse_attention_module(report: RuntimeReport) -> Any:
    """The ``flash_attn`` module TRELLIS's sparse attention calls: the one it bound at import, once imported."""
    full_attn = sys.modules.get("trellis.modules.sparse.attention.full_attn")
    if full_attn is not None and hasattr(full_attn, "flash_attn"):
        return full_attn.flash_attn
    if report.sparse_attention.startswith("sdpa"):
        from generation.worker.backends.trellis_sdpa import as_flash_attn_module

        return as_flash_attn_module()
    return importlib.import_module("flash_attn")


# -- start-up checks -----------------------------------------------------------------------------------------


def self_check(report: RuntimeReport, torch: Any, device: str) -> None:
    """Run each chosen component once on ``device``; raises ``RuntimeProblem`` naming component and setting."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with torch.inference_mode():
        report.checks["sparse_attention"] = _check_attention(report, torch, device, dtype)
        report.checks["sparse_conv"] = _check_conv(report, torch, device, dtype)


def _check_attention(report: RuntimeReport, torch: Any, device: str, dtype: Any) -> str:
    from generation.worker.backends.trellis_sdpa import VARLEN_MODES, naive_varlen_attention, set_varlen_mode

    generator = torch.Generator().manual_seed(0)
    lengths = [3, 9, 1, 17]
    cu = [0]
    for length in lengths:
        cu.append(cu[-1] + length)
    heads, channels = 2, 16
    q, k, v = (torch.randn(cu[-1], heads, channels, generator=generator) for _ in range(3))
    expected = naive_varlen_attention(q, k, v, cu, cu)
    cu_tensor = torch.tensor(cu, dtype=torch.int32, device=device)
    tolerance = ATTENTION_TOLERANCE[str(dtype).removeprefix("torch.")]
    if report.sparse_attention.startswith("sdpa"):
        errors: list[str] = []
        for mode in VARLEN_MODES:  # nested first: on CUDA it reaches the flash / cuDNN kernels
            set_varlen_mode(mode)
            try:
                error = _attention_error(
                    report, torch, q, k, v, cu_tensor, max(lengths), expected, device, dtype
                )
            except Exception as exc:
                errors.append(f"{mode}: {type(exc).__name__}: {exc}")
                continue
            if error <= tolerance:
                report.sparse_attention = f"sdpa ({mode})"
                return f"ok: max error {error:.1e} vs naive softmax ({mode}, {_dtype_name(dtype)})"
            errors.append(f"{mode}: max error {error:.1e} > {tolerance}")
        set_varlen_mode("padded")
        raise RuntimeProblem(
            "sparse attention (sdpa) failed its start-up check ("
            + "; ".join(errors)
            + "): set SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND to flash_attn or xformers"
        )
    try:
        error = _attention_error(report, torch, q, k, v, cu_tensor, max(lengths), expected, device, dtype)
    except Exception as exc:
        raise RuntimeProblem(
            f"sparse attention ({report.sparse_attention}) failed its start-up check ({type(exc).__name__}: "
            f"{exc}): set SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND=sdpa"
        ) from None
    if error > tolerance:
        raise RuntimeProblem(
            f"sparse attention ({report.sparse_attention}) differs from a naive softmax by {error:.1e}: "
            "set SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND=sdpa"
        )
    return f"ok: max error {error:.1e} vs naive softmax ({_dtype_name(dtype)})"


def _attention_error(
    report: RuntimeReport,
    torch: Any,
    q: Any,
    k: Any,
    v: Any,
    cu: Any,
    max_len: int,
    expected: Any,
    device: str,
    dtype: Any,
) -> float:
    # The module TRELLIS will import under `flash_attn` (or xformers), called the way TRELLIS calls it.
    qkv = torch.stack([q, k, v], dim=1).to(device=device, dtype=dtype)
    if report.sparse_attention == "xformers":
        import xformers.ops as xops

        lengths = (cu[1:] - cu[:-1]).tolist()
        mask = xops.fmha.BlockDiagonalMask.from_seqlens(lengths, lengths)
        qx, kx, vx = (t.unsqueeze(0) for t in qkv.unbind(dim=1))
        out = xops.memory_efficient_attention(qx, kx, vx, mask)[0]
    else:
        out = sparse_attention_module(report).flash_attn_varlen_qkvpacked_func(qkv, cu, max_len)
    return float((out.double().cpu() - expected).abs().max())


def _check_conv(report: RuntimeReport, torch: Any, device: str, dtype: Any) -> str:
    setting = "SPLATGEN_TRELLIS_SPARSE_CONV"
    try:
        error = _conv_error(report, torch, device, dtype)
    except Exception as exc:
        raise RuntimeProblem(
            f"sparse convolution ({report.sparse_conv} {report.sparse_conv_version}, algo {report.spconv_algo}) "
            f"failed its start-up check ({type(exc).__name__}: {exc}): set {setting} (auto, spconv, "
            "spconv-triton) or SPLATGEN_TRELLIS_SPCONV_ALGO"
        ) from None
    tolerance = CONV_TOLERANCE[_dtype_name(dtype)]
    if error > tolerance:
        raise RuntimeProblem(
            f"sparse convolution ({report.sparse_conv}) differs from a dense conv3d by {error:.1e}: set {setting}"
        )
    return f"ok: max error {error:.1e} vs dense conv3d ({_dtype_name(dtype)})"


def _conv_error(report: RuntimeReport, torch: Any, device: str, dtype: Any) -> float:
    """A submanifold 3x3x3 convolution, as TRELLIS builds it, against a dense conv3d at the active sites."""
    spconv = importlib.import_module("spconv.pytorch")
    algo = {"native": spconv.ConvAlgo.Native, "implicit_gemm": spconv.ConvAlgo.MaskImplicitGemm}.get(
        report.spconv_algo
    )
    generator = torch.Generator().manual_seed(0)
    size, channels = 8, 16
    sites = torch.randperm(size**3, generator=generator)[:60]
    coords = torch.stack([sites // (size * size), (sites // size) % size, sites % size], dim=1)
    feats = torch.randn(len(sites), channels, generator=generator)
    conv = spconv.SubMConv3d(
        channels, channels, 3, bias=True, algo=algo
    ).eval()  # TRELLIS runs it in eval mode
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.1)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
    indices = torch.cat([torch.zeros(len(sites), 1, dtype=torch.long), coords], dim=1).int()
    tensor = spconv.SparseConvTensor(feats.to(device=device, dtype=dtype), indices.to(device), [size] * 3, 1)
    scope = cuda_calls_on_cpu(torch) if device == "cpu" else contextlib.nullcontext()
    with scope:
        out = conv.to(device=device, dtype=dtype)(tensor)
    dense = torch.zeros(1, channels, size, size, size, dtype=torch.float64)
    dense[0, :, coords[:, 0], coords[:, 1], coords[:, 2]] = feats.double().T
    # spconv keeps weights as [out, kz, ky, kx, in]; conv3d wants [out, in, kz, ky, kx].
    weight = conv.weight.detach().double().cpu().permute(0, 4, 1, 2, 3)
    bias = conv.bias.detach().double().cpu()
    reference = torch.nn.functional.conv3d(dense, weight, bias, padding=1)[0]
    got = out.indices.long().cpu()
    expected = reference[:, got[:, 1], got[:, 2], got[:, 3]].T
    if len(got) != len(sites):
        raise RuntimeError(
            f"{len(got)} output sites for {len(sites)} input sites (submanifold must keep them)"
        )
    return float((out.features.double().cpu() - expected).abs().max())


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


# -- hard-coded CUDA -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def cuda_calls_on_cpu(torch: Any) -> Iterator[None]:
    """Run TRELLIS on the CPU while inside: for tests and debugging (SPLATGEN_TRELLIS_DEVICE=cpu), never serving.

    Maps TRELLIS's hard-coded CUDA (``.cuda()`` on tensors and modules, ``Gaussian(device='cuda')``) to the CPU,
    and runs spconv's CPU build the way it works there: biases added after the convolution (its CPU kernels refuse
    the fused bias inference mode asks for) and in fp32 (its fp16 CPU kernels differ between identical runs, by up
    to 0.5 measured, so the same seed would not give the same splat). It patches these for the whole process while
    it is active.
    """
    tensor_cuda, module_cuda = torch.Tensor.cuda, torch.nn.Module.cuda
    gaussian = sys.modules.get("trellis.representations.gaussian.gaussian_model")
    gaussian_defaults = gaussian.Gaussian.__init__.__defaults__ if gaussian is not None else None
    spconv_conv = sys.modules.get("spconv.pytorch.conv")
    convolution = getattr(spconv_conv, "SparseConvolution", None)
    # spconv-triton registered as spconv has no such restriction (its module is spconv_triton.pytorch.conv)
    conv_forward = convolution.forward if convolution is not None else None

    def to_cpu(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self.to("cpu")

    def forward_on_cpu(self: Any, input: Any, add_input: Any = None) -> Any:
        if input.features.is_cuda:
            return conv_forward(self, input, add_input)
        dtype = input.features.dtype
        out = self._conv_forward(
            True,  # bias added separately, as spconv's CPU kernels require
            input.replace_feature(input.features.float()),
            self.weight.float(),
            None if self.bias is None else self.bias.float(),
            add_input,
            name=self.name,
            sparse_unique_name=self._sparse_unique_name,
            act_type=self.act_type,
            act_alpha=self.act_alpha,
            act_beta=self.act_beta,
        )
        return out.replace_feature(out.features.to(dtype))

    torch.Tensor.cuda = to_cpu
    torch.nn.Module.cuda = to_cpu
    if gaussian is not None and gaussian_defaults is not None:
        gaussian.Gaussian.__init__.__defaults__ = (*gaussian_defaults[:-1], "cpu")
    if convolution is not None:
        convolution.forward = forward_on_cpu
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = tensor_cuda, module_cuda
        if gaussian is not None and gaussian_defaults is not None:
            gaussian.Gaussian.__init__.__defaults__ = gaussian_defaults
        if convolution is not None:
            convolution.forward = conv_forward

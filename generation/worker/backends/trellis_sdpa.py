"""flash-attn's attention calls, computed with PyTorch's ``scaled_dot_product_attention``.

TRELLIS's sparse modules accept only ``flash_attn`` or ``xformers``; both are compiled extensions tied to one
torch and CUDA build. ``as_flash_attn_module()`` returns a module with the six functions TRELLIS calls
(``flash_attn_func``, ``..._qkvpacked_func``, ``..._kvpacked_func`` and their ``_varlen_`` forms), which the
runtime registers under the name ``flash_attn`` when the sparse attention backend is ``sdpa``. Only what
TRELLIS uses is supported: no dropout, causal masks, windows, softcap or ALiBi; any of those is refused.

Variable-length batches (int32 ``cu_seqlens`` offsets into a packed ``[T, H, C]`` tensor) run as jagged nested
tensors, which dispatch to the flash / cuDNN kernels on CUDA; where nested SDPA is unavailable (older torch, some
CPU builds) they run padded to the longest sequence with a key mask.
"""

from __future__ import annotations

import types
from typing import Any, Literal

import torch
import torch.nn.functional as F

VarlenMode = Literal["nested", "padded"]
VARLEN_MODES: tuple[VarlenMode, ...] = ("nested", "padded")

# Set by the runtime's start-up check (``choose_varlen_mode``); padded always works.
_varlen_mode: VarlenMode = "padded"


def varlen_mode() -> VarlenMode:
    return _varlen_mode


def set_varlen_mode(mode: VarlenMode) -> None:
    global _varlen_mode
    if mode not in VARLEN_MODES:
        raise ValueError(f"varlen mode must be one of {VARLEN_MODES}, got {mode!r}")
    _varlen_mode = mode


def _refuse_unsupported(dropout_p: float, causal: bool, kwargs: dict[str, Any]) -> None:
    if dropout_p:
        raise NotImplementedError("the sdpa attention backend does not implement dropout (inference only)")
    if causal:
        raise NotImplementedError("the sdpa attention backend does not implement causal attention")
    window = kwargs.pop("window_size", (-1, -1))
    if tuple(window) != (-1, -1):
        raise NotImplementedError("the sdpa attention backend does not implement windowed attention")
    for name in ("softcap", "alibi_slopes"):
        value = kwargs.pop(name, None)
        if value not in (None, 0, 0.0):
            raise NotImplementedError(f"the sdpa attention backend does not implement {name}")
    kwargs.pop("deterministic", None)
    kwargs.pop("return_attn_probs", None)
    if kwargs:
        raise TypeError(f"unexpected arguments for the sdpa attention backend: {sorted(kwargs)}")


# -- fixed-length batches: [B, L, H, C] ---------------------------------------------------------------------


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """``[B, Lq, H, C]`` x ``[B, Lk, H, C]`` -> ``[B, Lq, H, Cv]``."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    _refuse_unsupported(dropout_p, causal, kwargs)
    return dense_attention(q, k, v, softmax_scale)


def flash_attn_qkvpacked_func(
    qkv: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    _refuse_unsupported(dropout_p, causal, kwargs)
    q, k, v = qkv.unbind(dim=2)
    return dense_attention(q, k, v, softmax_scale)


def flash_attn_kvpacked_func(
    q: torch.Tensor,
    kv: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    _refuse_unsupported(dropout_p, causal, kwargs)
    k, v = kv.unbind(dim=2)
    return dense_attention(q, k, v, softmax_scale)


# -- variable-length batches: packed [T, H, C] with cumulative offsets ---------------------------------------


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float | None = None,
    mode: VarlenMode | None = None,
) -> torch.Tensor:
    """Attention of each query sequence over its own key sequence; ``[Tq, H, C]`` -> ``[Tq, H, Cv]``."""
    if (mode or _varlen_mode) == "nested":
        return _nested(q, k, v, cu_seqlens_q, cu_seqlens_k, scale)
    return _padded(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)


def _nested(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    scale: float | None,
) -> torch.Tensor:
    def jagged(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        # Nested SDPA needs contiguous values; unbind() of a packed qkv gives strided views.
        nested = torch.nested.nested_tensor_from_jagged(values.contiguous(), offsets=offsets.long())
        return nested.transpose(1, 2)  # [B, H, j, C]

    out = F.scaled_dot_product_attention(jagged(q, cu_q), jagged(k, cu_k), jagged(v, cu_k), scale=scale)
    return out.transpose(1, 2).values()


def _padded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    scale: float | None,
) -> torch.Tensor:
    batch = cu_q.numel() - 1
    q_rows, q_pos = _positions(cu_q, q.shape[0])
    k_rows, k_pos = _positions(cu_k, k.shape[0])

    def pad(values: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
        padded = values.new_zeros((batch, length, *values.shape[1:]))
        padded[rows, pos] = values
        return padded.transpose(1, 2)  # [B, H, L, C]

    key_mask = torch.zeros((batch, max_k), dtype=torch.bool, device=q.device)
    key_mask[k_rows, k_pos] = True
    out = F.scaled_dot_product_attention(
        pad(q, q_rows, q_pos, max_q),
        pad(k, k_rows, k_pos, max_k),
        pad(v, k_rows, k_pos, max_k),
        attn_mask=key_mask[:, None, None, :],
        scale=scale,
    )
    return out.transpose(1, 2)[q_rows, q_pos]


def _positions(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each packed row: its sequence and its position within that sequence."""
    offsets = cu_seqlens.long()
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=offsets.device), lengths, output_size=total
    )
    return rows, torch.arange(total, device=offsets.device) - offsets[rows]


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    _refuse_unsupported(dropout_p, causal, kwargs)
    return varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)


def flash_attn_varlen_qkvpacked_func(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    _refuse_unsupported(dropout_p, causal, kwargs)
    q, k, v = qkv.unbind(dim=1)
    return varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale)


def flash_attn_varlen_kvpacked_func(
    q: torch.Tensor,
    kv: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    _refuse_unsupported(dropout_p, causal, kwargs)
    k, v = kv.unbind(dim=1)
    return varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)


FLASH_ATTN_FUNCTIONS = (
    flash_attn_func,
    flash_attn_qkvpacked_func,
    flash_attn_kvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_varlen_kvpacked_func,
)


def as_flash_attn_module() -> types.ModuleType:
    """A module exposing flash-attn's call signatures, for ``sys.modules['flash_attn']``."""
    module = types.ModuleType(
        "flash_attn", "flash-attn's calls computed with torch SDPA (splatgen's sdpa backend)"
    )
    for function in FLASH_ATTN_FUNCTIONS:
        setattr(module, function.__name__, function)
    module.__version__ = f"sdpa (torch {torch.__version__})"
    module.SPLATGEN_SDPA = True
    return module


def naive_varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: list[int], cu_k: list[int]
) -> torch.Tensor:
    """The reference: an explicit softmax per sequence, in float64."""
    outputs = []
    for i in range(len(cu_q) - 1):
        qi = q[cu_q[i] : cu_q[i + 1]].double().transpose(0, 1)  # [H, Lq, C]
        ki = k[cu_k[i] : cu_k[i + 1]].double().transpose(0, 1)
        vi = v[cu_k[i] : cu_k[i + 1]].double().transpose(0, 1)
        weights = torch.softmax(qi @ ki.transpose(1, 2) / qi.shape[-1] ** 0.5, dim=-1)
        outputs.append((weights @ vi).transpose(0, 1))
    return torch.cat(outputs)

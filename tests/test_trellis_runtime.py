"""The portable runtime's pieces on the CPU: SDPA attention against a naive softmax, the sparse convolution against
a dense conv3d, the choices it makes from what is installed, placeholders, and TRELLIS's files against the pin."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest

from generation.settings import WorkerSettings
from generation.worker.backends.trellis_pinned_files import TRELLIS_COMMIT, TRELLIS_FILE_SHA256
from generation.worker.backends.trellis_placeholders import MESSAGE, MeshOnlyError, install_placeholders
from generation.worker.backends.trellis_runtime import (
    RuntimeProblem,
    RuntimeReport,
    choose,
    self_check,
)

torch = pytest.importorskip("torch")
sdpa = pytest.importorskip("generation.worker.backends.trellis_sdpa")

REPO = Path(__file__).resolve().parents[1]


def settings(**values: Any) -> WorkerSettings:
    return WorkerSettings(**{"backend": "trellis", "trellis_device": "cpu", **values})


def packed(lengths: list[int], heads: int = 2, channels: int = 16, seed: int = 0) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(seed)
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    q, k, v = (torch.randn(offsets[-1], heads, channels, generator=generator) for _ in range(3))
    return q, k, v, offsets, torch.tensor(offsets, dtype=torch.int32)


# -- attention ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sdpa.VARLEN_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_varlen_attention_matches_a_naive_softmax(mode: str, dtype: Any) -> None:
    lengths = [5, 1, 33, 12]
    q, k, v, offsets, cu = packed(lengths)
    expected = sdpa.naive_varlen_attention(q, k, v, offsets, offsets)
    out = sdpa.varlen_attention(q.to(dtype), k.to(dtype), v.to(dtype), cu, cu, 33, 33, mode=mode)
    assert out.shape == q.shape and out.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 5e-3
    assert float((out.double() - expected).abs().max()) < tolerance


def test_every_flash_attn_call_trellis_makes_matches_the_reference() -> None:
    q, k, v, offsets, cu = packed([7, 20])
    _, kk, kv, koffsets, kcu = packed([3, 11], seed=1)
    module = sdpa.as_flash_attn_module()
    # varlen: packed qkv (self-attention), q + packed kv, separate q, k, v (cross-attention, own key lengths)
    expected_self = sdpa.naive_varlen_attention(q, k, v, offsets, offsets)
    qkv = torch.stack([q, k, v], dim=1)
    got = module.flash_attn_varlen_qkvpacked_func(qkv, cu, 20)
    assert float((got.double() - expected_self).abs().max()) < 1e-5
    expected_cross = sdpa.naive_varlen_attention(q, kk, kv, offsets, koffsets)
    got = module.flash_attn_varlen_kvpacked_func(q, torch.stack([kk, kv], dim=1), cu, kcu, 20, 11)
    assert float((got.double() - expected_cross).abs().max()) < 1e-5
    got = module.flash_attn_varlen_func(q, kk, kv, cu, kcu, 20, 11)
    assert float((got.double() - expected_cross).abs().max()) < 1e-5
    # fixed length: [B, L, H, C]
    batch = q[:14].reshape(2, 7, 2, 16)
    expected = torch.cat([sdpa.naive_varlen_attention(b, b, b, [0, 7], [0, 7]) for b in batch]).reshape(
        2, 7, 2, 16
    )
    for got in (
        module.flash_attn_func(batch, batch, batch),
        module.flash_attn_qkvpacked_func(torch.stack([batch] * 3, dim=2)),
        module.flash_attn_kvpacked_func(batch, torch.stack([batch] * 2, dim=2)),
    ):
        assert float((got.double() - expected).abs().max()) < 1e-5


def test_what_trellis_never_asks_for_is_refused() -> None:
    q, k, v, _, cu = packed([4])
    qkv = torch.stack([q, k, v], dim=1)
    with pytest.raises(NotImplementedError, match="causal"):
        sdpa.flash_attn_varlen_qkvpacked_func(qkv, cu, 4, causal=True)
    with pytest.raises(NotImplementedError, match="dropout"):
        sdpa.flash_attn_varlen_qkvpacked_func(qkv, cu, 4, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match="windowed"):
        sdpa.flash_attn_varlen_qkvpacked_func(qkv, cu, 4, window_size=(8, 8))


# -- choices and start-up checks -------------------------------------------------------------------------------


def test_auto_takes_what_is_installed() -> None:
    report = choose(settings())
    assert report.sparse_conv == "spconv"  # the CPU build the tests install
    assert report.sparse_attention == "sdpa"  # neither flash-attn nor xformers here
    assert report.dense_attention == "sdpa"
    report = choose(settings(trellis_sparse_conv="spconv-triton"))
    assert report.sparse_conv == "spconv-triton" and report.sparse_conv_version == "1.0.0"


def test_a_missing_choice_names_its_setting() -> None:
    with pytest.raises(RuntimeProblem) as caught:
        choose(settings(trellis_sparse_attn_backend="xformers"))
    assert "sparse attention: xformers is not installed" in str(caught.value)
    assert "SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND=sdpa" in str(caught.value)
    with pytest.raises(RuntimeProblem, match="SPLATGEN_TRELLIS_DEVICE='tpu'"):
        choose(settings(trellis_device="tpu"))


def test_start_up_checks_pass_on_the_cpu_and_say_how_close() -> None:
    report = choose(settings())
    self_check(report, torch, "cpu")
    assert report.sparse_attention.startswith("sdpa (")
    assert report.checks["sparse_attention"].startswith("ok: max error")
    assert "vs naive softmax" in report.checks["sparse_attention"]
    assert report.checks["sparse_conv"].startswith("ok: max error")
    assert "vs dense conv3d" in report.checks["sparse_conv"]


def test_a_broken_convolution_fails_its_check_naming_the_convolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from spconv.pytorch.conv import SparseConvolution

    original = SparseConvolution._conv_forward

    def shifted(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        return out.replace_feature(out.features + 1.0)

    monkeypatch.setattr(SparseConvolution, "_conv_forward", shifted)
    with pytest.raises(RuntimeProblem) as caught:
        self_check(choose(settings()), torch, "cpu")
    message = str(caught.value)
    assert message.startswith("sparse convolution (spconv) differs from a dense conv3d")
    assert "SPLATGEN_TRELLIS_SPARSE_CONV" in message and "ATTN" not in message


def test_a_broken_attention_fails_its_check_naming_the_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdpa, "varlen_attention", lambda *args, **kwargs: args[0] * 0)
    report = RuntimeReport(sparse_conv="spconv", sparse_attention="sdpa", spconv_algo="native")
    before = sdpa.varlen_mode()
    try:
        with pytest.raises(RuntimeProblem) as caught:
            self_check(report, torch, "cpu")
    finally:
        sdpa.set_varlen_mode(before)
    message = str(caught.value)
    assert message.startswith("sparse attention (sdpa) failed its start-up check")
    assert "SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND" in message and "SPARSE_CONV" not in message


def test_spconv_triton_takes_spconvs_name_when_spconv_is_absent() -> None:
    # A fresh process: the registration changes sys.modules for good.
    code = (
        "import sys; sys.modules['spconv'] = None\n"
        "from generation.worker.backends.trellis_runtime import prepare\n"
        "from generation.settings import WorkerSettings\n"
        "report = prepare(WorkerSettings(backend='trellis', trellis_sparse_conv='auto'))\n"
        "import spconv.pytorch, spconv_triton.pytorch\n"
        "print(report.sparse_conv, spconv.pytorch is spconv_triton.pytorch, spconv.pytorch.SubMConv3d.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["spconv-triton", "True", "spconv_triton.pytorch.conv"]


# -- placeholders ------------------------------------------------------------------------------------------------


def test_placeholders_stand_in_only_for_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "splatgen_missing_mesh_lib", raising=False)
    installed = install_placeholders(("splatgen_missing_mesh_lib", "json"))
    assert installed == ["splatgen_missing_mesh_lib"]
    module = sys.modules.pop("splatgen_missing_mesh_lib")
    mesh_type = module.geometry.TriangleMesh  # looked up in annotations at import: must not fail
    with pytest.raises(MeshOnlyError) as caught:
        mesh_type()
    assert (
        str(caught.value)
        == f"{MESSAGE}: splatgen_missing_mesh_lib.geometry.TriangleMesh was called (only Gaussian output is served)"
    )


# -- TRELLIS's code: the installed files are the pinned commit's ---------------------------------------------------


def test_installed_trellis_files_equal_the_pinned_commit() -> None:
    dist = distribution("trellis-3d-ms")
    installed = {str(f): f for f in dist.files or [] if str(f).startswith("trellis/")}
    mismatched = []
    for path, expected in TRELLIS_FILE_SHA256.items():
        assert path in installed, f"{path} is missing from trellis-3d-ms"
        digest = hashlib.sha256(Path(str(installed[path].locate())).read_bytes()).hexdigest()
        if digest != expected:
            mismatched.append(path)
    assert mismatched == [], f"differ from microsoft/TRELLIS@{TRELLIS_COMMIT[:7]}"
    assert len(TRELLIS_FILE_SHA256) >= 60


def test_the_pin_is_the_commit_the_install_script_checks_out() -> None:
    script = (REPO / "scripts" / "install_trellis.sh").read_text()
    assert f'TRELLIS_COMMIT_DEFAULT="{TRELLIS_COMMIT}"' in script

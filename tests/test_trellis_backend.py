"""The TRELLIS backend: settings, start-up errors, and the backend's own orchestration of a generation.

The real load path runs here up to where CUDA (or torch, or trellis) is missing; TRELLIS's real code runs in
test_trellis_real.py. The orchestration tests (locking, warm-up, failures, routing of bad input) inject
``StandInTrellisPipeline``: same ``run()`` signature, returning a stand-in ``Gaussian`` with TRELLIS's attribute
names, shapes and biases as CPU tensors, so that failures and timing can be provoked at will.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from generation.errors import BackendUnavailable, GenerationFailed, InvalidRequest, UnsupportedPrompt
from generation.settings import WorkerSettings
from generation.worker.backends.base import GenerationParams, GenerationRequest
from generation.worker.backends.trellis import (
    TrellisBackend,
    decode_image,
    sampler_params,
)
from generation.worker.backends.trellis_convert import GaussianParams
from generation.worker.backends.trellis_runtime import setting_problems
from generation.worker.backends.trellis_weights import _u2net_paths, model_sources

REPO_ROOT = Path(__file__).resolve().parents[1]
SAFETENSORS_STUB = (2).to_bytes(8, "little") + b"{}"  # the smallest well-formed safetensors file
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n"
IMAGE_MODELS = {
    "sparse_structure_decoder": "ckpts/ss_dec",
    "sparse_structure_flow_model": "ckpts/ss_flow",
    "slat_decoder_gs": "ckpts/slat_dec_gs",
    "slat_flow_model": "ckpts/slat_flow",
}


def settings(**values: Any) -> WorkerSettings:
    return WorkerSettings(backend="trellis", **values)


def write_model_folder(
    folder: Path, name: str = "TrellisImageTo3DPipeline", models: dict | None = None
) -> Path:
    """A TRELLIS model folder laid out like the hub repos, with tiny but well-formed files."""
    models = IMAGE_MODELS if models is None else models
    folder.mkdir(parents=True)
    args = {"models": models, "image_cond_model": "dinov2_vitl14_reg", "text_cond_model": "openai/clip"}
    (folder / "pipeline.json").write_text(json.dumps({"name": name, "args": args}))
    for ref in models.values():
        if ref.count("/") >= 2:
            continue  # a hub path: lives in another repo
        (folder / f"{ref}.json").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{ref}.json").write_text("{}")
        (folder / f"{ref}.safetensors").write_bytes(SAFETENSORS_STUB)
    return folder


def load_error(backend: TrellisBackend) -> str:
    with pytest.raises(BackendUnavailable) as caught:
        backend.load()
    message = caught.value.message
    assert "\n" not in message
    return message


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# -- import, settings and sources ---------------------------------------------------------------------------


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, generation.worker.backends.trellis as t; "
        "print('torch' in sys.modules, t.gpu_memory(), 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "None", "False"]


def test_sampler_defaults_settings_and_request_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = sampler_params(settings(), GenerationParams())
    assert (defaults.ss_steps, defaults.ss_cfg, defaults.slat_steps, defaults.slat_cfg) == (60, 7.5, 50, 3.5)
    monkeypatch.setenv("SPLATGEN_TRELLIS_SS_STEPS", "30")
    monkeypatch.setenv("SPLATGEN_TRELLIS_SLAT_CFG", "4.0")
    configured = WorkerSettings()
    resolved = sampler_params(configured, GenerationParams(ss_cfg=5.0, slat_steps=12))
    assert resolved.sparse_structure() == {"steps": 30, "cfg_strength": 5.0}
    assert resolved.slat() == {"steps": 12, "cfg_strength": 4.0}


@pytest.mark.parametrize(
    ("field", "value"), [("ss_steps", 0), ("ss_steps", 501), ("slat_cfg", -1.0), ("ss_cfg", 31.0)]
)
def test_sampler_values_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError):
        GenerationParams(**{field: value})
    with pytest.raises(ValidationError):
        settings(**{f"trellis_{field}": value})


def test_runtime_settings_are_checked_before_anything_is_imported() -> None:
    assert setting_problems(settings()) == []
    assert (
        setting_problems(settings(trellis_attn_backend="SDPA", trellis_sparse_attn_backend="flash-attn"))
        == []
    )
    problems = setting_problems(
        settings(trellis_sparse_attn_backend="fast", trellis_spconv_algo="fastest", trellis_device="tpu")
    )
    assert [p.split("=")[0] for p in problems] == [
        "SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND",
        "SPLATGEN_TRELLIS_SPCONV_ALGO",
        "SPLATGEN_TRELLIS_DEVICE",
    ]


def test_model_sources_local_hub_and_disabled(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "image")
    sources = model_sources(settings(trellis_image_model=str(folder), trellis_text_model="none"))
    assert list(sources) == ["image"]
    assert sources["image"].local and sources["image"].location == str(folder)
    sources = model_sources(
        settings(trellis_image_model="", trellis_text_model="microsoft/TRELLIS-text-xlarge")
    )
    assert list(sources) == ["text"]
    assert not sources["text"].local and sources["text"].location == "microsoft/TRELLIS-text-xlarge"
    sources = model_sources(settings(trellis_image_model="./models/img", trellis_text_model="NONE"))
    assert sources["image"].local and list(sources) == ["image"]


# -- start-up errors through the real load path ---------------------------------------------------------------


def test_load_names_every_missing_prerequisite_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "trellis", None)  # absent here anyway; absent on a GPU host too
    folder = write_model_folder(tmp_path / "image")
    (folder / "ckpts/slat_dec_gs.safetensors").unlink()
    backend = TrellisBackend(
        settings(trellis_image_model=str(folder), trellis_text_model="none", trellis_spconv_algo="fastest")
    )
    message = load_error(backend)
    assert message.startswith(
        "SPLATGEN_TRELLIS_SPCONV_ALGO='fastest' is not one of auto, implicit_gemm, native; "
    )
    assert f"missing {folder}/ckpts/slat_dec_gs.safetensors (slat_decoder_gs" in message
    assert "SPLATGEN_TRELLIS_IMAGE_MODEL" in message
    assert "the trellis package is not importable: run scripts/install_trellis.sh" in message
    try:
        import torch
    except ImportError:
        assert "torch is not installed" in message
    else:
        if not torch.cuda.is_available():
            assert "CUDA is not available" in message
    assert backend.describe()["ready"] is False


def test_load_without_torch_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    message = load_error(TrellisBackend(settings()))
    assert "torch is not installed: run scripts/install_trellis.sh" in message
    assert "SPLATGEN_BACKEND=procedural" in message


def test_load_on_cpu_torch_says_cuda_is_missing() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    message = load_error(TrellisBackend(settings(trellis_text_model="none")))
    assert "CUDA is not available" in message and torch.__version__ in message


def test_both_pipelines_disabled_is_refused() -> None:
    message = load_error(TrellisBackend(settings(trellis_image_model="none", trellis_text_model="")))
    assert "both SPLATGEN_TRELLIS_IMAGE_MODEL and SPLATGEN_TRELLIS_TEXT_MODEL are disabled" in message


def folder_problems(backend: TrellisBackend, folder: Path) -> list[str]:
    return [p for p in backend.prerequisite_problems() if str(folder) in p]


def test_complete_local_folder_passes(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "image")
    backend = TrellisBackend(settings(trellis_image_model=str(folder), trellis_text_model="none"))
    assert folder_problems(backend, folder) == []


def test_incomplete_local_folders_name_the_file(tmp_path: Path) -> None:
    lfs = write_model_folder(tmp_path / "lfs")
    (lfs / "ckpts/ss_flow.safetensors").write_bytes(LFS_POINTER)
    no_config = write_model_folder(tmp_path / "no-config")
    (no_config / "ckpts/ss_dec.json").unlink()
    (no_config / "ckpts/ss_dec.safetensors").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        lfs: f"{lfs}/ckpts/ss_flow.safetensors is not a complete safetensors file",
        no_config: f"missing {no_config}/ckpts/ss_dec.json and {no_config}/ckpts/ss_dec.safetensors",
        empty: f"{empty}/pipeline.json is missing",
        tmp_path / "absent": f"model folder {tmp_path / 'absent'} does not exist",
    }
    for folder, expected in cases.items():
        backend = TrellisBackend(settings(trellis_image_model=str(folder), trellis_text_model="none"))
        found = folder_problems(backend, folder)
        assert len(found) == 1 and expected in found[0], found
        assert "SPLATGEN_TRELLIS_IMAGE_MODEL" in found[0]


def test_swapped_model_settings_are_caught(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "image")
    backend = TrellisBackend(settings(trellis_image_model="none", trellis_text_model=str(folder)))
    [problem] = folder_problems(backend, folder)
    assert "describes a TrellisImageTo3DPipeline, not a TrellisTextTo3DPipeline" in problem
    assert "SPLATGEN_TRELLIS_TEXT_MODEL" in problem


def cache_file(cache: Path, repo: str, filename: str, content: bytes) -> None:
    """Place a file in a Hugging Face hub cache, in the layout huggingface_hub itself writes."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)
    target = repo_dir / "snapshots" / ("0" * 40) / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)


def test_offline_text_folder_needs_the_image_repo_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    borrowed = "microsoft/TRELLIS-image-large/ckpts/ss_dec"
    folder = write_model_folder(
        tmp_path / "text",
        name="TrellisTextTo3DPipeline",
        models={"sparse_structure_decoder": borrowed, "slat_flow_model": "ckpts/slat_flow"},
    )
    backend = TrellisBackend(settings(trellis_image_model="none", trellis_text_model=str(folder)))
    [problem] = folder_problems(backend, folder)
    assert f"{borrowed}.safetensors" in problem
    assert "hf download microsoft/TRELLIS-image-large" in problem
    cache_file(cache, "microsoft/TRELLIS-image-large", "ckpts/ss_dec.json", b"{}")
    cache_file(cache, "microsoft/TRELLIS-image-large", "ckpts/ss_dec.safetensors", SAFETENSORS_STUB)
    assert folder_problems(backend, folder) == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    (cache / "models--microsoft--TRELLIS-image-large").rename(tmp_path / "moved")
    assert folder_problems(backend, folder) == []  # online, TRELLIS downloads it


def test_offline_hub_id_must_be_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "microsoft/TRELLIS-image-large"
    backend = TrellisBackend(settings(trellis_image_model=repo, trellis_text_model="none"))
    [problem] = [p for p in backend.prerequisite_problems() if repo in p]
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in problem
    pipeline = {"name": "TrellisImageTo3DPipeline", "args": {"models": {"slat_decoder_gs": "ckpts/gs"}}}
    cache_file(cache, repo, "pipeline.json", json.dumps(pipeline).encode())
    [problem] = [p for p in backend.prerequisite_problems() if repo in p]
    assert f"missing {repo}/ckpts/gs.json and {repo}/ckpts/gs.safetensors" in problem
    cache_file(cache, repo, "ckpts/gs.json", b"{}")
    cache_file(cache, repo, "ckpts/gs.safetensors", SAFETENSORS_STUB)
    assert [p for p in backend.prerequisite_problems() if repo in p] == []


def test_offline_image_pipeline_needs_dinov2_and_u2net(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub's cache is $TORCH_HOME/hub
    folder = write_model_folder(tmp_path / "image")
    backend = TrellisBackend(settings(trellis_image_model=str(folder), trellis_text_model="none"))

    def extras() -> list[str]:
        return [p for p in backend.prerequisite_problems() if "DINOv2" in p or "u2net" in p]

    found = extras()
    assert len(found) == 2
    assert f"torch hub cache {tmp_path / 'hub'}" in found[0] and "dinov2_vitl14_reg" in found[0]
    # rembg 2.0.x downloads into <home>/models/u2net/ and still reads the older flat <home>/u2net.onnx.
    assert (
        f"{tmp_path / 'u2net/models/u2net/u2net.onnx'} (or the older {tmp_path / 'u2net/u2net.onnx'})"
        in found[1]
    )
    (tmp_path / "hub/facebookresearch_dinov2_main").mkdir(parents=True)
    (tmp_path / "hub/checkpoints").mkdir()
    assert "dinov2_vitl14_reg*.pth are not in" in extras()[0]
    (tmp_path / "hub/checkpoints/dinov2_vitl14_reg4_pretrain.pth").write_bytes(b"0")
    (tmp_path / "u2net/models/u2net").mkdir(parents=True)
    (tmp_path / "u2net/models/u2net/u2net.onnx").write_bytes(b"0")
    assert extras() == []
    (tmp_path / "u2net/models/u2net/u2net.onnx").unlink()
    (tmp_path / "u2net/u2net.onnx").write_bytes(b"0")
    assert extras() == []


def test_u2net_paths_follow_rembgs_own_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rembg.sessions.u2net import U2netSession

    for env in (
        {"U2NET_HOME": str(tmp_path / "a")},
        {"REMBG_HOME": str(tmp_path / "b")},
        {"XDG_DATA_HOME": str(tmp_path / "c")},
    ):
        for name in ("U2NET_HOME", "REMBG_HOME", "XDG_DATA_HOME"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        current, legacy = _u2net_paths()
        assert current == Path(U2netSession.model_dir(), "u2net.onnx")
        assert legacy == Path(U2netSession.legacy_home(), "u2net.onnx")


# -- images -----------------------------------------------------------------------------------------------


def test_decode_image_keeps_alpha_only_where_there_is_one() -> None:
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (8, 8, 24, 24))
    assert decode_image(png(rgba)).mode == "RGBA"
    assert decode_image(png(Image.new("RGB", (16, 16), "blue"))).mode == "RGB"
    assert decode_image(png(Image.new("L", (16, 16), 128))).mode == "RGB"
    palette = Image.new("P", (16, 16), 0)
    palette.info["transparency"] = 0
    palette.putpixel((3, 3), 1)
    assert decode_image(png(palette)).mode == "RGBA"
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), "green").save(jpeg, format="JPEG")
    assert decode_image(jpeg.getvalue()).mode == "RGB"


def test_undecodable_or_empty_images_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequest, match="could not be decoded"):
        decode_image(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InvalidRequest, match="alpha channel hides everything"):
        decode_image(png(Image.new("RGBA", (16, 16), (255, 255, 255, 100))))


# -- the generate path with a stand-in pipeline -------------------------------------------------------------


class StandInGaussian:
    """Stand-in for ``trellis.representations.Gaussian`` (which needs CUDA to build): same names and biases."""

    def __init__(self, torch: Any, count: int, seed: int) -> None:
        config = GaussianParams.from_config()
        generator = torch.Generator().manual_seed(seed)
        self.aabb = torch.tensor(config.aabb, dtype=torch.float32)
        self.mininum_kernel_size = config.min_kernel_size
        self.scaling_activation_type = config.scaling_activation
        self.scale_bias = torch.tensor(config.scale_bias, dtype=torch.float32)
        self.opacity_bias = torch.tensor(config.opacity_bias, dtype=torch.float32)
        self.rots_bias = torch.tensor(config.rotation_bias, dtype=torch.float32)
        self._xyz = torch.rand(count, 3, generator=generator)
        self._features_dc = torch.randn(count, 1, 3, generator=generator)
        self._opacity = torch.randn(count, 1, generator=generator) * 3
        self._scaling = torch.randn(count, 3, generator=generator) - 4
        self._rotation = torch.randn(count, 4, generator=generator) * 0.1
        self._features_rest = None


class StandInTrellisPipeline:
    """Stand-in for TRELLIS's CUDA pipelines: ``run()`` as TRELLIS declares it, recording every call."""

    def __init__(self, torch: Any, kind: str, count: int = 320, delay_s: float = 0.0) -> None:
        self.torch = torch
        self.kind = kind
        self.count = count
        self.delay_s = delay_s
        self.calls: list[dict[str, Any]] = []
        self.active = 0
        self.most_active = 0
        self.fail_with: Exception | None = None
        self.last_gaussian: weakref.ref | None = None
        self._guard = threading.Lock()

    def run(
        self,
        prompt: Any,
        num_samples: int = 1,
        seed: int = 42,
        sparse_structure_sampler_params: dict | None = None,
        slat_sampler_params: dict | None = None,
        formats: list[str] | None = None,
        preprocess_image: bool = True,
    ) -> dict[str, list[Any]]:
        with self._guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            self.calls.append(
                {
                    "prompt": prompt,
                    "num_samples": num_samples,
                    "seed": seed,
                    "ss": sparse_structure_sampler_params,
                    "slat": slat_sampler_params,
                    "formats": formats,
                    "preprocess_image": preprocess_image,
                    "inference_mode": self.torch.is_inference_mode_enabled(),
                }
            )
            time.sleep(self.delay_s)  # widens any overlap between concurrent callers
            if self.fail_with is not None:
                raise self.fail_with
            gaussian = StandInGaussian(self.torch, self.count, seed)
            self.last_gaussian = weakref.ref(gaussian)
            return {"gaussian": [gaussian]}
        finally:
            with self._guard:
                self.active -= 1


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch")


def loaded_backend(
    torch: Any, *, kinds: tuple[str, ...] = ("image", "text"), **values: Any
) -> TrellisBackend:
    pipelines = {kind: StandInTrellisPipeline(torch, kind) for kind in kinds}
    backend = TrellisBackend(settings(trellis_warmup=False, **values), pipelines=pipelines)  # type: ignore[arg-type]
    backend.load()
    return backend


def stand_in(backend: TrellisBackend, kind: str) -> StandInTrellisPipeline:
    return backend._pipelines[kind]  # type: ignore[index]


def test_generations_never_overlap(torch: Any) -> None:
    pipeline = StandInTrellisPipeline(torch, "text", delay_s=0.02)
    backend = TrellisBackend(settings(trellis_warmup=False), pipelines={"text": pipeline})
    backend.load()
    threads = [
        threading.Thread(target=backend.generate, args=(GenerationRequest(prompt=f"p{i}", seed=i),))
        for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pipeline.calls) == 6
    assert pipeline.most_active == 1
    assert backend.describe()["generations"] == 6


def test_prompt_kind_without_a_pipeline_is_unsupported(torch: Any) -> None:
    backend = loaded_backend(torch, kinds=("image",), trellis_text_model="none")
    with pytest.raises(UnsupportedPrompt) as caught:
        backend.generate(GenerationRequest(prompt="a chair"))
    assert caught.value.code == "unsupported_prompt_kind"
    assert "SPLATGEN_TRELLIS_TEXT_MODEL" in caught.value.message
    assert backend.describe()["prompt_kinds"] == ["image"]


def test_generate_before_load_is_unavailable(torch: Any) -> None:
    backend = TrellisBackend(settings(), pipelines={"text": StandInTrellisPipeline(torch, "text")})
    with pytest.raises(BackendUnavailable, match="still loading"):
        backend.generate(GenerationRequest(prompt="a chair"))


def test_warmup_runs_each_pipeline_once_with_few_steps(torch: Any) -> None:
    pipelines = {kind: StandInTrellisPipeline(torch, kind) for kind in ("image", "text")}
    backend = TrellisBackend(settings(trellis_warmup=True), pipelines=pipelines)  # type: ignore[arg-type]
    assert backend.describe()["ready"] is False
    backend.load()
    assert backend.describe()["ready"] is True
    for pipeline in pipelines.values():
        [call] = pipeline.calls
        assert call["ss"]["steps"] == call["slat"]["steps"] == WorkerSettings().trellis_warmup_steps == 4
    assert pipelines["image"].calls[0]["prompt"].mode == "RGBA"
    json.dumps(backend.describe())


def test_warmup_failure_stops_start_up_with_the_fix(torch: Any) -> None:
    pipeline = StandInTrellisPipeline(torch, "text")
    pipeline.fail_with = RuntimeError("FlashAttention only supports Ampere GPUs or newer.")
    message = load_error(TrellisBackend(settings(trellis_warmup=True), pipelines={"text": pipeline}))
    assert "FlashAttention only supports Ampere" in message
    assert "SPLATGEN_TRELLIS_ATTN_BACKEND" in message and "SPLATGEN_TRELLIS_WARMUP=false" in message


def test_a_convolution_failure_is_not_reported_with_attention_advice(torch: Any) -> None:
    pipeline = StandInTrellisPipeline(torch, "text")
    pipeline.fail_with = AssertionError("cpu don't support act and bias (spconv indice_conv)")
    message = load_error(TrellisBackend(settings(trellis_warmup=True), pipelines={"text": pipeline}))
    assert "SPLATGEN_TRELLIS_SPARSE_CONV" in message
    assert "ATTN_BACKEND" not in message


def test_a_failed_run_is_generation_failed_and_releases_the_lock(torch: Any) -> None:
    backend = loaded_backend(torch)
    pipeline = stand_in(backend, "text")
    pipeline.fail_with = RuntimeError("sampler blew up")
    with pytest.raises(
        GenerationFailed, match="TRELLIS text generation failed: RuntimeError: sampler blew up"
    ):
        backend.generate(GenerationRequest(prompt="a chair"))
    pipeline.fail_with = None
    assert len(backend.generate(GenerationRequest(prompt="a chair"))) == pipeline.count


def test_bad_images_never_reach_the_pipeline(torch: Any) -> None:
    backend = loaded_backend(torch)
    with pytest.raises(InvalidRequest):
        backend.generate(GenerationRequest(image=b"GIF89a broken"))
    assert stand_in(backend, "image").calls == []


def test_gpu_memory_is_none_without_cuda(torch: Any) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert loaded_backend(torch).gpu_memory() is None


def test_injected_pipelines_still_need_torch(torch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TrellisBackend(settings(), pipelines={"text": StandInTrellisPipeline(torch, "text")})
    monkeypatch.setitem(sys.modules, "torch", None)
    assert "torch is not installed" in load_error(backend)

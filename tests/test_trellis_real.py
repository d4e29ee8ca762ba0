"""TRELLIS's own code, with tiny random-weight models of its real classes, on the CPU.

The models are built once per session by ``generation.worker.backends.trellis_models`` in the released layout and read
back through the backend's own loading path (offline Hugging Face and torch hub caches). TRELLIS hard-codes CUDA
in a few places; the backend's ``SPLATGEN_TRELLIS_DEVICE=cpu`` maps those to the CPU (``cuda_calls_on_cpu``, a
test and debugging mode, never for serving). Background removal runs real rembg + onnxruntime on a stand-in
u2net model (``write_u2net_stand_in``), because u2net's weights are a download.
"""

from __future__ import annotations

import base64
import copy
import io
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from diagnostics import Splat
from generation.settings import WorkerSettings
from generation.testing import Service, running
from generation.worker.backends.base import GenerationParams, GenerationRequest
from generation.worker.backends.trellis import TrellisBackend
from generation.worker.backends.trellis_models import ModelCaches, build_model_caches
from generation.worker.backends.trellis_runtime import import_trellis, prepare

torch = pytest.importorskip("torch")

GAUSSIANS_PER_VOXEL = 32
FEW_STEPS = GenerationParams(ss_steps=2, slat_steps=2)
# save_ply's default transform (TRELLIS's Y-up -> the PLY's Z-up), written out here on purpose.
SAVE_PLY_TRANSFORM = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def cpu_settings(**values: Any) -> WorkerSettings:
    return WorkerSettings(backend="trellis", trellis_device="cpu", **values)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelCaches]:
    """Tiny models of both pipelines plus DINOv2, CLIP and u2net stand-ins; the environment points at them."""
    root = tmp_path_factory.mktemp("trellis-models")
    import_trellis(prepare(cpu_settings()))
    caches = build_model_caches(root, "tiny")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in caches.environment().items():
            patch.setenv(name, value)
        # huggingface_hub reads these once, at its import (which an earlier test may have done): the worker
        # process gets them from its environment; this process's copies are pointed at the caches too.
        from huggingface_hub import constants

        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.setattr(constants, "HF_HUB_CACHE", str(caches.hf_cache))
        yield caches


@pytest.fixture(scope="session")
def backend(tiny_models: ModelCaches) -> TrellisBackend:
    loaded = TrellisBackend(cpu_settings(trellis_warmup=False))
    loaded.load()
    return loaded


def disc_image(mode: str) -> Image.Image:
    """A bright disc: with a real alpha channel (RGBA) or on a dark background for rembg to cut out (RGB)."""
    if mode == "RGBA":
        image = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
        ImageDraw.Draw(image).ellipse((24, 24, 104, 104), fill=(220, 140, 60, 255))
        return image
    image = Image.new("RGB", (128, 128), (8, 8, 8))
    ImageDraw.Draw(image).ellipse((24, 24, 104, 104), fill=(230, 210, 190))
    return image


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class Recorder:
    """Wraps steps of a loaded pipeline instance to see what TRELLIS did inside one generation."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.saved: dict[str, Any] = {}
        self.voxels: list[int] = []
        self.sampler_calls: list[tuple[str, dict[str, Any]]] = []
        self.gaussian: Any = None
        self.gaussian_ref: weakref.ref[Any] | None = None
        self.keep_gaussian = False

    def __enter__(self) -> Recorder:
        p = self.pipeline
        self.saved = {
            "sample_sparse_structure": p.sample_sparse_structure,
            "decode_slat": p.decode_slat,
            "ss": p.sparse_structure_sampler.sample,
            "slat": p.slat_sampler.sample,
        }

        def sample_sparse_structure(*args: Any, **kwargs: Any) -> Any:
            coords = self.saved["sample_sparse_structure"](*args, **kwargs)
            self.voxels.append(int(coords.shape[0]))
            return coords

        def decode_slat(*args: Any, **kwargs: Any) -> Any:
            out = self.saved["decode_slat"](*args, **kwargs)
            gaussian = out["gaussian"][0]
            self.gaussian_ref = weakref.ref(gaussian)
            if self.keep_gaussian:
                self.gaussian = gaussian
            return out

        def sampler(name: str) -> Any:
            def sample(*args: Any, **kwargs: Any) -> Any:
                self.sampler_calls.append((name, {k: kwargs.get(k) for k in ("steps", "cfg_strength")}))
                return self.saved[name](*args, **kwargs)

            return sample

        p.sample_sparse_structure = sample_sparse_structure
        p.decode_slat = decode_slat
        p.sparse_structure_sampler.sample = sampler("ss")
        p.slat_sampler.sample = sampler("slat")
        return self

    def __exit__(self, *exc: object) -> None:
        p = self.pipeline
        p.sample_sparse_structure = self.saved["sample_sparse_structure"]
        p.decode_slat = self.saved["decode_slat"]
        p.sparse_structure_sampler.sample = self.saved["ss"]
        p.slat_sampler.sample = self.saved["slat"]


def pipeline_of(backend: TrellisBackend, kind: str) -> Any:
    return backend._pipelines[kind]  # type: ignore[index]


# -- loading ----------------------------------------------------------------------------------------------


def test_only_the_gaussian_path_is_loaded_and_decoders_are_shared(backend: TrellisBackend) -> None:
    image, text = pipeline_of(backend, "image"), pipeline_of(backend, "text")
    gaussian_path = {
        "sparse_structure_decoder",
        "sparse_structure_flow_model",
        "slat_flow_model",
        "slat_decoder_gs",
    }
    assert set(image.models) == gaussian_path | {"image_cond_model"}
    assert set(text.models) == gaussian_path
    assert text.models["slat_decoder_gs"] is image.models["slat_decoder_gs"]
    assert text.models["sparse_structure_decoder"] is image.models["sparse_structure_decoder"]
    assert text.models["slat_flow_model"] is not image.models["slat_flow_model"]
    described = backend.describe()
    assert described["loaded_models"]["shared_between_pipelines"] == [
        "text:sparse_structure_decoder",
        "text:slat_decoder_gs",
    ]
    runtime = described["runtime"]
    assert runtime["sparse_conv"] == "spconv" and runtime["sparse_attention"].startswith("sdpa")
    assert set(runtime["checks"]) == {"sparse_attention", "sparse_conv"}
    assert all(check.startswith("ok") for check in runtime["checks"].values())


def test_a_broken_checkpoint_names_its_file_and_the_real_error(
    tiny_models: ModelCaches, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = next((tiny_models.hf_cache / "models--microsoft--TRELLIS-image-large" / "snapshots").iterdir())
    copy = tmp_path / "image-large"
    copy.mkdir()
    for path in folder.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    config = copy / "ckpts" / "slat_flow_img_dit_L_64l8p2_fp16.json"
    config.write_text(config.read_text().replace('"num_blocks": 2', '"num_blocks": 3'))
    failing = TrellisBackend(
        cpu_settings(trellis_warmup=False, trellis_image_model=str(copy), trellis_text_model="none")
    )
    with pytest.raises(Exception) as caught:
        failing.load()
    message = caught.value.message  # type: ignore[attr-defined]
    assert f"loading {copy}/ckpts/slat_flow_img_dit_L_64l8p2_fp16.safetensors failed" in message
    assert "RuntimeError" in message and "Missing key(s)" in message
    assert "huggingface" not in message.lower() and "\n" not in message


# -- generations ----------------------------------------------------------------------------------------------


def quaternion_matrices(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    ).transpose(2, 0, 1)


def test_an_image_generation_is_trellis_own_gaussian_converted(backend: TrellisBackend) -> None:
    """32 gaussians per occupied voxel, and every column as TRELLIS's own ``Gaussian`` activations give it
    (expectations from its properties, not from splatgen's conversion); the Gaussian is released afterwards."""
    pipeline = pipeline_of(backend, "image")
    removed: list[str] = []
    pipeline.rembg_session.predict = lambda image, *a, **k: removed.append(image.mode)  # must not be called
    try:
        with Recorder(pipeline) as seen:
            seen.keep_gaussian = True
            splat = backend.generate(
                GenerationRequest(image=png(disc_image("RGBA")), seed=5, params=FEW_STEPS)
            )
    finally:
        del pipeline.rembg_session.predict
    assert removed == []  # a real alpha channel needs no background removal
    [voxels] = seen.voxels
    assert len(splat) == GAUSSIANS_PER_VOXEL * voxels
    gaussian = seen.gaussian
    xyz = gaussian.get_xyz.double().numpy()
    np.testing.assert_allclose(
        np.stack([splat["x"], splat["y"], splat["z"]], axis=1), xyz @ SAVE_PLY_TRANSFORM.T, atol=1e-6
    )
    sigmoid = 1 / (1 + np.exp(-splat["opacity"].astype(np.float64)))
    np.testing.assert_allclose(sigmoid, gaussian.get_opacity.double().numpy()[:, 0], atol=1e-5)
    scales = np.exp(np.stack([splat[f"scale_{i}"] for i in range(3)], axis=1).astype(np.float64))
    np.testing.assert_allclose(scales, gaussian.get_scaling.double().numpy(), rtol=1e-4)
    colours = np.stack([splat[f"f_dc_{i}"] for i in range(3)], axis=1)
    np.testing.assert_allclose(colours, gaussian.get_features.double().numpy()[:, 0, :], atol=1e-6)
    rotations = np.stack([splat[f"rot_{i}"] for i in range(4)], axis=1).astype(np.float64)
    expected = SAVE_PLY_TRANSFORM @ quaternion_matrices(gaussian.get_rotation.double().numpy())
    np.testing.assert_allclose(quaternion_matrices(rotations), expected, atol=1e-4)
    stages = backend.describe()["last_stage_seconds"]
    assert list(stages) == [
        "preprocess",
        "conditioning",
        "ss_sampling",
        "ss_decoding",
        "slat_sampling",
        "gaussian_decoding",
        "conversion",
    ]
    del gaussian
    seen.gaussian = None
    backend.cleanup()
    assert seen.gaussian_ref is not None and seen.gaussian_ref() is None


def test_text_sampler_parameters_and_seeds(backend: TrellisBackend) -> None:
    """The request's sampler values reach TRELLIS's samplers; the same seed gives the same bytes, another seed
    other bytes; and SDPA's padded fallback gives the same splat as its nested path inside the real models."""
    from generation.worker.backends import trellis_sdpa

    params = GenerationParams(ss_steps=2, ss_cfg=5.0, slat_steps=2, slat_cfg=2.5)

    def generate(seed: int) -> Splat:
        return backend.generate(GenerationRequest(prompt="a boat", seed=seed, params=params))

    with Recorder(pipeline_of(backend, "text")) as seen:
        first = generate(11)
        again = generate(11)
        other = generate(12)
    assert seen.sampler_calls[:2] == [
        ("ss", {"steps": 2, "cfg_strength": 5.0}),
        ("slat", {"steps": 2, "cfg_strength": 2.5}),
    ]
    assert len(seen.sampler_calls) == 6
    assert [len(s) for s in (first, again, other)] == [GAUSSIANS_PER_VOXEL * v for v in seen.voxels]
    assert first.to_ply_bytes() == again.to_ply_bytes()
    assert first.to_ply_bytes() != other.to_ply_bytes()

    before = trellis_sdpa.varlen_mode()
    switched = "padded" if before == "nested" else "nested"
    trellis_sdpa.set_varlen_mode(switched)
    try:
        fallback = generate(11)
    finally:
        trellis_sdpa.set_varlen_mode(before)
    assert len(fallback) == len(first)
    columns = [name for name in first.names if name not in ("nx", "ny", "nz")]
    for name in columns:
        np.testing.assert_allclose(
            fallback[name], first[name], atol=2e-2, err_msg=f"{switched} vs {before}: {name}"
        )


def test_rgb_images_go_through_background_removal(backend: TrellisBackend) -> None:
    pipeline = pipeline_of(backend, "image")
    removed: list[str] = []
    session = pipeline.rembg_session
    original = session.predict

    def predict(image: Any, *args: Any, **kwargs: Any) -> Any:
        removed.append(image.mode)
        return original(image, *args, **kwargs)

    session.predict = predict
    try:
        splat = backend.generate(GenerationRequest(image=png(disc_image("RGB")), params=FEW_STEPS))
    finally:
        del session.predict
    assert removed == ["RGB"]
    assert len(splat) > 0 and len(splat) % GAUSSIANS_PER_VOXEL == 0


def test_real_sparse_conv_matches_a_dense_conv3d(backend: TrellisBackend) -> None:
    """A SparseConv3d from the loaded SLAT flow model, on TRELLIS's own SparseTensor, against conv3d."""
    from trellis.modules import sparse as sp

    from generation.worker.backends.trellis_runtime import cuda_calls_on_cpu

    flow = pipeline_of(backend, "image").models["slat_flow_model"]
    # A copy in fp32: the loaded model stays as it is for every other test.
    conv = copy.deepcopy(next(m for m in flow.modules() if isinstance(m, sp.SparseConv3d))).float()
    generator = torch.Generator().manual_seed(0)
    sites = torch.randperm(16**3, generator=generator)[:200]
    coords = torch.stack([sites // 256, (sites // 16) % 16, sites % 16], dim=1)
    channels = conv.conv.in_channels
    feats = torch.randn(len(sites), channels, generator=generator)
    tensor = sp.SparseTensor(
        feats=feats, coords=torch.cat([torch.zeros(len(sites), 1, dtype=torch.long), coords], 1).int()
    )
    with torch.inference_mode(), cuda_calls_on_cpu(torch):
        out = conv(tensor)
    dense = torch.zeros(1, channels, 16, 16, 16, dtype=torch.float64)
    dense[0, :, coords[:, 0], coords[:, 1], coords[:, 2]] = feats.double().T
    weight = conv.conv.weight.detach().double().permute(0, 4, 1, 2, 3)
    reference = torch.nn.functional.conv3d(dense, weight, conv.conv.bias.detach().double(), padding=1)[0]
    got = out.coords.long()
    expected = reference[:, got[:, 1], got[:, 2], got[:, 3]].T
    assert len(got) == len(sites)
    assert float((out.feats.double() - expected).abs().max()) < 1e-2


# -- through the real worker and front end over HTTP ------------------------------------------------------------


@pytest.fixture(scope="module")
def services(
    tiny_models: ModelCaches, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Service, Service]]:
    tmp = tmp_path_factory.mktemp("trellis-http")
    env = {
        **tiny_models.environment(),
        "SPLATGEN_BACKEND": "trellis",
        "SPLATGEN_TRELLIS_DEVICE": "cpu",
        "SPLATGEN_TRELLIS_WARMUP": "true",
        "SPLATGEN_TRELLIS_WARMUP_STEPS": "1",
        "SPLATGEN_TRELLIS_SS_STEPS": "2",
        "SPLATGEN_TRELLIS_SLAT_STEPS": "2",
    }
    with running("worker", tmp, env, wait=False) as worker:
        worker.wait_healthy(timeout_s=240)
        front_env = {"SPLATGEN_WORKERS": worker.url, "SPLATGEN_HISTORY_SIZE": "0"}
        with running("front", tmp, front_env) as front:
            yield worker, front


def test_worker_health_reports_the_runtime_and_memory(services: tuple[Service, Service]) -> None:
    worker, _ = services
    health = httpx.get(f"{worker.url}/health", timeout=10).json()
    runtime = health["backend"]["runtime"]
    assert health["status"] == "ok" and health["backend"]["ready"] is True
    assert runtime["sparse_conv"] == "spconv" and runtime["device"] == "cpu"
    assert health["backend"]["prompt_kinds"] == ["image", "text"]
    memory = httpx.get(f"{worker.url}/memory", timeout=10).json()
    assert "gpu_after_load" in memory and memory["gpu_after_load"] is None  # no CUDA here
    log = worker.log()
    assert "TRELLIS runtime: sparse conv spconv" in log
    assert "warmed up TRELLIS image pipeline" in log and "warmed up TRELLIS text pipeline" in log


def parse(response: httpx.Response) -> Splat:
    assert response.status_code == 200, response.text
    return Splat.from_ply_bytes(response.content)


def test_text_and_images_through_the_front_end(services: tuple[Service, Service]) -> None:
    worker, front = services
    text = parse(httpx.post(f"{front.url}/generate/", data={"prompt": "a red teapot"}, timeout=240))
    rgba = base64.b64encode(png(disc_image("RGBA"))).decode()
    image = parse(httpx.post(f"{front.url}/generate/", data={"prompt": rgba}, timeout=240))
    rgb_file = {"prompt_image_file": ("disc.png", png(disc_image("RGB")), "image/png")}
    rgb = parse(httpx.post(f"{front.url}/generate", files=rgb_file, data={"seed": "4"}, timeout=240))
    for splat in (text, image, rgb):
        assert len(splat) >= 7000 and len(splat) % GAUSSIANS_PER_VOXEL == 0
    metrics = httpx.get(f"{worker.url}/metrics", timeout=10).text
    assert 'splatgen_worker_generations_total{kind="text",outcome="ok"} 1.0' in metrics
    assert 'splatgen_worker_generations_total{kind="image",outcome="ok"} 2.0' in metrics

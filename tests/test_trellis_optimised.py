"""The optimised execution mode against the stock path: TRELLIS's real code, tiny random-weight models, the CPU.

Same seed, prompt and steps through a stock backend and an optimised one (batched classifier-free guidance, the
dense flow model compiled with inductor during the warm-up, device-side conversion): the occupied voxels are
identical and the gaussians agree, after the same activations, within ``TOLERANCE``. The differences come from
running the float16 flow models at batch 2 instead of 1 (the CPU's matrix kernels block the rows differently):
measured up to 6e-6 in positions and 4e-4 in raw colour, opacity and scale values on these models.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from test_trellis_real import cpu_settings, tiny_models  # noqa: F401 (a fixture)

from diagnostics import Splat
from generation.worker.backends.base import GenerationParams, GenerationRequest
from generation.worker.backends.trellis import TrellisBackend
from generation.worker.backends.trellis_models import ModelCaches
from generation.worker.backends.trellis_optimised import Optimisations, WarmedCompile, tf32_enabled

torch = pytest.importorskip("torch")

STEPS = GenerationParams(ss_steps=6, slat_steps=6)
# The released samplers (pipeline.json): t rescaled by 3, guidance inside these intervals of t.
RESCALE_T = 3.0
SS_INTERVAL, SLAT_INTERVAL = (0.5, 0.95), (0.5, 1.0)
SH_C0 = 0.28209479177387814
# After activation: positions (box units), opacity (sigmoid), colour (0.5 + C0 * f_dc), scale (relative),
# rotation (unit quaternion components). Each is several times the difference measured on these models.
TOLERANCE = {"position": 1e-4, "opacity": 1e-3, "colour": 1e-3, "scale": 2e-3, "rotation": 1e-3}


def guided_steps(steps: int, interval: tuple[float, float]) -> int:
    """How many of a sampler's steps fall inside its guidance interval (TRELLIS's t schedule)."""
    t = np.linspace(1, 0, steps + 1)[:-1]
    t = RESCALE_T * t / (1 + (RESCALE_T - 1) * t)
    return int(sum(interval[0] <= v <= interval[1] for v in t))


@pytest.fixture(scope="module")
def stock(tiny_models: ModelCaches) -> TrellisBackend:  # noqa: F811
    backend = TrellisBackend(cpu_settings(trellis_warmup=False))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def optimised(tiny_models: ModelCaches) -> TrellisBackend:  # noqa: F811
    # Text only: the image pipeline's flow models are the same code, and on the CPU its 1,374 conditioning
    # tokens make a generation more than ten times slower. Compiled with aot_eager: dynamo's capture, guards and
    # no-recompile stance as on a GPU, without inductor's C++ kernels, whose OpenMP threads then spin against
    # torch's on a 2-core runner (inductor here gave the same voxels and differences, at 25 s of compilation).
    backend = TrellisBackend(
        cpu_settings(
            trellis_mode="optimised",
            trellis_warmup_steps=4,
            trellis_image_model="none",
            trellis_compile_backend="aot_eager",
        )
    )
    backend.load()
    return backend


class Seen:
    """Occupied voxels and flow-model calls (batch sizes) of one generation."""

    def __init__(self) -> None:
        self.coords: Any = None
        self.batches: dict[str, list[int]] = {"ss": [], "slat": []}


@contextmanager
def watching(backend: TrellisBackend, kind: str) -> Iterator[Seen]:
    pipeline = backend._pipelines[kind]  # type: ignore[index]
    seen = Seen()
    sample = pipeline.sample_sparse_structure

    def record_coords(*args: Any, **kwargs: Any) -> Any:
        seen.coords = sample(*args, **kwargs)
        return seen.coords

    models = {
        name: pipeline.models[key]
        for name, key in (("ss", "sparse_structure_flow_model"), ("slat", "slat_flow_model"))
    }
    compiled = backend._optimiser.compiled if backend._optimiser else {}  # type: ignore[union-attr]
    wrapped = [name for name, model in models.items() if id(model) not in compiled]
    for name in wrapped:  # a compiled model is counted by its wrapper, never patched (that would recompile)
        forward = models[name].forward

        def counted(x: Any, *args: Any, _name: str = name, _forward: Any = forward, **kwargs: Any) -> Any:
            seen.batches[_name].append(int(x.shape[0]))
            return _forward(x, *args, **kwargs)

        models[name].forward = counted
    pipeline.sample_sparse_structure = record_coords
    try:
        yield seen
    finally:
        del pipeline.sample_sparse_structure
        for name in wrapped:
            del models[name].forward


def activated(splat: Splat) -> dict[str, np.ndarray]:
    def stack(*names: str) -> np.ndarray:
        return np.stack([splat[n].astype(np.float64) for n in names], axis=1)

    rotation = stack("rot_0", "rot_1", "rot_2", "rot_3")
    return {
        "position": stack("x", "y", "z"),
        "opacity": 1 / (1 + np.exp(-splat["opacity"].astype(np.float64))),
        "colour": 0.5 + SH_C0 * stack("f_dc_0", "f_dc_1", "f_dc_2"),
        "scale": np.exp(stack("scale_0", "scale_1", "scale_2")),
        "rotation": rotation / np.linalg.norm(rotation, axis=1, keepdims=True),
    }


def differences(a: Splat, b: Splat) -> dict[str, float]:
    first, second = activated(a), activated(b)
    out = {}
    for name in TOLERANCE:
        delta = np.abs(first[name] - second[name])
        if name == "scale":
            delta = delta / first[name]
        out[name] = float(delta.max())
    return out


def request(kind: str, seed: int) -> GenerationRequest:
    assert kind == "text"
    return GenerationRequest(prompt="a wooden boat", seed=seed, params=STEPS)


def compiler_available() -> bool:
    return shutil.which("c++") is not None or shutil.which("g++") is not None


def test_optimised_gaussians_match_stock(stock: TrellisBackend, optimised: TrellisBackend) -> None:
    """Same voxels, gaussians within TOLERANCE; guidance ran batched (half the SLAT calls at batch 2) and the
    dense model ran compiled without compiling during the request."""
    from torch._dynamo.utils import counters

    kind = "text"
    [compiled] = optimised._optimiser.compiled.values()  # type: ignore[union-attr]
    before = compiled.state()
    graphs_before = counters["stats"]["unique_graphs"]
    with watching(stock, kind) as reference:
        expected = stock.generate(request(kind, 21))
    with watching(optimised, kind) as seen:
        got = optimised.generate(request(kind, 21))
    after = compiled.state()

    assert torch.equal(seen.coords, reference.coords)
    assert len(got) == len(expected) == 32 * len(reference.coords)
    measured = differences(expected, got)
    assert all(measured[name] <= limit for name, limit in TOLERANCE.items()), measured

    steps, ss_guided = STEPS.ss_steps or 0, guided_steps(STEPS.ss_steps or 0, SS_INTERVAL)
    slat_steps, slat_guided = STEPS.slat_steps or 0, guided_steps(STEPS.slat_steps or 0, SLAT_INTERVAL)
    assert 0 < ss_guided < steps and 0 < slat_guided <= slat_steps
    # stock: one call per step plus one more per guided step, all at batch 1
    assert reference.batches["ss"] == [1] * (steps + ss_guided)
    assert reference.batches["slat"] == [1] * (slat_steps + slat_guided)
    # optimised: one call per step, at batch 2 when guided
    assert sorted(seen.batches["slat"]) == [1] * (slat_steps - slat_guided) + [2] * slat_guided
    assert after["frozen"] and after["eager_calls"] == before["eager_calls"]
    if compiled.failure is None:
        assert compiler_available()
        assert after["compiled_calls"] - before["compiled_calls"] == steps  # one call per step, batched
        assert after["warmed_shapes"] == 2  # batch 1 and batch 2, both seen in the warm-up
        assert counters["stats"]["unique_graphs"] == graphs_before  # nothing compiled during the request
    else:
        assert not compiler_available() and after["eager_calls"] - before["eager_calls"] == steps
    described = optimised.describe()
    assert described["mode"] == "optimised"
    assert described["optimisations"]["active"] == ["batched_cfg", "compile", "device_conversion"]
    assert stock.describe()["optimisations"] == {"active": [], "compiled": {}}


def test_batched_guidance_alone_without_compilation(tiny_models: ModelCaches) -> None:  # noqa: F811
    """Each switch works on its own: batched guidance with compilation and device conversion off, no warm-up."""
    backend = TrellisBackend(
        cpu_settings(
            trellis_mode="optimised",
            trellis_warmup=False,
            trellis_compile=False,
            trellis_device_conversion=False,
        )
    )
    backend.load()
    assert backend.describe()["optimisations"] == {"active": ["batched_cfg"], "compiled": {}}
    with watching(backend, "text") as seen:
        splat = backend.generate(request("text", 5))
    ss_guided = guided_steps(STEPS.ss_steps or 0, SS_INTERVAL)
    assert seen.batches["ss"].count(2) == ss_guided and len(seen.batches["ss"]) == STEPS.ss_steps
    assert len(splat) == 32 * len(seen.coords)


def test_bfloat16_changes_the_numbers_by_a_stated_amount(
    stock: TrellisBackend,
    tiny_models: ModelCaches,  # noqa: F811
) -> None:
    """bfloat16 blocks in the dense flow model: measured on these models, the sparse structure's latents move
    by up to ~0.1 and about 0.2% of occupied voxels flip (1 of 512 here); hence off by default until a GPU
    measurement on the real weights says the difference is harmless."""
    backend = TrellisBackend(
        cpu_settings(trellis_mode="optimised", trellis_warmup=False, trellis_compile=False, trellis_bf16=True)
    )
    backend.load()
    flow = backend._pipelines["text"].models["sparse_structure_flow_model"]  # type: ignore[index]
    assert flow.dtype == torch.bfloat16
    dtypes = {p.dtype for p in flow.blocks.parameters()}
    assert (
        torch.bfloat16 in dtypes and torch.float16 not in dtypes
    )  # norms stay float32, as TRELLIS keeps them
    with watching(stock, "text") as reference:
        stock.generate(request("text", 21))
    with watching(backend, "text") as seen:
        backend.generate(request("text", 21))
    ours = {tuple(c) for c in seen.coords.tolist()}
    theirs = {tuple(c) for c in reference.coords.tolist()}
    overlap = len(ours & theirs) / len(ours | theirs)
    assert 0.97 <= overlap <= 1.0, overlap


def test_tf32_is_cuda_only_and_restored_after_each_generation() -> None:
    """TF32 changes nothing on the CPU (its flags are CUDA's), so the mode reports it inactive there."""
    settings = cpu_settings(trellis_mode="optimised", trellis_tf32=True)
    assert "tf32" not in Optimisations.from_settings(settings, "cpu").active()
    assert "tf32" in Optimisations.from_settings(settings, "cuda").active()
    assert Optimisations.from_settings(cpu_settings(trellis_tf32=True), "cuda").active() == []  # stock mode
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32_enabled(torch):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


class Dense(torch.nn.Module):
    def forward(self, x: Any, t: Any, cond: Any) -> Any:
        return torch.nn.functional.gelu(x) * t[:, None] + cond.sum()


def test_without_a_c_compiler_the_model_runs_eagerly_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    model = Dense()
    x, t, cond = torch.randn(2, 8), torch.ones(2), torch.randn(3)
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        compiled = WarmedCompile(torch, model, "test model", "inductor", cuda_graphs=False)
        out = compiled(x, t, cond)
    assert torch.equal(out, model(x, t, cond))
    state = compiled.state()
    assert state["compiled_calls"] == 0 and state["eager_calls"] == 1
    assert "C++ compiler" in state["failure"]
    assert (
        "torch.compile of the test model is unavailable" in caplog.text
        and "running it eagerly" in caplog.text
    )
    compiled.freeze()
    compiled(x, t, cond)
    assert compiled.state()["eager_calls"] == 2


def test_an_unknown_compile_backend_is_reported_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    compiled = WarmedCompile(torch, Dense(), "test model", "no_such_backend", cuda_graphs=False)
    assert compiled.failure is not None and "no_such_backend" in compiled.failure
    assert compiled(torch.ones(1, 4), torch.ones(1), torch.ones(1)).shape == (1, 4)
    assert "running it eagerly" in caplog.text


def test_after_the_warm_up_a_failed_guard_runs_eagerly_instead_of_compiling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = Dense()
    compiled = WarmedCompile(torch, model, "test model", "eager", cuda_graphs=False)
    x, t, cond = torch.ones(2, 4), torch.ones(2), torch.ones(1)
    compiled(x, t, cond)
    compiled.freeze()
    model.extra = 1.0  # same shapes, but the module changed: dynamo's guards fail, a recompile would follow
    model.forward = lambda x, t, cond: Dense.forward(model, x, t, cond) + model.extra  # type: ignore[method-assign]
    assert torch.equal(compiled(x, t, cond), Dense.forward(model, x, t, cond) + 1.0)
    assert compiled.state()["eager_calls"] == 1
    assert "an input the warm-up did not compile for runs eagerly" in caplog.text


def test_after_the_warm_up_an_unseen_shape_runs_eagerly() -> None:
    compiled = WarmedCompile(torch, Dense(), "test model", "eager", cuda_graphs=False)
    compiled(torch.ones(1, 4), torch.ones(1), torch.ones(1))
    compiled.freeze()
    compiled(torch.ones(1, 4), torch.ones(1), torch.ones(1))
    out = compiled(torch.ones(3, 4), torch.ones(3), torch.ones(1))
    assert out.shape == (3, 4) and not math.isnan(float(out.sum()))
    state = compiled.state()
    assert (state["compiled_calls"], state["eager_calls"], state["warmed_shapes"]) == (2, 1, 1)

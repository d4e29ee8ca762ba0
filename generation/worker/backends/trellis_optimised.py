"""The optimised execution mode of the TRELLIS backend (``SPLATGEN_TRELLIS_MODE=optimised``).

Each optimisation has its own switch (``WorkerSettings``), so a regression can be isolated on a miner's host:

- batched classifier-free guidance [``SPLATGEN_TRELLIS_BATCHED_CFG``]: inside the guidance interval TRELLIS's
  samplers run the flow model twice per step at batch 1 (conditional, then unconditional). Here both run as one
  batch of two: ``torch.cat`` along the batch for the dense sparse-structure model, a ``SparseTensor`` holding two
  copies of the same coordinates (batch indices 0 and 1) for the SLAT model, then TRELLIS's own guidance formula.
  It is installed on the pipeline's sampler instances for one generation and removed afterwards (the backend's
  generation lock serialises that); TRELLIS's files are never changed.
- compilation [``SPLATGEN_TRELLIS_COMPILE``, ``_COMPILE_BACKEND``, ``_CUDA_GRAPHS``]: ``torch.compile`` of the dense
  sparse-structure flow model (16^3 tokens, static shapes, 60 calls per generation), with CUDA graphs on CUDA.
  Compilation happens in the warm-up; afterwards the compiled model refuses to recompile and any input it was not
  warmed on runs eagerly, so no request ever pays for compilation. If compilation fails (no C compiler, an
  unsupported GPU) the model runs eagerly and the log says why, once.
- precision [``SPLATGEN_TRELLIS_BF16``, ``SPLATGEN_TRELLIS_TF32``]: the dense sparse-structure flow model's
  blocks in bfloat16 instead of TRELLIS's float16 (the SLAT model keeps float16: sparse-convolution kernels'
  bfloat16 support differs between backends), and TF32 matrix products for the float32 layers. Both change the
  numbers and are off by default.
- GPU-side conversion [``SPLATGEN_TRELLIS_DEVICE_CONVERSION``]: see ``trellis_device_convert``.

Long because every optimisation is installed and removed around one generation by one object, and
the compile wrapper's warm-up and no-recompile rules sit beside the sampler patches they must not disturb.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from generation.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Optimisations:
    """What the optimised mode applies; all False in stock mode."""

    batched_cfg: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    cuda_graphs: bool = False
    device_conversion: bool = False
    bf16: bool = False
    tf32: bool = False

    @classmethod
    def from_settings(cls, settings: WorkerSettings, device: str) -> Optimisations:
        if settings.trellis_mode != "optimised":
            return cls()
        return cls(
            batched_cfg=settings.trellis_batched_cfg,
            compile=settings.trellis_compile,
            compile_backend=settings.trellis_compile_backend,
            cuda_graphs=settings.trellis_cuda_graphs and device == "cuda" and settings.trellis_compile,
            device_conversion=settings.trellis_device_conversion,
            bf16=settings.trellis_bf16,
            tf32=settings.trellis_tf32 and device == "cuda",
        )

    def active(self) -> list[str]:
        names = ("batched_cfg", "compile", "cuda_graphs", "device_conversion", "bf16", "tf32")
        return [name for name in names if getattr(self, name)]


class WarmedCompile:
    """A model compiled on the inputs seen during the warm-up, eager for anything else after ``freeze()``."""

    def __init__(self, torch: Any, model: Any, name: str, backend: str, cuda_graphs: bool) -> None:
        self._torch = torch
        self.model = model
        self.name = name
        mode = "reduce-overhead" if cuda_graphs else None
        self._backend = backend
        self._cuda_graphs = cuda_graphs
        self.warmed: set[tuple[Any, ...]] = set()
        self.frozen = False
        self.failure: str | None = None
        self.compiled_calls = 0
        self.eager_calls = 0
        self._compiled: Any = None
        try:
            self._compiled = torch.compile(model, backend=backend, mode=mode, dynamic=False)
        except Exception as exc:
            self._give_up(exc)

    def __getattr__(self, name: str) -> Any:
        # The pipeline reads the model's attributes (in_channels, resolution) through whatever it is handed.
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, x: Any, t: Any, cond: Any, **kwargs: Any) -> Any:
        key = (tuple(x.shape), tuple(cond.shape), x.dtype, cond.dtype, str(x.device))
        if self.failure is not None or (self.frozen and key not in self.warmed):
            self.eager_calls += 1
            return self.model(x, t, cond, **kwargs)
        try:
            if self.frozen:
                with self._torch.compiler.set_stance("fail_on_recompile"):
                    out = self._run_compiled(x, t, cond, **kwargs)
            else:
                with self._compile_options():
                    out = self._run_compiled(x, t, cond, **kwargs)
        except Exception as exc:
            if self.frozen:
                if "fail_on_recompile" not in str(exc):
                    raise  # the model's own failure (out of memory, ...), not the compiler's
                # A guard the warm-up did not cover: this input runs eagerly rather than compiling now.
                log.warning("%s: an input the warm-up did not compile for runs eagerly", self.name)
                self.warmed.discard(key)
            else:
                self._give_up(exc)
            self.eager_calls += 1
            return self.model(x, t, cond, **kwargs)
        self.warmed.add(key)
        self.compiled_calls += 1
        return out

    def _give_up(self, exc: Exception) -> None:
        self.failure = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        log.warning(
            "torch.compile of the %s is unavailable (%s): running it eagerly "
            "(SPLATGEN_TRELLIS_COMPILE=false skips the attempt)",
            self.name,
            self.failure,
        )

    def _run_compiled(self, x: Any, t: Any, cond: Any, **kwargs: Any) -> Any:
        if self._cuda_graphs:
            self._torch.compiler.cudagraph_mark_step_begin()
            # The graph's output buffer is reused by the next replay: the sampler gets its own copy.
            return self._compiled(x, t, cond, **kwargs).clone()
        return self._compiled(x, t, cond, **kwargs)

    def _compile_options(self) -> Any:
        if self._backend != "inductor":
            return contextlib.nullcontext()
        # Round float16 intermediates where eager rounds them, instead of keeping them in float32: otherwise a
        # voxel near the occupancy threshold can flip against the stock path.
        return self._torch._inductor.config.patch(emulate_precision_casts=True)

    def freeze(self) -> None:
        self.frozen = True
        if self.failure is None and not self.warmed:
            log.warning("%s: not compiled (no warm-up ran it): it runs eagerly", self.name)

    def state(self) -> dict[str, Any]:
        return {
            "warmed_shapes": len(self.warmed),
            "frozen": self.frozen,
            "failure": self.failure,
            "compiled_calls": self.compiled_calls,
            "eager_calls": self.eager_calls,
        }


class Optimiser:
    """Applies ``Optimisations`` to loaded pipelines: once at load (precision, compilation) and per generation."""

    def __init__(self, torch: Any, optimisations: Optimisations) -> None:
        self._torch = torch
        self.optimisations = optimisations
        self.compiled: dict[int, WarmedCompile] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.optimisations.active())

    def prepare(self, pipelines: dict[str, Any]) -> None:
        """At load: bfloat16 blocks and compile wrappers for the dense flow models (shared ones once)."""
        o = self.optimisations
        if not self.enabled:
            return
        for kind, pipeline in pipelines.items():
            model = getattr(pipeline, "models", {}).get("sparse_structure_flow_model")
            if model is None or id(model) in self.compiled:
                continue
            if o.bf16:
                to_bfloat16(self._torch, model)
            if o.compile:
                name = f"{kind} sparse-structure flow model"
                self.compiled[id(model)] = WarmedCompile(
                    self._torch, model, name, o.compile_backend, o.cuda_graphs
                )
        log.info("TRELLIS optimised mode: %s", ", ".join(o.active()))

    def freeze(self) -> None:
        """After the warm-up: compiled models never compile again."""
        for compiled in self.compiled.values():
            compiled.freeze()

    def describe(self) -> dict[str, Any]:
        return {
            "active": self.optimisations.active(),
            "compiled": {c.name: c.state() for c in self.compiled.values()},
        }

    @contextlib.contextmanager
    def applied(self, pipeline: Any) -> Iterator[None]:
        """The per-generation part, installed on this pipeline's sampler instances and removed afterwards."""
        if not self.enabled:
            yield
            return
        with contextlib.ExitStack() as stack:
            if self.optimisations.tf32:
                stack.enter_context(tf32_enabled(self._torch))
            for attribute in ("sparse_structure_sampler", "slat_sampler"):
                sampler = getattr(pipeline, attribute, None)
                if sampler is not None:
                    stack.enter_context(self._sampler_patched(sampler))
            yield

    @contextlib.contextmanager
    def _sampler_patched(self, sampler: Any) -> Iterator[None]:
        inference = guided_inference(self._torch, sampler, self.optimisations.batched_cfg, self.compiled)
        if inference is None:
            yield
            return
        had_own = "_inference_model" in vars(sampler)
        previous = vars(sampler).get("_inference_model")
        sampler._inference_model = inference
        try:
            yield
        finally:
            if had_own:
                sampler._inference_model = previous
            else:
                del sampler._inference_model


def guided_inference(
    torch: Any, sampler: Any, batched: bool, compiled: dict[int, WarmedCompile]
) -> Callable[..., Any] | None:
    """A replacement for ``sampler._inference_model``; None for a sampler this mode does not know."""
    samplers = __import__(
        "trellis.pipelines.samplers.flow_euler",
        fromlist=["FlowEulerSampler", "GuidanceIntervalSamplerMixin", "ClassifierFreeGuidanceSamplerMixin"],
    )
    if not isinstance(sampler, samplers.FlowEulerSampler):
        return None
    interval = isinstance(sampler, samplers.GuidanceIntervalSamplerMixin)
    if not interval and not isinstance(sampler, samplers.ClassifierFreeGuidanceSamplerMixin):
        return None

    def base(model: Any, x_t: Any, t: float, cond: Any, **kwargs: Any) -> Any:
        # FlowEulerSampler's own call (the timestep tensor, cond repeated to the batch), below both mixins.
        return samplers.FlowEulerSampler._inference_model(sampler, model, x_t, t, cond, **kwargs)

    def inference(
        model: Any,
        x_t: Any,
        t: float,
        cond: Any,
        neg_cond: Any,
        cfg_strength: float,
        cfg_interval: tuple[float, float] = (0.0, 1.0),
        **kwargs: Any,
    ) -> Any:
        model = compiled.get(id(model), model)
        if interval and not cfg_interval[0] <= t <= cfg_interval[1]:
            return base(model, x_t, t, cond, **kwargs)
        if batched:
            pair = _both_in_one_pass(torch, base, model, x_t, t, cond, neg_cond, kwargs)
            if pair is not None:
                pred, neg_pred = pair
                return (1 + cfg_strength) * pred - cfg_strength * neg_pred
        pred = base(model, x_t, t, cond, **kwargs)
        neg_pred = base(model, x_t, t, neg_cond, **kwargs)
        return (1 + cfg_strength) * pred - cfg_strength * neg_pred

    return inference


def _both_in_one_pass(
    torch: Any,
    base: Callable[..., Any],
    model: Any,
    x_t: Any,
    t: float,
    cond: Any,
    neg_cond: Any,
    kwargs: Any,
) -> tuple[Any, Any] | None:
    """(conditional, unconditional) predictions from one call at twice the batch; None where they cannot batch."""
    if not (isinstance(cond, torch.Tensor) and isinstance(neg_cond, torch.Tensor)):
        return None
    batch = x_t.shape[0]
    conds = []
    for c in (cond, neg_cond):
        if c.shape[0] == 1 and batch > 1:
            c = c.repeat(batch, *([1] * (c.dim() - 1)))
        conds.append(c)
    if conds[0].shape != conds[1].shape or conds[0].shape[0] != batch:
        return None
    both_conds = torch.cat(conds)
    if isinstance(x_t, torch.Tensor):
        out = base(model, torch.cat([x_t, x_t]), t, both_conds, **kwargs)
        return out[:batch], out[batch:]
    return _sparse_pair(torch, base, model, x_t, t, both_conds, kwargs)


def _sparse_pair(
    torch: Any, base: Callable[..., Any], model: Any, x_t: Any, t: float, both_conds: Any, kwargs: Any
) -> tuple[Any, Any] | None:
    sp = __import__("trellis.modules.sparse", fromlist=["SparseTensor"])
    if not isinstance(x_t, sp.SparseTensor):
        return None
    batch, rows = x_t.shape[0], x_t.feats.shape[0]
    shifted = x_t.coords.clone()
    shifted[:, 0] += batch
    pair = sp.SparseTensor(
        feats=torch.cat([x_t.feats, x_t.feats]),
        coords=torch.cat([x_t.coords, shifted]),
        shape=torch.Size([2 * batch, *x_t.shape[1:]]),
        layout=[*x_t.layout, *(slice(s.start + rows, s.stop + rows) for s in x_t.layout)],
    )
    out = base(model, pair, t, both_conds, **kwargs)
    # TRELLIS's SLAT model returns its input's coordinates in their order (its upsampling restores the cached
    # ones), so the first half of the rows is the conditional copy; anything else is refused, never mixed up.
    if out.feats.shape[0] != 2 * rows or list(out.layout) != list(pair.layout):
        raise RuntimeError(
            "the SLAT flow model changed the batch's layout: set SPLATGEN_TRELLIS_BATCHED_CFG=false"
        )
    return x_t.replace(out.feats[:rows]), x_t.replace(out.feats[rows:])


def to_bfloat16(torch: Any, model: Any) -> None:
    """The flow model's float16 blocks (TRELLIS's ``convert_to_fp16``) in bfloat16 instead."""
    for parameter in model.blocks.parameters():
        if parameter.dtype == torch.float16:
            parameter.data = parameter.data.to(torch.bfloat16)
    model.dtype = torch.bfloat16


@contextlib.contextmanager
def tf32_enabled(torch: Any) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

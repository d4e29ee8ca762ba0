"""Settings: one pydantic-settings class per process, every threshold named, env prefix ``SPLATGEN_``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GB = 1024**3
# An image travels as base64 (4/3 of its bytes), and a urlencoded form escapes '+' and '/' as three
# characters each: a request must be allowed this much per image byte, plus room for the other fields.
REQUEST_BYTES_PER_IMAGE_BYTE = 1.5
# Multipart boundaries, part headers and the other fields: a few hundred bytes, with room to spare.
REQUEST_OVERHEAD_MB = 0.5


def request_mb_for_image(max_image_mb: float) -> float:
    """The smallest body limit that lets an image of ``max_image_mb`` through in every body shape."""
    return max_image_mb * REQUEST_BYTES_PER_IMAGE_BYTE + REQUEST_OVERHEAD_MB


class RequestLimits(BaseSettings):
    """Size limits both services share; the body limit is derived from the image limit unless set."""

    model_config = SettingsConfigDict(env_prefix="SPLATGEN_", extra="ignore")

    max_image_mb: float = Field(default=20.0, gt=0)
    max_prompt_chars: int = Field(default=1024, ge=1)
    # None: request_mb_for_image(max_image_mb), 30.5 MB for the default 20 MB image.
    max_request_mb: float | None = Field(default=None, gt=0)
    # The whole header block; uvicorn's own parser limits are far larger.
    max_header_kb: float = Field(default=64.0, gt=0)

    @model_validator(mode="after")
    def _body_fits_an_image(self) -> RequestLimits:
        needed = request_mb_for_image(self.max_image_mb)
        if self.max_request_mb is None:
            self.max_request_mb = needed
        elif self.max_request_mb < needed:
            raise ValueError(
                f"SPLATGEN_MAX_REQUEST_MB={self.max_request_mb:g} would cut off a legal image: a "
                f"{self.max_image_mb:g} MB image (SPLATGEN_MAX_IMAGE_MB) needs a body limit of at least "
                f"{needed:g} MB as urlencoded base64; raise it or leave it unset"
            )
        return self

    @property
    def max_request_bytes(self) -> int:
        return int((self.max_request_mb or request_mb_for_image(self.max_image_mb)) * 1024 * 1024)

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def max_header_bytes(self) -> int:
        return int(self.max_header_kb * 1024)


class WorkerSettings(RequestLimits):
    """The GPU worker (``trellis-microservice``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8095, ge=0, le=65535)
    backend: Literal["procedural", "trellis"] = "procedural"
    api_token: SecretStr | None = None

    # Exit (non-zero, one clear line) when the backend cannot load, instead of serving 503s forever.
    exit_on_load_error: bool = True
    # Retry-After on the worker's own 503s: a recycle restarts in seconds, a load takes longer.
    recycling_retry_after_s: int = Field(default=5, ge=1)
    loading_retry_after_s: int = Field(default=10, ge=1)

    procedural_gaussians: int = Field(default=400_000, ge=1, le=10_485_760)
    # Fault injection for tests only; both off by default.
    procedural_leak_mb: float = Field(default=0.0, ge=0)
    procedural_delay_s: float = Field(default=0.0, ge=0)

    trellis_image_model: str = "microsoft/TRELLIS-image-large"
    trellis_text_model: str = "microsoft/TRELLIS-text-xlarge"
    trellis_ss_steps: int = Field(default=60, ge=1, le=500)
    trellis_ss_cfg: float = Field(default=7.5, ge=0, le=30)
    trellis_slat_steps: int = Field(default=50, ge=1, le=500)
    trellis_slat_cfg: float = Field(default=3.5, ge=0, le=30)
    # The portable runtime (generation/worker/backends/trellis_runtime.py): "auto" takes what is installed.
    trellis_attn_backend: str = "auto"
    trellis_sparse_attn_backend: str = "auto"
    trellis_sparse_conv: str = "auto"
    trellis_spconv_algo: str = "native"
    # "cpu" maps TRELLIS's hard-coded CUDA to the CPU: for tests and debugging only, never for serving.
    trellis_device: str = "cuda"
    # Start-up checks of the sparse attention and convolution on a tiny known case before the models load.
    trellis_runtime_check: bool = True
    trellis_warmup: bool = True
    # Few steps suffice: the step count changes how often kernels run, not which ones compile.
    trellis_warmup_steps: int = Field(default=4, ge=1, le=50)
    # A background-removal model of rembg's u2net layout on disk, instead of rembg's download of u2net.
    trellis_rembg_model_path: str = ""

    # The execution mode (generation/worker/backends/trellis_optimised.py): "stock" runs TRELLIS as released;
    # "optimised" applies each of the switches below that is on (they do nothing in "stock").
    trellis_mode: Literal["stock", "optimised"] = "stock"
    # Conditional and unconditional flow passes as one batch of two inside the guidance interval.
    trellis_batched_cfg: bool = True
    # torch.compile of the dense sparse-structure flow model, compiled during the warm-up, never on a request.
    trellis_compile: bool = True
    trellis_compile_backend: str = "inductor"
    # CUDA graphs for the compiled model (torch.compile's "reduce-overhead"); CUDA only.
    trellis_cuda_graphs: bool = True
    # Gaussian -> PLY rows in torch on the decoder's device, one host copy of the final float32 rows.
    trellis_device_conversion: bool = True
    # These change the numbers: off until a GPU measurement says the difference is harmless.
    trellis_bf16: bool = False
    trellis_tf32: bool = False


def _split_urls(value: object) -> object:
    if isinstance(value, str):
        return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(v).strip().rstrip("/") for v in value]
    return value


class FrontSettings(RequestLimits):
    """The competitive front end (``gen-worker-1``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8093, ge=0, le=65535)
    workers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["http://127.0.0.1:8095"])
    api_token: SecretStr | None = None
    worker_token: SecretStr | None = None

    memory_cleanup_gb: float = Field(default=12.0, gt=0)
    memory_refuse_gb: float = Field(default=14.0, gt=0)
    # GPU thresholds as fractions of the card, used when a worker reports GPU memory.
    gpu_cleanup_fraction: float = Field(default=0.85, gt=0, le=1)
    gpu_refuse_fraction: float = Field(default=0.95, gt=0, le=1)

    max_queue: int = Field(default=8, ge=0)
    queue_timeout_s: float = Field(default=240.0, gt=0)
    # The miner gives up after 300 s; a generation that takes longer is lost anyway.
    worker_timeout_s: float = Field(default=280.0, gt=0)
    worker_probe_interval_s: float = Field(default=2.0, gt=0)
    # Health, memory and recycle calls are cheap: a worker that needs longer is treated as down.
    worker_control_timeout_s: float = Field(default=5.0, gt=0)
    # Cleanup may wait for an in-flight generation's lock and run malloc_trim.
    worker_cleanup_timeout_s: float = Field(default=30.0, gt=0)
    retry_after_s: int = Field(default=30, ge=1)
    # Generations per request that may fail the quality gates (each retry with another seed) before a 503.
    degenerate_attempts: int = Field(default=2, ge=1, le=10)
    # Connections to the workers: one generation each at a time, plus health, memory and cleanup calls.
    worker_max_connections: int = Field(default=64, ge=1)
    worker_max_keepalive_connections: int = Field(default=16, ge=0)

    opacity_fix_trigger: float | None = None
    opacity_fix_target: float | None = None
    degenerate_min_gaussians: int | None = None

    history_size: int = Field(default=50, ge=0)
    history_dir: Path | None = None
    history_max_mb: float = Field(default=2048.0, ge=0)
    # Without history_dir the PLYs live in the front end's RAM, which its own memory check counts: a smaller cap.
    history_memory_max_mb: float = Field(default=256.0, ge=0)
    # Preview grids: 2x2 views of this many pixels each (0: none), from at most this many gaussians.
    history_preview_px: int = Field(default=160, ge=0, le=1024)
    history_preview_max_gaussians: int = Field(default=100_000, ge=1)
    history_thumbnail_px: int = Field(default=96, ge=0, le=512)
    # The dashboard's memory chart: one sample every interval, the last memory_samples kept (30 min).
    memory_sample_interval_s: float = Field(default=2.0, gt=0)
    memory_samples: int = Field(default=900, ge=1, le=100_000)

    _split = field_validator("workers", mode="before")(_split_urls)

    @model_validator(mode="after")
    def _cleanup_before_refuse(self) -> FrontSettings:
        # Cleaning up is the gentle step: it must come first, then refusing, then PM2's hard restart.
        if self.memory_cleanup_gb > self.memory_refuse_gb:
            raise ValueError(
                f"SPLATGEN_MEMORY_CLEANUP_GB={self.memory_cleanup_gb:g} is above "
                f"SPLATGEN_MEMORY_REFUSE_GB={self.memory_refuse_gb:g}: cleanup must act first"
            )
        if self.gpu_cleanup_fraction > self.gpu_refuse_fraction:
            raise ValueError(
                f"SPLATGEN_GPU_CLEANUP_FRACTION={self.gpu_cleanup_fraction:g} is above "
                f"SPLATGEN_GPU_REFUSE_FRACTION={self.gpu_refuse_fraction:g}: cleanup must act first"
            )
        return self

"""Random-weight TRELLIS models in the released layout: tiny ones for CPU tests, full-size ones for GPU checks.

``build_model_caches(root, size)`` writes what the backend's own loading path reads offline:
- a Hugging Face hub cache (``HF_HUB_CACHE``) holding ``microsoft/TRELLIS-image-large`` and
  ``microsoft/TRELLIS-text-xlarge`` exactly as released (``pipeline.json``, ``ckpts/<name>.json`` +
  ``.safetensors``; the text model borrows the image model's decoders through hub paths), built from TRELLIS's
  real classes with the released architectures (``full``) or the same classes, grid and 32 gaussians per voxel
  at small widths and depths (``tiny``), plus a text encoder in CLIP's layout (``openai/clip-vit-large-patch14``);
- a torch hub cache (``TORCH_HOME``) with a DINOv2 stand-in: a hubconf.py written here (a plain ViT with
  DINOv2's interface: patch 14, a class token and 4 registers, ``x_prenorm``) and its checkpoint.

Weights are random, so outputs mean nothing; what they are for is running TRELLIS's real code and timing it.
Zero-initialised layers (adaLN modulation, output layers) get small random values so that every block does real
work, and the sparse-structure decoder's last bias is calibrated so that latents from the flow sampler mark about
``target_voxels`` of the 64^3 grid (TRELLIS's real outputs mark ~12,500: ~400K gaussians).
The ``slat_normalization`` values are identity (mean 0, std 1), not the released statistics.
Requires torch, trellis (imported through the portable runtime) and, for the text model, transformers.

Long because both pipelines' model sets, their released architectures at two sizes, the conditioning
stand-ins and the occupancy calibration must agree on one layout that the backend's own loader reads.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Size = Literal["tiny", "full"]

IMAGE_REPO = "microsoft/TRELLIS-image-large"
TEXT_REPO = "microsoft/TRELLIS-text-xlarge"
CLIP_REPO = "openai/clip-vit-large-patch14"
DINOV2_NAME = "dinov2_vitl14_reg"
REVISION = "0" * 40
FULL_TARGET_VOXELS = 12_500
TINY_TARGET_VOXELS = 450
CALIBRATION_STEPS = {"tiny": 2, "full": 4}

_SWIN_B = {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12, "num_heads": 12,
           "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": True}  # fmt: skip
_GS_REPRESENTATION = {
    "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
    "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1,
    "3d_filter_kernel_size": 0.0009, "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": "softplus",
}  # fmt: skip

# The released checkpoints' configs (TRELLIS's configs/ at the pinned commit), keyed by checkpoint name.
RELEASED: dict[str, dict[str, Any]] = {
    "ss_dec_conv3d_16l8_fp16": {"name": "SparseStructureDecoder", "args": {
        "out_channels": 1, "latent_channels": 8, "num_res_blocks": 2, "num_res_blocks_middle": 2,
        "channels": [512, 128, 32], "use_fp16": True}},
    "ss_flow_img_dit_L_16l8_fp16": {"name": "SparseStructureFlowModel", "args": {
        "resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 1024, "cond_channels": 1024,
        "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape",
        "qk_rms_norm": True, "use_fp16": True}},
    "slat_flow_img_dit_L_64l8p2_fp16": {"name": "SLatFlowModel", "args": {
        "resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 1024, "cond_channels": 1024,
        "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4, "patch_size": 2, "num_io_res_blocks": 2,
        "io_block_channels": [128], "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True}},
    "slat_dec_gs_swin8_B_64l8gs32_fp16": {"name": "SLatGaussianDecoder", "args": {
        **_SWIN_B, "representation_config": _GS_REPRESENTATION}},
    "slat_dec_rf_swin8_B_64l8r16_fp16": {"name": "SLatRadianceFieldDecoder", "args": {
        **_SWIN_B, "representation_config": {"rank": 16, "dim": 8}}},
    "slat_dec_mesh_swin8_B_64l8m256c_fp16": {"name": "SLatMeshDecoder", "args": {
        **_SWIN_B, "representation_config": {"use_color": True}}},
    "ss_flow_txt_dit_XL_16l8_fp16": {"name": "SparseStructureFlowModel", "args": {
        "resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 1280, "cond_channels": 768,
        "num_blocks": 28, "num_heads": 16, "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape",
        "qk_rms_norm": True, "qk_rms_norm_cross": True, "use_fp16": True}},
    "slat_flow_txt_dit_XL_64l8p2_fp16": {"name": "SLatFlowModel", "args": {
        "resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 1280, "cond_channels": 768,
        "num_blocks": 28, "num_heads": 16, "mlp_ratio": 4, "patch_size": 2, "num_io_res_blocks": 3,
        "io_block_channels": [256], "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True}},
}  # fmt: skip

# Tiny: the same classes, grid and gaussians per voxel; small widths and depths. The sparse-structure decoder
# stays fp32 (fp16 conv3d is very slow on a CPU).
TINY_COND = 64
_TINY_FLOW = {"model_channels": 64, "cond_channels": TINY_COND, "num_blocks": 2, "num_heads": 4}
_TINY_DEC = {"model_channels": 64, "num_blocks": 2, "num_heads": 4}
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "ss_dec_conv3d_16l8_fp16": {"channels": [32, 16, 8], "num_res_blocks": 1, "num_res_blocks_middle": 1,
                                "use_fp16": False},
    "ss_flow_img_dit_L_16l8_fp16": _TINY_FLOW,
    "slat_flow_img_dit_L_64l8p2_fp16": {**_TINY_FLOW, "io_block_channels": [16], "num_io_res_blocks": 1},
    "slat_dec_gs_swin8_B_64l8gs32_fp16": _TINY_DEC,
    "slat_dec_rf_swin8_B_64l8r16_fp16": _TINY_DEC,
    "slat_dec_mesh_swin8_B_64l8m256c_fp16": _TINY_DEC,
    "ss_flow_txt_dit_XL_16l8_fp16": _TINY_FLOW,
    "slat_flow_txt_dit_XL_64l8p2_fp16": {**_TINY_FLOW, "io_block_channels": [16], "num_io_res_blocks": 1},
}  # fmt: skip

IMAGE_MODELS = {
    "sparse_structure_decoder": "ss_dec_conv3d_16l8_fp16",
    "sparse_structure_flow_model": "ss_flow_img_dit_L_16l8_fp16",
    "slat_decoder_gs": "slat_dec_gs_swin8_B_64l8gs32_fp16",
    "slat_decoder_rf": "slat_dec_rf_swin8_B_64l8r16_fp16",
    "slat_decoder_mesh": "slat_dec_mesh_swin8_B_64l8m256c_fp16",
    "slat_flow_model": "slat_flow_img_dit_L_64l8p2_fp16",
}
TEXT_MODELS = {
    "sparse_structure_decoder": f"{IMAGE_REPO}/ckpts/ss_dec_conv3d_16l8_fp16",
    "sparse_structure_flow_model": "ss_flow_txt_dit_XL_16l8_fp16",
    "slat_decoder_gs": f"{IMAGE_REPO}/ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16",
    "slat_decoder_rf": f"{IMAGE_REPO}/ckpts/slat_dec_rf_swin8_B_64l8r16_fp16",
    "slat_decoder_mesh": f"{IMAGE_REPO}/ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16",
    "slat_flow_model": "slat_flow_txt_dit_XL_64l8p2_fp16",
}
# Only mesh output builds it, and building it needs FlexiCubes: its checkpoint is a config with empty weights.
NOT_BUILT = frozenset({"slat_dec_mesh_swin8_B_64l8m256c_fp16"})


def _sampler(cfg_strength: float, cfg_interval: list[float], steps: int = 25) -> dict[str, Any]:
    return {
        "name": "FlowEulerGuidanceIntervalSampler",
        "args": {"sigma_min": 1e-5},
        "params": {
            "steps": steps,
            "cfg_strength": cfg_strength,
            "cfg_interval": cfg_interval,
            "rescale_t": 3.0,
        },
    }


def pipeline_json(kind: Literal["image", "text"]) -> dict[str, Any]:
    """``pipeline.json`` in the released layout."""
    models = IMAGE_MODELS if kind == "image" else TEXT_MODELS
    args: dict[str, Any] = {
        "models": {key: ref if "/" in ref else f"ckpts/{ref}" for key, ref in models.items()},
        "sparse_structure_sampler": _sampler(7.5, [0.5, 0.95]),
        "slat_sampler": _sampler(3.0, [0.5, 1.0]),
        "slat_normalization": {"mean": [0.0] * 8, "std": [1.0] * 8},
    }
    if kind == "image":
        args["image_cond_model"] = DINOV2_NAME
        return {"name": "TrellisImageTo3DPipeline", "args": args}
    args["text_cond_model"] = CLIP_REPO
    return {"name": "TrellisTextTo3DPipeline", "args": args}


def model_config(name: str, size: Size) -> dict[str, Any]:
    config = copy.deepcopy(RELEASED[name])
    if size == "tiny":
        config["args"].update(copy.deepcopy(TINY_OVERRIDES[name]))
    return config


@dataclass(frozen=True)
class ModelCaches:
    """Where the models were written, and the environment that points the worker at them (offline)."""

    hf_cache: Path
    torch_home: Path
    rembg_model: Path
    size: Size
    target_voxels: int
    calibrated_voxels: float

    def environment(self) -> dict[str, str]:
        return {
            "HF_HUB_CACHE": str(self.hf_cache),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TORCH_HOME": str(self.torch_home),
            "SPLATGEN_TRELLIS_IMAGE_MODEL": IMAGE_REPO,
            "SPLATGEN_TRELLIS_TEXT_MODEL": TEXT_REPO,
            "SPLATGEN_TRELLIS_REMBG_MODEL_PATH": str(self.rembg_model),
            # rembg loads custom models only from under its home
            "U2NET_HOME": str(self.rembg_model.parent),
        }


def snapshot(hf_cache: Path, repo: str) -> Path:
    """A repo's snapshot folder in huggingface_hub's cache layout (created with its ``refs/main``)."""
    repo_dir = hf_cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    folder = repo_dir / "snapshots" / REVISION
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_model_caches(
    root: Path,
    size: Size = "tiny",
    *,
    seed: int = 0,
    target_voxels: int | None = None,
    device: str = "cpu",
    text: bool = True,
) -> ModelCaches:
    """Write both pipelines, DINOv2 and CLIP stand-ins under ``root`` (see the module docstring)."""
    import torch
    from safetensors.torch import save_file

    from generation.worker.backends.trellis_runtime import cuda_calls_on_cpu

    trellis_models = __import__("trellis.models", fromlist=["from_pretrained"])
    target = target_voxels or (TINY_TARGET_VOXELS if size == "tiny" else FULL_TARGET_VOXELS)
    hf_cache, torch_home = root / "hf", root / "torch"
    torch.manual_seed(seed)
    built: dict[str, Any] = {}
    names = [*IMAGE_MODELS.values()] + (
        [TEXT_MODELS[k] for k in ("sparse_structure_flow_model", "slat_flow_model")] if text else []
    )
    for name in names:
        if name in NOT_BUILT:
            continue
        config = model_config(name, size)
        with cuda_calls_on_cpu(torch):
            model = getattr(trellis_models, config["name"])(**config["args"])
        _wake_zero_layers(torch, model)
        built[name] = model.eval()

    cond_channels = model_config("ss_flow_img_dit_L_16l8_fp16", size)["args"]["cond_channels"]
    voxels = _calibrate_occupancy(
        torch,
        built["ss_dec_conv3d_16l8_fp16"],
        built["ss_flow_img_dit_L_16l8_fp16"],
        cond_channels,
        target,
        device,
        CALIBRATION_STEPS[size],
    )

    image = snapshot(hf_cache, IMAGE_REPO)
    (image / "pipeline.json").write_text(json.dumps(pipeline_json("image"), indent=2))
    for name in IMAGE_MODELS.values():
        _write_checkpoint(save_file, image / "ckpts", name, model_config(name, size), built.get(name))
    if text:
        folder = snapshot(hf_cache, TEXT_REPO)
        (folder / "pipeline.json").write_text(json.dumps(pipeline_json("text"), indent=2))
        for ref in TEXT_MODELS.values():
            if "/" not in ref:
                _write_checkpoint(save_file, folder / "ckpts", ref, model_config(ref, size), built[ref])
        text_cond = model_config("ss_flow_txt_dit_XL_16l8_fp16", size)["args"]["cond_channels"]
        write_clip_stand_in(snapshot(hf_cache, CLIP_REPO), text_cond, size)
    dino_dim = cond_channels
    write_dinov2_stand_in(
        torch_home, dino_dim, depth=24 if size == "full" else 1, heads=16 if size == "full" else 2
    )
    rembg_model = write_u2net_stand_in(root / "u2net" / "u2net_stand_in.onnx")
    return ModelCaches(hf_cache, torch_home, rembg_model, size, target, voxels)


def _write_checkpoint(save_file: Any, folder: Path, name: str, config: dict[str, Any], model: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(config, indent=2))
    state = {} if model is None else {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / f"{name}.safetensors"))


def _wake_zero_layers(torch: Any, model: Any) -> None:
    """Small random values for layers TRELLIS initialises to zero, so that no block is an identity."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2 and not parameter.any():
                noise = torch.randn(parameter.shape, generator=generator) * 0.02
                parameter.copy_(noise.to(parameter.dtype))


def _calibrate_occupancy(
    torch: Any, decoder: Any, flow: Any, cond_channels: int, target: int, device: str, steps: int
) -> float:
    """Set the decoder's last bias so flow-sampled latents mark ~``target`` voxels; returns the mean reached."""
    samplers = __import__("trellis.pipelines.samplers", fromlist=["FlowEulerGuidanceIntervalSampler"])
    sampler = samplers.FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
    last = decoder.out_layer[-1]
    decoder.to(device)
    flow.to(device)
    thresholds, counts = [], []
    with torch.inference_mode():
        last.bias.zero_()
        for seed in range(2):
            generator = torch.Generator().manual_seed(100 + seed)
            cond = torch.randn(1, 1374, cond_channels, generator=generator).to(device)
            noise = torch.randn(1, flow.in_channels, 16, 16, 16, generator=generator).to(device)
            latent = sampler.sample(
                flow, noise, cond=cond, neg_cond=torch.zeros_like(cond), steps=steps,
                cfg_strength=7.5, cfg_interval=[0.5, 0.95], rescale_t=3.0, verbose=False,
            ).samples  # fmt: skip
            logits = decoder(latent).float().flatten()
            top = torch.topk(logits, target + 1).values
            thresholds.append(float(top[target - 1] + top[target]) / 2)
        last.bias.fill_(-sum(thresholds) / len(thresholds))
        for seed in range(2):
            generator = torch.Generator().manual_seed(100 + seed)
            cond = torch.randn(1, 1374, cond_channels, generator=generator).to(device)
            noise = torch.randn(1, flow.in_channels, 16, 16, 16, generator=generator).to(device)
            latent = sampler.sample(
                flow, noise, cond=cond, neg_cond=torch.zeros_like(cond), steps=steps,
                cfg_strength=7.5, cfg_interval=[0.5, 0.95], rescale_t=3.0, verbose=False,
            ).samples  # fmt: skip
            counts.append(int((decoder(latent) > 0).sum()))
    decoder.cpu()
    flow.cpu()
    return sum(counts) / len(counts)


# -- conditioning stand-ins ------------------------------------------------------------------------------------

_HUBCONF = '''"""A random-weight stand-in for facebookresearch/dinov2 (written by splatgen's trellis_models).

A plain ViT with DINOv2's interface as TRELLIS calls it: 14-pixel patches, a class token, 4 register tokens,
and forward(image, is_training=True)["x_prenorm"]. Not DINOv2: random weights, for tests and timing only.
"""

import os

import torch
from torch import nn

dependencies = ["torch"]
DIM, DEPTH, HEADS, PATCH, REGISTERS = {dim}, {depth}, {heads}, 14, 4


class StandInDinoV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(1, REGISTERS, DIM) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (518 // PATCH) ** 2, DIM) * 0.02)
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 4 * DIM, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, DEPTH, enable_nested_tensor=False)

    def forward(self, x, is_training=False):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(len(x), -1, -1), tokens[:, 1:]], dim=1)
        tokens = self.blocks(tokens)
        return {{"x_prenorm": tokens}} if is_training else tokens[:, 0]


def {name}(pretrained=True, **kwargs):
    model = StandInDinoV2()
    if pretrained:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", "{checkpoint}")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
'''
DINOV2_CHECKPOINT = "dinov2_vitl14_reg4_pretrain.pth"


def write_dinov2_stand_in(torch_home: Path, dim: int, *, depth: int = 1, heads: int = 2) -> Path:
    """``TORCH_HOME/hub/facebookresearch_dinov2_main/hubconf.py`` and its checkpoint, as torch.hub caches them."""
    import importlib.util

    import torch

    repo = torch_home / "hub" / "facebookresearch_dinov2_main"
    repo.mkdir(parents=True, exist_ok=True)
    source = _HUBCONF.format(
        dim=dim, depth=depth, heads=heads, name=DINOV2_NAME, checkpoint=DINOV2_CHECKPOINT
    )
    (repo / "hubconf.py").write_text(source)
    spec = importlib.util.spec_from_file_location("splatgen_dinov2_stand_in", repo / "hubconf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(getattr(module, DINOV2_NAME)(pretrained=False).state_dict(), checkpoints / DINOV2_CHECKPOINT)
    return repo


def write_dinov2_from_hub_code(torch_home: Path, hub_code: Path, name: str = DINOV2_NAME) -> Path:
    """The real facebookresearch/dinov2 hub code (a local copy) with random weights, replacing the stand-in."""
    import shutil

    import torch

    repo = torch_home / "hub" / "facebookresearch_dinov2_main"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(hub_code, repo)
    model = torch.hub.load(str(repo), name, source="local", pretrained=False)
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoints / DINOV2_CHECKPOINT)
    return repo


def write_clip_stand_in(folder: Path, hidden: int, size: Size) -> None:
    """A CLIP text encoder with random weights and a byte-level vocabulary, in CLIP's hub layout."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = _byte_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(str(folder))
    full = size == "full"
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=12 if full else 1,
        num_attention_heads=12 if full else 2,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    CLIPTextModel(config).save_pretrained(str(folder))


def write_u2net_stand_in(path: Path) -> Path:
    """A background-removal model with u2net's interface (1x3x320x320 in, a 1x1x320x320 mask first out):
    the mean of the normalised channels, so bright objects on a dark background come out as foreground.
    For tests without rembg's u2net download (SPLATGEN_TRELLIS_REMBG_MODEL_PATH); not a segmentation model."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 320, 320])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceMean", ["input.1", "axes"], ["mask"], keepdims=1)
    graph = helper.make_graph([node], "u2net_stand_in", [image], [mask], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _byte_vocabulary() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet, each symbol alone and word-final, plus CLIP's two special tokens."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    tokens = symbols + [f"{s}</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}

"""Loading Stable Diffusion 1.x components: from the hub, a local folder, a checkpoint file, or built
in-process with random weights (`tiny`, `sd15-random`) so that every code path runs offline."""

from __future__ import annotations

import glob
import json
import logging
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dragon_server.engine.request import ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TOY_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toy", "model")
"""The small model trained on procedural scenes that ships with the package (`dragon train-toy`)."""
MODEL_ALIASES = {"sd15": DEFAULT_MODEL, "toy": TOY_MODEL}
MODEL_DEFAULTS_FILE = "dragon.json"
"""Optional file in a diffusers folder with the model's own defaults: `working_area` (pixels, the
area the region of interest is scaled to) and `strength` (factor on every edit's guidance strength: one
number, or one per mode such as {"move": 128, "drag": 64}, 1 for modes it leaves out)."""
RANDOM_MODELS = ("tiny", "sd15-random")
WEIGHTED_PARTS = ("unet", "vae", "text_encoder")
"""The parts of a diffusers folder that hold weights."""

SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
"""What a model's UNet may predict (its scheduler's `prediction_type`); `Runner.as_noise` turns each
into the noise that DDIM works on."""
SD1_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


@dataclass
class Components:
    """Everything one model needs, loaded once on one device."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: Any
    scheduler: DDIMScheduler
    name: str
    device: torch.device
    dtype: torch.dtype
    default_area: int
    """Pixel area the region of interest is scaled to when a request does not say."""
    strength: Mapping[str, float] = field(default_factory=dict)
    """The model's own factor on the guidance strength, by mode name (a request's strength 1 means
    this); from the folder's dragon.json, none (1) for SD 1.5. Small models trained briefly need more."""

    def strength_for(self, mode: str) -> float:
        """The model's strength factor for `mode` (a Mode or its name)."""
        return self.strength.get(getattr(mode, "value", mode), 1.0)


def pick_device(device: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU for `auto`; otherwise the named device, checked: a device this
    PyTorch cannot use (not built in, no such hardware, an index past the last one) raises ModelError."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ModelError(f"unknown device '{device}': use auto, cuda, cuda:N, mps or cpu") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        if dev.type == "cuda":
            raise ModelError("CUDA was asked for but this PyTorch sees no CUDA GPU: use --device cpu or auto")
        if dev.type == "mps":
            raise ModelError("MPS was asked for but is not available here: use --device cpu or auto")
        raise ModelError(f"{dev.type.upper()} was asked for but this PyTorch cannot use it here: "
                         "use --device cpu or auto")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        raise ModelError(f"{device} was asked for but this PyTorch sees {count()} {dev.type.upper()} device(s), "
                         f"numbered from 0: use --device {dev.type}:0 or auto")
    return dev


def default_area(sample_size) -> int:
    """The default working area (pixels) of a UNet whose latents are `sample_size` cells wide: the
    release's 768^2 for SD 1.x (1.5 times its 512 px training size: 64 latent cells of 8 px), scaled with
    the latent size for other models. `sample_size` is the UNet config's (an int, or a pair)."""
    side = 12 * int(sample_size if isinstance(sample_size, int) else max(sample_size))
    return side * side


def pick_dtype(device: torch.device, dtype: Optional[str] = None) -> torch.dtype:
    """Half precision on GPUs (fp16, or bf16 when asked), fp32 on the CPU."""
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype is not None:
        if dtype not in names:
            raise ModelError(f"unknown dtype '{dtype}': use fp32, fp16 or bf16")
        return names[dtype]
    return torch.float32 if device.type == "cpu" else torch.float16


def byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes, made in-process: the random-weight models need no vocab file."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = 77
    return tokenizer


def _vae(channels: Tuple[int, ...], layers: int, groups: int, size: int) -> AutoencoderKL:
    """The SD VAE layout: four blocks, so latents are an eighth of the image's size."""
    return AutoencoderKL(
        block_out_channels=channels, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=layers,
        norm_num_groups=groups, sample_size=size,
    )


def build_random(name: str, seed: int = 0) -> tuple:
    """The SD 1.x architecture with random weights from a fixed seed: `tiny` (small) or `sd15-random`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny":
            unet = UNet2DConditionModel(
                sample_size=16, block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=32,
                attention_head_dim=4, norm_num_groups=8,
            )
            vae = _vae((8, 16, 32, 32), layers=1, groups=8, size=128)
            text = CLIPTextConfig(
                vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                bos_token_id=512, eos_token_id=513, pad_token_id=513,
            )
        else:
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
            vae = _vae((128, 256, 512, 512), layers=2, groups=32, size=512)
            text = CLIPTextConfig(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
            )
        text_encoder = CLIPTextModel(text)
    return unet, vae, text_encoder, byte_level_tokenizer(), DDIMScheduler(**SD15_SCHEDULER)


def check_sd1(config: dict, where: str) -> None:
    """Refuse UNets that are not Stable Diffusion 1.x: the method's feature layers assume it."""
    width, channels = config.get("cross_attention_dim"), config.get("in_channels")
    if tuple(config.get("up_block_types", ())) != SD1_UP_BLOCKS or channels != 4 or width != 768:
        raise ModelError(
            f"{where} is not a Stable Diffusion 1.x model (its UNet has cross-attention width "
            f"{width} and {channels} input channels): use an SD 1.5 model"
        )


def safetensors_header(path: str) -> dict:
    """The JSON header of a .safetensors file, checked against the file's length: a file shorter than
    its header says (an interrupted download) raises ModelError calling it damaged."""
    size_on_disk = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ModelError(f"{path} is not a safetensors file (it is too short): download it again")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000 or 8 + size > size_on_disk:
            raise ModelError(f"{path} is damaged (its header is cut off or malformed): download it again")
        try:
            header = json.loads(f.read(size))
        except ValueError:
            raise ModelError(f"{path} is damaged (its header is malformed): download it again") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} is damaged (its header is malformed): download it again")
    ends = [v["data_offsets"][1] for v in header.values() if isinstance(v, dict) and "data_offsets" in v]
    expected = 8 + size + max(ends, default=0)
    if size_on_disk < expected:
        raise ModelError(f"{path} is damaged: it has {size_on_disk} bytes of the {expected} its header describes "
                         "(an interrupted download?): download it again")
    return header


def _checkpoint_keys(path: str) -> dict:
    """Tensor names and shapes of a .safetensors (from its header) or .ckpt file (zip or legacy format),
    without loading it all."""
    if path.endswith(".safetensors"):
        header = safetensors_header(path)
        return {k: v.get("shape") for k, v in header.items() if isinstance(v, dict)}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise ModelError(f"{path} holds Python objects besides its weights, which are not run for safety: "
                             "convert it to .safetensors with a trusted tool, or use a .safetensors "
                             "version of the model") from None
        raise ModelError(f"{path} is not a readable checkpoint (it may be damaged): download it again") from None
    except Exception as exc:  # torch raises many types for foreign or cut-off files
        raise ModelError(f"{path} is not a readable checkpoint ({type(exc).__name__}; it may be damaged): "
                         "download it again") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def check_sd1_checkpoint(path: str) -> None:
    """Refuse a single-file checkpoint that is not SD 1.x, by its tensor names, before loading it."""
    keys = _checkpoint_keys(path)
    probe = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    shape = keys.get(probe)
    if shape is None or list(shape)[-1] != 768:
        kind = "SDXL" if any(k.startswith("conditioner.") for k in keys) else "not SD 1.x"
        raise ModelError(f"{path} is {kind}: DragonDiffusion here needs a Stable Diffusion 1.x checkpoint")


def model_defaults(folder: str) -> dict:
    """The defaults a model folder's dragon.json sets (`working_area`, `strength`), checked; {} when
    it has none. Raises ModelError when the file is malformed."""
    path = os.path.join(folder, MODEL_DEFAULTS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON ({exc.__class__.__name__}): fix or remove it") from None
    def positive(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
            raise ModelError(f"{path}: '{key}' must be a positive number, got {value!r}")
        return value

    out: dict = {}
    if "working_area" in data:
        out["working_area"] = int(positive("working_area", data["working_area"]))
    strength = data.get("strength", {})
    modes = ("move", "drag", "appearance", "paste")
    if not isinstance(strength, dict):
        strength = {mode: positive("strength", strength) for mode in modes}
    for mode, value in strength.items():
        if mode not in modes:
            raise ModelError(f"{path}: 'strength' has an unknown mode {mode!r}: use {', '.join(modes)}")
        positive(f"strength.{mode}", value)
    out["strength"] = {mode: float(v) for mode, v in strength.items()}
    return out


def _download(repo: str, variant: Optional[str]) -> str:
    """Fetch the files the engine uses from the hub (progress bars from huggingface_hub), or say why not."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    patterns = [
        "model_index.json", "scheduler/*", "tokenizer/*", "*/config.json",
        f"unet/*{suffix}", f"vae/*{suffix}", f"text_encoder/*{suffix}",
    ]
    try:
        folder = snapshot_download(repo, allow_patterns=patterns)
        # A part without the variant's files (or without safetensors at all) gets its plain weights.
        for extension in ("safetensors", "bin"):
            missing = [part for part in WEIGHTED_PARTS if not glob.glob(os.path.join(folder, part, "*.safetensors"))
                       and not glob.glob(os.path.join(folder, part, "*.bin"))]
            if missing:
                folder = snapshot_download(repo, allow_patterns=[f"{part}/*.{extension}" for part in missing])
        return folder
    except LocalEntryNotFoundError:
        raise ModelError(
            f"cannot download {repo}: this machine is offline and it is not in the cache; "
            "use --model PATH (a diffusers folder or a .safetensors/.ckpt file) or --model tiny"
        ) from None
    except HfHubHTTPError as exc:
        raise ModelError(f"cannot download {repo}: {str(exc).splitlines()[0]}; use --model PATH") from None
    except OSError as exc:
        raise ModelError(
            f"cannot download {repo} ({exc.__class__.__name__}); check the network, "
            "or use --model PATH or --model tiny"
        ) from None


def _weights_variant(folder: str, part: str, wanted: Optional[str]) -> Optional[str]:
    """The weights variant to load for `part` of a diffusers folder: `wanted` (fp16 on GPUs) when the
    part has it, else the plain weights, else the variant it has (fp16-only folders load on any dtype).
    Every .safetensors file is checked for damage; a part without weights raises ModelError."""
    where = os.path.join(folder, part)
    files = sorted(os.listdir(where)) if os.path.isdir(where) else []
    weights = [f for f in files if f.endswith((".safetensors", ".bin"))]
    if not weights:
        raise ModelError(f"{where} holds no weights (*.safetensors or *.bin): the model folder is incomplete; "
                         "download it again")
    for name in weights:
        if name.endswith(".safetensors"):
            safetensors_header(os.path.join(where, name))
    variants = {name.split(".")[1].split("-")[0] for name in weights if name.count(".") >= 2}
    if wanted in variants:
        return wanted
    if any(name.count(".") == 1 for name in weights):
        return None
    return sorted(variants)[0]


def _from_folder(folder: str, dtype: torch.dtype, variant: Optional[str]) -> tuple:
    if not os.path.isfile(os.path.join(folder, "unet", "config.json")):
        raise ModelError(f"{folder} is not a diffusers model folder (no unet/config.json): give the folder that "
                         "holds model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/")
    check_sd1(dict(UNet2DConditionModel.load_config(folder, subfolder="unet")), folder)
    loaders = [
        (UNet2DConditionModel, "unet", True), (AutoencoderKL, "vae", True), (CLIPTextModel, "text_encoder", True),
        (CLIPTokenizer, "tokenizer", False), (DDIMScheduler, "scheduler", False),
    ]
    kwargs = [dict(torch_dtype=dtype, variant=_weights_variant(folder, sub, variant)) if weighted else {}
              for _, sub, weighted in loaders]
    parts = []
    for (cls, sub, _), kw in tqdm(list(zip(loaders, kwargs)), desc="loading model", unit="part", leave=False):
        try:
            parts.append(cls.from_pretrained(folder, subfolder=sub, **kw))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load {os.path.join(folder, sub)} ({str(exc).splitlines()[0][:200]}): "
                             "download the model again") from None
    return tuple(parts)


def _from_single_file(path: str, dtype: torch.dtype) -> tuple:
    from diffusers import StableDiffusionPipeline

    check_sd1_checkpoint(path)
    try:
        pipe = StableDiffusionPipeline.from_single_file(path, torch_dtype=dtype, load_safety_checker=False)
    except OSError as exc:
        raise ModelError(
            f"cannot load {path}: the SD 1.5 configuration files could not be fetched "
            f"({exc.__class__.__name__}); connect once so they are cached, or convert it to a diffusers folder"
        ) from None
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **SD15_SCHEDULER)
    return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler


def load_components(model: str = "sd15", device: str = "auto", dtype: Optional[str] = None) -> Components:
    """Load a model once: `sd15` (hub, cached), a hub repo id, a diffusers folder, a .safetensors/.ckpt
    file, `toy` (the packaged model trained on procedural scenes), `tiny` or `sd15-random` (random
    weights, no download)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    variant = "fp16" if dt != torch.float32 else None
    name = MODEL_ALIASES.get(model, model)
    defaults: dict = {}
    if name in RANDOM_MODELS:
        parts = build_random(name)
    elif name == TOY_MODEL and not os.path.isdir(name):
        raise ModelError(f"the toy model is missing from {name}: reinstall the package or run dragon train-toy")
    elif os.path.isdir(name):
        defaults = model_defaults(name)
        parts = _from_folder(name, dt, variant)
    elif name.endswith((".safetensors", ".ckpt")):
        if not os.path.isfile(name):
            raise ModelError(f"checkpoint {name} does not exist: give the path of a .safetensors or .ckpt file")
        parts = _from_single_file(name, dt)
    elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
        log.info("loading %s (downloaded on first use, then cached)", name)
        parts = _from_folder(_download(name, variant), dt, variant)
    elif name.startswith((".", "/", "~")) or os.path.sep in name:
        raise ModelError(f"model {name} does not exist: give a diffusers model folder or a .safetensors/.ckpt file")
    else:
        raise ModelError(
            f"unknown model '{model}': use sd15, toy, tiny, sd15-random, a hub id like owner/name, "
            "a diffusers folder or a .safetensors/.ckpt file"
        )
    unet, vae, text_encoder, tokenizer, scheduler = parts
    area = 128 * 128 if name == "tiny" else defaults.get("working_area", default_area(unet.config.sample_size))
    for module in (unet, vae, text_encoder):
        module.to(device=dev).eval().requires_grad_(False)
        if module.dtype != dt:
            module.to(dtype=dt)
    if name not in RANDOM_MODELS:
        check_sd1(dict(unet.config), name)
    prediction = scheduler.config.prediction_type
    if prediction not in PREDICTION_TYPES:
        raise ModelError(f"{name}: its scheduler predicts '{prediction}', which this engine cannot sample: "
                         f"use a model whose scheduler's prediction_type is one of {', '.join(PREDICTION_TYPES)}")
    if prediction != "epsilon":
        log.info("%s predicts %s: its predictions are turned into noise for DDIM", name, prediction)
    return Components(unet, vae, text_encoder, tokenizer, scheduler, model, dev, dt, area,
                      defaults.get("strength", {}))

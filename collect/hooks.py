"""Hooks on the residual stream, in one place: add (steer), cap, ablate, record, registered by one context
manager.

A hook acts on the output of decoder layers (the residual stream after the layer), found generically as
`model.get_decoder().layers`; a layer's output may be a tensor or a tuple whose first item is the
hidden states. Which positions a hook touches is its position mode:

- `all`: every position;
- `prompt`: positions before `prompt_len` in a forward pass over more than one token (prefill); never
  in single-token decoding steps;
- `response`: positions from `prompt_len - 1` on (those that predict response tokens); in a forward
  pass over a prompt alone (`prompt_len` = its length) that is only the last position.

Hooks are removed when the block exits, also after an exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

Mode = Literal["all", "prompt", "response"]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (Llama, Gemma 3, Qwen 3 MoE, ...)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for path in ("layers", "model.layers", "language_model.layers"):
        obj = decoder
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise AttributeError(f"cannot find decoder layers in {type(model).__name__}")


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def position_mask(hidden: torch.Tensor, mode: Mode, prompt_len: torch.Tensor | int | None) -> torch.Tensor | None:
    """[B, T, 1] boolean mask of positions to act on, or None for every position."""
    if mode == "all":
        return None
    B, T = hidden.shape[:2]
    if prompt_len is None:
        raise ValueError(f"position mode {mode!r} needs prompt_len")
    plen = torch.as_tensor(prompt_len, device=hidden.device).reshape(-1, 1).expand(B, 1)
    pos = torch.arange(T, device=hidden.device).unsqueeze(0)
    if mode == "prompt":
        if T == 1:  # a decoding step: never part of the prompt
            return torch.zeros(B, T, 1, dtype=torch.bool, device=hidden.device)
        return (pos < plen).unsqueeze(-1)
    if mode == "response":
        if T == 1:
            return torch.ones(B, T, 1, dtype=torch.bool, device=hidden.device)
        return (pos >= plen - 1).unsqueeze(-1)
    raise ValueError(f"unknown position mode {mode!r}")


@dataclass
class Addition:
    """Add `coeff[b] * vector[b]` (or one vector for every row) at a layer's output."""

    vector: torch.Tensor  # [H] or [B, H]
    coeff: torch.Tensor  # [B] (one per batch row: several magnitudes share a forward pass)
    mode: Mode = "all"
    prompt_len: torch.Tensor | int | None = None

    def __call__(self, module, args, output):
        h = _hidden(output)
        if not torch.any(self.coeff != 0):
            return output  # exactly the unsteered computation
        v = self.vector.to(h.dtype)
        delta = self.coeff.to(h.dtype).reshape(-1, 1, 1) * (v if v.dim() == 2 else v.unsqueeze(0)).unsqueeze(1)
        mask = position_mask(h, self.mode, self.prompt_len)
        return _replace(output, h + (delta if mask is None else delta * mask))


@dataclass
class Cap:
    """Raise the projection of the residual on a unit `axis` to at least `tau[b]`; positions already
    at or above tau are untouched."""

    axis: torch.Tensor  # [H], unit norm
    tau: torch.Tensor  # [B]
    mode: Mode = "all"
    prompt_len: torch.Tensor | int | None = None

    def __call__(self, module, args, output):
        h = _hidden(output)
        a = self.axis.to(h.dtype)
        proj = h @ a  # [B, T]
        lift = torch.clamp(self.tau.to(h.dtype).reshape(-1, 1) - proj, min=0).unsqueeze(-1) * a
        mask = position_mask(h, self.mode, self.prompt_len)
        return _replace(output, h + (lift if mask is None else lift * mask))


@dataclass
class Ablation:
    """Directional ablation on a unit `axis`: remove the residual's projection on it, or with `mean`
    (mean ablation) replace the projection with that value, the mean projection over a reference set.
    Applying it twice equals applying it once. A position whose projection is already the target to
    rounding (within 1e-6 of its residual's norm: a direction orthogonal to it) is left bit-identical."""

    axis: torch.Tensor  # [H], unit norm
    mean: torch.Tensor | float | None = None  # None: remove the projection; else set it to this ([B]: per row)
    mode: Mode = "all"
    prompt_len: torch.Tensor | int | None = None

    def __call__(self, module, args, output):
        h = _hidden(output)
        a = self.axis.to(h.dtype)
        proj = (h @ a).unsqueeze(-1)  # [B, T, 1]
        target = torch.as_tensor(0.0 if self.mean is None else self.mean, dtype=h.dtype, device=h.device)
        gap = target.reshape(-1, 1, 1) - proj
        gap = torch.where(gap.abs() <= 1e-6 * h.norm(dim=-1, keepdim=True), torch.zeros_like(gap), gap)
        delta = gap * a
        mask = position_mask(h, self.mode, self.prompt_len)
        return _replace(output, h + (delta if mask is None else delta * mask))


class Project:
    """Keep the projections of a layer's output on unit directions ([K, H]): [B, T, K] float32 per pass."""

    def __init__(self, directions: torch.Tensor) -> None:
        self.directions = directions
        self.outputs: list[torch.Tensor] = []

    def __call__(self, module, args, output):
        h = _hidden(output)
        self.outputs.append((h @ self.directions.to(h.dtype).T).float())
        return output


class Record:
    """Keep a layer's output hidden states (detached, float32) from every forward pass."""

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []

    def __call__(self, module, args, output):
        self.outputs.append(_hidden(output).detach().float())
        return output


@contextmanager
def hooks(model: torch.nn.Module, per_layer: dict[int, list]) -> Iterator[None]:
    """Register forward hooks {layer index: [hook, ...]} for the block; always removed on exit."""
    layers = decoder_layers(model)
    with ExitStack() as stack:
        for idx, fns in per_layer.items():
            for fn in fns:
                handle = layers[idx].register_forward_hook(fn)
                stack.callback(handle.remove)
        yield

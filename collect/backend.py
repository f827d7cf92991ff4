"""One backend interface for the collector, and its transformers implementation.

`Backend` is what the runner needs: generate responses (seeded per response), teacher-force given
continuations and return per-token log-probs (optionally while steering or capping, several
coefficients in one pass), and reduce residual activations. `TransformersBackend` runs on CPU or CUDA;
a vLLM backend (GPU) implements `generate` behind the same interface.

Traps handled here: continuations are scored as the exact generated ids (never re-tokenized text);
batches are right-padded so positions are 0..L-1 for every row; log-probs are computed in fp32 for the
target token only, from the final hidden states of the continuation positions, chunk by chunk, so no
full-vocabulary log-softmax over the whole batch is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from animacy.collect.hooks import Addition, Cap, Mode, decoder_layers, hooks

_LOGIT_CHUNK = 256  # positions per lm-head chunk


@dataclass
class Generation:
    ids: list[int]
    text: str
    finish_reason: str  # stop | length


@dataclass
class Intervention:
    """Steer (`kind='add'`: a vector per layer, [H] or one per row [rows, H], times a coefficient per
    row) or cap (`kind='cap'`: a unit axis per layer, a tau per row) while scoring. `layer_scale`
    multiplies the coefficients per layer (magnitudes in units of each layer's residual norm)."""

    kind: str
    per_layer: dict[int, torch.Tensor]
    coeffs: torch.Tensor  # [rows]
    mode: Mode = "all"
    layer_scale: dict[int, float] | None = None


class Backend(Protocol):
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0) -> Generation: ...

    def score(self, prompt_ids: Sequence[int], continuation: Sequence[int],
              intervention: Intervention | None = None, capture: Sequence[int] = ()) -> ScoreResult: ...


@dataclass
class ScoreResult:
    log_probs: torch.Tensor  # [rows, n_continuation] float32
    hidden: dict[int, torch.Tensor]  # layer -> [rows, L, H] float32 (only layers asked to capture)


class TransformersBackend:
    """The transformers implementation (CPU or CUDA)."""

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.layers = decoder_layers(model)
        cfg = model.config.get_text_config()
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.eos = set(_as_list(getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0) -> Generation:
        """Sample one response; the same seed gives the same response."""
        torch.manual_seed(seed)
        ids = torch.tensor([list(prompt_ids)], device=self.device)
        out = self.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=temperature > 0, temperature=temperature or None,
            top_p=top_p, top_k=0, max_new_tokens=max_new_tokens, min_new_tokens=1,
            pad_token_id=self.tokenizer.pad_token_id or next(iter(self.eos), 0),
        )[0, ids.shape[1]:].tolist()
        stop = next((k for k, t in enumerate(out) if t in self.eos), None)
        gen = out[:stop] if stop is not None else out
        return Generation(gen, self.tokenizer.decode(gen, skip_special_tokens=True),
                          "stop" if stop is not None else "length")

    def _log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(target) from final hidden states [N, H]: fp32 logits chunk by chunk, target only."""
        head = self.model.get_output_embeddings()
        out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
        for s in range(0, targets.shape[0], _LOGIT_CHUNK):
            logits = head(hidden[s:s + _LOGIT_CHUNK]).float()
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            out[s:s + _LOGIT_CHUNK] = (logits.gather(1, targets[s:s + _LOGIT_CHUNK, None]).squeeze(1)
                                       - torch.logsumexp(logits, dim=1))
        return out

    @torch.inference_mode()
    def score(self, prompt_ids: Sequence[int], continuation: Sequence[int],
              intervention: Intervention | None = None, capture: Sequence[int] = ()) -> ScoreResult:
        """Teacher-force `continuation` after `prompt_ids`; with an intervention, one batch row per
        coefficient (rows share the sequence, so no padding is needed)."""
        return self.score_batch([list(prompt_ids)], [list(continuation)], intervention, capture)

    @torch.inference_mode()
    def score_batch(self, prompts: list[list[int]], continuations: list[list[int]],
                    intervention: Intervention | None = None, capture: Sequence[int] = ()) -> ScoreResult:
        """Score several (prompt, continuation) pairs, right-padded; or one pair repeated over the
        intervention's coefficients. Returns log-probs [rows, max continuation] (NaN past each end)."""
        if intervention is not None:
            assert len(prompts) == 1, "an intervention scores one sequence at several coefficients"
            n = len(intervention.coeffs)
            prompts, continuations = prompts * n, continuations * n
        seqs = [p + c for p, c in zip(prompts, continuations)]
        L = max(map(len, seqs))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(seqs), L), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(seqs), L), dtype=torch.long, device=self.device)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s, device=self.device)
            mask[b, : len(s)] = 1
        plen = torch.tensor([len(p) for p in prompts], device=self.device)
        per_layer: dict[int, list] = {}
        if intervention is not None:
            cls = Addition if intervention.kind == "add" else Cap
            for layer, vec in intervention.per_layer.items():
                scale = (intervention.layer_scale or {}).get(layer, 1.0)
                coeffs = intervention.coeffs.to(self.device, torch.float32) * scale
                per_layer.setdefault(layer, []).append(cls(vec.to(self.device), coeffs, intervention.mode, plen))
        captured: dict[int, list[torch.Tensor]] = {}
        for layer in capture:
            captured[layer] = []
            per_layer.setdefault(layer, []).append(
                lambda m, a, o, _l=layer: captured[_l].append((o[0] if isinstance(o, tuple) else o).float()))
        with hooks(self.model, per_layer):
            base = self.model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
        hidden = base.last_hidden_state if hasattr(base, "last_hidden_state") else base[0]
        n_cont = max(map(len, continuations))
        out = torch.full((len(seqs), n_cont), float("nan"), dtype=torch.float32, device=self.device)
        rows_idx, pos_idx, cont_idx = [], [], []
        for b, (p, c) in enumerate(zip(prompts, continuations)):
            rows_idx += [b] * len(c)
            pos_idx += range(len(p) - 1, len(p) - 1 + len(c))
            cont_idx += range(len(c))
        r = torch.tensor(rows_idx, device=self.device)
        t = torch.tensor(pos_idx, device=self.device)
        k = torch.tensor(cont_idx, device=self.device)
        out[r, k] = self._log_probs(hidden[r, t], ids[r, t + 1])
        return ScoreResult(out, {layer: torch.cat(v) for layer, v in captured.items()})


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple, set)) else [int(x)]

"""The collector's backend interface, and its transformers implementation.

What the runner needs is split in two protocols: `Generator` (responses, seeded per response) and
`Scorer` (teacher-forced per-token log-probs of given continuations, optionally while steering or
capping with several coefficients in one pass, and residual activations to reduce).
`TransformersBackend` implements both, on CPU or CUDA; `VLLMBackend` (collect/vllm_backend.py)
implements `Generator` on GPUs.

Traps handled here: continuations are scored as the exact generated ids (never re-tokenized text);
batches are right-padded so positions are 0..L-1 for every row; log-probs are computed in fp32 for the
target token only, from the final hidden states of the continuation positions, chunk by chunk, so no
full-vocabulary log-softmax over the whole batch is ever built.

A sweep (one sequence, many coefficients) does less work than one forward per coefficient: the layers
below the first intervened layer are the same for every row, so they run once and only the layers from
there on run per row; rows whose coefficient is zero at every layer are the unsteered computation, run
once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from animacy.collect.hooks import Ablation, Addition, Cap, Mode, Project, Record, decoder_layers, hooks

_LOGIT_CHUNK = 256  # positions per lm-head chunk


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (the prefix pass needs no later layers)."""


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def halving(items: list, fn) -> Iterator[tuple[list, object]]:
    """Yield (items, fn(items)); on a CUDA out-of-memory error the items are split in halves, each retried the
    same way, so a batch too large for the card runs as smaller ones (in order; nothing is written until the
    stage returns, so no partial part). One item that does not fit is a ConfigError saying so."""
    try:
        result = fn(items)
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
        if len(items) <= 1:
            from animacy.errors import ConfigError

            raise ConfigError("model.max_batch_tokens", f"a single sequence does not fit in the device's memory "
                              f"({str(exc).splitlines()[0]})",
                              hint="Use a larger card, a smaller model or dtype, or fewer new tokens.") from exc
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(items) // 2
        yield from halving(items[:half], fn)
        yield from halving(items[half:], fn)
        return
    yield items, result


@dataclass
class Generation:
    ids: list[int]
    text: str
    finish_reason: str  # stop | length
    log_probs: list[float] = field(default_factory=list)  # each token's log-prob under the generating model
    projections: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [tokens, K] (monitored)


@dataclass
class Intervention:
    """Steer (`kind='add'`: a vector per layer, [H] or one per row [rows, H], times a coefficient per
    row), cap (`kind='cap'`: a unit axis per layer, a tau per row) or ablate (`kind='ablate'`: a unit axis
    per layer, the projection each row is set to: 0 for directional ablation, a reference mean for mean
    ablation) while scoring. `layer_scale` multiplies the coefficients per layer (magnitudes in units of
    each layer's residual norm)."""

    kind: str
    per_layer: dict[int, torch.Tensor]
    coeffs: torch.Tensor  # [rows]
    mode: Mode = "all"
    layer_scale: dict[int, float] | None = None


@dataclass(frozen=True)
class Sampling:
    """Every sampling knob, explicit: what both generation backends take (`generate_many(prompts, seeds,
    sampling)`) and what the manifest records."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 64

    def params(self, vllm, seed: int | None, **extra):
        return vllm.SamplingParams(n=1, seed=seed, skip_special_tokens=True, **asdict(self), **extra)


@dataclass
class ScoreResult:
    log_probs: torch.Tensor  # [rows, n_continuation] float32
    hidden: dict[int, torch.Tensor]  # layer -> [rows, L, H] float32 (only layers asked to capture)
    projections: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [rows, L, K] (monitored)


class TransformersBackend:
    """The transformers implementation (CPU or CUDA)."""

    def __init__(self, model: torch.nn.Module, tokenizer, generation_batch: int = 8, compile_decoding: bool = False,
                 compile_backend: str = "inductor") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.generation_batch = generation_batch
        self.compile_decoding, self.compile_backend = compile_decoding, compile_backend
        self._compiled = None
        self.layers = decoder_layers(model)
        cfg = model.config.get_text_config()
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.eos = set(_as_list(getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0) -> Generation:
        """Sample one response; the same seed gives the same response (as in any batch)."""
        sampling = Sampling(temperature, top_p, max_tokens=max_new_tokens)
        return self.generate_many([list(prompt_ids)], [seed], sampling)[0]

    def generate_many(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], sampling: Sampling,
                      intervention: Intervention | None = None,
                      monitor: dict[int, torch.Tensor] | None = None) -> list[Generation]:
        """One response per (prompt ids, seed), sampled `generation_batch` at a time; results in order.

        With an intervention (one coefficient, the same for every response: a cap's tau, a steering
        magnitude) every forward pass of generation runs under it. With `monitor` ({layer: [K, H] unit
        directions}) each response token's residual is projected on the directions as it is generated."""
        unsupported = {k: v for k, v in asdict(sampling).items()
                       if k not in ("temperature", "top_p", "max_tokens") and v != getattr(Sampling(0.0), k)}
        if unsupported:
            raise ValueError(f"transformers generation takes temperature, top_p and max_tokens, not {unsupported}")
        if intervention is not None and len(intervention.coeffs) != 1:
            raise ValueError("generation runs under one coefficient (a tau, a magnitude) for every response")
        k = max(1, self.generation_batch)

        def batch(rows: list[int]) -> list[Generation]:
            return self._generate_batch([list(prompts[j]) for j in rows], [seeds[j] for j in rows], sampling.max_tokens,
                                        sampling.temperature, sampling.top_p, intervention, monitor)

        return [g for i in range(0, len(prompts), k)
                for _, gens in halving(list(range(i, min(i + k, len(prompts)))), batch) for g in gens]

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], seeds: list[int], max_new_tokens: int, temperature: float,
                        top_p: float = 1.0, intervention: Intervention | None = None,
                        monitor: dict[int, torch.Tensor] | None = None) -> list[Generation]:
        """Sample a batch of responses (left-padded, with a KV cache), each row's token at step k drawn with
        the counter-based uniform of (its seed, k), so a response depends on its seed, not on its batch's
        other rows (bar rare float near-ties between differently padded batches)."""
        B, P = len(prompts), max(map(len, prompts))
        per_layer: dict[int, list] = {}
        if intervention is not None:  # left-padded: every prompt ends at position P - 1
            row = Intervention(intervention.kind, intervention.per_layer, intervention.coeffs.expand(B),
                               intervention.mode, intervention.layer_scale)
            per_layer = self._intervention_hooks(row, torch.full((B,), P, device=self.device))
        monitors = _monitors(per_layer, monitor, self.device)
        with hooks(self.model, per_layer):  # compiled decoding only for plain generation (no hooks)
            out, done, logp = self._decode(prompts, seeds, max_new_tokens, temperature, top_p, bool(monitors),
                                           self.compile_decoding and not per_layer)
        gens = [Generation(o, self.tokenizer.decode(o, skip_special_tokens=True), "stop" if d else "length", lp)
                for o, d, lp in zip(out, done, logp)]
        for layer, m in monitors.items():  # token j's residual is computed when it is fed back, at pass j + 1
            steps = torch.cat([o[:, -1:] for o in m.outputs[1:]], dim=1) if len(m.outputs) > 1 else None
            for b, g in enumerate(gens):
                n = len(g.ids)
                g.projections[layer] = steps[b, :n].cpu() if n else torch.zeros((0, m.directions.shape[0]))
        return gens

    def _step(self):
        """The model's forward for single-token decoding steps, compiled once (CUDA graphs on a GPU)."""
        if self._compiled is None:
            mode = "reduce-overhead" if self.device.type == "cuda" and self.compile_backend == "inductor" else None
            self._compiled = torch.compile(self.model, dynamic=False, backend=self.compile_backend, mode=mode)
        return self._compiled

    def _decode(self, prompts: list[list[int]], seeds: list[int], max_new_tokens: int, temperature: float,
                top_p: float, feed_last: bool,
                static: bool = False) -> tuple[list[list[int]], list[bool], list[list[float]]]:
        """The decoding loop of `_generate_batch` (hooks already in place); `feed_last` runs one more pass
        over the last tokens of responses cut by the length limit, so their residuals are seen too.

        `static`: a static KV cache and an attention mask of fixed shape (prompt + every new token, future
        positions masked), so every decoding step has the same shapes and runs compiled (`_step`); the
        same tokens as the dynamic cache (tested)."""
        B, P = len(prompts), max(map(len, prompts))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((B, P), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((B, P), dtype=torch.long, device=self.device)
        for b, p in enumerate(prompts):
            ids[b, P - len(p):] = torch.tensor(p, device=self.device)
            mask[b, P - len(p):] = 1
        out: list[list[int]] = [[] for _ in range(B)]
        logp: list[list[float]] = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        cache, n = None, P  # tokens in the sequence so far
        if static:
            from transformers import StaticCache

            cache = StaticCache(config=self.model.config, max_cache_len=P + max_new_tokens)
            mask = torch.cat([mask, torch.zeros((B, max_new_tokens), dtype=torch.long, device=self.device)], dim=1)

        def forward(step_ids, live):
            """Prefill (`live` None), or feed one token per row (finished rows masked out)."""
            nonlocal cache, mask, n
            if live is not None:
                if static:
                    mask[:, n] = live.long()
                else:
                    mask = torch.cat([mask, live.long()[:, None]], dim=1)
                n += 1
            if static and live is not None:
                pos = mask[:, :n].sum(1, keepdim=True) - 1
                return self._step()(input_ids=step_ids, attention_mask=mask, position_ids=pos, cache=cache,
                                    use_cache=True)
            m = mask[:, :n]
            pos = (m.cumsum(1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
            res = self.model(input_ids=step_ids, attention_mask=m, position_ids=pos, cache=cache, use_cache=True)
            if not static:
                cache = getattr(res, "cache", None) or res.past_key_values
            return res

        res = forward(ids, None)
        for step in range(max_new_tokens):
            logits = res.logits[:, -1].float()
            nxt = sample_tokens(logits, temperature, top_p, counter_uniform(seeds, step))
            lp = (logits.gather(1, nxt[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)).tolist()
            for b in range(B):
                if not done[b]:
                    if int(nxt[b]) in self.eos:
                        done[b] = True
                    else:
                        out[b].append(int(nxt[b]))
                        logp[b].append(lp[b])
            if bool(done.all()):
                break
            step_ids = torch.where(done, torch.full_like(nxt, pad), nxt)[:, None]
            if step < max_new_tokens - 1 or feed_last:  # the last tokens are fed only to be monitored
                res = forward(step_ids, ~done)
        return out, done.tolist(), logp

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
        coefficient, computed as a sweep (shared prefix layers, zero rows once)."""
        if intervention is None or capture:
            return self.score_batch([list(prompt_ids)], [list(continuation)], intervention, capture)
        return self.sweep(list(prompt_ids), list(continuation), intervention)

    @contextmanager
    def _from_layer(self, first: int) -> Iterator[None]:
        """Make the decoder run only layers[first:] on `inputs_embeds` (the residual entering `first`)."""
        decoder = self.model.get_decoder()
        layers, cfg = decoder.layers, decoder.config
        types = getattr(cfg, "layer_types", None)
        decoder.layers = torch.nn.ModuleList(list(layers)[first:])
        if types is not None:
            cfg.layer_types = list(types)[first:]
        try:
            yield
        finally:
            decoder.layers = layers
            if types is not None:
                cfg.layer_types = types

    @torch.inference_mode()
    def sweep(self, prompt: list[int], continuation: list[int], intervention: Intervention) -> ScoreResult:
        """One sequence at every coefficient of the intervention (see the module docstring)."""
        seq = torch.tensor([prompt + continuation], device=self.device)
        coeffs = intervention.coeffs.to(torch.float32)
        # adding zero is the unsteered computation; capping at zero is not
        zero = (coeffs == 0) if intervention.kind == "add" else torch.zeros_like(coeffs, dtype=torch.bool)
        out = torch.empty((len(coeffs), len(continuation)), dtype=torch.float32, device=self.device)
        first = min(intervention.per_layer)
        resid = None
        if first > 0:  # the residual entering the first intervened layer, computed once
            rec = Record()

            def stop(module, args, output):
                rec(module, args, output)
                raise _Stop

            try:
                with hooks(self.model, {first - 1: [stop]}):
                    self.model.get_decoder()(input_ids=seq, use_cache=False)
            except _Stop:
                pass
            resid = rec.outputs[0].to(self.model.dtype)
        if zero.any():
            out[zero] = self.score_batch([prompt], [continuation]).log_probs[0]
        pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(continuation), device=self.device)
        targets = seq[0, pos + 1]

        def rows(live: list[int]) -> torch.Tensor:
            idx = torch.tensor(live, device=coeffs.device)
            sub = Intervention(intervention.kind, {k: (v[idx] if v.dim() == 2 else v)
                                                   for k, v in intervention.per_layer.items()},
                               coeffs[idx], intervention.mode, intervention.layer_scale)
            n = len(live)
            if resid is None:
                return self.score_batch([prompt], [continuation], sub).log_probs
            per_layer = self._intervention_hooks(sub, torch.tensor([len(prompt)] * n, device=self.device))
            # hooks first: they find layers by their index in the full model
            with hooks(self.model, per_layer), self._from_layer(first):
                base = self.model.get_decoder()(inputs_embeds=resid.expand(n, -1, -1), use_cache=False)
            hidden = base.last_hidden_state
            return torch.stack([self._log_probs(hidden[k, pos], targets) for k in range(n)])

        for live, log_probs in halving(torch.nonzero(~zero).flatten().tolist(), rows):
            out[live] = log_probs
        return ScoreResult(out, {})

    def _intervention_hooks(self, intervention: Intervention, plen: torch.Tensor) -> dict[int, list]:
        cls = {"add": Addition, "cap": Cap, "ablate": Ablation}[intervention.kind]
        per_layer: dict[int, list] = {}
        for layer, vec in intervention.per_layer.items():
            scale = (intervention.layer_scale or {}).get(layer, 1.0)
            coeffs = intervention.coeffs.to(self.device, torch.float32) * scale
            per_layer.setdefault(layer, []).append(cls(vec.to(self.device), coeffs, intervention.mode, plen))
        return per_layer

    @torch.inference_mode()
    def score_batch(self, prompts: list[list[int]], continuations: list[list[int]],
                    intervention: Intervention | None = None, capture: Sequence[int] = (),
                    project: dict[int, torch.Tensor] | None = None) -> ScoreResult:
        """Score several (prompt, continuation) pairs, right-padded; or one pair repeated over the
        intervention's coefficients. Returns log-probs [rows, max continuation] (NaN past each end), the
        captured hidden states, and the projections on `project`'s unit directions ({layer: [K, H]})."""
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
        per_layer = self._intervention_hooks(intervention, plen) if intervention is not None else {}
        captured: dict[int, list[torch.Tensor]] = {}
        for layer in capture:
            captured[layer] = []
            per_layer.setdefault(layer, []).append(
                lambda m, a, o, _l=layer: captured[_l].append((o[0] if isinstance(o, tuple) else o).float()))
        monitors = _monitors(per_layer, project, self.device)
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
        return ScoreResult(out, {layer: torch.cat(v) for layer, v in captured.items()},
                           {layer: m.outputs[0] for layer, m in monitors.items()})


def _monitors(per_layer: dict[int, list], directions: dict[int, torch.Tensor] | None,
              device: torch.device) -> dict[int, Project]:
    """A projection hook per monitored layer ({layer: [K, H] unit directions}), added to `per_layer`."""
    monitors = {layer: Project(d.to(device)) for layer, d in (directions or {}).items()}
    for layer, m in monitors.items():
        per_layer.setdefault(layer, []).append(m)
    return monitors


_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def counter_uniform(seeds, step: int) -> np.ndarray:
    """A uniform in [0, 1) for each seed at decoding step `step`: a counter-based draw that depends on
    (seed, step) alone, never on the batch a response is sampled in or on any generator's state."""
    keys = _splitmix(np.asarray(seeds, dtype=np.uint64))
    with np.errstate(over="ignore"):
        bits = _splitmix(keys + np.uint64(step))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, u: np.ndarray) -> torch.Tensor:
    """One token per row of `logits` [B, V]: greedy at temperature 0, else the inverse CDF of the
    (nucleus-truncated) softmax at each row's uniform `u` — every row at once, no loop over rows."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    if top_p < 1.0:
        sorted_p = torch.where(sorted_p.cumsum(-1) - sorted_p < top_p, sorted_p, torch.zeros_like(sorted_p))
    cdf = sorted_p.cumsum(-1)
    target = torch.as_tensor(u, dtype=torch.float64, device=logits.device).unsqueeze(-1) * cdf[:, -1:]
    pick = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, pick).squeeze(-1)


def pack(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches by token budget: longest first, each batch's padded size
    (rows x longest row) at most `max_tokens` (a sequence longer than the budget gets a batch alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple, set)) else [int(x)]

"""Generation with vLLM (GPU), behind the collector's backend interface.

Prompts go in as token ids — the same ids the transformers scorer uses, so generation and scoring can
never disagree about the prompt — with one seeded request per response and every sampling knob set
explicitly (and recorded in the manifest), so a vLLM upgrade cannot change a default silently.
Teacher-forced scoring, steering and capping stay on transformers + hooks: vLLM hooks would need eager
mode with prefix caching and chunked prefill off.

`prompt_logprobs` is an optional cross-check of unsteered log-probs (`prompt_logprobs=0`, prefix caching
off); its numbers are never mixed with transformers numbers inside one contrast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from animacy.collect.backend import Generation, Sampling
from animacy.errors import ConfigError


class VLLMBackend:
    """vLLM generation for a model folder (the same weights the scorer loads)."""

    def __init__(self, model: str, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, llm=None) -> None:
        try:
            import vllm
        except ImportError as exc:
            hint = "vLLM lives in its own environment: pip install -e '.[collect,vllm]' (README)."
            raise ConfigError("model.generator = 'vllm'", "vLLM is not installed in this environment",
                              hint=hint) from exc
        self.vllm = vllm
        self.llm = llm if llm is not None else vllm.LLM(
            model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            enable_prefix_caching=True, seed=0)

    def generate_many(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int],
                      sampling: Sampling) -> list[Generation]:
        """One request per (prompt ids, seed); replicates of one prompt share its prefill through
        prefix caching. Results come back in request order."""
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        params = [sampling.params(self.vllm, int(s)) for s in seeds]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        gens = []
        for out in outputs:
            c = out.outputs[0]
            gens.append(Generation(list(c.token_ids), c.text, "stop" if c.finish_reason == "stop" else "length"))
        return gens

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float, seed: int,
                 top_p: float = 1.0) -> Generation:
        return self.generate_many([prompt_ids], [seed], Sampling(temperature, top_p, max_tokens=max_new_tokens))[0]

    def prompt_logprobs(self, prompt_ids: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        """Log-probs of `continuation` after `prompt_ids` from vLLM's prompt logprobs (cross-check only)."""
        ids = list(prompt_ids) + list(continuation)
        params = Sampling(0.0, max_tokens=1).params(self.vllm, 0, prompt_logprobs=0)
        out = self.llm.generate([{"prompt_token_ids": ids}], sampling_params=[params], use_tqdm=False)[0]
        lps = out.prompt_logprobs[len(prompt_ids):]
        return np.array([lp[t].logprob for lp, t in zip(lps, continuation)], dtype=np.float64)

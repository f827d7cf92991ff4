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
import torch

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
        self.free_before = _free_gib()
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

    def release(self, tolerance_gib: float = 1.0) -> None:
        """Shut the engine down and give its memory back to the driver, then check it did: the device's free
        memory must be back within `tolerance_gib` of what it was before the engine started, or the scorer
        would load beside a ghost engine (a ConfigError says how much is still held)."""
        import contextlib
        import gc

        llm, self.llm = self.llm, None
        engine = getattr(llm, "llm_engine", None)
        if callable(getattr(engine, "shutdown", None)):
            engine.shutdown()
        del llm, engine
        with contextlib.suppress(ImportError, AttributeError, AssertionError, RuntimeError):
            from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        after = _free_gib()
        if self.free_before is not None and after is not None and after < self.free_before - tolerance_gib:
            raise ConfigError("model.generator = 'vllm'", f"the vLLM engine did not give its memory back: "
                              f"{self.free_before - after:.1f} GiB are still held after it shut down",
                              hint="Generate in one process and score in another: stop after generation, "
                                   "then resume the run (it skips the finished generation jobs).")

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


def _free_gib() -> float | None:
    """Free device memory in GiB (None without CUDA)."""
    return torch.cuda.mem_get_info()[0] / 2**30 if torch.cuda.is_available() else None

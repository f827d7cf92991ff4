"""The vLLM backend against a stand-in with vLLM's documented interface (vLLM itself needs a GPU and its
own environment): request building (the scorer's prompt ids, a seed per request, every knob explicit),
output parsing, prompt-logprob parsing, and the runner generating through it."""

from __future__ import annotations

import random
import sys
import types
from dataclasses import dataclass

import pytest

from animacy.collect.backend import Sampling
from animacy.collect.vllm_backend import VLLMBackend
from tests.collect_fixtures import torch  # noqa: F401  (skips without torch)

KNOBS = {"n", "seed", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
         "frequency_penalty", "max_tokens", "skip_special_tokens"}


@dataclass
class Logprob:
    logprob: float


class FakeVLLM(types.ModuleType):
    """`vllm` as its docs describe it: SamplingParams(**knobs), LLM(model=...).generate(prompts,
    sampling_params=[...]) -> [RequestOutput(outputs=[CompletionOutput(token_ids, text, finish_reason)],
    prompt_logprobs=[None, {token_id: Logprob}, ...])]."""

    def __init__(self) -> None:
        super().__init__("vllm")
        self.calls: list = []
        self.returned: list = []
        self.init_kwargs: dict = {}
        self.events: list[str] = []  # engine start, generate, shutdown: in order
        fake = self

        class SamplingParams:
            def __init__(self, **kw):
                self.kw = kw

        class Engine:
            def shutdown(self):
                fake.events.append("engine shutdown")

        class LLM:
            def __init__(self, **kw):
                fake.init_kwargs = kw
                fake.events.append("engine start")
                self.llm_engine = Engine()

            def generate(self, prompts, sampling_params, use_tqdm=True):
                """Random outputs (seeded by the request's seed), recorded in `fake.returned` so that tests
                compare the backend's parsing with what the engine answered."""
                fake.calls.append((prompts, sampling_params))
                fake.events.append("generate")
                outs = []
                for p, sp in zip(prompts, sampling_params):
                    ids = p["prompt_token_ids"]
                    rng = random.Random(sp.kw["seed"])
                    n = rng.randint(1, sp.kw["max_tokens"])
                    toks = [rng.randrange(20, 400) for _ in range(n)]
                    done = "length" if n == sp.kw["max_tokens"] else "stop"
                    plp = None
                    if sp.kw.get("prompt_logprobs") == 0:  # the token's own logprob, and a decoy ranked first
                        plp = [None] + [{t + 1: Logprob(-rng.random() / 10), t: Logprob(-1 - rng.random())}
                                        for t in ids[1:]]
                    out = types.SimpleNamespace(token_ids=toks, text=f"text {rng.random()}", finish_reason=done)
                    outs.append(types.SimpleNamespace(outputs=[out], prompt_logprobs=plp))
                fake.returned.extend(outs)
                return outs

        self.SamplingParams, self.LLM = SamplingParams, LLM


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def test_requests_carry_the_scorer_ids_a_seed_each_and_every_knob(fake_vllm):
    be = VLLMBackend("/models/x", dtype="bfloat16")
    assert fake_vllm.init_kwargs["model"] == "/models/x" and fake_vllm.init_kwargs["enable_prefix_caching"]
    prompts = [[1, 5, 9], [1, 5, 9], [1, 7]]
    gens = be.generate_many(prompts, [11, 12, 13], Sampling(0.7, max_tokens=5))
    sent, params = fake_vllm.calls[0]
    assert [p["prompt_token_ids"] for p in sent] == prompts
    assert [sp.kw["seed"] for sp in params] == [11, 12, 13]
    assert all(set(sp.kw) == KNOBS for sp in params) and params[0].kw["temperature"] == 0.7
    for g, out in zip(gens, fake_vllm.returned):
        engine = out.outputs[0]
        assert (list(g.ids), g.text, g.finish_reason) == (list(engine.token_ids), engine.text, engine.finish_reason)


def test_prompt_logprobs_pick_the_continuation_tokens(fake_vllm):
    be = VLLMBackend("/m")
    lp = be.prompt_logprobs([1, 2, 3], [4, 5])
    answered = fake_vllm.returned[0].prompt_logprobs
    assert lp.tolist() == [answered[3][4].logprob, answered[4][5].logprob]  # the continuation's, not the decoys'
    _, params = fake_vllm.calls[0]
    assert params[0].kw["prompt_logprobs"] == 0 and params[0].kw["max_tokens"] == 1


def test_a_missing_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    from animacy.errors import ConfigError

    with pytest.raises(ConfigError, match="vLLM is not installed"):
        VLLMBackend("/m")


def test_the_runner_generates_through_vllm_and_scores_with_transformers(fake_vllm, smollm2, tmp_path):
    from animacy.collect.config import load_config
    from animacy.collect.runner import Runner
    from animacy.run import Run
    from tests.test_collect_run import CONFIG

    cfg_path = tmp_path / "v.toml"
    cfg_path.write_text(CONFIG.replace('source = "smollm2"', 'source = "smollm2"\ngenerator = "vllm"')
                        .replace("magnitudes = [0.0, 0.1]", "magnitudes = []").replace("cap_taus = [0.05]", "")
                        .replace('[word_guess]\nprompt = "Which word describes you? One word."', ""))
    run = Runner(load_config(cfg_path), tmp_path / "run", quiet=True).run()
    r = Run(run)
    r.validate()
    resp = r.read("responses")
    # one batched call per generation job: the 8 responses of the 2 roles, the control and the no-prompt
    # pass fit one batch of 8, so one job; with batches of 4, two roles a job and two calls
    assert len(fake_vllm.calls) == 1 and len(fake_vllm.calls[0][0]) == 8
    small = Runner(load_config(cfg_path), tmp_path / "small", quiet=True)
    small.cfg.generation_batch = 4
    small.run()
    assert [len(c[0]) for c in fake_vllm.calls[1:]] == [4, 4]
    assert (resp["n_tokens"] == resp["token_ids"].map(len)).all()
    assert r.manifest["generation"]["generator"] == "vllm"
    assert set(r.manifest["generation"]["sampling"]) >= {"temperature", "top_p", "top_k", "max_tokens"}



def test_the_engine_generates_first_and_is_gone_before_the_scorer_loads(fake_vllm, smollm2, tmp_path, monkeypatch):
    """Issue 16: a 27B model cannot sit on one card twice. The run describes the model without loading its
    weights, the vLLM engine generates every response, shuts down (its memory checked on CUDA), and only
    then does the transformers scorer load."""
    from animacy.collect import stages
    from animacy.collect.config import load_config
    from animacy.collect.model import load_model
    from animacy.collect.runner import Runner
    from animacy.run import Run
    from tests.test_collect_run import CONFIG

    def recorded_load(*a, **k):
        fake_vllm.events.append("transformers load")
        return load_model(*a, **k)

    monkeypatch.setattr(stages, "load_model", recorded_load)
    cfg_path = tmp_path / "v.toml"
    cfg_path.write_text(CONFIG.replace('source = "smollm2"', 'source = "smollm2"\ngenerator = "vllm"')
                        .replace("magnitudes = [0.0, 0.1]", "magnitudes = []").replace("cap_taus = [0.05]", "")
                        .replace('[word_guess]\nprompt = "Which word describes you? One word."', ""))
    run = Runner(load_config(cfg_path), tmp_path / "run", quiet=True).run()
    events = fake_vllm.events
    assert events[0] == "engine start" and events.count("generate") == 1
    assert events.index("engine shutdown") > max(i for i, e in enumerate(events) if e == "generate")
    assert events.index("transformers load") > events.index("engine shutdown")
    assert events.count("transformers load") == 1 and events.count("engine start") == 1
    manifest = Run(run).manifest
    assert manifest["model"] == smollm2.info  # described without the weights, as the loaded model says
    Run(run).validate()

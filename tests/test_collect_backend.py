"""The backend's traps, each a test: exact ids, one BOS, padding, folded system prompts, fp32 target-only
log-probs equal to a full log-softmax, seeded generation, the no-prompt condition."""

from __future__ import annotations

import pytest

from animacy.collect.backend import Intervention, Sampling, TransformersBackend
from animacy.collect.prompts import render_prompt, system_text
from animacy.errors import ConfigError
from tests.collect_fixtures import torch

USER = "What are your five favorite things?"
GEMMA_STYLE = (  # no system role: the system prompt is folded into the first user turn, BOS written by the template
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set first = '' %}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ (first if loop.first else '') + m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def backend(smollm2):
    return TransformersBackend(smollm2.model, smollm2.tokenizer)


@pytest.fixture
def gemma_tokenizer(smollm2):
    import copy

    tok = copy.deepcopy(smollm2.tokenizer)
    tok.chat_template = GEMMA_STYLE
    return tok


def test_scores_equal_a_full_log_softmax_and_padding_changes_nothing(smollm2, backend):
    p = render_prompt(smollm2.tokenizer, USER, system_text("You are {article} {role}.", "sock"), "sock")
    gen = backend.generate(p.ids, 20, 0.7, seed=3)
    short = gen.ids[:7]
    res = backend.score_batch([p.ids, p.ids], [gen.ids, short])  # the second row is right-padded
    with torch.inference_mode():
        logits = smollm2.model(torch.tensor([p.ids + gen.ids])).logits.float()
    full = torch.log_softmax(logits, -1)[0, len(p.ids) - 1:-1].gather(1, torch.tensor(gen.ids)[:, None])[:, 0]
    assert (res.log_probs[0] - full).abs().max() < 1e-4
    torch.testing.assert_close(res.log_probs[1, :7], res.log_probs[0, :7], rtol=0, atol=1e-4)
    assert torch.isnan(res.log_probs[1, 7:]).all() and (res.log_probs[0] <= 0).all()


def test_generation_is_seeded_and_scored_as_the_exact_ids(smollm2, backend):
    p = render_prompt(smollm2.tokenizer, USER, None)
    a, b, c = (backend.generate(p.ids, 16, 0.9, seed=s) for s in (5, 5, 6))
    assert a.ids == b.ids and a.ids != c.ids
    assert a.finish_reason in ("stop", "length") and a.text
    # decoding then re-tokenizing need not give the same ids, so the scorer takes ids: "hello" spelt one
    # character per token decodes to a word that re-tokenizes differently, and is scored as spelt
    tok = smollm2.tokenizer
    ids = list(a.ids[:4]) + tok.convert_tokens_to_ids(list("hello"))
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] != ids
    res = backend.score(p.ids, ids)
    with torch.inference_mode():
        logits = smollm2.model(torch.tensor([p.ids + ids])).logits.float()
    want = torch.log_softmax(logits, -1)[0, len(p.ids) - 1:-1].gather(1, torch.tensor(ids)[:, None])[:, 0]
    torch.testing.assert_close(res.log_probs[0], want, rtol=0, atol=1e-4)


def test_exactly_one_bos_and_the_folded_system_prompt(gemma_tokenizer):
    system = system_text("You are {article} {role}.", "oak")
    p = render_prompt(gemma_tokenizer, USER, system, "oak")
    bos = gemma_tokenizer.bos_token_id
    assert p.ids[0] == bos and p.ids[1:].count(bos) == p.text.count(gemma_tokenizer.bos_token) - 1
    assert "<start_of_turn>user\nYou are an oak." in p.text and "system" not in p.text
    assert gemma_tokenizer.decode([p.ids[i] for i in p.role_tokens]).strip() == "oak"
    assert gemma_tokenizer.decode([p.ids[p.period_token]]).strip().startswith(".")
    gemma_tokenizer.add_bos_token = True  # a tokenizer that adds BOS itself still gets exactly one
    q = render_prompt(gemma_tokenizer, USER, system, "oak")
    assert q.ids == p.ids


def test_role_spans_with_a_system_role(smollm2):
    tok = smollm2.tokenizer
    p = render_prompt(tok, USER, system_text("You are {article} {role}.", "AI assistant"), "AI assistant")
    assert tok.decode([p.ids[i] for i in p.role_tokens]).strip() == "AI assistant"
    assert tok.decode([p.ids[p.period_token]]) == "."


def test_no_prompt_condition_is_explicit(smollm2):
    tok = smollm2.tokenizer
    none = render_prompt(tok, USER, None, no_prompt="none")
    default = render_prompt(tok, USER, None, no_prompt="template_default")
    assert "system" not in none.text and "SmolLM" in default.text
    assert none.text.startswith("<|im_start|>user\n")
    with pytest.raises(ConfigError, match="no_prompt"):
        render_prompt(tok, USER, None, no_prompt="nothing")


def test_relative_layer_scale_multiplies_the_coefficients(smollm2, backend):
    p = render_prompt(smollm2.tokenizer, USER, None)
    ids = p.ids[-6:]
    torch.manual_seed(0)
    v = torch.randn(smollm2.info["hidden_size"])
    a = backend.score(p.ids, ids, Intervention("add", {10: v}, torch.tensor([0.5]), layer_scale={10: 4.0}))
    b = backend.score(p.ids, ids, Intervention("add", {10: v}, torch.tensor([2.0])))
    torch.testing.assert_close(a.log_probs, b.log_probs)


def test_token_budget_packing():
    from animacy.collect.backend import pack

    lengths = [50, 10, 40, 10, 200, 30]
    batches = pack(lengths, 100)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in batches if len(b) > 1)
    assert [4] in batches  # longer than the budget: alone
    assert pack(lengths, 10_000) == [[4, 0, 2, 5, 1, 3]]


def test_batched_generation_is_seeded_per_response(smollm2, backend):
    tok = smollm2.tokenizer
    prompts = [render_prompt(tok, q, system_text("You are {article} {role}.", r), r).ids
               for q, r in [(USER, "sock"), ("Describe your day.", "lawyer"), ("Hi!", "oak")]]
    greedy = backend.generate_many(prompts, [1, 2, 3], Sampling(0.0, max_tokens=12))
    assert [g.ids for g in greedy] == [backend.generate(p, 12, 0.0, 0).ids for p in prompts]
    a = backend.generate_many(prompts, [1, 2, 3], Sampling(0.8, max_tokens=12))
    b = backend.generate_many(prompts[::-1], [3, 2, 1], Sampling(0.8, max_tokens=12))[::-1]
    assert [g.ids for g in a] == [g.ids for g in b], "a response depends on its seed, not its batch"
    assert a[1].ids == backend.generate(prompts[1], 12, 0.8, 2).ids, "nor on whether it has a batch at all"
    c = backend.generate_many(prompts, [4, 5, 6], Sampling(0.8, max_tokens=12))
    assert [g.ids for g in a] != [g.ids for g in c]


def test_counter_based_draws_depend_on_seed_and_step_alone_and_sample_the_distribution():
    """The sampler's uniform for (seed, step) is the same in any batch, uniform over seeds, and the inverse
    CDF it feeds reproduces the softmax (and the renormalised nucleus) in frequency."""
    import numpy as np

    from animacy.collect.backend import counter_uniform, sample_tokens

    seeds = np.arange(20_000)
    u = counter_uniform(seeds, 7)
    assert np.array_equal(counter_uniform(seeds[::-1], 7)[::-1], u)
    assert counter_uniform([seeds[123]], 7)[0] == u[123] and not np.array_equal(counter_uniform(seeds, 8), u)
    assert abs(u.mean() - 0.5) < 0.01 and np.allclose(np.quantile(u, [0.1, 0.5, 0.9]), [0.1, 0.5, 0.9], atol=0.01)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    logits = p.log().float().expand(len(seeds), -1)
    for top_p, want in ((1.0, p.numpy()), (0.8, np.array([0.625, 0.375, 0.0, 0.0]))):
        tokens = sample_tokens(logits, 1.0, top_p, u).numpy()
        freq = np.bincount(tokens, minlength=4) / len(seeds)
        se = np.sqrt(want * (1 - want) / len(seeds))
        assert np.all(np.abs(freq - want) <= 4 * se + 1e-12), (top_p, freq, want)
    assert (sample_tokens(logits, 0.0, 1.0, u) == 0).all()


class _CardLimit:
    """A stand-in for a card's memory (this machine has no GPU): a forward pass over more than `rows`
    sequences raises torch's out-of-memory error, as CUDA would."""

    def __init__(self, model, rows: int) -> None:
        self.rows, self.hits = rows, 0
        self.handle = model.get_decoder().register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if x is not None and x.shape[0] > self.rows:
            self.hits += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_out_of_memory_halves_the_batch_and_gives_the_same_results(smollm2, backend):
    """Scoring, a steering sweep and batched generation that run out of device memory are retried in
    halves until they fit, with the results they give at full size; one sequence that cannot fit is a
    clear error."""
    prompts = [render_prompt(smollm2.tokenizer, q, None).ids for q in (USER, "Describe rain.", "Name a tree.")]
    gens = backend.generate_many(prompts * 2, [1, 2, 3, 4, 5, 6], Sampling(0.7, max_tokens=6))
    full = backend.score_batch(prompts * 2, [g.ids for g in gens], capture=[5])
    layer = {5: torch.nn.functional.normalize(torch.randn(576, generator=torch.Generator().manual_seed(0)), dim=0)}
    sweep = Intervention("add", layer, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), "all", {5: 10.0})
    want_sweep = backend.score(prompts[0], gens[0].ids, sweep).log_probs
    with _CardLimit(smollm2.model, rows=2) as limit:
        again = backend.generate_many(prompts * 2, [1, 2, 3, 4, 5, 6], Sampling(0.7, max_tokens=6))
        assert [g.ids for g in again] == [g.ids for g in gens]
        from animacy.collect.backend import halving

        parts = list(halving(list(range(6)), lambda rows: backend.score_batch(
            [(prompts * 2)[i] for i in rows], [gens[i].ids for i in rows], capture=[5])))
        assert [len(rows) for rows, _ in parts] == [1, 2, 1, 2]  # 6 -> 3 + 3 -> (1 + 2) + (1 + 2)
        for rows, res in parts:
            for b, i in enumerate(rows):
                n = len(gens[i].ids)
                torch.testing.assert_close(res.log_probs[b, :n], full.log_probs[i, :n], atol=1e-5, rtol=1e-5)
        got_sweep = backend.score(prompts[0], gens[0].ids, sweep).log_probs
        torch.testing.assert_close(got_sweep, want_sweep, atol=1e-5, rtol=1e-5)
        assert limit.hits > 0
    with _CardLimit(smollm2.model, rows=0), pytest.raises(ConfigError, match="single sequence does not fit"):
        list(halving([0], lambda rows: backend.score_batch([prompts[0]], [gens[0].ids])))


def test_compiled_decoding_with_a_static_cache_samples_the_same_tokens(smollm2):
    """model.compile_decoding: a static KV cache, an attention mask of fixed shape and the decoding step
    compiled (dynamo here; inductor with CUDA graphs on a GPU) give the tokens and log-probs of the plain
    loop, for left-padded prompts of different lengths, rows that stop early, and the length limit."""
    plain = TransformersBackend(smollm2.model, smollm2.tokenizer, 4)
    fast = TransformersBackend(smollm2.model, smollm2.tokenizer, 4, compile_decoding=True, compile_backend="eager")
    prompts = [render_prompt(smollm2.tokenizer, q, None).ids
               for q in (USER, "Hi", "Describe rain in great detail, please.", "Say yes.", "Name a tree.")]
    seeds = [3, 1, 4, 1, 5]
    want = plain.generate_many(prompts, seeds, Sampling(0.8, max_tokens=20))
    got = fast.generate_many(prompts, seeds, Sampling(0.8, max_tokens=20))
    assert fast._compiled is not None, "the compiled step ran"
    assert {g.finish_reason for g in want} == {"stop", "length"}, "both endings are exercised"
    for w, g in zip(want, got):
        assert (g.ids, g.finish_reason) == (w.ids, w.finish_reason)
        torch.testing.assert_close(torch.tensor(g.log_probs), torch.tensor(w.log_probs), atol=1e-5, rtol=1e-5)

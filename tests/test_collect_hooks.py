"""Hook semantics, each exact, on SmolLM2 and tiny Gemma 3 / Qwen3-MoE models."""

from __future__ import annotations

import types

import pytest

from animacy.collect.hooks import Addition, Cap, Record, decoder_layers, hooks, position_mask
from tests.collect_fixtures import tiny_gemma3, tiny_qwen3_moe, torch


@pytest.fixture(scope="module", params=["smollm2", "gemma3", "qwen3_moe"])
def model(request, smollm2):
    return {"smollm2": lambda: smollm2.model, "gemma3": tiny_gemma3, "qwen3_moe": tiny_qwen3_moe}[request.param]()


def _ids(model, batch=1, length=14):
    torch.manual_seed(1)
    return torch.randint(5, min(500, model.config.get_text_config().vocab_size), (batch, length))


def _logits(model, ids, per_layer=None):
    with torch.inference_mode(), hooks(model, per_layer or {}):
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits


def _vector(model, seed=2):
    torch.manual_seed(seed)
    return torch.randn(model.config.get_text_config().hidden_size)


def _is_moe(model) -> bool:
    return getattr(model.config.get_text_config(), "num_experts", 0) > 0


def test_layers_are_found_and_magnitude_zero_is_bit_identical(model):
    layers = decoder_layers(model)
    assert len(layers) == model.config.get_text_config().num_hidden_layers
    ids = _ids(model, batch=3)
    base = _logits(model, ids)
    zero = _logits(model, ids, {1: [Addition(_vector(model), torch.zeros(3))]})
    assert torch.equal(base, zero)
    # One row at zero inside a steered batch: the hook adds exactly nothing to that row, so the residual
    # stream it hands on is bit-identical to the unsteered batch's row.
    rec_base, rec_mixed = Record(), Record()
    _logits(model, ids, {1: [rec_base]})
    mixed = _logits(model, ids, {1: [Addition(_vector(model), torch.tensor([0.0, 4.0, 8.0])), rec_mixed]})
    assert torch.equal(rec_mixed.outputs[0][0], rec_base.outputs[0][0])
    assert not torch.allclose(rec_mixed.outputs[0][1], rec_base.outputs[0][1])
    assert not torch.allclose(mixed[1], base[1])
    if _is_moe(model):
        # Later layers see a different batch: MoE expert dispatch groups the tokens of every row by expert,
        # so the matmul shapes (and float summation order) depend on the other rows. Equal to rounding only.
        torch.testing.assert_close(mixed[0], base[0], rtol=0, atol=1e-5)
    else:  # dense layers compute each row on its own
        assert torch.equal(mixed[0], base[0])


def test_several_magnitudes_in_one_pass_equal_one_at_a_time(model):
    ids = _ids(model)
    v = _vector(model)
    batched = _logits(model, ids.expand(3, -1), {1: [Addition(v, torch.tensor([0.5, 1.0, 2.0]))]})
    for k, m in enumerate([0.5, 1.0, 2.0]):
        single = _logits(model, ids, {1: [Addition(v, torch.tensor([m]))]})
        torch.testing.assert_close(batched[k], single[0], rtol=1e-4, atol=1e-4)


def test_hooks_are_gone_after_the_block_even_after_an_exception(model):
    layer = decoder_layers(model)[1]
    before = len(layer._forward_hooks)
    with hooks(model, {1: [Record()]}):
        assert len(layer._forward_hooks) == before + 1
    assert len(layer._forward_hooks) == before
    with pytest.raises(RuntimeError), hooks(model, {1: [Record(), Record()]}):
        raise RuntimeError("boom")
    assert len(layer._forward_hooks) == before
    ids = _ids(model)
    assert torch.equal(_logits(model, ids), _logits(model, ids))


def test_response_mode_changes_only_the_last_position_of_a_prompt(model):
    ids = _ids(model)
    T = ids.shape[1]
    base = _logits(model, ids)
    steered = _logits(model, ids, {1: [Addition(_vector(model), torch.tensor([5.0]), "response", T)]})
    assert torch.equal(steered[0, :-1], base[0, :-1])
    assert not torch.allclose(steered[0, -1], base[0, -1])


def test_prompt_mode_acts_during_prefill_only(model):
    ids = _ids(model)
    T = ids.shape[1]
    plen = T - 4  # teacher forcing: the last 4 positions are response positions
    base = _logits(model, ids)
    steered = _logits(model, ids, {1: [Addition(_vector(model), torch.tensor([5.0]), "prompt", plen)]})
    assert not torch.allclose(steered[0, : plen], base[0, : plen])
    h = torch.randn(2, 1, 8)  # a decoding step (one token): prompt mode never acts there
    assert not position_mask(h, "prompt", 5).any()
    assert position_mask(h, "response", 5).all()


def test_capping_leaves_positions_already_above_tau_untouched(model):
    ids = _ids(model)
    axis = _vector(model)
    axis = axis / axis.norm()
    rec_before, rec_after = Record(), Record()
    with torch.inference_mode(), hooks(model, {1: [rec_before]}):
        model(input_ids=ids, use_cache=False)
    proj = rec_before.outputs[0][0] @ axis
    tau = float(proj.median())
    with torch.inference_mode(), hooks(model, {1: [Cap(axis, torch.tensor([tau])), rec_after]}):
        model(input_ids=ids, use_cache=False)
    h0, h1 = rec_before.outputs[0][0], rec_after.outputs[0][0]
    above = proj >= tau
    assert above.any() and (~above).any()
    assert torch.equal(h1[above], h0[above])
    torch.testing.assert_close(h1[~above] @ axis, torch.full(((~above).sum().item(),), tau), rtol=1e-4, atol=1e-4)


def test_a_sweep_with_shared_prefix_layers_equals_the_full_batch(model):
    """The backend's sweep (layers below the first steered one run once, zero rows once) gives the
    log-probs of the plain batched forward, for steering and capping."""
    from types import SimpleNamespace

    from animacy.collect.backend import Intervention, TransformersBackend

    be = TransformersBackend(model, SimpleNamespace(pad_token_id=0, eos_token_id=1))
    ids = _ids(model, length=16)[0].tolist()
    prompt, cont = ids[:9], ids[9:]
    torch.manual_seed(3)
    H = model.config.get_text_config().hidden_size
    V = torch.nn.functional.normalize(torch.randn(4, H), dim=1)
    for kind, per_layer, coeffs in (("add", {1: V, 2: V}, torch.tensor([0.0, 1.0, 2.0, 4.0])),
                                    ("cap", {1: V[0], 2: V[0]}, torch.tensor([0.0, 0.5, 1.0]))):
        iv = Intervention(kind, per_layer, coeffs, "all", {1: 2.0, 2: 3.0})
        sweep = be.score(prompt, cont, iv).log_probs
        batch = be.score_batch([prompt], [cont], iv).log_probs
        torch.testing.assert_close(sweep, batch, rtol=1e-4, atol=1e-4)
    assert len(decoder_layers(model)) == model.config.get_text_config().num_hidden_layers


def test_a_role_vector_steers_inside_its_block_only(smollm2):
    """`with vec.apply(model, magnitude=m)`: the residual at the vector's layer moves by exactly m x the
    vector (x the layer norm in relative units); outside the block the model is untouched."""
    import numpy as np

    from animacy.collect.vectors import RoleVector

    model = smollm2.model
    ids = _ids(model)
    raw = _vector(model).numpy()
    vec = RoleVector("sock", "role_minus_assistant_response", 3, raw / np.linalg.norm(raw), 1.0, layer_norm=2.5)
    base_rec, steered_rec = Record(), Record()
    base = _logits(model, ids, {3: [base_rec]})
    with vec.apply(model, magnitude=4.0, units="relative"):
        steered = _logits(model, ids, {3: [steered_rec]})
    after = _logits(model, ids)
    moved = steered_rec.outputs[0] - base_rec.outputs[0]
    want = torch.as_tensor(4.0 * 2.5 * vec.values, dtype=moved.dtype).expand_as(moved)
    torch.testing.assert_close(moved, want, rtol=0, atol=1e-4)
    assert not torch.allclose(steered, base) and torch.equal(after, base)
    with vec.apply(model, magnitude=0.0):
        assert torch.equal(_logits(model, ids), base)


@pytest.mark.parametrize("mean", [None, 3.0])
def test_ablation_sets_the_projection_is_idempotent_and_leaves_other_positions(model, mean):
    """Ablation (mean=None) leaves a projection of 0, mean ablation the reference mean, to 1e-5; twice equals
    once; with `response` mode only positions from prompt_len - 1 on change."""
    from animacy.collect.hooks import Ablation

    ids = _ids(model)
    raw = _vector(model, seed=4)
    axis = raw / raw.norm()
    rec_once, rec_twice, rec_mode, rec_base = Record(), Record(), Record(), Record()
    once = _logits(model, ids, {2: [Ablation(axis, mean), rec_once]})
    twice = _logits(model, ids, {2: [Ablation(axis, mean), Ablation(axis, mean), rec_twice]})
    _logits(model, ids, {2: [Ablation(axis, mean, "response", prompt_len=9), rec_mode]})
    _logits(model, ids, {2: [rec_base]})
    proj = rec_once.outputs[0] @ axis
    torch.testing.assert_close(proj, torch.full_like(proj, mean or 0.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(twice, once, rtol=0, atol=1e-5)
    torch.testing.assert_close(rec_twice.outputs[0], rec_once.outputs[0], rtol=0, atol=1e-5)
    assert torch.equal(rec_mode.outputs[0][:, :8], rec_base.outputs[0][:, :8])
    torch.testing.assert_close(rec_mode.outputs[0][:, 8:], rec_once.outputs[0][:, 8:], rtol=0, atol=1e-5)


def test_ablating_a_direction_orthogonal_to_the_residual_is_bit_identical(model):
    from animacy.collect.hooks import Ablation

    ids = _ids(model)
    rec = Record()
    base = _logits(model, ids, {2: [rec]})
    h = rec.outputs[0][0].double()  # [T, H]: a direction in the orthogonal complement of every position
    q, _ = torch.linalg.qr(torch.cat([h.T, torch.randn(h.shape[1], 1, dtype=torch.float64)], dim=1))
    axis = q[:, -1].float()
    assert (rec.outputs[0][0] @ axis).abs().max() < 1e-4
    assert torch.equal(_logits(model, ids, {2: [Ablation(axis)]}), base)


def test_the_experts_implementation_of_a_mixture_of_experts_changes_no_score(tmp_path):
    """model.experts picks transformers' experts backend (eager, grouped_mm, batched_mm) for a mixture of
    experts, recorded in the manifest's model info; scores and a steering sweep are the same under each."""
    from animacy.collect.backend import Intervention, TransformersBackend
    from animacy.collect.model import _info, _set_experts
    from animacy.errors import ConfigError
    model = tiny_qwen3_moe()
    tok = types.SimpleNamespace(pad_token_id=0, eos_token_id=1, chat_template=None)
    prompt, cont = list(range(5, 25)), list(range(30, 42))
    vec = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(1)), dim=0)
    sweep = Intervention("add", {1: vec}, torch.tensor([0.0, 2.0, 4.0]), "all")
    results = {}
    for impl in ("eager", "grouped_mm", "batched_mm"):
        _set_experts(model, impl)
        assert _info(model, tok, "tiny", None, "tiny", "float32", "cpu")["experts_implementation"][""] == impl
        be = TransformersBackend(model, tok)
        results[impl] = (be.score(prompt, cont).log_probs, be.score(prompt, cont, sweep).log_probs)
    for impl in ("grouped_mm", "batched_mm"):
        for got, want in zip(results[impl], results["eager"]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="unknown experts implementation"):
        _set_experts(model, "fastest")

"""Models for the collector tests: the real SmolLM2 (installed by setup.sh) and tiny random-weight Gemma 3
and Qwen3-MoE models built in-process from configs (their layer paths and outputs)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the collector tests need torch (./setup.sh installs it)")


def tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=8,
                           max_position_embeddings=256,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    return Gemma3ForCausalLM(cfg).eval()


def tiny_qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                         num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         num_experts=4, num_experts_per_tok=2, max_position_embeddings=256)
    return Qwen3MoeForCausalLM(cfg).eval()

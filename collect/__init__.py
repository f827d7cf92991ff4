"""The data collector (torch, transformers, vLLM): writes run folders through `animacy.schema`."""

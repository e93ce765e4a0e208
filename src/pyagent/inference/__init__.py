"""PyAgent's own LLM inference: Llama-family checkpoints on a paged KV cache with continuous batching.

Pieces, each behind a narrow interface: ``config``/``loader`` (checkpoint folder -> weights),
``tokenizer``, ``kv_cache`` (block manager and storage), ``attention`` (Rust decode kernel, NumPy
reference, prefill), ``model`` (forward pass), ``sampler``, ``scheduler`` (continuous batching) and
``engine`` (``PagedAttentionEngine``). Import the submodules directly; this package imports nothing heavy.
"""

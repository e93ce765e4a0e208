"""Disaggregated prefill/decode: KV blocks moved between engine instances (see connector.py)."""

"""A tiny inventory library (sample code for pyagent demo)."""

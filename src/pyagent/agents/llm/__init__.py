"""LLM backends: any OpenAI-compatible endpoint (Responses API or Chat Completions), metered."""

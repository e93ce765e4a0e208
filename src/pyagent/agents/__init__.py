"""Agents: the cascade context that travels with every task, the shared budget, and BaseAgent."""

"""The improve pipeline: planner, verification gate, executors, isolated workspaces and the peer entry."""

"""Shared data types: tasks, change sets, context, budget, priority and the knowledge protocol.

The bottom layer: it imports nothing else of PyAgent's, so every other package may use it.
"""

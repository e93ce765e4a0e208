"""The fleet: priority scheduling, preemption and the event stream for agent tasks."""

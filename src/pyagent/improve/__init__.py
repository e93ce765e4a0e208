"""Pipeline of `pyagent improve`: plan, execute through the fleet, verify, merge, report."""

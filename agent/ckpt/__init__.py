"""Checkpoints: the agent's pipeline (box) and the helper's snapshot and cadence parts (trainer); import submodules."""

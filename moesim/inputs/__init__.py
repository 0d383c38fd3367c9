"""Inputs: scenario and other files (pydantic), model specs, topologies; resolved in one place."""

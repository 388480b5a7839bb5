"""Simulation runner, configs and benchmarks (imported as fedrec.simulations)."""

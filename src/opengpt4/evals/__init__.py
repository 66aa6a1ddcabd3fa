"""Evals: an OpenAI-Evals-compatible registry, the announcement's benchmarks, a code sandbox, calibration."""

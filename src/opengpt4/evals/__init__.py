"""Evals: the framework (an OpenAI-Evals-compatible registry, templates, completion functions, runner,
statistics, calibration, a code sandbox) and, in `benchmarks/`, the announcement's benchmarks."""

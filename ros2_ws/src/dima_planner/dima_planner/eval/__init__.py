"""Open-loop evaluation: VAD-exact metrics, baselines, plots and the `dima eval` CLI."""

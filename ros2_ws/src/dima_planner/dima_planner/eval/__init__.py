"""Open-loop evaluation: VAD-exact metrics, baselines, plots, the sharded evaluation loop and
the factual-QA scoring of the MLLM branch (qa.py). The `dima eval` command is cli/eval.py."""

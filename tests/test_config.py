"""Strict typed configs: unknown keys and wrong types are one clear sentence."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from dima_planner.config import ConfigError, from_dict, load_yaml, parse_overrides, to_dict


@dataclass
class Optim:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Cfg:
    name: str = "x"
    steps: int = 10
    device: Literal["cpu", "cuda"] = "cpu"
    out: Path = Path("runs")
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)
    ckpt: str | None = None


def test_round_trip_and_coercion():
    cfg = from_dict(Cfg, {"steps": 5, "optim": {"lr": 1, "betas": [0.8, 0.9]}, "out": "a/b", "tags": ["t"]})
    assert cfg.steps == 5 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9) and cfg.out == Path("a/b")
    assert from_dict(Cfg, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, words",
    [
        ({"stpes": 3}, "unknown key 'stpes'"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a number"),
        ({"steps": 2.5}, "steps: expected an integer"),
        ({"steps": True}, "steps: expected an integer"),
        ({"device": "tpu"}, "'tpu' is not one of"),
        ({"optim": {"betas": [0.9]}}, "expected 2 items"),
        ({"tags": "a"}, "tags: expected a list"),
    ],
)
def test_bad_configs_name_the_problem(data, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        from_dict(Cfg, data)


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\noptim:\n  lr: 0.1\n")
    cfg = load_yaml(Cfg, p, parse_overrides(["optim.lr=0.5", "steps=7"]))
    assert cfg.optim.lr == 0.5 and cfg.steps == 7 and cfg.name == "a"
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(Cfg, tmp_path / "missing.yaml")
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(Cfg, p)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])

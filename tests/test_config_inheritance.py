"""Config inheritance (`base:`): the merge rule, and the shipped configs built with it."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml

from dima_planner.config import ConfigError, from_dict, load_yaml, merge, read_yaml, to_dict
from dima_planner.model.config import PRESETS, preset
from dima_planner.synth.config import SynthConfig
from dima_planner.train.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "params" / "train"


@dataclasses.dataclass
class Inner:
    a: int = 1
    b: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    c: str | None = "x"


@dataclasses.dataclass
class Outer:
    name: str = "n"
    inner: Inner = dataclasses.field(default_factory=Inner)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_merge_is_deep_for_mappings_and_replaces_everything_else():
    base = {"x": 1, "m": {"a": 1, "b": [1, 2], "n": {"k": 1, "j": 2}}, "l": [1, 2, 3]}
    out = merge(base, {"m": {"b": [9], "n": {"k": 5}}, "l": [4], "x": None})
    assert out == {"x": None, "m": {"a": 1, "b": [9], "n": {"k": 5, "j": 2}}, "l": [4]}
    assert base["m"]["n"] == {"k": 1, "j": 2} and base["l"] == [1, 2, 3]  # inputs untouched


def test_base_chain_relative_paths_and_overrides(tmp_path):
    write(tmp_path / "a" / "root.yaml", "name: root\ninner: {a: 5, b: [7, 8], c: y}\n")
    write(tmp_path / "a" / "mid.yaml", "base: root.yaml\ninner: {b: [0]}\n")  # relative to a/
    leaf = write(tmp_path / "b" / "leaf.yaml", "base: ../a/mid.yaml\nname: leaf\ninner: {c: null}\n")
    assert load_yaml(Outer, leaf) == Outer("leaf", Inner(5, [0], None))
    # --set applies after the merge, on top of every file
    assert load_yaml(Outer, leaf, {"inner.a": 6}).inner == Inner(6, [0], None)
    assert "base" not in read_yaml(leaf)


def test_base_errors_are_one_sentence(tmp_path):
    write(tmp_path / "x.yaml", "base: y.yaml\n")
    write(tmp_path / "y.yaml", "base: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(Outer, tmp_path / "x.yaml")
    write(tmp_path / "m.yaml", "base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_yaml(Outer, tmp_path / "m.yaml")
    write(tmp_path / "l.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="must be a path"):
        load_yaml(Outer, tmp_path / "l.yaml")
    write(tmp_path / "u.yaml", "inner: {d: 1}\n")
    with pytest.raises(ConfigError, match="unknown key 'd'"):  # still strict after a merge
        load_yaml(Outer, write(tmp_path / "v.yaml", "base: u.yaml\n"))


def leaves(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def differing(a, b) -> set[str]:
    la, lb = leaves(to_dict(a)), leaves(to_dict(b))
    return {k for k in la.keys() | lb.keys() if la.get(k) != lb.get(k)}


@pytest.mark.parametrize("name, base, delta", [
    ("tiny_cpu_camera_only", "tiny_cpu", {"out_dir", "export_dir", "model.can_bus"}),
    ("tiny_cpu_ego", "tiny_cpu", {"out_dir", "export_dir", "model.ego_can_bus"}),
])
def test_stage1_variants_differ_from_their_base_only_in_their_deltas(name, base, delta):
    assert differing(load_config(TRAIN / f"{name}.yaml"), load_config(TRAIN / f"{base}.yaml")) == delta


@pytest.mark.parametrize("path", sorted(TRAIN.glob("*.yaml")), ids=lambda p: p.stem)
def test_stage2_model_is_its_init_from_stage1_model(path):
    """init_from must have been built with `model` (train/state.load_init refuses otherwise):
    a stage-2 config's model is the stage-1 config's that makes its init_from checkpoint."""
    cfg = load_config(path)
    if cfg.stage != 2:
        return
    makers = {load_config(p).export_dir or f"checkpoints/dima_{p.stem}": p for p in TRAIN.glob("*.yaml")
              if load_config(p).stage == 1}
    stage1 = makers[cfg.init_from]
    assert cfg.model == load_config(stage1).model, (path.name, stage1.name)
    assert cfg.data.queue_length == load_config(stage1).data.queue_length


def test_presets_are_the_training_configs_models():
    for name, rel in PRESETS.items():
        assert preset(name) == load_config(REPO / rel).model
    assert preset("vad_tiny").image_fit == "pad" and preset("vad_base").image_size == (736, 1280)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("vad_huge")


# The commit before `base:` existed: every config was a full file then. A config loaded
# through its `base:` chain must equal that full file, field by field, except where listed.
BEFORE = "7e8ad0bee28ff77b882c01db849c12c02693a1bc"
# The GPU stage-2 configs did not match their stage 1's model (so load_init would refuse the
# stage-1 checkpoint they name); they now inherit it. These are all the fields that moved.
FIXED = {
    "vad_tiny_stage2_llava7b.yaml": {"model.image_fit", "model.pretrained_path", "model.frozen_stages",
                                     "model.norm_eval", "model.dropout", "model.can_bus"},
    "vad_base_stage2_llava7b.yaml": {"model.image_size", "model.image_fit", "model.pretrained_path",
                                     "model.frozen_stages", "model.norm_eval", "model.dropout", "model.can_bus",
                                     "data.queue_length"},
}


def _before(rel: str) -> str | None:
    try:
        return subprocess.run(["git", "show", f"{BEFORE}:{rel}"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def _strip_removed(data: dict) -> dict:
    # model.prev_bev_fill was removed with its "zeros" option (no checkpoint used it); the
    # full files of then said "masked" (the behaviour kept) or nothing (the vad stage-2 files).
    data = dict(data)
    if isinstance(data.get("model"), dict):
        data["model"] = {k: v for k, v in data["model"].items() if k != "prev_bev_fill"}
    return data


CONFIGS = [(f"params/train/{p.name}", TrainConfig) for p in sorted(TRAIN.glob("*.yaml"))] + [
    (f"params/{n}", SynthConfig) for n in ("synth.yaml", "synth_tiny.yaml", "synth_bench.yaml")]


@pytest.mark.parametrize("rel, cls", CONFIGS, ids=lambda x: x if isinstance(x, str) else "")
def test_inherited_configs_equal_the_full_files_they_replaced(rel, cls):
    text = _before(rel)
    if text is None:
        pytest.skip(f"no git history with commit {BEFORE[:7]} (a shallow or exported tree)")
    old = from_dict(cls, _strip_removed(yaml.safe_load(text)), where=f"{BEFORE[:7]}:{rel}")
    new = load_yaml(cls, REPO / rel)
    assert differing(new, old) == FIXED.get(Path(rel).name, set())

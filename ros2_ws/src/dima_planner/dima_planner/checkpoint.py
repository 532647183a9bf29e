"""Model checkpoints: a directory holding

    model.safetensors   the weights (safetensors: no pickle, loads lazily and safely)
    config.yaml         {"model": ModelConfig, "train": the TrainConfig that made it, if any}
    meta.json           {"format": 1, "sha256": hash of model.safetensors, "num_parameters", ...}

Anything wrong with a checkpoint (missing file, truncated or corrupt weights, hash
mismatch, weights of another architecture) is one `CheckpointError` sentence.
Optimiser / scheduler / RNG state for resuming lives separately in `train_state.pt`
(written by train.py) so that exported checkpoints stay small.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import ConfigError, from_dict, to_dict
from .model.config import ModelConfig
from .model.planner import VisionPlanner

FORMAT = 1
WEIGHTS, CONFIG, META = "model.safetensors", "config.yaml", "meta.json"


class CheckpointError(ValueError):
    """A checkpoint directory cannot be used (the message says which file and why)."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it visible (a power cut keeps old or new)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints are shared/committed files
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sibling(directory: Path, tag: str) -> Path:
    return directory.with_name(f".{directory.name}.{tag}")


def replace_dir(directory: str | Path, fill: Callable[[Path], Any]) -> Path:
    """Write a directory whole or not at all: `fill(tmp)` writes a fresh sibling directory,
    every file in it is fsynced, then it takes the place of `directory` by two renames (the
    old one moves aside first and is deleted last). A process killed at any point leaves
    either the previous complete directory (possibly aside: `recover_dir` puts it back) or
    the new complete one, never a mix of the two (weights of one step, optimiser of another).
    Files of the previous directory that `fill` does not write are carried over."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(directory)
    tmp, old = _sibling(directory, "tmp"), _sibling(directory, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    if directory.is_dir():  # files the writer does not make (a user's notes, an export) stay
        for path in directory.iterdir():
            if path.is_file() and not (tmp / path.name).exists():
                shutil.copy2(path, tmp / path.name)
    for path in tmp.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(tmp)
    if directory.exists():
        os.rename(directory, old)
    os.rename(tmp, directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def recover_dir(directory: str | Path) -> bool:
    """Undo what a kill inside `replace_dir` left: the previous directory moved aside and no
    new one in its place -> put it back; a half-written new one -> delete it. True if the
    previous directory was restored."""
    directory = Path(directory)
    tmp, old = _sibling(directory, "tmp"), _sibling(directory, "old")
    restored = False
    if old.exists() and not directory.exists():
        os.rename(old, directory)
        restored = True
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return restored


def save_checkpoint(directory: str | Path, model: VisionPlanner, train_config: dict[str, Any] | None = None,
                    extra_meta: dict[str, Any] | None = None) -> Path:
    """Write weights, config and meta into `directory` (created). Returns the directory."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": str(FORMAT)})
    _atomic_write(directory / WEIGHTS, blob)
    cfg = {"model": to_dict(model.cfg)}
    if train_config is not None:
        cfg["train"] = train_config
    _atomic_write(directory / CONFIG, yaml.safe_dump(cfg, sort_keys=False).encode())
    meta = {"format": FORMAT, "sha256": hashlib.sha256(blob).hexdigest(),
            "num_parameters": sum(p.numel() for p in model.parameters()), **(extra_meta or {})}
    _atomic_write(directory / META, (json.dumps(meta, indent=2) + "\n").encode())
    return directory


def read_model_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {CONFIG}")
    try:
        data = yaml.safe_load(path.read_text())
        return from_dict(ModelConfig, (data or {}).get("model"), where=str(path))
    except (yaml.YAMLError, ConfigError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint config {path} is not a valid model config: {e}") from None


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu",
                    expect: ModelConfig | None = None) -> tuple[VisionPlanner, dict[str, Any]]:
    """Build the model from config.yaml and load verified weights. Returns (model in eval mode, meta).

    `expect`: if given, the checkpoint's model config must equal it (e.g. resuming a run).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    for name in (WEIGHTS, META):
        if not (directory / name).is_file():
            raise CheckpointError(f"checkpoint {directory} has no {name}")
    try:
        meta = json.loads((directory / META).read_text())
        expected_hash = meta["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint meta {directory / META} is not valid JSON with a sha256") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {directory} has format {meta.get('format')!r}, this code reads {FORMAT}")
    cfg = read_model_config(directory)
    if expect is not None and cfg != expect:
        raise CheckpointError(f"checkpoint {directory} was made for a different model config than the one requested")
    blob = (directory / WEIGHTS).read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != expected_hash:
        raise CheckpointError(f"checkpoint weights {directory / WEIGHTS} are corrupt or truncated "
                              f"(sha256 {actual[:12]}... does not match {expected_hash[:12]}... in {META})")
    try:
        state = load(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint weights {directory / WEIGHTS} cannot be read: {e}") from None
    try:
        # The weights come from this checkpoint: don't read the ImageNet initialisation again
        # (its file need not exist where the checkpoint is deployed).
        import dataclasses

        model = VisionPlanner(dataclasses.replace(cfg, pretrained_path=None, pretrained=False))
        model.cfg = cfg
    except (ValueError, ImportError, FileNotFoundError) as e:
        raise CheckpointError(f"checkpoint {directory} describes a model that cannot be built: {e}") from None
    check_state_matches(model, state, str(directory / WEIGHTS))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def check_state_matches(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """One sentence instead of PyTorch's list of missing keys / size mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"{where} holds weights of a different architecture than its config describes "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors, e.g. {example!r})")

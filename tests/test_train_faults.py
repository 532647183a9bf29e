"""Training killed (SIGKILL) in the middle of writing its checkpoint resumes exactly.

A child process trains 3 steps with a checkpoint after every step and SIGKILLs itself
right before the k-th rename of its second save (the fault: a kill, an OOM killer, a
pre-empted job). The run resumed from what is on disk must end with the same weights and
losses as an uninterrupted one: the save at step 2 is either complete or absent, never
the weights of one step next to the optimiser of another.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dima_planner.checkpoint import load_checkpoint
from dima_planner.train import train
from test_train import config

TESTS = Path(__file__).resolve().parent

# The child: the same run as config(world, out, 3, 1) with ckpt_every=1; during the save of
# step 2 every os.replace / os.rename is counted and the process kills itself before call k.
CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_train import config
from dima_planner.train import checkpoint, train

world, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = config(world, out, steps=3, batch_size=1)
cfg.schedule.ckpt_every, cfg.threads = 1, 1
saving = {{"step": None, "calls": 0}}
real_save = checkpoint.save_train_state

def save(run_dir, model, cfg, optim, sched, step, *a, **k):
    saving["step"] = step
    try:
        return real_save(run_dir, model, cfg, optim, sched, step, *a, **k)
    finally:
        saving["step"] = None

def counted(real):
    def call(*a, **k):
        if saving["step"] == 2:
            saving["calls"] += 1
            if saving["calls"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    return call

checkpoint.save_train_state = save
os.replace, os.rename = counted(os.replace), counted(os.rename)
train(cfg)
"""


@pytest.fixture(scope="module")
def world(training_world):
    return training_world


def run_child(world, out: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD.format(tests=str(TESTS)), str(world), str(out), str(kill_at)],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)


def run_here(world, out: Path, resume: bool = False) -> list[float]:
    """The same run in this process, on one torch thread like the child (same floating point)."""
    threads = torch.get_num_threads()
    cfg = config(world, out, steps=3, batch_size=1)
    cfg.schedule.ckpt_every, cfg.threads = 1, 1
    try:
        return train(cfg, resume=resume)["losses"]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    losses = run_here(world, out)
    return losses, load_checkpoint(out / "last")[0].state_dict()


# k=3: before meta.json of step 2 is in place (weights already written); k=5: in between the
# renames that swap the whole directory (the previous one set aside, the new one not yet in).
@pytest.mark.parametrize("kill_at", [3, 5])
def test_sigkill_during_a_save_resumes_from_the_last_complete_checkpoint(world, straight, tmp_path, kill_at):
    out = tmp_path / "run"
    child = run_child(world, out, kill_at)
    assert child.returncode == -signal.SIGKILL, f"the child was not killed mid-save:\n{child.stderr[-3000:]}"
    resumed = run_here(world, out, resume=True)
    losses, weights = straight
    assert resumed == losses[1:], "resumed from a step other than 1, or diverged"
    model, meta = load_checkpoint(out / "last")
    assert meta["step"] == 3
    for name, w in model.state_dict().items():
        assert torch.equal(w, weights[name]), name
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".last")) == []  # nothing half-written left

"""World generation killed (SIGKILL) half-way: nothing loads the partial world, and the next
`generate` (what `dima synth` and `make demo` call) regenerates it into the same world an
uninterrupted run writes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dima_planner.data.nuscenes_dataset import DataRootError, validate_dataroot
from dima_planner.data.splits import SplitError, load_meta
from dima_planner.synth.generate import generate

# The same world as conftest.training_world.
CONFIG = ("SynthConfig(seed=1, num_scenes=2, scene_seconds=4.0, scale=0.1, val_fraction=0.5, traffic_vehicles=3, "
          "parked_vehicles=2, pedestrians=2, camera_sweeps=False, scenarios=('straight', 'stop_and_go'))")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_world_generation_killed_midway_is_detected_and_regenerated(training_world, tmp_path):
    from dima_planner.synth.config import SynthConfig

    root = tmp_path / "world"
    code = (f"from dima_planner.synth.config import SynthConfig\nfrom dima_planner.synth.generate import generate\n"
            f"generate({CONFIG}, {str(root)!r}, progress=False)\n")
    child = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 240
        # killed once it has written some of the camera images (the tables come last)
        while child.poll() is None and time.monotonic() < deadline:
            if len(list((root / "samples").rglob("*.jpg"))) >= 6 if (root / "samples").is_dir() else False:
                break
            time.sleep(0.05)
        assert child.poll() is None, "generation finished before it could be interrupted"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert not (root / "dima_meta.json").exists()

    # Nothing trains or evaluates on it: the loaders name the problem and the fix.
    with pytest.raises(DataRootError, match="partially generated world.*dima synth"):
        validate_dataroot(root, "v1.0-dima")
    with pytest.raises(SplitError, match="partially generated"):
        load_meta(root)

    # The next run regenerates it: the same files, byte for byte, as an uninterrupted run.
    generate(eval(CONFIG, {"SynthConfig": SynthConfig}), root, progress=False)
    assert tree(root) == tree(training_world)
    validate_dataroot(root, "v1.0-dima")

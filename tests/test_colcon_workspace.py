"""The repository as a ROS user builds it: cloned into `<ws>/src/`, `colcon build` (colcon
from PyPI, in this venv) with and without `--symlink-install`.

Checks what broke before: colcon finds exactly dima_msgs and dima_planner (no second
tf2_msgs from tools/interfaces, nothing from a venv inside the clone); nothing is written
outside the workspace (data_files used to climb out of the package); every symlink the
symlink install makes stays inside the workspace; and the installed `dima_planner_node`,
started from another directory in the sourced workspace, reaches `active` with the default
checkpoint found in the workspace's share/dima_planner.

The venv's ROS wheels are the underlay: colcon's CMake packages find ament_cmake and
rosidl through AMENT_PREFIX_PATH=$VIRTUAL_ENV (README, "colcon workspace").
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dds_harness import REPO, TestNode, lifecycle_state
from dima_planner.ros.env import pid_domain_id

pytestmark = pytest.mark.ros
VENV = Path(sys.prefix)
PACKAGES = ["dima_msgs", "dima_planner"]


def _clone(dst: Path) -> None:
    """Copy what a clone of this checkout holds (tracked files and new files git does not
    ignore, symlinks as symlinks): the working tree under test, uncommitted edits included."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    for rel in sorted({p for p in out.decode().split("\0") if p}):
        src, target = REPO / rel, dst / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), target)
        else:
            shutil.copy2(src, target)


def _env(domain: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMENT_", "COLCON_", "ROS_", "PYTHONPATH", "RMW_", "FASTDDS_", "FASTRTPS_",
                                "CMAKE_PREFIX_PATH"))}
    env.update(PATH=f"{VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", VIRTUAL_ENV=str(VENV),
               AMENT_PREFIX_PATH=str(VENV), MAKEFLAGS="-j2", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    if domain is not None:
        env["ROS_DOMAIN_ID"] = str(domain)
    return env


def _tree(root: Path, skip: Path) -> dict[str, float]:
    """Every path under root except `skip` (the workspace) -> mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p != skip:
                out[str(p)] = p.lstat().st_mtime
    return out


def _colcon(ws: Path, *args: str, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(VENV / "bin" / "colcon"), *args], cwd=ws, env=env or _env(), capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"colcon {' '.join(args)} failed:\n{out[-6000:]}"
    return out


def _in_sourced_ws(ws: Path, install: str, cmd: str, cwd: Path, env: dict[str, str], **kw):
    script = f"source {ws / install / 'setup.bash'} && {cmd}"
    return subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """<tmp>/outside/ws with the repository in src/dima, built both ways."""
    if not (VENV / "bin" / "colcon").is_file():
        pytest.fail("colcon is not installed in the venv (tools/requirements.txt; make setup)")
    outside = tmp_path_factory.mktemp("outside")
    ws = outside / "ws"
    _clone(ws / "src" / "dima")
    (outside / "elsewhere").mkdir()
    before = _tree(outside, ws)
    listed = _colcon(ws, "list", "--names-only").split()
    _colcon(ws, "build", "--packages-select", *PACKAGES)
    # The symlink install only differs for the ament_python package: it is built as an overlay
    # of the first install, which provides dima_msgs (as `source install/setup.bash` would).
    overlay = _env()
    overlay.update(COLCON_PREFIX_PATH=str(ws / "install"),
                   AMENT_PREFIX_PATH=f"{ws / 'install' / 'dima_msgs'}:{VENV}")
    _colcon(ws, "build", "--symlink-install", "--packages-select", "dima_planner", "--packages-ignore", "dima_msgs",
            "--build-base", "build_symlink", "--install-base", "install_symlink", env=overlay)
    after = _tree(outside, ws)
    return {"ws": ws, "outside": outside, "listed": listed, "written_outside": sorted(set(after) - set(before))}


def test_colcon_finds_exactly_the_two_packages(workspace):
    assert sorted(workspace["listed"]) == PACKAGES, workspace["listed"]


def test_nothing_is_written_outside_the_workspace(workspace):
    assert workspace["written_outside"] == []


@pytest.mark.parametrize("install", ["install", "install_symlink"])
def test_share_has_launch_params_and_checkpoints(workspace, install):
    ws = workspace["ws"]
    share = ws / install / "dima_planner" / "share" / "dima_planner"
    for rel in ("launch/planner.launch.py", "params/fastdds_shm.xml", "params/fastdds_shm_network.xml",
                "params/ros/planner.yaml", "params/ros/absolute_topics.yaml",
                "checkpoints/dima_tiny/model.safetensors", "checkpoints/dima_tiny_stage2/mllm.safetensors", "package.xml"):
        assert (share / rel).is_file(), f"{install}: {rel} missing in share/dima_planner"
    for path in (ws / install).rglob("*"):
        if path.is_symlink():
            target = path.resolve()
            assert target.is_relative_to(ws), f"{path} points outside the workspace: {target}"
    if install == "install":
        assert not any(p.is_symlink() for p in share.rglob("*")), "a plain build copies its data files"


def test_installed_node_reaches_active_from_another_directory(workspace):
    ws, elsewhere = workspace["ws"], workspace["outside"] / "elsewhere"
    domain = pid_domain_id(71)
    env = _env(domain)
    # The sourced workspace's package, and its share/ checkpoint, are the ones in use.
    probe = _in_sourced_ws(ws, "install", "python3 -c 'import dima_planner.runtime.params as p; "
                           "print(p.__file__); print(p.resolve_checkpoint(\"checkpoints/dima_tiny\")[0])'",
                           elsewhere, env)
    out = probe.communicate(timeout=120)[0]
    assert probe.returncode == 0, out
    module, ckpt = out.strip().splitlines()[-2:]
    assert Path(module).is_relative_to(ws / "install" / "dima_planner"), out
    assert Path(ckpt) == ws / "install" / "dima_planner" / "share" / "dima_planner" / "checkpoints" / "dima_tiny"

    node = _in_sourced_ws(ws, "install", f"exec {ws / 'install/dima_planner/lib/dima_planner/dima_planner_node'}",
                          elsewhere, env, start_new_session=True)
    client = TestNode("colcon_probe", domain)
    try:
        state = lifecycle_state(client, "dima_planner", timeout=150.0)
    finally:
        client.close()
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGINT)
        try:
            log = node.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            log = node.communicate()[0]
    assert state == "active", f"node state {state!r}; its output:\n{log}"
    assert re.search(r"loaded dima_tiny\b", log), log  # not dima_tiny_stage2

"""tools/setup.sh's distro logic, without installing anything: a venv made for another ROS
distro is removed and made again; an unknown distro or a foreign venv is a clear error."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fake_venv(path: Path, distro: str | None) -> None:
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").symlink_to("/bin/false")  # any step that runs it fails at once
    if distro is not None:
        (path / ".dima-stamps").mkdir()
        (path / ".dima-stamps" / "distro").write_text(distro + "\n")


def _setup(venv: Path, distro: str | None) -> subprocess.CompletedProcess:
    # PYTHON=false: the script stops at its Python check, right after the distro decision.
    env = {k: v for k, v in os.environ.items() if k != "ROS_DISTRO"}
    env.update(DIMA_VENV=str(venv), PYTHON="false")
    if distro is not None:
        env["ROS_DISTRO"] = distro
    return subprocess.run(["bash", str(REPO / "tools" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_venv_of_another_distro_is_made_again(tmp_path):
    venv = tmp_path / "venv"
    _fake_venv(venv, "kilted")
    proc = _setup(venv, "jazzy")
    assert f"{venv} was made for ROS kilted; making it again for jazzy" in proc.stdout, proc.stdout + proc.stderr
    assert not (venv / ".dima-stamps").exists()  # the old venv is gone, nothing of it is reused
    assert "dima needs Python 3.11" in proc.stderr


def test_without_ros_distro_the_venv_keeps_its_distro(tmp_path):
    for stamp, expected in (("kilted", "kilted"), (None, "jazzy")):
        venv = tmp_path / f"venv-{stamp}"
        _fake_venv(venv, stamp)
        if stamp is None:
            (venv / ".dima-stamps").mkdir()  # made by setup.sh before the distro stamp: Kilted then
        proc = _setup(venv, None)
        remade = "making it again" in proc.stdout
        assert remade == (stamp is None), proc.stdout + proc.stderr
        if not remade:
            assert (venv / ".dima-stamps" / "distro").read_text().strip() == expected


def test_unknown_distro_and_foreign_venv_are_clear_errors(tmp_path):
    proc = _setup(tmp_path / "venv", "humble")
    assert proc.returncode == 1 and "no ROS wheels for ROS_DISTRO=humble; supported: jazzy kilted" in proc.stderr
    foreign = tmp_path / "foreign"
    _fake_venv(foreign, None)
    proc = _setup(foreign, "jazzy")
    assert proc.returncode == 1 and "was not made by this script" in proc.stderr
    assert (foreign / "bin").exists()  # never removed

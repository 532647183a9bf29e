"""Replay follows the bag: the README's real-nuScenes path, end to end, on the generated world.

`dima bag convert --compressed --keyframes-only` writes nuScenes' JPEGs as CompressedImage;
the planner is configured the way nuscenes_replay.launch.py configures it (the camera
parameters from `dima_planner.bags.replay` for that bag), in a namespace (as a second
instance would be), and the bag is played only once `dima_healthcheck` has seen the node
report itself active. It must plan every replayed keyframe: N of N. Before, the launch file
subscribed raw images only and a compressed bag planned nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dds_harness import REPO, TestNode, start_node_process, stop_node_process
from dima_planner.bags import bag_io, replay
from dima_planner.runtime import params
from dima_planner.ros.env import pid_domain_id

from test_bag_convert import make_world

PARAMS = REPO / "params" / "ros"
NS = "/car1"


def _topics(compressed: bool, cams=bag_io.CAMERAS_ORDER) -> dict[str, str]:
    return {bag_io.image_topic(c, compressed): bag_io.TYPES["compressed" if compressed else "image"] for c in cams}


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_transport_is_taken_from_the_bag(compressed):
    got = replay.camera_transports({**_topics(compressed), "/odom": bag_io.TYPES["odom"]})
    assert set(got) == set(bag_io.CAMERAS_ORDER)
    assert {kind for _, kind in got.values()} == {"compressed" if compressed else "raw"}


def test_transport_argument_and_bad_bags():
    both = {**_topics(False), **_topics(True)}
    assert {k for _, k in replay.camera_transports(both).values()} == {"raw"}  # no decoding when there is a choice
    assert {k for _, k in replay.camera_transports(both, "compressed").values()} == {"compressed"}
    with pytest.raises(replay.ReplayError, match="no compressed CAM_FRONT image topic.*image topics in it: /cam"):
        replay.camera_transports(_topics(False), "compressed")
    with pytest.raises(replay.ReplayError, match="no raw or compressed CAM_FRONT"):
        replay.camera_transports(_topics(True, bag_io.CAMERAS_ORDER[1:]))
    with pytest.raises(replay.ReplayError, match="one of auto, raw, compressed"):
        replay.camera_transports(both, "jpeg")
    # A side camera missing from the bag is left to the node (missing_camera_policy).
    assert bag_io.CAMERAS_ORDER[1] not in replay.camera_transports(
        _topics(False, [bag_io.CAMERAS_ORDER[0], *bag_io.CAMERAS_ORDER[2:]]))


def test_not_a_bag_is_a_clear_error(tmp_path):
    with pytest.raises(replay.ReplayError, match="not a rosbag2 directory"):
        replay.node_parameters(tmp_path)


def test_rviz_view_follows_transport_and_namespace(tmp_path):
    out = replay.rviz_config(REPO / "launch" / "dima.rviz", tmp_path / "d.rviz", "/cam_front/image_raw/compressed",
                             "car1")
    topics = {d["Class"]: d["Topic"]["Value"] for d in yaml.safe_load(out.read_text())["Visualization Manager"]["Displays"]
              if isinstance(d.get("Topic"), dict)}
    # RViz takes the image transport from the topic's last name.
    assert topics["rviz_default_plugins/Image"] == "/car1/cam_front/image_raw/compressed"
    assert topics["rviz_default_plugins/Path"] == "/car1/dima/path"


@pytest.mark.ros
def test_healthcheck_reports_an_absent_node_unhealthy():
    """Nothing answers for /nobody: exit 1 with the reason, within the timeout (Docker marks
    the container unhealthy; the replay launch does not play)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(pid_domain_id(92)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dima_planner.ros.healthcheck", "--node", "nobody", "--timeout", "1.5"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and time.monotonic() - t0 < 30, proc.stdout + proc.stderr
    assert "/nobody: not ready (no diagnostics from /nobody within 1.5 s)" in proc.stderr


@pytest.fixture(scope="module")
def compressed_keyframe_bag(tmp_path_factory) -> Path:
    """`dima bag convert --compressed --keyframes-only` of one scene, as the README says for nuScenes."""
    world = make_world(tmp_path_factory.mktemp("world") / "world")
    out = tmp_path_factory.mktemp("bags") / "mini_val"
    proc = subprocess.run([str(Path(sys.executable).with_name("dima")), "bag", "convert", "--dataroot", str(world),
                           "--split", "val", "--out", str(out), "--compressed", "--keyframes-only", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _front_stamps(bag: Path) -> set[int]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as r:
        conns = [c for c in r.connections if c.topic == bag_io.image_topic(bag_io.CAMERAS_ORDER[0], True)]
        return {bag_io.cdr_stamp_ns(raw) for _c, _t, raw in r.messages(connections=conns)}


@pytest.mark.ros
@pytest.mark.slow  # 42 s with its bag; test_demo replays a keyframes bag into the node in `make test`
@pytest.mark.timeout(400)
def test_compressed_nuscenes_bag_replays_and_every_keyframe_is_planned(compressed_keyframe_bag, tmp_path):
    from dima_msgs.msg import PlannedTrajectory
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    bag = compressed_keyframe_bag
    fronts = _front_stamps(bag)
    assert len(fronts) >= 6
    cameras = replay.node_parameters(bag)
    assert cameras["cameras.CAM_FRONT.transport"] == "compressed"
    domain = pid_domain_id(91)
    # The node as nuscenes_replay.launch.py starts it (through planner.launch.py) with
    # namespace:=car1: replay.yaml as the overlay, the bag's cameras as the extra params file.
    extra = replay.planner_params_file(cameras, tmp_path)
    assert params.flatten_ros_params(yaml.safe_load(extra.read_text())) == cameras
    args = ["--params-file", str(PARAMS / "replay.yaml"), "--params-file", str(extra),
            "-r", f"__ns:={NS}", "-r", f"/clock:={NS}/clock", "-r", f"/tf:={NS}/tf", "-r", f"/tf_static:={NS}/tf_static",
            "-p", f"checkpoint:={REPO / 'checkpoints' / 'dima_tiny'}", "-p", "num_threads:=1"]
    node = start_node_process("dima_planner.ros.planner_node", domain, PARAMS / "planner.yaml", *args)
    probe = TestNode("replay_probe", domain)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    try:
        planned = probe.record(PlannedTrajectory, f"{NS}/dima/trajectory",
                               QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        # What the launch file waits for before it plays: the fully qualified name's "model" status.
        wait = subprocess.run([sys.executable, "-m", "dima_planner.ros.healthcheck", "--node", f"{NS}/dima_planner",
                               "--timeout", "240"], env=env, capture_output=True, text=True, timeout=300)
        assert wait.returncode == 0, f"{wait.stdout}{wait.stderr}\nnode output:\n{stop_node_process(node)}"
        assert f"{NS}/dima_planner: ready (state active" in wait.stdout
        play = subprocess.run([sys.executable, "-m", "dima_planner.ros.bag_play", str(bag), "--clock",
                               "--rate", "0.5", "--wait-for-subscribers", "20",
                               "--remap", *replay.namespace_remaps(bag, NS)],
                              env=env, capture_output=True, text=True, timeout=200)
        assert play.returncode == 0, play.stdout + play.stderr
        probe.wait(lambda: len(planned) >= len(fronts), 20.0)
        time.sleep(0.5)
    finally:
        probe.close()
        out = stop_node_process(node)
    got = {m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in planned}
    assert got == fronts, f"planned {len(got & fronts)} of {len(fronts)} keyframes\n{out[-3000:]}"

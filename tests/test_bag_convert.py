"""`dima bag convert` on a tiny generated world, read back by two independent readers."""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from dima_planner.data.sample import CAMERAS
from dima_planner.bags import bag_convert, bag_info, bag_io
from dima_planner.bags.bag_eval import gt_from_json
from dima_planner.runtime.frames import lidar_xy_to_base_link
from dima_planner.runtime.sync import stamp_to_ns

TINY = dict(num_scenes=2, scene_seconds=4.0, scale=0.1, traffic_vehicles=3, parked_vehicles=2, pedestrians=2)


def make_world(root: Path) -> Path:
    from dima_planner.synth.config import SynthConfig
    from dima_planner.synth.generate import generate

    return Path(generate(SynthConfig(**TINY), root, progress=False))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("world") / "world")


@pytest.fixture(scope="module")
def bag(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bags") / "raw"
    summary = bag_convert.convert(world, out, progress=False)
    assert summary["out"] == str(out.resolve())
    return out


def _nusc(world):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=bag_convert._detect_version(world), dataroot=str(world), verbose=False)


def _expected_counts(world) -> dict[str, int]:
    nusc = _nusc(world)
    counts = {}
    n_samples = len(nusc.sample)
    for cam in CAMERAS:
        n = 0
        for scene in nusc.scene:
            first = nusc.get("sample", scene["first_sample_token"])
            n += len(bag_convert.channel_chain(nusc, first["data"][cam], keyframes_only=False))
        counts[bag_io.image_topic(cam, False)] = n
        counts[bag_io.camera_info_topic(cam)] = n
    counts[bag_io.COMMAND_TOPIC] = n_samples
    counts[bag_io.GT_FUTURE_TOPIC] = n_samples
    counts[bag_io.GT_SAMPLE_TOPIC] = n_samples
    counts[bag_io.TF_STATIC_TOPIC] = len(nusc.scene)
    return counts


def test_rosbags_readback(bag, world):
    from rosbags.interfaces import QosDurability, QosReliability
    from rosbags.rosbag2 import Reader

    nusc = _nusc(world)
    expected = _expected_counts(world)
    store = bag_io.make_typestore()
    with Reader(bag) as reader:
        topics = {c.topic: c for c in reader.connections}
        for topic, n in expected.items():
            assert topic in topics, topic
            assert topics[topic].msgcount == n, topic
        assert topics["/tf"].msgcount == topics["/odom"].msgcount > expected["/cam_front/image_raw"]
        # /tf_static is recorded latched so that `ros2 bag play` republishes it.
        qos = topics["/tf_static"].ext.offered_qos_profiles
        assert qos and qos[0].durability == QosDurability.TRANSIENT_LOCAL
        assert qos[0].reliability == QosReliability.RELIABLE
        assert topics["/odom"].ext.offered_qos_profiles[0].durability == QosDurability.VOLATILE

        last_t = {}
        checked_img = checked_info = 0
        for c, t, raw in reader.messages():
            assert t >= last_t.get(c.topic, 0), f"{c.topic} not in time order"
            last_t[c.topic] = t
            msg = store.deserialize_cdr(raw, c.msgtype)
            if hasattr(msg, "header") and c.topic != "/tf_static":
                assert stamp_to_ns(msg.header.stamp) == t, c.topic  # record time = stamp
            if c.topic == "/cam_front_left/camera_info" and checked_info < 3:
                sd = _sd_at(nusc, "CAM_FRONT_LEFT", t)
                k = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
                assert (msg.width, msg.height) == (sd["width"], sd["height"])
                np.testing.assert_allclose(msg.k.reshape(3, 3), k, rtol=1e-9)
                np.testing.assert_allclose(msg.p.reshape(3, 4)[:, :3], k, rtol=1e-9)
                assert msg.header.frame_id == "cam_front_left_optical"
                checked_info += 1
            if c.topic == "/cam_back_right/image_raw" and checked_img < 3:
                sd = _sd_at(nusc, "CAM_BACK_RIGHT", t)
                ref = cv2.cvtColor(cv2.imread(str(world / sd["filename"])), cv2.COLOR_BGR2RGB)
                img = np.asarray(msg.data).reshape(msg.height, msg.width, 3)
                assert msg.encoding == "rgb8" and msg.step == 3 * msg.width
                np.testing.assert_array_equal(img, ref)
                checked_img += 1
            if c.topic == "/tf_static":
                # REP-105: map -> odom (identity) -> base_link -> sensors
                parents = {tf.child_frame_id: tf.header.frame_id for tf in msg.transforms}
                assert parents == {"odom": "map", "lidar_top": "base_link",
                                   **{f"{cam.lower()}_optical": "base_link" for cam in CAMERAS}}
            if c.topic in ("/tf", "/odom"):
                assert msg.header.frame_id == "odom" if c.topic == "/odom" else msg.transforms[0].header.frame_id == "odom"
            if c.topic == bag_io.GT_SAMPLE_TOPIC:
                gt = json.loads(msg.data)
                sample = nusc.get("sample", gt["token"])
                front = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
                assert gt["stamp_ns"] == front["timestamp"] * 1000 + gt["time_offset_ns"]
                assert len(gt["ego_fut_traj"]) == 6 and len(gt["ego_fut_mask"]) == 6
        assert checked_img == 3 and checked_info == 3


def _sd_at(nusc, channel, t_ns):
    matches = [sd for sd in nusc.sample_data
               if sd["timestamp"] * 1000 == t_ns and nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
               ["sensor_token"] == nusc.field2token("sensor", "channel", channel)[0]]
    assert len(matches) == 1
    return matches[0]


def test_mcap_reader_and_rclpy_decode(bag, world):
    """A second, independent path: the `mcap` library's reader + rclpy's CDR deserialiser."""
    from mcap.reader import make_reader
    from rclpy.serialization import deserialize_message

    from dima_planner.ros.bag_play import message_class

    expected = _expected_counts(world)
    counts: dict[str, int] = {}
    last: dict[str, int] = {}
    decoded = set()
    with open(next(bag.glob("*.mcap")), "rb") as f:
        reader = make_reader(f)
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            assert channel.message_encoding == "cdr" and schema.encoding == "ros2msg"
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            assert message.log_time >= last.get(channel.topic, 0)
            last[channel.topic] = message.log_time
            if channel.topic not in decoded:
                # The stored definition must be complete: every nested type is included.
                if schema.name == "dima_msgs/msg/DrivingCommand":
                    assert "MSG: std_msgs/Header" in schema.data.decode()
                msg = deserialize_message(message.data, message_class(schema.name))
                if channel.topic == bag_io.COMMAND_TOPIC:
                    assert msg.command in (0, 1, 2) and msg.header.frame_id == "base_link"
                decoded.add(channel.topic)
    for topic, n in expected.items():
        assert counts.get(topic) == n, topic
    assert len(decoded) == len(counts)


def test_type_hashes_match_rosidl():
    """rosbags' RIHS01 for dima_msgs equals the hash rosidl generated at build time."""
    import sys

    store = bag_io.make_typestore()
    share = Path(sys.prefix) / "share" / "dima_msgs" / "msg"
    jsons = sorted(share.glob("*.json")) if share.is_dir() else []
    if not jsons:
        pytest.skip("dima_msgs type description JSON files not installed")
    for j in jsons:
        want = json.loads(j.read_text())["type_hashes"][0]
        assert store.hash_rihs01(want["type_name"]) == want["hash_string"]


def test_gt_future_path_matches_lidar_frame(bag):
    from rosbags.rosbag2 import Reader

    store = bag_io.make_typestore()
    paths, samples = {}, {}
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic in (bag_io.GT_FUTURE_TOPIC, bag_io.GT_SAMPLE_TOPIC)]
        for c, t, raw in reader.messages(connections=conns):
            msg = store.deserialize_cdr(raw, c.msgtype)
            if c.topic == bag_io.GT_FUTURE_TOPIC:
                paths[t] = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in msg.poses])
            else:
                samples[t] = json.loads(msg.data)
    assert paths.keys() == samples.keys()
    n_valid, shift = 0, 0.0
    for t, gt in samples.items():
        mask = np.array(gt["ego_fut_mask"])
        n = int(mask.sum())
        assert len(paths[t]) == n and np.all(mask[:n] == 1)
        g = gt_from_json(json.dumps(gt))
        if n:  # the path is in base_link at the front image's time; lidar_xy brings it to the GT frame
            np.testing.assert_allclose(g.lidar_xy(paths[t]), np.array(gt["ego_fut_traj"])[:n], atol=1e-6)
        n_valid += gt["valid"]
        shift = max(shift, float(np.hypot(*g.front_lidar2lidar[:2, 3])))
    assert n_valid > 0
    # the front camera fires before the LiDAR: while driving the two frames differ
    assert shift > 0.05
    # The frame conversion itself: lidar x (right) is base_link -y; forward is +x.
    l2e = np.array(samples[min(samples)]["lidar2ego"])
    fwd = lidar_xy_to_base_link(np.array([[0.0, 10.0]]), l2e)[0] - lidar_xy_to_base_link(np.zeros((1, 2)), l2e)[0]
    assert fwd[0] > 9.9 and abs(fwd[1]) < 0.1


def test_compressed_keyframes_only(world, tmp_path):
    from rosbags.rosbag2 import Reader

    nusc = _nusc(world)
    out = tmp_path / "kf"
    bag_convert.convert(world, out, compressed=True, keyframes_only=True, scenes=[nusc.scene[0]["name"]],
                        progress=False)
    store = bag_io.make_typestore()
    n_kf = nusc.scene[0]["nbr_samples"]
    with Reader(out) as reader:
        topics = {c.topic: c for c in reader.connections}
        assert "/cam_front/image_raw" not in topics
        assert topics["/cam_front/image_raw/compressed"].msgcount == n_kf
        c = topics["/cam_back/image_raw/compressed"]
        for _c, t, raw in reader.messages(connections=[c]):
            msg = store.deserialize_cdr(raw, c.msgtype)
            sd = _sd_at(nusc, "CAM_BACK", t)
            assert msg.format == "rgb8; jpeg compressed bgr8"  # compressed_image_transport's format
            assert bytes(msg.data) == (world / sd["filename"]).read_bytes()  # file bytes, no re-encode
            break


def _run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    bag_convert.add_arguments(p)
    return bag_convert.run(p.parse_args(argv))


def test_missing_image_fails_cleanly(world, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(world, broken, symlinks=True)
    victim = sorted((broken / "sweeps" / "CAM_BACK").glob("*.jpg"))[3]
    victim.unlink()
    out = tmp_path / "out"
    assert _run_cli(["--dataroot", str(broken), "--out", str(out), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert str(victim) in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_corrupt_table_fails_cleanly(world, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(world, broken, symlinks=True)
    table = next(broken.glob("v1.0-*")) / "ego_pose.json"
    table.write_text(table.read_text()[:-200])
    out = tmp_path / "out"
    assert _run_cli(["--dataroot", str(broken), "--out", str(out), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "ego_pose.json" in err and "corrupt" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_undecodable_image_leaves_no_partial_bag(world, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(world, broken, symlinks=True)
    victim = sorted((broken / "sweeps" / "CAM_FRONT").glob("*.jpg"))[-1]
    victim.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert _run_cli(["--dataroot", str(broken), "--out", str(out), "--no-progress"]) != 0
    assert str(victim) in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_bag_is_zstd_compressed_and_reported_by_bag_info(bag, capsys):
    from dima_planner.cli import main

    info = bag_info.read_info(bag)
    assert info.chunk_compression == ["zstd"]  # rosbag2's default for MCAP
    assert info.storage_id == "mcap" and info.message_count == sum(t[2] for t in info.topics)
    assert main(["bag", "info", str(bag)]) == 0
    out = capsys.readouterr().out
    assert "Chunk compression: zstd" in out and "Storage id:        mcap" in out
    assert re.search(r"Topic: /odom\s+\| Type: nav_msgs/msg/Odometry \| Count: \d+ \| Serialization Format: cdr", out)
    assert "dima.scenes:" in out
    assert main(["bag", "info", str(bag.parent / "nope")]) == 2


def test_scenes_follow_each_other_without_real_time_gaps(world, tmp_path):
    """Real nuScenes scenes are hours apart: the bag puts them scene_gap apart, so playing
    it never idles; keep_time keeps the recorded clock; per_scene writes one bag per scene."""
    nusc = _nusc(world)
    plans = [bag_convert.plan_scene(nusc, s, keyframes_only=True) for s in nusc.scene[:2]]
    plans[1].scene = dict(plans[1].scene)
    hours = 2 * 3600 * 10**9
    for recs in [*plans[1].cams.values(), plans[1].lidar]:  # pretend the second scene was recorded 2 h later
        for i, sd in enumerate(recs):
            recs[i] = dict(sd, timestamp=sd["timestamp"] + hours // 1000)
    bag_convert.place_scenes(plans, scene_gap=3.0)
    assert plans[0].offset_ns == 0
    assert plans[1].start_ns + plans[1].offset_ns - (plans[0].end_ns + plans[0].offset_ns) == 3 * 10**9
    bag_convert.place_scenes(plans, keep_time=True)
    assert plans[1].offset_ns == 0  # no overlap: recorded times kept

    names = [s["name"] for s in nusc.scene[:2]]
    summary = bag_convert.convert(world, tmp_path / "per_scene", scenes=names, keyframes_only=True,
                                  per_scene=True, compression="none", progress=False)
    assert {Path(b).name for b in summary["bags"]} == set(names)
    for b in summary["bags"]:
        info = bag_info.read_info(b)
        assert info.chunk_compression == ["none"] and info.custom_data["dima.time_offsets_ns"] == "0"
        assert info.duration_s < 30


def test_node_and_bags_use_the_same_compressed_format():
    from builtin_interfaces.msg import Time

    from dima_planner.ros.conversions import rgb_to_compressed

    msg = rgb_to_compressed(np.zeros((8, 8, 3), np.uint8), Time(), "cam_front_optical")
    assert msg.format == bag_io.COMPRESSED_FORMATS["jpeg"] == "rgb8; jpeg compressed bgr8"

"""ROS conventions and the DDS transport a ROS user expects.

* Fast DDS profiles: chosen from ROS_AUTOMATIC_DISCOVERY_RANGE, exported under the
  variable the running distro reads, valid against the XSD that distro's Fast DDS ships,
  and the one-host profile really loaded by Fast DDS in two processes that talk.
* LOCALHOST stays the default everywhere in this repository.
* Topic names are relative (namespaces and remaps work); absolute_topics.yaml keeps the
  old names; Autoware's camera order is spelled out.
"""
from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from dima_planner import resources
from dima_planner.ros import env as ros_env
from dima_planner.runtime.params import (NODE_NAME, OPTIONAL_OUTPUT_TOPICS, OUTPUT_TOPICS, PARAMS, flatten_ros_params,
                                     unknown_parameters)

REPO = Path(__file__).resolve().parents[1]
NS = {"d": "http://www.eprosima.com"}
PROFILES = [REPO / "params" / ros_env.LOCAL_PROFILE, REPO / "params" / ros_env.NETWORK_PROFILE]


# ---- Fast DDS profiles ---------------------------------------------------------------------


@pytest.mark.parametrize(("rng", "profile"), [
    (None, ros_env.LOCAL_PROFILE), ("LOCALHOST", ros_env.LOCAL_PROFILE), ("OFF", ros_env.LOCAL_PROFILE),
    ("localhost", ros_env.LOCAL_PROFILE), ("SUBNET", ros_env.NETWORK_PROFILE),
    ("SYSTEM_DEFAULT", ros_env.NETWORK_PROFILE)])
def test_profile_follows_the_discovery_range(rng, profile):
    assert ros_env.profile_for_range(rng) == profile


def test_bad_discovery_range_is_a_clear_error():
    with pytest.raises(ValueError, match="ROS_AUTOMATIC_DISCOVERY_RANGE='LAN'"):
        ros_env.profile_for_range("LAN")


@pytest.mark.parametrize(("distro", "var"), [
    ("jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE"), ("humble", "FASTRTPS_DEFAULT_PROFILES_FILE"),
    ("kilted", "FASTDDS_DEFAULT_PROFILES_FILE"), ("rolling", "FASTDDS_DEFAULT_PROFILES_FILE")])
def test_profile_variable_is_the_one_the_distro_reads(distro, var):
    assert ros_env.profile_env_var(distro) == var


def test_running_distro_is_detected_from_the_installed_rclpy(monkeypatch):
    from importlib import metadata

    monkeypatch.delenv("ROS_DISTRO", raising=False)
    major = int(metadata.version("ros-rclpy").split(".")[0])
    assert resources.ros_distro() == {7: "jazzy", 9: "kilted"}[major]
    monkeypatch.setenv("ROS_DISTRO", "Humble")
    assert resources.ros_distro() == "humble"


def test_apply_defaults_sets_one_variable_and_respects_the_user(monkeypatch):
    for k in (*ros_env.PROFILE_ENVS, "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DISTRO"):
        monkeypatch.delenv(k, raising=False)
    got = ros_env.apply_ros_env_defaults(domain_id=7)
    var = ros_env.profile_env_var()
    assert got["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert Path(got[var]).name == ros_env.LOCAL_PROFILE and Path(got[var]).is_file()
    assert [k for k in ros_env.PROFILE_ENVS if k in got] == [var]  # never both: Fast DDS 3 warns on the old name
    # SUBNET: the network profile; a profile the user exported (under either name) wins.
    monkeypatch.delenv(var)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    assert Path(ros_env.apply_ros_env_defaults()[var]).name == ros_env.NETWORK_PROFILE
    monkeypatch.delenv(var)
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/mine.xml")
    assert ros_env.dds_profile_env("SUBNET") == {}
    assert ros_env.apply_ros_env_defaults()["FASTRTPS_DEFAULT_PROFILES_FILE"] == "/mine.xml"


def _xsd() -> Path:
    """The profile schema of the installed Fast DDS (Jazzy: fastRTPS_profiles.xsd, Kilted: fastdds_profiles.xsd)."""
    found = sorted(p for p in (Path(sys.prefix) / "share").rglob("*profiles.xsd") if "fast" in p.name.lower())
    assert found, f"no Fast DDS profiles XSD under {sys.prefix}/share"
    return found[0]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_profile_is_valid_for_this_fast_dds(path):
    import xmlschema

    schema = xmlschema.XMLSchema(str(_xsd()))
    # Fast DDS' parser ignores XML namespaces; Jazzy's XSD declares an older target namespace
    # than the documented xmlns="http://www.eprosima.com", so validate under the schema's own.
    text = path.read_text().replace('xmlns="http://www.eprosima.com"', f'xmlns="{schema.target_namespace}"')
    schema.validate(text)
    root = ET.parse(path).getroot()
    descriptors = {d.findtext("d:transport_id", namespaces=NS): d for d in root.iterfind(".//d:transport_descriptor", NS)}
    shm = [d for d in descriptors.values() if d.findtext("d:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1 and int(shm[0].findtext("d:segment_size", namespaces=NS)) == 128 * 1024 * 1024
    participant = root.find(".//d:participant", NS)
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind(".//d:userTransports/d:transport_id", NS)]
    assert set(used) == set(descriptors)
    assert participant.findtext(".//d:useBuiltinTransports", namespaces=NS) == "false"
    udp = [d for d in descriptors.values() if d.findtext("d:type", namespaces=NS) == "UDPv4"]
    assert len(udp) == 1
    allow = [i.get("name") for i in udp[0].iterfind(".//d:allowlist/d:interface", NS)]
    if path.name == ros_env.LOCAL_PROFILE:
        assert allow == ["127.0.0.1"], "the one-host profile keeps UDP on loopback"
    else:
        assert allow == [], "the network profile must reach the robot's other computers"


@pytest.mark.ros
def test_local_profile_is_loaded_by_fast_dds_and_carries_data_between_processes(tmp_path):
    """Two processes with the profile under the distro's variable exchange a message, and
    Fast DDS reports no XML error (it only logs a bad profile and falls back to defaults)."""
    code = textwrap.dedent("""
        import sys, time, rclpy
        from rclpy.executors import ExternalShutdownException
        from std_msgs.msg import String
        rclpy.init()
        node = rclpy.create_node(sys.argv[1])
        if sys.argv[1] == "pub":
            pub = node.create_publisher(String, "dima_profile_probe", 10)
            end = time.monotonic() + 20
            try:
                while time.monotonic() < end:
                    pub.publish(String(data="x" * 100000))
                    rclpy.spin_once(node, timeout_sec=0.1)
            except (KeyboardInterrupt, ExternalShutdownException):
                pass  # stopped by the test: shut down cleanly, so DDS frees its shared memory
        else:
            got = []
            node.create_subscription(String, "dima_profile_probe", lambda m: got.append(len(m.data)), 10)
            end = time.monotonic() + 20
            while not got and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.1)
            print("GOT", got[:1], flush=True)
        node.destroy_node()
        rclpy.try_shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k not in ros_env.PROFILE_ENVS}
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(ros_env.pid_domain_id(61)))
    env[ros_env.profile_env_var()] = str(PROFILES[0])
    pub = subprocess.Popen([sys.executable, "-c", code, "pub"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        sub = subprocess.run([sys.executable, "-c", code, "sub"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        pub.send_signal(signal.SIGINT)  # not SIGKILL: a killed process leaves its DDS shared memory
        try:
            pub_out = pub.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            pub.kill()
            pub_out = pub.communicate()[0]
    out = sub.stdout + sub.stderr + pub_out
    assert "GOT [100000]" in sub.stdout, out
    assert not re.search(r"XMLPARSER|XML.*[Ee]rror|Problem loading", out), out


def test_localhost_is_the_default_everywhere():
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST" in (REPO / "Makefile").read_text()
    assert 'os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"' in (REPO / "tests" / "conftest.py").read_text()
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"ENV .*ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST", dockerfile)
    # No fixed profile in the image: the entry point picks it from the range at run time.
    assert not re.search(r"ENV .*(FASTDDS|FASTRTPS)_DEFAULT_PROFILES_FILE", dockerfile)
    assert "dima_planner.ros.env" in (REPO / "docker" / "entrypoint.sh").read_text()
    for svc in yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"].values():
        assert svc["environment"]["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def _call_name(node: ast.AST) -> str | None:
    return getattr(node.func, "id", None) or getattr(node.func, "attr", None) if isinstance(node, ast.Call) else None


@pytest.mark.parametrize("launch", sorted((REPO / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_environment_is_for_its_own_processes_only(launch):
    """A launch file sets ROS_* and the Fast DDS profile for the processes it starts, inside
    one scoped GroupAction (launch pushes and pops the environment around it), never at the
    top level, where `SetEnvironmentVariable` would also change every process that a launch
    file including this one starts afterwards. The domain and the discovery range are the
    exported ones unless given (empty defaults), and every file has a `namespace` argument."""
    text = launch.read_text()
    assert "_DEFAULT_PROFILES_FILE" not in text, f"{launch.name} fixes a profile variable"
    tree = ast.parse(text)
    decl = {n.args[0].value: {k.arg: k.value for k in n.keywords} for n in ast.walk(tree)
            if _call_name(n) == "DeclareLaunchArgument"}
    for arg in ("domain_id", "discovery_range", "namespace"):
        assert arg in decl, f"{launch.name}: no {arg} argument"
        assert isinstance(decl[arg]["default_value"], ast.Constant) and decl[arg]["default_value"].value == "", \
            f"{launch.name}: {arg} must default to '' (the inherited value / the root namespace)"
    assert not any(_call_name(n) in ("SetEnvironmentVariable", "EnvironmentVariable") for n in ast.walk(tree)), \
        f"{launch.name} sets or reads the environment outside launch_process_environment"
    starts = [n for n in ast.walk(tree) if _call_name(n) in ("Node", "LifecycleNode", "ExecuteProcess")]
    if not starts and '"planner.launch.py"' in text:
        return  # a profile of planner.launch.py: that file starts the node in its own scoped group
    (ld,) = [n for n in ast.walk(tree) if _call_name(n) == "LaunchDescription"]
    top = ld.args[0].elts
    groups = [n for n in top if _call_name(n) == "GroupAction"]
    assert len(groups) == 1 and not any(_call_name(n) in ("OpaqueFunction", "Node", "LifecycleNode", "ExecuteProcess")
                                        for n in top), f"{launch.name}: processes outside the scoped group"
    kw = {k.arg: k.value for k in groups[0].keywords}
    assert isinstance(kw.get("scoped"), ast.Constant) and kw["scoped"].value is True
    body = [_call_name(n) for n in kw["actions"].elts]
    assert body[0] == "PushRosNamespace" and "OpaqueFunction" in body
    assert any(isinstance(n, ast.Call) and _call_name(n) == "OpaqueFunction" and
               any(k.arg == "function" and getattr(k.value, "id", None) == "launch_process_environment"
                   for k in n.keywords) for n in kw["actions"].elts)


class _Ctx:
    def __init__(self, configurations: dict, environment: dict):
        self.launch_configurations, self.environment = configurations, environment


def _env_actions(actions) -> dict:
    return {a.name[0].text: a.value[0].text for a in actions if type(a).__name__ == "SetEnvironmentVariable"}


def test_launch_helper_keeps_the_inherited_domain_and_range(tmp_path):
    pytest.importorskip("launch.actions", reason="ROS launch is not in the venv (a sourced distro has it)")
    got = ros_env.launch_process_environment(_Ctx({"domain_id": "", "discovery_range": ""},
                                                  {"ROS_DOMAIN_ID": "5", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}),
                                             share=tmp_path)
    env = _env_actions(got)
    assert "ROS_DOMAIN_ID" not in env and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    assert Path(env[ros_env.profile_env_var()]).name == ros_env.NETWORK_PROFILE
    assert not [a for a in got if type(a).__name__ == "LogInfo"]
    # Unset: LOCALHOST, said in one log line that tells how to change it.
    got = ros_env.launch_process_environment(_Ctx({"domain_id": "7", "discovery_range": ""}, {}), share=tmp_path)
    env = _env_actions(got)
    assert env["ROS_DOMAIN_ID"] == "7" and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    (log,) = [a for a in got if type(a).__name__ == "LogInfo"]
    assert "discovery_range:=SUBNET" in log.msg[0].text
    with pytest.raises(ValueError, match="domain_id"):
        ros_env.launch_process_environment(_Ctx({"domain_id": "300"}, {}), share=tmp_path)


def test_nodes_never_change_the_domain(monkeypatch):
    """The installed node (and every user-facing tool) keeps the user's domain: unset stays
    unset (the RMW's default 0, where `ros2 topic list` looks), an exported one is kept.
    Only the project's own runs name one (`default_domain_id`, or `domain_id` to force)."""
    monkeypatch.delenv("ROS_DOMAIN_ID", raising=False)
    monkeypatch.delenv("ROS_AUTOMATIC_DISCOVERY_RANGE", raising=False)
    assert ros_env.discovery_note() == ros_env.LOCALHOST_NOTE
    got = ros_env.apply_ros_env_defaults()
    assert "ROS_DOMAIN_ID" not in got and "ROS_DOMAIN_ID" not in os.environ
    assert got["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and ros_env.discovery_note() is None
    assert ros_env.apply_ros_env_defaults(default_domain_id=42)["ROS_DOMAIN_ID"] == "42"
    monkeypatch.setenv("ROS_DOMAIN_ID", "9")
    assert ros_env.apply_ros_env_defaults(default_domain_id=42)["ROS_DOMAIN_ID"] == "9"
    assert ros_env.apply_ros_env_defaults(domain_id=11)["ROS_DOMAIN_ID"] == "11"
    with pytest.raises(ValueError, match="232"):
        ros_env.apply_ros_env_defaults(default_domain_id=500)


def test_env_module_prints_shell_exports(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ros_env.PROFILE_ENVS}
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    out = subprocess.run([sys.executable, "-m", "dima_planner.ros.env"], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert f"export {ros_env.profile_env_var()}=" in out and ros_env.NETWORK_PROFILE in out
    assert "export ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET" in out


# ---- names --------------------------------------------------------------------------------


def test_default_topics_are_relative():
    topics = {n: s.default for n, s in PARAMS.items() if n.endswith("topic")}
    assert len(topics) == 2 * 6 + 2 + len(OUTPUT_TOPICS) + len(OPTIONAL_OUTPUT_TOPICS)
    assert all(topics[n] == "" for n in OPTIONAL_OUTPUT_TOPICS)  # off unless a profile sets them
    absolute = sorted(n for n, v in topics.items() if v.startswith(("/", "~")))
    assert not absolute, f"absolute default topics break namespaces: {absolute}"
    assert PARAMS["world_path_topic"].default == "dima/path_odom"  # named after the REP-105 frame it is in
    assert PARAMS["odom_frame"].default == "odom"


def test_absolute_topics_file_pins_every_topic_to_its_root_name():
    flat = flatten_ros_params(yaml.safe_load((REPO / "params" / "ros" / "absolute_topics.yaml").read_text()))
    topics = {n: s.default for n, s in PARAMS.items() if n.endswith("topic") and n not in OPTIONAL_OUTPUT_TOPICS}
    assert set(flat) == set(topics)
    for name, default in topics.items():
        assert flat[name] == "/" + default, f"{name}: {flat[name]} is not the root name of {default}"


def test_autoware_overlay_uses_autowares_camera_order():
    """autoware_tensorrt_vad: camera0..5 = FRONT, BACK, FRONT_LEFT, BACK_LEFT, FRONT_RIGHT, BACK_RIGHT,
    rectified images (CameraInfo P) subscribed compressed by default, like the VAD node; the
    autoware_carla_interface scheme (/sensing/camera/CAM_FRONT/image_raw, raw pinhole images)
    in autoware_carla.yaml. Both publish the Autoware outputs in map."""
    flat = flatten_ros_params(yaml.safe_load((REPO / "params" / "ros" / "autoware.yaml").read_text()))
    carla = flatten_ros_params(yaml.safe_load((REPO / "params" / "ros" / "autoware_carla.yaml").read_text()))
    expected = {"CAM_FRONT": 0, "CAM_BACK": 1, "CAM_FRONT_LEFT": 2, "CAM_BACK_LEFT": 3, "CAM_FRONT_RIGHT": 4,
                "CAM_BACK_RIGHT": 5}
    for cam, index in expected.items():
        assert flat[f"cameras.{cam}.topic"] == f"/sensing/camera/camera{index}/image_rect_color/compressed", cam
        assert flat[f"cameras.{cam}.transport"] == "compressed" and flat[f"cameras.{cam}.rectified"] is True, cam
        assert flat[f"cameras.{cam}.info_topic"] == f"/sensing/camera/camera{index}/camera_info", cam
        assert carla[f"cameras.{cam}.topic"] == f"/sensing/camera/{cam}/image_raw", cam
        assert carla[f"cameras.{cam}.transport"] == "raw" and carla[f"cameras.{cam}.rectified"] is False, cam
        assert carla[f"cameras.{cam}.info_topic"] == f"/sensing/camera/{cam}/camera_info", cam
    for doc in (flat, carla):
        assert doc["odom_frame"] == "map" and doc["world_path_topic"] == "dima/path_map"
        assert doc["odom_topic"] == "/localization/kinematic_state"
        assert doc["autoware_trajectory_topic"] and doc["autoware_objects_topic"]


def test_unknown_parameters_are_named_with_a_suggestion():
    msgs = unknown_parameters({"sync_tolerence": 0.1, "checkpoint": "x", "use_sim_time": True, "zzz": 1,
                               "qos_overrides./odom.subscription.depth": 5})
    assert msgs == ["unknown parameter 'sync_tolerence' is ignored (did you mean 'sync_tolerance'?)",
                    "unknown parameter 'zzz' is ignored"]
    assert NODE_NAME == "dima_planner"


def test_foxglove_layout_names_real_panels_and_topics():
    """launch/dima.foxglove.json (Foxglove: Layouts -> Import) shows what the node and the bags publish."""
    import json

    from dima_planner.bags import bag_io

    layout = json.loads((REPO / "launch" / "dima.foxglove.json").read_text())

    def leaves(node):
        return [node] if isinstance(node, str) else leaves(node["first"]) + leaves(node["second"])

    panels = leaves(layout["layout"])
    assert sorted(panels) == sorted(layout["configById"]), "every panel placed once, every placed panel configured"
    known = {"/" + s.default for n, s in PARAMS.items() if n.endswith("topic")}
    known |= {bag_io.image_topic(c, compressed) for c in ("CAM_FRONT",) for compressed in (False, True)}
    known |= {bag_io.GT_FUTURE_TOPIC, "/diagnostics"}
    text = json.dumps(layout["configById"])
    named = set(re.findall(r'"(/[a-z_][a-z0-9_/]*)(?:\.[a-z_]+)?"', text))
    assert named and named <= known, f"unknown topics in the layout: {sorted(named - known)}"
    assert "launch/*.json" in (REPO / "ros2_ws" / "src" / "dima_planner" / "setup.py").read_text()


@pytest.mark.ros
def test_namespace_moves_every_topic_and_unknown_parameters_are_reported():
    """`-r __ns:=/car1` puts inputs and outputs under /car1 (tf stays global); absolute_topics.yaml
    brings the root names back; a misspelt parameter is named in the log instead of ignored."""
    from dds_harness import TestNode, start_node_process, stop_node_process

    domain = ros_env.pid_domain_id(67)
    ros = REPO / "params" / "ros"
    runs = {"/car1": [], "/car2": ["--params-file", str(ros / "absolute_topics.yaml")]}
    seen = {}
    probe = TestNode("ns_probe", domain)
    procs = {ns: start_node_process("dima_planner.ros.planner_node", domain, ros / "planner.yaml", *extra,
                                    "-r", f"__ns:={ns}", "-p", "warmup:=false", "-p", "sync_tolerence:=0.1")
             for ns, extra in runs.items()}
    try:
        for ns in runs:
            def graph(ns=ns):
                try:
                    subs = {t for t, _ in probe.node.get_subscriber_names_and_types_by_node("dima_planner", ns)}
                    pubs = {t for t, _ in probe.node.get_publisher_names_and_types_by_node("dima_planner", ns)}
                except Exception:  # the node is not discovered yet
                    return None
                # Publishers and subscriptions are discovered separately: wait for both.
                ready = any(t.endswith("dima/path") for t in pubs) and any(t.endswith("dima/command") for t in subs)
                return (subs, pubs) if ready else None
            seen[ns] = probe.wait(graph, timeout=120.0, poll=0.5)
    finally:
        probe.close()
        logs = {ns: stop_node_process(p) for ns, p in procs.items()}
    for ns in runs:
        assert seen[ns], f"{ns}: the node's topics never appeared; its output:\n{logs[ns]}"
    subs, pubs = seen["/car1"]
    assert {"/car1/cam_front/image_raw", "/car1/cam_back/camera_info", "/car1/odom", "/car1/dima/command",
            "/tf_static"} <= subs, subs
    assert {"/car1/dima/path", "/car1/dima/path_odom", "/car1/dima/trajectory", "/diagnostics"} <= pubs, pubs
    subs, pubs = seen["/car2"]
    assert {"/cam_front/image_raw", "/odom", "/dima/command"} <= subs and "/dima/path" in pubs, (subs, pubs)
    assert "unknown parameter 'sync_tolerence' is ignored (did you mean 'sync_tolerance'?)" in logs["/car1"]


def test_params_files_apply_in_any_namespace():
    """rcl matches a params file key `dima_planner` only to /dima_planner: the files use /**/dima_planner."""
    for path in sorted((REPO / "params" / "ros").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if flatten_ros_params(doc):
            assert "/**/dima_planner" in doc and all(k.startswith("/**/") for k in doc), f"{path.name}: {list(doc)}"

"""What the ROS tests share: node processes under test, and a test-side rclpy node.

The test-side node lives on its own rclpy Context with an explicit domain id, so tests
in one pytest process never see each other's traffic; the node under test runs as a
real separate process (its console module) on the same domain, loopback only.
"""
from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
from rclpy.executors import SingleThreadedExecutor

from dima_planner.node_process import node_command, start_node, stop_node

REPO = Path(__file__).resolve().parents[1]


def start_node_process(module: str, domain_id: int, params_file: Path, *ros_args: str) -> subprocess.Popen:
    """`python -m <module> --ros-args --params-file <params_file> <ros_args>`, output captured.

    DIMA_TEST_NODE_PYTHON=<interpreter> runs the node under test from another environment
    (e.g. an older checkout's venv, to see a regression test fail there)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = node_command(module, [params_file], python=os.environ.get("DIMA_TEST_NODE_PYTHON"), extra=ros_args)
    return start_node(cmd, env, cwd=REPO)  # output captured in proc.output_lines


def stop_node_process(proc: subprocess.Popen) -> str:
    """SIGINT (the node's normal shutdown path), SIGKILL after 30 s; returns its output."""
    return stop_node(proc, 30.0)


class TestNode:
    """A test-side node spinning on its own thread; `record` keeps what a topic delivers."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str, domain_id: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.RLock()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def record(self, msg_type, topic: str, qos) -> list:
        store: list = []

        def add(msg) -> None:
            with self.lock:
                store.append(msg)

        self.node.create_subscription(msg_type, topic, add, qos)
        return store

    def wait(self, predicate, timeout: float, poll: float = 0.05):
        """The first truthy value of predicate() (called under the lock), or None at timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                r = predicate()
            if r:
                return r
            time.sleep(poll)
        return None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def lifecycle_state(probe: TestNode, node: str, timeout: float) -> str | None:
    """The node's lifecycle state label once it is `active`, else the last one read (or None)."""
    client = probe.node.create_client(GetState, f"/{node}/get_state")
    deadline = time.monotonic() + timeout
    label = None
    while time.monotonic() < deadline:
        if client.wait_for_service(timeout_sec=1.0):
            future = client.call_async(GetState.Request())
            end = time.monotonic() + 5.0
            while not future.done() and time.monotonic() < end:
                time.sleep(0.05)
            if future.done() and future.result() is not None:
                label = future.result().current_state.label
                if label == "active":
                    return label
        time.sleep(0.5)
    return label


# Lifecycle fuzzing (tests/test_lifecycle_fuzz.py, tests/test_ros_mllm_lifecycle.py). Ids a
# client can send: the primary transitions, CREATE/DESTROY, transition-state ids (callback
# results) and ids no state machine has. Shutdown comes only at the end of a test.
FUZZ_IDS = [Transition.TRANSITION_CREATE, Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_CLEANUP,
            Transition.TRANSITION_ACTIVATE, Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_DESTROY,
            Transition.TRANSITION_ON_CONFIGURE_SUCCESS, Transition.TRANSITION_ON_ACTIVATE_FAILURE, 99, 255]
FUZZ_LABELS = ["configure", "cleanup", "activate", "deactivate", "bogus", "transition_success", "CONFIGURE"]


def fuzz_transition(rng: random.Random, allowed: dict[int, str]) -> Transition:
    """40 % a transition the current state has (not shutdown), by id or label; else any id or label."""
    r = rng.random()
    if r < 0.4:  # a valid one: keeps the node cycling through its states
        tid = rng.choice([t for t, lab in allowed.items() if lab != "shutdown"])
        return Transition(id=tid) if rng.random() < 0.5 else Transition(label=allowed[tid])
    if r < 0.75:
        return Transition(id=rng.choice(FUZZ_IDS))
    return Transition(label=rng.choice(FUZZ_LABELS))


def transition_allowed(tr: Transition, allowed: dict[int, str]) -> bool:
    """Whether rclpy runs `tr` in a state with `allowed` transitions (a label wins over the id)."""
    return (tr.label in allowed.values()) if tr.label else tr.id in allowed


def call_service(client, request, timeout: float = 30.0):
    """The response of one service call (asserting the service exists and answers in time)."""
    assert client.wait_for_service(timeout_sec=60.0), f"service {client.srv_name} not available"
    fut = client.call_async(request)
    deadline = time.monotonic() + timeout
    while not fut.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fut.done(), f"{client.srv_name} did not answer within {timeout} s"
    return fut.result()


class LifecycleClient:
    """ChangeState / GetState / GetAvailableTransitions of one lifecycle node, from a TestNode."""

    def __init__(self, probe: TestNode, node: str):
        self.change = probe.node.create_client(ChangeState, f"{node}/change_state")
        self.get = probe.node.create_client(GetState, f"{node}/get_state")
        self.avail = probe.node.create_client(GetAvailableTransitions, f"{node}/get_available_transitions")

    def state(self) -> str:
        return call_service(self.get, GetState.Request()).current_state.label

    def available(self) -> dict[int, str]:
        res = call_service(self.avail, GetAvailableTransitions.Request())
        return {t.transition.id: t.transition.label for t in res.available_transitions}

    def request(self, tr: Transition, timeout: float = 30.0) -> bool:
        return call_service(self.change, ChangeState.Request(transition=tr), timeout).success

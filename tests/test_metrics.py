"""Hand-worked cases for the VAD-exact planning metrics (docs/METHOD.md section 3).

Reference numbers used below (worked out by hand):
* ego footprint (forward, side) in [-1.542, 2.542] x [-0.925, 0.925] m -> fractional indices
  forward [96.416, 104.584], column [97.65, 101.35] -> skimage cells rows 97..104, cols 98..101
  (32 cells). At waypoint (0, 0): grid rows int(200 - 97..104) = 96..103, columns 98..101.
* a box at (x, y) covers columns round((x + 50) / 0.5) and rows round((50 - y) / 0.5).
"""
import numpy as np
import pytest

from dima_planner.data.occupancy import occupancy_from_boxes
from dima_planner.eval.metrics import ego_footprint_cells, footprint_pixels, planning_metrics


def _empty_occ(n=1):
    return np.zeros((n, 6, 200, 200), dtype=bool)


def _straight(n_steps=6, speed=5.0):
    t = np.arange(1, n_steps + 1) * 0.5
    return np.stack([np.zeros_like(t), speed * t], axis=-1)


def test_ego_footprint_is_the_vad_32_cells():
    cells = ego_footprint_cells()
    assert cells.shape == (32, 2)
    assert set(cells[:, 0].astype(int)) == set(range(97, 105))
    assert set(cells[:, 1].astype(int)) == set(range(98, 102))
    r, c = footprint_pixels(np.zeros((1, 2)))
    assert set(r[0]) == set(range(96, 104)) and set(c[0]) == set(range(98, 102))


def test_single_box_in_front():
    # A car 10 m ahead, heading forward (yaw pi/2): x in [-1, 1], y in [8, 12].
    boxes = np.array([[[0.0, 10.0, np.pi / 2, 4.0, 2.0]]])
    occ = occupancy_from_boxes(boxes, np.ones((1, 1), bool))
    assert occ.shape == (1, 200, 200) and occ.dtype == bool
    rows, cols = np.nonzero(occ[0])
    assert set(rows) == set(range(76, 85))  # round((50 - 12) / 0.5) .. round((50 - 8) / 0.5)
    assert set(cols) == set(range(98, 103))  # round(49 / 0.5) .. round(51 / 0.5)
    assert occ[0].sum() == 9 * 5
    # A masked-out box draws nothing.
    assert not occupancy_from_boxes(boxes, np.zeros((1, 1), bool)).any()


def test_box_corners_use_numpy_round_half_to_even():
    # x in [-0.75, 0.25]: columns 98.5 and 100.5 -> np.round gives 98 and 100 (half-up would give 99..101).
    boxes = np.array([[[-0.25, 10.0, np.pi / 2, 4.0, 1.0]]])
    occ = occupancy_from_boxes(boxes, np.ones((1, 1), bool))
    assert set(np.nonzero(occ[0])[1]) == {98, 99, 100}


def test_rotated_box_is_rotated():
    # The same car turned sideways (yaw 0): x in [-2, 2], y in [9, 11].
    boxes = np.array([[[0.0, 10.0, 0.0, 4.0, 2.0]]])
    occ = occupancy_from_boxes(boxes, np.ones((1, 1), bool))
    rows, cols = np.nonzero(occ[0])
    assert set(rows) == set(range(78, 83)) and set(cols) == set(range(96, 105))


def test_pred_colliding_only_at_step_3():
    gt = np.stack([np.full(6, -10.0), np.arange(1, 7) * 2.5], axis=-1)  # GT swerves far left
    pred = _straight(speed=5.0)  # y = 2.5, 5, 7.5, 10, 12.5, 15
    boxes = np.zeros((6, 1, 5))
    boxes[:, 0] = [0.0, 7.5, np.pi / 2, 4.0, 2.0]  # sits where pred is at step 3
    mask = np.zeros((6, 1), bool)
    mask[2] = True
    occ = occupancy_from_boxes(boxes, mask)[None]
    vad = planning_metrics(pred[None], gt[None], occ)
    assert vad["col_1s"] == 0.0
    assert vad["col_2s"] == pytest.approx(1 / 4)
    assert vad["col_3s"] == pytest.approx(1 / 6)
    assert vad["col_avg"] == pytest.approx((0 + 1 / 4 + 1 / 6) / 3)
    uni = planning_metrics(pred[None], gt[None], occ, convention="uniad")
    assert uni["col_1s"] == uni["col_2s"] == uni["col_3s"] == 0.0  # step 3 is not a reported step


def test_uniad_reports_the_step_itself():
    gt = np.stack([np.full(6, -10.0), np.arange(1, 7) * 2.5], axis=-1)
    pred = _straight(speed=5.0)
    boxes = np.zeros((6, 1, 5))
    boxes[:, 0] = [0.0, 10.0, np.pi / 2, 4.0, 2.0]
    mask = np.zeros((6, 1), bool)
    mask[3] = True  # step 4 = 2 s
    occ = occupancy_from_boxes(boxes, mask)[None]
    uni = planning_metrics(pred[None], gt[None], occ, convention="uniad")
    assert (uni["col_1s"], uni["col_2s"], uni["col_3s"]) == (0.0, 1.0, 0.0)
    vad = planning_metrics(pred[None], gt[None], occ)
    assert (vad["col_1s"], vad["col_2s"], vad["col_3s"]) == (0.0, 0.25, pytest.approx(1 / 6))


def test_step_not_counted_where_gt_collides():
    pred = _straight(speed=5.0)
    gt = pred.copy()
    gt[:, 0] += 0.3  # GT overlaps the same box at every step
    boxes = np.zeros((6, 1, 5))
    boxes[:, 0] = [0.0, 7.5, np.pi / 2, 4.0, 2.0]
    mask = np.zeros((6, 1), bool)
    mask[2] = True
    occ = occupancy_from_boxes(boxes, mask)[None]
    out = planning_metrics(pred[None], gt[None], occ)
    assert out["col_3s"] == 0.0 and out["col_avg"] == 0.0


def test_truncation_not_rounding_of_shifted_footprint():
    # x = 0.9 shifts columns by 1.8: 99.8..102.8 -> truncated 99..102 (rounding would reach 103).
    occ = _empty_occ()
    occ[0, :, 96:104, 103] = True
    pred = np.tile([[0.9, 0.0]], (6, 1))
    gt = np.tile([[-20.0, 0.0]], (6, 1))
    assert planning_metrics(pred[None], gt[None], occ)["col_avg"] == 0.0
    occ[0, :, 96:104, 102] = True
    assert planning_metrics(pred[None], gt[None], occ)["col_avg"] == 1.0
    # Forward: y = 0.9 gives forward index 98.8..105.8 -> rows int(101.2..94.2) = 94..101.
    r, _ = footprint_pixels(np.array([[0.0, 0.9]]))
    assert set(r[0]) == set(range(94, 102))


def test_clipping_at_grid_edge():
    occ = _empty_occ()
    occ[0, :, 100, 199] = True
    pred = np.tile([[60.0, 0.0]], (6, 1))  # columns 218..221 clip to 199
    gt = np.zeros((6, 2))
    out = planning_metrics(pred[None], gt[None], occ)
    assert out["col_1s"] == out["col_3s"] == 1.0
    occ2 = _empty_occ()
    occ2[0, :, 100, 198] = True
    assert planning_metrics(pred[None], gt[None], occ2)["col_avg"] == 0.0
    # Far behind: rows clip to 199.
    r, _ = footprint_pixels(np.array([[0.0, -60.0]]))
    assert set(r[0]) == {199}


def test_l2_prefix_means_vs_uniad_steps():
    gt = _straight()
    pred = gt.copy()
    pred[:, 0] += np.arange(1, 7)  # errors 1..6 m
    occ = _empty_occ()
    vad = planning_metrics(pred[None], gt[None], occ)
    assert (vad["l2_1s"], vad["l2_2s"], vad["l2_3s"]) == (1.5, 2.5, 3.5)
    assert vad["l2_avg"] == pytest.approx(2.5)
    uni = planning_metrics(pred[None], gt[None], occ, convention="uniad")
    assert (uni["l2_1s"], uni["l2_2s"], uni["l2_3s"]) == (2.0, 4.0, 6.0)
    assert uni["l2_avg"] == pytest.approx(4.0)


def test_valid_mask_and_uniad_denominator():
    gt = np.stack([_straight(), _straight()])
    pred = gt.copy()
    pred[0, :, 0] += 1.0
    pred[1, :, 0] += 100.0
    occ = _empty_occ(2)
    vad = planning_metrics(pred, gt, occ, valid=np.array([True, False]))
    assert vad["l2_avg"] == pytest.approx(1.0) and vad["num_samples"] == 1
    # Per-step mask: sample 1 lost its last 3 steps -> excluded by VAD ...
    step = np.ones((2, 6), bool)
    step[1, 3:] = False
    assert planning_metrics(pred, gt, occ, valid=step)["l2_3s"] == pytest.approx(1.0)
    # ... while UniAD keeps it in the denominator with 0 at masked steps.
    uni = planning_metrics(pred, gt, occ, valid=step, convention="uniad")
    assert uni["num_samples"] == 2
    assert uni["l2_1s"] == pytest.approx((1 + 100) / 2)
    assert uni["l2_2s"] == pytest.approx((1 + 0) / 2)
    assert uni["l2_3s"] == pytest.approx((1 + 0) / 2)
    # No evaluable sample: NaN, never a silent 0.
    assert np.isnan(planning_metrics(pred, gt, occ, valid=np.array([False, False]))["l2_avg"])


def test_per_sample_arrays():
    gt = np.stack([_straight(), _straight()])
    pred = gt.copy()
    pred[1, :, 0] += 2.0
    out = planning_metrics(pred, gt, _empty_occ(2), return_per_sample=True)
    np.testing.assert_allclose(out["per_sample"]["l2_avg"], [0.0, 2.0])
    assert out["sample_mask"].tolist() == [True, True]


def test_input_validation():
    gt = _straight()[None]
    with pytest.raises(ValueError, match=r"\(N, 6, 2\)"):
        planning_metrics(gt[:, :5], gt[:, :5], _empty_occ())
    with pytest.raises(ValueError, match="NaN"):
        planning_metrics(np.full_like(gt, np.nan), gt, _empty_occ())
    with pytest.raises(ValueError, match="occupancy"):
        planning_metrics(gt, gt, np.zeros((1, 6, 100, 100), bool))
    with pytest.raises(ValueError, match="convention"):
        planning_metrics(gt, gt, _empty_occ(), convention="stp3")
    with pytest.raises(ValueError, match="mask shape"):
        occupancy_from_boxes(np.zeros((6, 2, 5)), np.ones((6, 3), bool))
    # NaN at a masked step is fine (padding), NaN at an evaluated step is not.
    pred = gt.copy()
    pred[0, 5] = np.nan
    step = np.ones((1, 6), bool)
    step[0, 5] = False
    planning_metrics(pred, gt, _empty_occ(), valid=step, convention="uniad")

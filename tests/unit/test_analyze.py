"""The pure computations of kdlight.analysis.metrics, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kdlight.analysis import metrics


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = metrics.confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert metrics.per_class_accuracy(cm).tolist() == pytest.approx([0.5, 1.0, 2 / 3])
    assert metrics.normalize_rows(cm)[2].tolist() == pytest.approx([1 / 3, 0.0, 2 / 3])


def test_confusion_matrix_rejects_out_of_range_classes():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics.confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 1]), 2)


def test_a_class_without_samples_has_nan_accuracy():
    cm = metrics.confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 3)
    acc = metrics.per_class_accuracy(cm)
    assert acc[0] == 0.5 and math.isnan(acc[2])
    assert torch.isnan(metrics.normalize_rows(cm)[2]).all()


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
    cm = torch.tensor([[5, 3, 0], [1, 4, 3], [0, 6, 2]])
    pairs = metrics.most_confused(cm, k=3)
    # (2 -> 1): 6 of 8; then the tie of 3s in row-major order: (0 -> 1) 3 of 8, (1 -> 2) 3 of 8
    assert pairs == [(2, 1, 6, 0.75), (0, 1, 3, 0.375), (1, 2, 3, 0.375)]
    assert metrics.most_confused(torch.eye(3, dtype=torch.long), k=5) == []


def test_ece_by_hand():
    # bins of width 0.1: {0.95, 0.95} acc 0.5 -> 2/5 * 0.45; {0.55, 0.55} acc 1 -> 2/5 * 0.45;
    # {0.35} acc 0 -> 1/5 * 0.35. ECE = 0.18 + 0.18 + 0.07 = 0.43
    conf = torch.tensor([0.95, 0.95, 0.55, 0.55, 0.35])
    correct = torch.tensor([True, False, True, True, False])
    counts, conf_sum, correct_sum = metrics.calibration_bins(conf, correct, n_bins=10)
    assert counts.tolist() == [0, 0, 0, 1, 0, 2, 0, 0, 0, 2]
    assert metrics.ece_from_bins(counts, conf_sum, correct_sum) == pytest.approx(0.43)


def test_bins_are_closed_on_the_right():
    counts, _, _ = metrics.calibration_bins(
        torch.tensor([0.0, 0.25, 0.5, 1.0]), torch.ones(4), n_bins=4
    )
    assert counts.tolist() == [
        2,
        1,
        0,
        1,
    ]  # 0 and 0.25 in (0, 0.25], 0.5 in (0.25, 0.5], 1 in the last


def test_ece_of_probabilities_and_of_a_calibrated_model():
    # confidences 0.9 (correct) and 0.6 (wrong), in different bins: (0.1 + 0.6) / 2
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    assert metrics.expected_calibration_error(probs, torch.tensor([0, 1])) == pytest.approx(0.35)
    # four predictions at confidence 0.75, three right: perfectly calibrated
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert metrics.expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(
        0.0
    )


def test_bins_add_across_batches():
    conf = torch.rand(50, generator=torch.Generator().manual_seed(0))
    hit = conf > 0.4
    whole = metrics.calibration_bins(conf, hit)
    parts = [metrics.calibration_bins(conf[i : i + 7], hit[i : i + 7]) for i in range(0, 50, 7)]
    for k in range(3):
        assert torch.allclose(sum(p[k] for p in parts), whole[k])


def test_softened_entropy_and_dark_knowledge_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    q = metrics.softened(logits, 1.0)
    assert q.tolist()[0] == pytest.approx([0.25, 0.75])
    # at T = 2: exp(z / 2) = 1, sqrt(3) -> 1 / (1 + sqrt 3)
    assert metrics.softened(logits, 2.0)[0, 0].item() == pytest.approx(1 / (1 + math.sqrt(3)))
    assert metrics.entropy(q).item() == pytest.approx(
        -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    )
    assert metrics.non_top_mass(q).item() == pytest.approx(0.25)
    assert metrics.entropy(torch.tensor([[1.0, 0.0, 0.0]])).item() == 0.0
    assert metrics.entropy(torch.full((1, 4), 0.25)).item() == pytest.approx(math.log(4))
    with pytest.raises(ValueError):
        metrics.softened(logits, 0.0)


def test_temperature_study_softens_monotonically():
    logits = torch.randn(20, 10, generator=torch.Generator().manual_seed(1)) * 5
    rows = metrics.temperature_study(logits, (1, 2, 5, 10, 20))
    assert [r["temperature"] for r in rows] == [1, 2, 5, 10, 20]
    h = [r["mean_entropy"] for r in rows]
    mass = [r["mean_non_top_mass"] for r in rows]
    assert h == sorted(h) and mass == sorted(mass)
    assert rows[-1]["mean_entropy_normalized"] <= 1.0
    one = metrics.temperature_study(torch.tensor([[0.0, math.log(3.0)]]), (1,))[0]
    assert one["mean_non_top_mass"] == pytest.approx(0.25) and one[
        "mean_top_prob"
    ] == pytest.approx(0.75)


def test_agreement_and_example_choice():
    assert metrics.agreement(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    labels = torch.tensor([3, 0, 5, 0, 7, 3])
    # 3 examples of 10 classes: classes 0, 3 (round(10/3)) and 7 (round(20/3)), first sample of each
    assert metrics.example_indices(labels, 3, 10) == [1, 0, 4]

"""Loss terms and metrics against hand-worked values."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videoiq.losses import action_costs, balance_loss, efficiency_loss, entropy_loss, soft_cross_entropy
from videoiq.metrics import average_precision, multi_hot, softmax, topk_accuracy, uniform_line
from videoiq.summary import summary_rows, summary_table


def test_kd_equals_ce_for_a_one_hot_teacher_and_has_no_teacher_gradient():
    logits = torch.randn(4, 5, requires_grad=True)
    teacher = torch.full((4, 5), -1e4)
    teacher[torch.arange(4), torch.tensor([0, 3, 2, 1])] = 1e4
    teacher.requires_grad_(True)
    kd = soft_cross_entropy(logits, teacher)
    assert torch.allclose(kd, F.cross_entropy(logits, torch.tensor([0, 3, 2, 1])))
    kd.backward()
    assert teacher.grad is None and logits.grad is not None


def test_efficiency_of_one_hot_decisions_is_that_actions_cost():
    actions = ("32bit", "4bit", "2bit", "skip1")
    costs = action_costs(actions)
    assert costs.tolist() == [1.0, 0.25, 0.0625, 0.0]
    for a in range(4):
        r = F.one_hot(torch.full((2, 8), a), 4).float()
        assert efficiency_loss(r, costs).item() == pytest.approx(costs[a].item())
    mixed = F.one_hot(torch.tensor([[0, 1, 2, 3]]), 4).float()
    assert efficiency_loss(mixed, costs).item() == pytest.approx((1 + 0.25 + 0.0625) / 4)


def test_balance_is_zero_when_uniform_over_all_actions():
    uniform = F.one_hot(torch.arange(3).repeat(4).view(2, 6), 3).float()
    assert balance_loss(uniform).item() == pytest.approx(0.0)
    one = F.one_hot(torch.zeros(2, 6, dtype=torch.long), 3).float()
    assert balance_loss(one).item() == pytest.approx((1 - 1 / 3) ** 2 + 2 * (1 / 3) ** 2)


def test_entropy():
    assert entropy_loss(torch.log(torch.tensor([[[1.0, 1e-8, 1e-8]]]))).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy_loss(torch.log(torch.full((1, 2, 4), 0.25))).item() == pytest.approx(np.log(4))


def test_topk():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    assert topk_accuracy(scores, np.array([1, 1, 0]), 1) == pytest.approx(100 / 3)
    assert topk_accuracy(scores, np.array([1, 1, 0]), 2) == pytest.approx(200 / 3)


def test_average_precision_hand_worked():
    # class 0: ranking by score is v0 (pos), v2 (neg), v1 (pos) -> AP = (1/1 + 2/3) / 2
    # class 1: v1 (pos) first -> AP = 1; class 2 has no positive -> left out and counted
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5, 0.3, 0.2]])
    targets = multi_hot([(0,), (0, 1), ()], 3)
    result = average_precision(scores, targets)
    assert result.per_class[0] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result.per_class[1] == pytest.approx(100.0) and np.isnan(result.per_class[2])
    assert result.mean == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2) and result.classes_without_positives == 1
    perfect = average_precision(softmax(np.eye(4) * 5), np.eye(4))
    assert perfect.mean == pytest.approx(100.0)


def test_uniform_line_mixes_adjacent_widths():
    widths = [(0.019, 99.4), (0.006, 96.9), (0.003, 93.4)]
    assert uniform_line(widths, 0.002) is None  # cheaper than any width
    assert uniform_line(widths, 0.006) == pytest.approx(96.9)
    assert uniform_line(widths, 0.0045) == pytest.approx((93.4 + 96.9) / 2)
    assert uniform_line(widths, 0.0125) == pytest.approx((96.9 + 99.4) / 2)
    assert uniform_line(widths, 0.05) == pytest.approx(99.4)


def test_the_summary_compares_videoiq_with_32_bits_and_the_uniform_line():
    def width(top1, gflops):
        return {"val/top1": top1, "val/mAP": top1, "val/gflops": gflops}

    evals = {"fp": {"metrics": width(99.0, 0.02)},
             "ap": {"metrics": {f"val/b{b}/{k[4:]}": v for b, (t, g) in {32: (99.4, 0.019), 4: (96.9, 0.006),
                                                                         2: (93.4, 0.003)}.items()
                                for k, v in width(t, g).items()}},
             "policy": {"decisions": "argmax",
                        "metrics": {**width(98.75, 0.0095), "val/gflops_run": 0.009, "val/usage/32bit": 26.0,
                                    "val/usage/4bit": 74.0, "val/usage/faint/32bit": 88.0}}}
    rows = summary_rows(evals)
    assert [r[0] for r in rows] == ["full precision (fp)", "any-precision at 32 bits", "any-precision at 4 bits",
                                    "any-precision at 2 bits", "VideoIQ (argmax)", "  on faint frames"]
    table = summary_table(rows)
    assert "VideoIQ against 32 bits: -0.7 points at 50% of its GFLOPs" in table
    line = 96.9 + 2.5 * (0.0095 - 0.006) / 0.013
    assert f"{line:.1f}% top-1" in table and f"({98.75 - line:+.1f} points)" in table
    assert "32bit 26%, 4bit 74%" in table and "32bit 88%" in table

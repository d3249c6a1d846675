"""The KD loss equals a hand computation on small tensors, for each divergence."""

import math

import pytest
import torch

from distill.train.losses import distillation_sum, divergence_sum

STUDENT = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
# The teacher's embedding matrix is padded to 4 rows: the 4th logit is never a real token.
TEACHER = [[1.0, 1.5, -0.5, 9.0], [0.3, -0.2, 0.0, 9.0]]
TARGETS = [0, 2]


def softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def by_hand(kind, alpha, temperature):
    ce = sum(-math.log(softmax(s)[y]) for s, y in zip(STUDENT, TARGETS))
    div = 0.0
    for s, t in zip(STUDENT, TEACHER):
        p_s, p_t = softmax(s, temperature), softmax(t[:3], temperature)
        if kind == "forward_kl":
            div += kl(p_t, p_s)
        elif kind == "reverse_kl":
            div += kl(p_s, p_t)
        else:
            m = [(a + b) / 2 for a, b in zip(p_s, p_t)]
            div += 0.5 * kl(p_t, m) + 0.5 * kl(p_s, m)
    return alpha * ce + (1 - alpha) * temperature ** 2 * div, ce, div


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("alpha,temperature", [(0.5, 1.0), (0.2, 2.0), (0.0, 0.7)])
def test_kd_loss_matches_a_hand_computation(kind, alpha, temperature):
    total, ce, div = distillation_sum(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS),
                                      alpha, temperature, kind)
    want_total, want_ce, want_div = by_hand(kind, alpha, temperature)
    assert ce.item() == pytest.approx(want_ce, rel=1e-5)
    assert div.item() == pytest.approx(want_div, rel=1e-5)
    assert total.item() == pytest.approx(want_total, rel=1e-5)


def test_divergences_differ_and_vanish_for_identical_distributions():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    values = {k: divergence_sum(s, t, k, 1.0).item() for k in ("forward_kl", "reverse_kl", "jsd")}
    assert len({round(v, 6) for v in values.values()}) == 3 and all(v > 0 for v in values.values())
    for kind in values:
        assert divergence_sum(s, s, kind, 1.5).item() == pytest.approx(0.0, abs=1e-6)

"""G2NetPL (a two-player game for partial labels; docs/references.md#g2netpl), a training rule (method
`g2netpl`) of the adapter in `sew` and the small-CNN student in `distill`. The original paper is not available
offline; the summary paper 000 §III.B is our specification.

After each epoch the pseudo-label player descends Φ(ŷ) = H(ŷ) + η·KL(ŷ ‖ p) + η₁·|ŷ − p| on the unknown entries,
p the network's predictions. The summary's Ψ writes Σ ŷ log ŷ + (1 − ŷ) log(1 − ŷ), i.e. −H, whose descent would
blur the labels while its text says the player "steers pseudo-labels toward binary decisions"; we descend +H,
keep the minimax objective's KL term (η = `eta`) and add Ψ's L1 term (η₁ = `l1`).
dΦ/dŷ = −S⁻¹(ŷ) + η(S⁻¹(ŷ) − S⁻¹(p)) + η₁·sign(ŷ − p). With η > 1 a fixed point sharpens:
S⁻¹(ŷ) = η/(η − 1)·S⁻¹(p). The summary names no optimiser for the player ("gradient ascent on the penalty
term"); ours steps in logit space, S⁻¹(ŷ) ← S⁻¹(ŷ) − lr·dΦ/dŷ (mirror descent with the Bernoulli entropy's map),
a contraction towards that fixed point by 1 − lr·(η − 1) per step. Until stop 55 it stepped on ŷ itself, where
Φ's curvature (η − 1)/(ŷ(1 − ŷ)) passes 2/lr near 0 and 1 and the steps overshoot: at lr 0.05 an entry with
p = 0.05 jumped between 0.0001 and 0.19 from step to step (its fixed point 0.003), p = 0.9 between 0.92 and
0.99, so the confident entries, most of them on AN, ended each epoch wherever the step count's parity left them.
ŷ(0), the confidence scheduler (`curriculum`) and, with `unknown: pseudo`, ŷ as the E-step's prediction are
PLMCL's (pipeline.plmcl).
The default η 2 doubles p's logit at the fixed point, so on AN (`unknown: negative`) the entries AN's network
holds low are pushed lower: there it was level with AN (contexts worlds 0 and 1). Table 1's `g2netpl_an` row
runs η 20 (ŷ near p, logit ×20/19; lr·(η − 1) stays under 2, so the steps still contract), chosen on the tuning
world (contexts world 2, AVX2 fp32: AN 0.652, η 5 0.722, η 20 0.749): +0.044 (1.4 sd) and +0.081 (2.1 sd) over
AN on worlds 0 and 1 (README).
The summary's network loss has no λ: player N minimises the BCE on y ⊙ ŷ, known and pseudo-labelled entries
alike, and its tables know 30–50 % of the labels, where an image has about as many of each. At our 10 % an
image's unknown entries, nine to each known one, outweigh its known ones nine to one, on labels the network made
after one epoch on the known ones; on partial BCE G2NetPL fell below partial BCE (contexts world 0, AVX2 fp32:
−0.072). `weight` (λ, ours, as PLMCL's `plmcl.weight`) weighs the pseudo-labelled entries' BCE; the default 1
is the summary's loss. Table 1's `g2netpl_paper` row runs λ 0.1, chosen on the tuning world (contexts world 2,
bf16: partial BCE 0.564, λ 1 0.504, λ 0.3 0.584, λ 0.1 0.620, λ 0.03 0.585), as PLMCL's row does: above
partial BCE on every draw of worlds 0 and 1, by 2 sd on world 1 with AVX2 kernels in fp32 only (README).
At λ 0.1 the row keeps η 2 and the scheduler: on the tuning world (an Intel Xeon, bf16: partial BCE 0.530, the
row 0.594 ± 0.006) η 20 gave 0.606 ± 0.036 and the scheduler off 0.597 ± 0.030, neither above the row by its sd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.logits import logit, sigmoid
from pipeline.method_registry import register_method
from pipeline.rules import EPS, Rule
from pipeline.settings import setting


def g2netpl_update(y: np.ndarray, p: np.ndarray, eta: float, lr: float, steps: int, l1: float = 0.0) -> np.ndarray:
    """`steps` mirror-descent steps of the pseudo-label player on Φ(ŷ) = H(ŷ) + η·KL(ŷ ‖ p) + η₁·|ŷ − p|
    (η₁ = `l1`, Ψ's L1 term; its subgradient is η₁·sign(ŷ − p)): each moves S⁻¹(ŷ) by −lr·dΦ/dŷ."""
    zp = logit(p, EPS)
    zy = logit(y, EPS)
    for _ in range(steps):
        grad = -zy + eta * (zy - zp) + l1 * np.sign(zy - zp)
        zy = logit(sigmoid(zy - lr * grad), EPS)
    return np.clip(sigmoid(zy), EPS, 1 - EPS)


@register_method
@dataclass(frozen=True)
class G2netpl(Rule):
    """Method `g2netpl`, constants in section `g2netpl`."""

    eta: float = setting(2.0, ge=0.0)  # KL penalty weight (> 1 sharpens, ≤ 1 lets entropy win)
    l1: float = setting(0.5, ge=0.0)  # η₁ of Ψ's L1 term |ŷ − p|
    lr: float = setting(0.05, ge=0.0)
    steps: int = setting(10, ge=0)
    curriculum: bool = setting(True)  # the confidence scheduler (ignore / negative only)
    weight: float = setting(1.0, ge=0.0)  # λ: weight of the pseudo-labelled entries' BCE (ours, as PLMCL's)

    NAME: ClassVar[str] = "g2netpl"
    PARAMS_KEYS: ClassVar[dict[str, str]] = {
        "unknown": "unknown", **{k: f"g2netpl.{k}" for k in ("eta", "l1", "lr", "steps", "curriculum", "weight")}}
    UPDATES_LABELS: ClassVar[bool] = True

    @property
    def uses_curriculum(self) -> bool:
        return self.curriculum and self.paper_setting

    @property
    def pseudo_weight(self) -> float:
        return self.weight

    def update(self, y: np.ndarray, y_prev: np.ndarray, p: np.ndarray) -> np.ndarray:
        return g2netpl_update(y, p, self.eta, self.lr, self.steps, self.l1)

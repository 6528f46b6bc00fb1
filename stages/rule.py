"""Glue for the partial-label training rule read by `sew`, `ceiling` and `distill`: the top-level `rule`
key with the constants of its own section, and the label-distribution weights it may need."""

from __future__ import annotations

import numpy as np

from pipeline.rules import RULES, RuleSettings, label_distribution_weights
from stages.common import Params, scored_embeddings


def rule_settings(params: Params) -> RuleSettings:
    """The partial-label training rule (top-level `rule`) with the constants of its own section."""
    name = params.get("rule", str, choices=RULES)
    pl, g2, ll, ld = (params.section(k) for k in ("plmcl", "g2netpl", "large_loss", "label_distribution"))
    return RuleSettings(
        name=name, plmcl_eta=pl.get("eta", float, lo=0.0, hi=1.0), plmcl_alpha=pl.get("alpha", float, lo=0.0, hi=1.0),
        plmcl_beta=pl.get("beta", float, lo=0.0, hi=1.0), g2netpl_eta=g2.get("eta", float, lo=0.0),
        g2netpl_lr=g2.get("lr", float, lo=0.0), g2netpl_steps=g2.get("steps", int, lo=0),
        ll_delta=ll.get("delta", float, lo=0.0, hi=100.0), ll_max_rate=ll.get("max_rate", float, lo=0.0, hi=1.0),
        ld_sigma=ld.get("sigma", float, lo=1e-6))


def rule_weights(rule: RuleSettings, targets_logit: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """label_distribution weights [len(rows), C] from the scored embeddings; None for other rules."""
    if rule.name != "label_distribution":
        return None
    emb, text = scored_embeddings()
    return label_distribution_weights(emb[rows], text, targets_logit > 0, rule.ld_sigma)

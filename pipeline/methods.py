"""Every partial-label method, registered in the order `method` lists them (pipeline.method_registry says what
a method is). Importing this module registers them all; a new method adds its module here.

- `none` (pipeline.rules.Rule): no method, the known labels over the corrected CLIP labels;
- `hst` (pipeline.hst, paper 003) and `trm` (pipeline.trm, paper 001): trained with the adapter in `sew`;
- `plmcl`, `g2netpl` (summary paper 000 §III.A–B), `large_loss` (LL-R), `label_distribution` (MulSupConLD,
  summary 004): training rules of `sew` and `distill`;
- `prototypes`, `cooccurrence` (pipeline.transfer: HST's and TRM-ML's transfers before training): in `correct`.
"""

# isort: off
from pipeline import rules, hst, trm, plmcl, g2netpl, large_loss, label_distribution, prototypes
from pipeline import cooccurrence
# isort: on
from pipeline.method_registry import ROLES, MethodSet, fix_order, register_method, registered, selection_errors

# The registry's order (METHOD_NAMES, the errors naming methods, the order `correct` applies its transfers) is
# this list's, whichever module a caller imported first.
fix_order((rules, hst, trm, plmcl, g2netpl, large_loss, label_distribution, prototypes, cooccurrence))
METHODS = registered()
METHOD_NAMES = tuple(METHODS)
RULES = tuple(name for name, cls in METHODS.items() if cls.ROLE == "rule")  # `none` first

__all__ = ["METHODS", "METHOD_NAMES", "ROLES", "RULES", "MethodSet", "register_method", "registered",
           "selection_errors"]

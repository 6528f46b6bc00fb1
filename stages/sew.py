"""Stage `sew`: corrected labels → multi-object blend adaptation with EM (TailorCLIP Algorithm 1) →
data/models/adapter.pt and data/labels/refined.parquet (Z after EM).

With `unknown: pseudo` and a method of sew chosen, its held-out gate (pipeline.method_gate) first decides
whether the method trains."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from pipeline.adaptation import (
    AdapterRecipe,
    fit_adapter,
    needs_host_boxes,
    plain_logits,
    read_train_split,
    select_images,
    tower_inputs,
)
from pipeline.adapter import AdapterOptions
from pipeline.features import BackboneSettings, backbone_descriptor
from pipeline.masking import MaskSettings
from pipeline.method_gate import MethodGate, held_out_method_gate
from pipeline.models import save_checkpoint
from pipeline.resume import fingerprint
from pipeline.sew import SewSettings
from pipeline.storage import Table, write_table
from stages.common import (
    ADAPTER,
    CORRECTED,
    FEATURES,
    INITIAL,
    MANIFEST,
    OBSERVED,
    REFINED,
    SCORES,
    TEACHER_DESCRIPTOR,
    Params,
    ParamsError,
    clear_work_dir,
    resolve_weights,
    work_dir,
)
from stages.method_params import build_methods


def check(params: Params) -> tuple[AdapterRecipe, AdapterRecipe, MethodGate]:
    """The adapter's recipe with the chosen methods, the same with none (what the gate compares them with), and
    the gate (pipeline.method_gate)."""
    p = params.section("sew")
    methods = build_methods(params, ("rule", "online"))
    rule = methods.rule
    mask = params.build(MaskSettings)
    if rule.paper_setting and mask.knows_nothing:
        raise ParamsError(f"unknown: {rule.unknown} trains on the known labels alone, and ratio: 0 knows none; "
                          "set ratio > 0, known: answers, or unknown: pseudo to train on CLIP's pseudo labels")
    settings, options = p.build(SewSettings), p.section("adapter").build(AdapterOptions)
    recipe = AdapterRecipe(settings, options, rule, methods.online)
    b = p.section("backbone")
    if b.build(BackboneSettings).model != "teacher":  # a tower of its own: a known model, weights on this machine
        resolve_weights(b, b.model_name("model"), b.get("pretrained", str))
    return recipe, AdapterRecipe(settings, options, methods.base_rule), params.section("method_gate").build(MethodGate)


def gated(recipe: AdapterRecipe, baseline: AdapterRecipe, gate: MethodGate, known: np.ndarray) -> bool:
    """Whether the gate decides this run: it is on, a method trains in sew on top of the pseudo labels, and
    something is known to hide."""
    return (gate.mode == "held_out" and recipe != baseline and not recipe.rule.paper_setting
            and bool(known.any()))


def run(params: Params) -> None:
    recipe, baseline, gate = check(params)
    settings = recipe.settings
    p = params.section("sew")
    corrected, observed = Table(CORRECTED), Table(OBSERVED)
    split = read_train_split(MANIFEST, INITIAL, SCORES, needs_host_boxes(settings))
    targets = corrected.column("corrected")[split.rows]
    known = observed.column("known").astype(bool)[split.rows]
    descriptor = backbone_descriptor(p.section("backbone").build(BackboneSettings), TEACHER_DESCRIPTOR)
    model, features = tower_inputs(settings, descriptor, split, FEATURES)

    def fit(chosen: AdapterRecipe, keep: np.ndarray, work: str):
        """Train `chosen` on the images `keep` selects (fit_adapter's result)."""
        part, part_features = (split, features) if keep.all() else select_images(split, features, keep)
        # in the papers' settings a label distribution spreads over the known positives only, never CLIP's
        positives = np.where(known, targets, -1.0)[keep] if chosen.rule.paper_setting else targets[keep]
        return fit_adapter(
            model, descriptor, part, targets[keep], known[keep], chosen, work_dir("sew") / work, "sew",
            chosen.rule.entry_weights(positives, SCORES, part.rows), part_features)

    everything, verdict = np.ones(len(split.rows), bool), {}
    if gated(recipe, baseline, gate, known):
        def probe_fit(with_method: bool, train: np.ndarray) -> np.ndarray:
            adapter = fit(recipe if with_method else baseline, train, f"probe_{with_method}")[1]
            held_out, held_out_features = select_images(split, features, ~train)
            return plain_logits(model, adapter, held_out, held_out_features, settings)

        run_id = fingerprint(repr(recipe), repr(baseline), asdict(gate), targets, known, split.image_ids)
        result = held_out_method_gate(probe_fit, targets > 0, known, gate, settings.seed,
                                      work_dir("sew") / "gate.json", run_id)
        print(result.line(method_names(recipe)))
        verdict = result.metadata()
        recipe = recipe if result.kept else baseline
    spec, adapter, refined, raised, lowered = fit(recipe, everything, "")
    save_checkpoint(ADAPTER, spec, adapter)
    write_table(REFINED, {"image_id": corrected.column("image_id")[split.rows],
                          "split": corrected.column("split")[split.rows], "refined": refined,
                          "raised": raised.astype(np.int8), "lowered": lowered.astype(np.int8)}, corrected.classes,
                extra_metadata=verdict)
    clear_work_dir("sew")
    print(f"adapter → {ADAPTER}; EM-refined labels of {len(split.rows)} train images → {REFINED}")
    if recipe.transfer is not None:
        print(f"{recipe.transfer.NAME} raised {int(raised.sum())} unknown entries, lowered {int(lowered.sum())}")


def method_names(recipe: AdapterRecipe) -> str:
    """The methods of `sew` a recipe trains with, as `method` names them."""
    return " + ".join(m.NAME for m in (recipe.transfer, recipe.rule) if m is not None and m.NAME != "none")

"""Every option of every method group combines with every option of every other group.

Two checks, both generated from ``conf/<group>/*.yaml`` and the method cards (a new option is
covered the moment it has a YAML file and a card):

- ``test_pair_composes_and_prepares``: each pair alone (every pair of options of two different
  groups), on the tiny model: compose, build every method, check the combination, prepare the
  model, run a forward pass and a size report. Fast.
- ``test_covering_row_trains_exports_and_reloads``: a pairwise covering array: full
  configurations (one option per group) that together contain every pair. Each row composes,
  trains 2 steps (the float fine-tune stage first where distillation needs it), evaluates, checks
  every chosen option's effect, exports its checkpoint with ``python -m lowbit.export``'s code path
  (rebuild from the run's config, strict load, pack) and reloads it with equal logits.

A pair that cannot combine must fail before training with one line naming both options
(``<group>=<option> cannot be combined with <group>=<option>: reason``); such pairs are listed in
``INCOMPATIBLE`` with that line, and both checks verify it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONF, TINY_RUN
from omegaconf import OmegaConf

from lowbit.algorithms import METHOD_CARDS, METHOD_GROUPS
from lowbit.algorithms.effects import EffectContext
from lowbit.builder import build_model
from lowbit.errors import LowbitConfigError

OPTIONS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml") if not p.stem.startswith("_")) for g in METHOD_GROUPS}
#: (option, option) -> the one-line error. AdaptivFloat takes 4 to 8 bits: the bit_assignment cards that plan fewer
#: (their own test settings) are refused before training
_ADAPTIVFLOAT_TOO_FEW_BITS = {"uniform": "attention plans 3", "per_module": "ffn plans 2", "w2e2": "attention plans 2",
                              "w2e8": "attention plans 2", "hessian": "layer_bits plans 3", "per_layer": "layer_bits plans 2"}
INCOMPATIBLE: dict[tuple[str, str], str] = {
    ("quantizer=adaptivfloat", f"bit_assignment={option}"):
        f"bit_assignment={option} cannot be combined with quantizer=adaptivfloat: bit_assignment.{plan}-bit weights; "
        "AdaptivFloat with quantizer.exp_bits=2 takes 4 to 8 bits per weight"
    for option, plan in _ADAPTIVFLOAT_TOO_FEW_BITS.items()}


def _incompatible(a: tuple[str, str], b: tuple[str, str]) -> bool:
    return (f"{a[0]}={a[1]}", f"{b[0]}={b[1]}") in INCOMPATIBLE or (f"{b[0]}={b[1]}", f"{a[0]}={a[1]}") in INCOMPATIBLE


def card_overrides(group: str, option: str, chosen_groups: set[str]) -> list[str]:
    """A card's test overrides, minus those that set a group the combination chooses itself.

    A card that sets a quantizer sets its bit widths for that quantizer: they are dropped with it when the
    combination chooses the quantizer (whose own card then sets the bits)."""
    out = []
    overrides = METHOD_CARDS.get(f"{group}/{option}").test_overrides
    sets_quantizer = any(o.split("=", 1)[0].lstrip("+~") == "quantizer" for o in overrides)
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        other = key.split(".", 1)[0]
        if other in chosen_groups and other != group:
            continue
        if other == "bit_assignment" != group and sets_quantizer and "quantizer" in chosen_groups:
            continue
        if key == "trainer.fast_dev_run":
            continue
        out.append(o)
    return out


def combination_overrides(choice: dict[str, str]) -> list[str]:
    overrides = [f"{g}={o}" for g, o in choice.items()]
    for g, o in choice.items():
        overrides += card_overrides(g, o, set(choice))
    return overrides


def _pairs() -> list[tuple[str, str, str, str]]:
    out = []
    for g1, g2 in itertools.combinations(METHOD_GROUPS, 2):
        for o1, o2 in itertools.product(OPTIONS[g1], OPTIONS[g2]):
            out.append((g1, o1, g2, o2))
    return out


PAIRS = _pairs()


def covering_rows() -> list[dict[str, str]]:
    """A greedy pairwise covering array (AETG-style), deterministic: every pair in at least one row."""
    uncovered = {((g1, o1), (g2, o2)) for g1, o1, g2, o2 in PAIRS
                 if (f"{g1}={o1}", f"{g2}={o2}") not in INCOMPATIBLE}
    rows = []
    while uncovered:
        (g1, o1), (g2, o2) = min(uncovered)
        row = {g1: o1, g2: o2}
        for g in METHOD_GROUPS:
            if g in row:
                continue

            def gain(o, g=g):
                return sum(1 for h, p in row.items() if tuple(sorted([(g, o), (h, p)], key=lambda x: METHOD_GROUPS.index(x[0]))) in uncovered)

            fits = [o for o in OPTIONS[g] if not any(_incompatible((g, o), chosen) for chosen in row.items())]
            row[g] = max(fits, key=lambda o: (gain(o), -OPTIONS[g].index(o)))
        ordered = {g: row[g] for g in METHOD_GROUPS}
        for (ga, oa), (gb, ob) in itertools.combinations(ordered.items(), 2):
            uncovered.discard(((ga, oa), (gb, ob)))
        rows.append(ordered)
    return rows


ROWS = covering_rows()


def test_covering_array_covers_every_pair():
    covered = {((g1, r[g1]), (g2, r[g2])) for r in ROWS for g1, g2 in itertools.combinations(METHOD_GROUPS, 2)}
    missing = [p for p in PAIRS if ((p[0], p[1]), (p[2], p[3])) not in covered
               and not _incompatible((p[0], p[1]), (p[2], p[3]))]
    assert not missing
    assert not [pair for pair in covered if _incompatible(*pair)]  # no row trains a combination that is refused
    assert len(PAIRS) > len(ROWS)  # the point of a covering array
    assert set(OPTIONS["pruning"]) >= {"none", "magnitude"}  # the new consumer takes part


@pytest.mark.parametrize("g1,o1,g2,o2", PAIRS, ids=[f"{a}={b}+{c}={d}" for a, b, c, d in PAIRS])
def test_pair_composes_and_prepares(g1, o1, g2, o2, make_cfg, batch):
    choice = {g1: o1, g2: o2}
    cfg = make_cfg([*TINY_RUN, *combination_overrides(choice)])
    declared = INCOMPATIBLE.get((f"{g1}={o1}", f"{g2}={o2}"))
    if declared:
        with pytest.raises(LowbitConfigError) as err:
            build_model(cfg, weights="none")
        assert str(err.value) == declared
        return
    built = build_model(cfg, weights="none")
    assert {g: m.option for g, m in built.methods.items() if g in choice} == choice
    with torch.no_grad():
        logits = built.model.eval()(**batch).logits
    assert torch.isfinite(logits).all()
    from lowbit.size import size_report

    assert size_report(built.model).total_bits > 0


FULL_RUN = [o for o in TINY_RUN if o not in ("callbacks=none", "trainer.fast_dev_run=true")] + [
    "callbacks=default", "~callbacks.progress_bar", "trainer.max_steps=2", "+trainer.limit_val_batches=1",
    "data.max_train_samples=16", "data.max_eval_samples=16", "trainer.log_every_n_steps=1"]


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=["+".join(f"{g}={o}" for g, o in r.items() if o != "none") or "all_none"
                                           for r in ROWS])
def test_covering_row_trains_exports_and_reloads(row, make_cfg, tmp_path):
    from lowbit.export.__main__ import export_checkpoint
    from lowbit.pipeline import train

    cfg = make_cfg([*FULL_RUN, *combination_overrides(row)])
    result = train(cfg)
    ctx = EffectContext(result.job.model, result.metrics, result.job.methods)
    for group, option in row.items():
        METHOD_CARDS.get(f"{group}/{option}").effect(ctx)  # raises if the option did not do what it says
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    facts = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "packed")
    assert facts["reload_max_abs_logit_diff"] == 0.0  # export_checkpoint also checks it

"""Table runner: rows in order, row references, resume, CSV/markdown/W&B outputs."""

from __future__ import annotations

import csv
import re

import pytest
from conftest import TINY_RUN
from wandb_records import run_record

from lowbit.errors import LowbitConfigError
from lowbit.module import CompressionModule
from lowbit.tables import TableRow, TableSpec, main, run_table, select_rows

BASE = [o for o in TINY_RUN if not o.startswith("logger=")] + ["logger=none"]


def _spec():
    return TableSpec(
        name="tiny_table", title="tiny", metrics=["val/acc"], base_overrides=BASE,
        rows=[TableRow("fp32", ["quantizer=none"], {"acc": 93.1}),
              TableRow("w2", ["quantizer=ternary_twn", "bit_assignment.bits=2", "tags=[{row:fp32}]"],
                       {"acc": 92.8}, paper_label="TWN 2-2-8")])


def test_table_runs_rows_writes_outputs_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "table"
    results = run_table(_spec(), [], out, wandb_mode="offline")
    assert [r["row"] for r in results] == ["fp32", "w2"]
    assert results[0]["compression"] == 1.0 and results[1]["compression"] > 5
    assert results[1]["paper acc"] == 92.8 and results[1]["paper source"] == "recalled"
    rows = list(csv.DictReader((out / "tiny_table.csv").open()))
    assert [r["row"] for r in rows] == ["fp32", "w2"]
    md = (out / "tiny_table.md").read_text()
    assert "| fp32 |" in md and "recalled" in md
    assert list((out / "wandb").glob("offline-run-*/*.wandb"))
    # each row keeps its config beside its checkpoints, as a train.py run does: it exports like any run
    from omegaconf import OmegaConf

    from lowbit.builder import build_model

    saved = OmegaConf.load(out / "w2" / ".hydra" / "config.yaml")
    assert saved.data.max_train_samples == 32 and saved.paths.output_dir == str(out / "w2")
    assert build_model(saved).model.bert.encoder.layer[0].intermediate.dense.quantizer.bits == 2
    # rerun: both rows are done, nothing trains again
    calls = []
    monkeypatch.setattr(CompressionModule, "training_step", lambda *a: calls.append(1))
    run_table(_spec(), [], out, wandb_mode="disabled")
    assert calls == []


def test_rows_option_runs_the_matching_rows_and_the_rows_they_refer_to(tmp_path, monkeypatch):
    spec = TableSpec(name="sel", title="sel", metrics=["val/acc"], base_overrides=BASE,
                     rows=[TableRow("a_base", ["quantizer=none"]), TableRow("a_kd", ["tags=[{row:a_base}]"]),
                           TableRow("b_base", ["quantizer=none"]), TableRow("b_w2", ["tags=[{row:b_base}]"]),
                           TableRow("c_solo", ["quantizer=none"])])
    assert select_rows(spec, None) == {"a_base", "a_kd", "b_base", "b_w2", "c_solo"}
    assert select_rows(spec, ["a_*"]) == {"a_base", "a_kd"}
    assert select_rows(spec, ["b_w2"]) == {"b_base", "b_w2"}  # its reference comes along
    with pytest.raises(LowbitConfigError, match=r"--rows 'z_\*' matches no row of table sel; rows: \['a_base'"):
        select_rows(spec, ["z_*"])
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "table"
    assert [r["row"] for r in run_table(spec, [], out, wandb_mode="disabled", rows=["b_base"])] == ["b_base"]
    assert not (out / "a_base").exists()
    # a later selection: the table holds every row done so far, in the spec's order; b_base is not rerun
    b_done = (out / "b_base" / "summary.json").stat().st_mtime_ns
    monkeypatch.setattr("lowbit.tables.TableSpec.load", classmethod(lambda cls, name: spec))
    with pytest.raises(SystemExit, match="--rows 'zzz' matches no row"):
        main(["sel", "--out", str(out), "--rows", "zzz", "--wandb-mode", "disabled"])
    # two globs after one --rows: the second is not an override; the error says how to pick several rows
    with pytest.raises(SystemExit, match=r"argument 'c_\*' is not a KEY=VALUE override .*repeat --rows"):
        main(["sel", "--out", str(out), "--rows", "a_*", "c_*", "--wandb-mode", "disabled"])
    results = main(["sel", "--out", str(out), "--rows", "a_base", "--wandb-mode", "disabled"])
    assert [r["row"] for r in results] == ["a_base", "b_base"]
    assert [r["row"] for r in csv.DictReader((out / "sel.csv").open())] == ["a_base", "b_base"]
    assert (out / "b_base" / "summary.json").stat().st_mtime_ns == b_done
    # the rows done and not selected are in the table written: another budget for a new row is refused, not mixed in
    with pytest.raises(SystemExit, match=r"a_base was run with a different config: data.max_train_samples=32 \(stored\)"):
        main(["sel", "--out", str(out), "--rows", "c_solo", "data.max_train_samples=24", "--wandb-mode", "disabled"])
    assert not (out / "c_solo").exists()


def test_row_reference_to_a_later_row_is_an_error(tmp_path):
    spec = TableSpec(name="bad", title="bad", metrics=["val/acc"], base_overrides=BASE,
                     rows=[TableRow("a", ["tags=[{row:b}]"])])
    with pytest.raises(LowbitConfigError, match="refers to row 'b' that has not run before it"):
        run_table(spec, [], tmp_path, wandb_mode="disabled")


def test_unknown_table_name():
    with pytest.raises(LowbitConfigError, match="unknown table 'nope'"):
        TableSpec.load("nope")


def test_every_table_row_composes(tmp_path):
    from lowbit.compose import compose_train, conf_dir

    for path in sorted((conf_dir() / "table").glob("*.yaml")):
        spec = TableSpec.load(path.stem)
        for row in spec.rows:
            # a row reference is a directory; composing does not check that it exists
            overrides = [re.sub(r"\{row:[^}]+\}", str(tmp_path), o) for o in [*row.base(spec.base_overrides), *row.overrides]]
            compose_train(overrides, tmp_path / "o")


def test_drop_base_leaves_out_the_named_groups_only():
    row = TableRow("fp32", ["quantizer=none"], drop_base=["quantizer", "bit_assignment"])
    base = ["data=sst2", "quantizer=groupwise", "quantizer.n_groups=64", "+quantizer.x=1", "bit_assignment.bits=4",
            "bit_assignment_extra=1", "data.max_length=64"]
    assert row.base(base) == ["data=sst2", "bit_assignment_extra=1", "data.max_length=64"]
    assert TableRow("w4", []).base(base) == base



def test_unknown_drop_base_group_fails_before_any_row_runs(tmp_path):
    spec = _spec()
    spec.rows[0].drop_base = ["quantiser"]
    with pytest.raises(LowbitConfigError, match=r"^table tiny_table: row 'fp32' drop_base entry 'quantiser' matches no base"):
        run_table(spec, [], tmp_path / "t", wandb_mode="disabled")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("name", ["ternarybert_table1_sst2"])
def test_ternarybert_table1_runs_end_to_end_on_tiny(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    spec = TableSpec.load(name)
    # checkpoints on (rows start from the teacher's best.ckpt), so no fast_dev_run: one step, one val batch
    drop = ("data.max_train_samples", "callbacks=", "trainer.fast_dev_run")
    tiny = [o for o in BASE if not o.startswith(drop)] + [
        "data.max_train_samples=16", "data.max_eval_samples=16", "+trainer.limit_train_batches=1",
        "trainer.max_epochs=1", "~callbacks.progress_bar"]
    results = run_table(spec, tiny, tmp_path / "t", wandb_mode="disabled")
    assert [r["row"] for r in results] == [r.name for r in spec.rows]
    by_row = {r["row"]: r for r in results}
    assert by_row["teacher"]["compression"] == 1.0
    assert by_row["twn_w2e2a8_distill"]["compression"] > by_row["w8e8a8_distill"]["compression"] > 1.0
    assert all(r["paper source"] == "recalled" for r in results)


def test_percent_can_name_the_metrics_shown_as_percentages():
    from lowbit.tables import _table_row, check_spec

    spec = TableSpec(name="t", title="t", metrics=["val/acc", "attention_span/mean_span"], rows=[TableRow("r", [])],
                     percent=["val/acc"])
    check_spec(spec)
    row = _table_row(spec, spec.rows[0], {"val/acc": 0.8177, "attention_span/mean_span": 3.9227})
    assert row["ours val/acc"] == 81.77 and row["ours attention_span/mean_span"] == 3.923
    spec.percent = ["val/f1"]
    with pytest.raises(LowbitConfigError, match="percent must be true, false or a list of the table's metrics"):
        check_spec(spec)


def test_table_rows_are_grouped_in_wandb_by_table_and_row(tmp_path, monkeypatch, capsys):
    """Each row's offline W&B run carries the table as its group and the row as its job type (what a W&B workspace
    groups and filters by); the table run says where it went and how to sync it."""
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    base = [o for o in TINY_RUN if not o.startswith("logger=")] + ["logger.wandb.mode=offline"]
    spec = TableSpec(name="grouped_table", title="t", metrics=["val/acc"], base_overrides=base,
                     rows=[TableRow("fp32_row", ["quantizer=none"]), TableRow("w2_row", ["quantizer=ternary_twn"])])
    out = tmp_path / "t"
    run_table(spec, [], out, wandb_mode="offline")
    for row in ("fp32_row", "w2_row"):
        runs = list((out / row / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, row
        run = run_record(next(runs[0].glob("*.wandb")))
        assert (run.run_group, run.job_type, run.display_name) == ("grouped_table", row, row)
    printed = capsys.readouterr().out
    assert "W&B table 'grouped_table' logged (offline)" in printed and "wandb sync " in printed


def test_paper_values_of_percent_metrics_are_percentages():
    """A table shows accuracy, savings and sparsity as percentages: a paper value of 0.54 beside our 61.85 is a
    fraction written where 54 was meant (it happened), and its Δ would be meaningless."""
    from lowbit.compose import conf_dir

    fractions = []
    for path in sorted((conf_dir() / "table").glob("*.yaml")):
        spec = TableSpec.load(path.stem)
        for row in spec.rows:
            for key, value in row.paper.items():
                shown_as_percent = key in spec.metrics and spec.shows_percent(key)
                if shown_as_percent and re.search(r"acc|f1|saving|sparsity", key) and isinstance(value, (int, float)) \
                        and 0 < abs(value) <= 1:
                    fractions.append(f"{path.stem}: {row.name}: {key}={value}")
    assert not fractions, fractions


def test_a_row_interrupted_mid_way_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    """Not from scratch: an interrupted row's steps before its last.ckpt are not trained again."""
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    # 32 examples / batch 8 = 4 steps an epoch: last.ckpt at step 2 and at the epoch's end (step 4)
    steps = [o for o in BASE if o not in ("callbacks=none", "trainer.fast_dev_run=true")] + [
        "callbacks=default", "~callbacks.progress_bar", "trainer.max_steps=6", "+trainer.limit_val_batches=1",
        "callbacks.last_checkpoint.every_n_train_steps=2"]
    spec = TableSpec(name="resume", title="resume", metrics=["val/acc"], base_overrides=steps,
                     rows=[TableRow("fp32", ["quantizer=none"])])
    real_step, calls = CompressionModule.training_step, []

    def interrupted_at_step_6(self, *args, **kwargs):
        calls.append(self.trainer.global_step)
        if len(calls) == 6:
            raise KeyboardInterrupt  # as a ^C or a killed job: the row has no summary.json
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(CompressionModule, "training_step", interrupted_at_step_6)
    with pytest.raises(SystemExit):  # Lightning ends a run stopped by ^C with exit status 1
        run_table(spec, [], tmp_path / "t", wandb_mode="disabled")
    assert not (tmp_path / "t" / "fp32" / "summary.json").exists()
    calls.clear()
    monkeypatch.setattr(CompressionModule, "training_step",
                        lambda self, *a, **k: calls.append(self.trainer.global_step) or real_step(self, *a, **k))
    results = run_table(spec, [], tmp_path / "t", wandb_mode="disabled")
    assert calls == [4, 5]  # steps 5 and 6 only: resumed from the epoch-end last.ckpt of step 4
    assert results[0]["row"] == "fp32" and (tmp_path / "t" / "fp32" / "summary.json").exists()

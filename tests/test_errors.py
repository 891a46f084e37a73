"""Bad input fails before training with one clear line naming the option or file.

The table of bad inputs (configs, CLI overrides, data files, checkpoints, table specs, sweeps,
environment) and their messages is ``tests/test_bad_inputs.py``; here: the row checks of
``lowbit.data.read_jsonl`` on their own.
"""

from __future__ import annotations

import math

import pytest

from lowbit.data import read_jsonl
from lowbit.data.glue import check_label
from lowbit.errors import LowbitConfigError


def test_row_missing_column_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"sentence": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    with pytest.raises(LowbitConfigError, match=r"x.jsonl:2: row lacks column\(s\) \['sentence'\]"):
        read_jsonl(path, ("sentence", "label"))


def test_labels_are_checked_and_normalized(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"s": "a", "label": 1.0}\n{"s": "b", "label": 0}\n')
    assert [r["label"] for r in read_jsonl(path, ("s", "label"), num_labels=2)] == [1, 0]  # 1.0 is class 1
    assert [r["label"] for r in read_jsonl(path, ("s", "label"), num_labels=1)] == [1.0, 0.0]  # regression: floats
    assert isinstance(read_jsonl(path, ("s", "label"), num_labels=1)[1]["label"], float)
    assert read_jsonl(path, ("s", "label")) == [{"s": "a", "label": 1.0}, {"s": "b", "label": 0}]  # unchecked


@pytest.mark.parametrize("label,num_labels,message", [
    (True, 2, "label must be an integer class id in [0, 2), got True"),
    (1.5, 2, "got 1.5"),
    ("1", 3, "got '1'"),
    (math.inf, 1, "label must be a finite number (regression), got inf"),
    (None, 1, "label is null"),
])
def test_check_label_rejects(label, num_labels, message):
    with pytest.raises(LowbitConfigError) as err:
        check_label(label, num_labels, "f.jsonl:7")
    assert str(err.value).startswith("f.jsonl:7: ") and message in str(err.value)

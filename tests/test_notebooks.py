"""Every notebook under notebooks/ executes (nbclient, a real Jupyter kernel) on runs the test makes with the tiny
model, so a notebook that breaks fails the suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, TINY_RUN

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two finished tiny runs (float and ternary) under one logs directory, as train.py leaves them."""
    import yaml
    from conftest import compose_train
    from omegaconf import OmegaConf

    from lowbit.pipeline import train

    logs = tmp_path_factory.mktemp("logs")
    for name, overrides in {"fp32": ["quantizer=none"], "ternary": ["quantizer=ternary_twn", "bit_assignment.bits=2"]}.items():
        cfg = compose_train([*TINY_RUN, "+experiment=demo_sst2", *overrides], logs / name)  # outputs: logs/<name>/out
        train(cfg)
        run_dir = Path(cfg.paths.output_dir)
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    return logs


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_on_the_test_runs(path, runs, monkeypatch):
    monkeypatch.setenv("LOWBIT_LOG_DIR", str(runs))
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", ""))
                    for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "fp32" in shown and "ternary" in shown, shown[:500]  # both runs reached the notebook's table

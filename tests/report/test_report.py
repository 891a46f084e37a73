"""``python -m lowbit.report``: the static dashboard, checked in a real headless browser (Debian's Chromium driven by
Playwright) on a small logs tree made with the tiny model (``tiny_logs.py``: a Q-BERT table with a Hessian-ranked
mixed-precision row, two single runs, a 3-trial Optuna sweep).

``LOWBIT_UPDATE_SCREENSHOT=1`` also writes the table page's screenshot to ``docs/img/dashboard.png`` (README).
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest
from conftest import ROOT
from tiny_logs import QBERT_ROWS, STUDY, TABLE, TinyLogs, make_tiny_logs

from lowbit.report.__main__ import main
from lowbit.report.discover import conf_table_names, discover

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "docs" / "img" / "dashboard.png"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> TinyLogs:
    return make_tiny_logs(tmp_path_factory.mktemp("report"), ROOT)


@pytest.fixture(scope="module")
def site(logs, tmp_path_factory) -> Path:
    """The report of the tiny logs, built by the command line (its default out dir would be logs/report)."""
    out = tmp_path_factory.mktemp("site")
    index = main([str(logs.root), "--out", str(out)])
    assert index == out / "index.html"
    return out


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (make test-deps installs Debian's chromium): browser tests skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser, width: int = 1200, height: int = 900):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))

    def open(self, path: Path) -> None:
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")
        if self.page.locator("div.plot").count():
            self.page.wait_for_selector("div.plot .main-svg", timeout=20000)

    def visible_rows(self, selector: str) -> list[str]:
        return [r.get_attribute("data-row") or r.inner_text().split("\t")[0] for r in self.page.locator(selector).all()
                if r.is_visible()]


@pytest.fixture
def page(browser):
    p = Page(browser)
    yield p
    p.page.close()


def _link(site: Path, index_page: Page, text: str) -> Path:
    href = index_page.page.locator("a", has_text=text).first.get_attribute("href")
    assert href, f"no link {text!r} on the index"
    return site / href


def png_colours(png: bytes) -> tuple[int, float]:
    """(distinct colours, fraction of non-white pixels) of an 8-bit RGB/RGBA PNG (as Chromium writes them)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        kind, cur = line[0], bytearray(line[1:])
        for i in range(stride):  # PNG filters: none, sub, up, average, Paeth
            a = cur[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 1:
                cur[i] = (cur[i] + a) & 255
            elif kind == 2:
                cur[i] = (cur[i] + b) & 255
            elif kind == 3:
                cur[i] = (cur[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(cur))
        previous = cur
    pixels = [row[i:i + 3] for row in rows for i in range(0, stride, channels)]
    return len(set(pixels)), sum(p != b"\xff\xff\xff" for p in pixels) / len(pixels)


# --------------------------------------------------------------------------------------------------------------------
# the site in the browser
# --------------------------------------------------------------------------------------------------------------------
def test_index_lists_the_table_sweep_and_runs(site, page):
    page.open(site / "index.html")
    text = page.page.inner_text("main")
    assert page.page.locator("#tables a", has_text=TABLE).count() == 1
    assert page.page.locator("#sweeps a", has_text=STUDY).count() == 1
    assert [a.inner_text() for a in page.page.locator("#runs tbody a").all()] == ["logs/runs/fp32_mrpc",
                                                                                 "logs/runs/ternary_csv"]
    # every other conf/table spec is listed as not run (none of them has results here)
    assert all(name in text for name in conf_table_names() if name != TABLE)
    assert page.errors == []


def test_table_page_shows_ours_beside_the_paper_with_delta_and_run_links(site, logs, page):
    index = Page(page.page.context.browser)
    index.open(site / "index.html")
    table_page = _link(site, index, TABLE)
    index.page.close()
    page.open(table_page)
    assert page.visible_rows("#results tbody tr") == list(QBERT_ROWS)
    header = [h.inner_text() for h in page.page.locator("#results thead th").all()]
    assert header[:5] == ["row", "paper row", "ours val/acc", "paper acc", "Δ val/acc"], header
    by_row = {r["row"]: r for r in logs.table_rows}
    for row in QBERT_ROWS:
        cells = page.page.locator(f'#results tr[data-row="{row}"] td')
        ours, paper = by_row[row]["ours val/acc"], by_row[row]["paper acc"]
        assert float(cells.nth(2).inner_text()) == pytest.approx(ours)
        assert float(cells.nth(3).inner_text()) == pytest.approx(paper)
        delta = cells.nth(4)
        assert float(delta.inner_text()) == pytest.approx(ours - paper, abs=0.006)
        assert ("delta-good" if ours > paper else "delta-bad") in delta.get_attribute("class")
        # the row links to its run's page, which links to the run dir on disk
        run_page = page.page.locator(f'#results tr[data-row="{row}"] td a').first.get_attribute("href")
        assert (table_page.parent / run_page).is_file()
        dir_link = page.page.locator(f'#results tr[data-row="{row}"] .links a', has_text="dir").get_attribute("href")
        assert (table_page.parent / dir_link).resolve() == (logs.table_dir / row).resolve()
    assert page.errors == []


def test_table_plot_renders_and_is_not_blank(site, page):
    page.open(next((site / "tables").glob(f"{TABLE}__*.html")))
    plot = page.page.locator("div.plot").first
    assert plot.locator(".main-svg").count() >= 1
    # the accuracy-vs-size plot has one marker per row, and a Pareto front
    names = page.page.evaluate("id => document.getElementById(id).data.map(t => t.name)", plot.get_attribute("id"))
    assert names[:2] == ["ours", "Pareto front (ours)"], names
    assert plot.locator(".scatterlayer .trace").first.locator("path.point").count() == len(QBERT_ROWS)
    colours, inked = png_colours(plot.screenshot())
    assert colours > 20 and inked > 0.01, (colours, inked)
    assert page.errors == []


def test_mixed_precision_row_shows_hessian_and_bits(site, logs, page):
    page.open(next((site / "tables").glob(f"{TABLE}__*.html")))
    traces = page.page.evaluate("() => [...document.querySelectorAll('div.plot')].map(el => el.data.map(t => t.name))")
    hessian = next((names for names in traces if "top eigenvalue (mean ± std)" in names), None)
    assert hessian == ["top eigenvalue (mean ± std)", "bits: qbert_mp_w23"], traces
    bits = page.page.evaluate("() => [...document.querySelectorAll('div.plot')].flatMap(el => el.data)"
                              ".find(t => t.name === 'bits: qbert_mp_w23').y")
    import json

    summary = json.loads((logs.table_dir / "qbert_mp_w23" / "summary.json").read_text())
    assert bits == [int(b) for b in summary["bit_assignment/layer_bits"].split(",")]
    assert set(bits) <= {2, 3}
    assert page.errors == []


def test_filters_hide_rows_that_do_not_match(site, page):
    page.open(next((site / "tables").glob(f"{TABLE}__*.html")))
    assert len(page.visible_rows("#results tbody tr")) == len(QBERT_ROWS)
    page.page.select_option("select[data-key=method]", "quantizer=groupwise")
    assert page.visible_rows("#results tbody tr") == ["qbert_w2", "qbert_mp_w23"]
    page.page.select_option("select[data-key=method]", "bit_assignment=hessian")
    assert page.visible_rows("#results tbody tr") == ["qbert_mp_w23"]
    page.page.select_option("select[data-key=method]", "")
    assert len(page.visible_rows("#results tbody tr")) == len(QBERT_ROWS)

    page.open(site / "index.html")
    before = page.visible_rows("#runs tbody tr")
    page.page.select_option("select[data-key=task]", "mrpc")
    after = page.visible_rows("#runs tbody tr")
    assert len(before) == 2 and len(after) == 1 and "fp32_mrpc" in after[0]
    assert page.page.locator("#tables tbody tr").first.is_hidden()  # the table is SST-2
    assert page.errors == []


def test_sweep_page_has_history_pareto_importance_and_dashboard_command(site, logs, page):
    page.open(next((site / "sweeps").glob(f"{STUDY}__*.html")))
    db = (logs.sweep_dir / "optuna.db").resolve()
    assert f"optuna-dashboard sqlite:///{db}" in page.page.inner_text("code.command")
    titles = page.page.evaluate("() => [...document.querySelectorAll('div.plot')].map(el => el.layout.title.text)")
    assert "Pareto front" in titles and "history: val/acc (max)" in titles, titles
    text = page.page.inner_text("main")
    importance = [t for t in titles if t.startswith("parameter importance")]
    # each objective has an importance plot, or the page says why not (e.g. every trial scored the same)
    for objective in ("val/acc", "model/size_bits"):
        assert any(t.endswith(f"for {objective} (fANOVA)") for t in importance) \
            or f"No parameter importance for {objective}:" in text, (objective, importance, text)
    assert page.page.locator("table.results tbody tr").count() == 3
    assert page.errors == []


def test_run_pages_show_training_curves_from_csv_and_wandb_logs(site, logs, page):
    index = Page(page.page.context.browser)
    index.open(site / "index.html")
    csv_page = _link(site, index, "ternary_csv")
    index.page.close()
    for run_page in (csv_page, next((site / "runs").glob("*qbert_sst2_baseline.html"))):
        page.open(run_page)
        curves = page.page.evaluate(
            "() => [...document.querySelectorAll('div.plot')].filter(el => el.layout.title.text === 'training losses')"
            ".flatMap(el => el.data.map(t => [t.name, t.y.length]))")
        assert any(name == "train/loss" and n >= 2 for name, n in curves), curves
    assert page.errors == []


def test_screenshot_for_the_readme(browser, tmp_path):
    """Q-BERT Table 1 as committed (experiments/qbert/results: MiniLM numbers beside the paper's, the accuracy-vs-size
    plot) at a 1000x700 viewport, zoomed out to show the table and the plot; written to docs/img/dashboard.png when
    LOWBIT_UPDATE_SCREENSHOT=1."""
    from lowbit.report import build_report

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # paths on the page relative to the repository, as `python -m lowbit.report` shows them
        build_report([Path("experiments/qbert/results")], tmp_path / "site")
    p = Page(browser, 1000, 700)
    p.open(tmp_path / "site" / "tables" / "qbert_sst2__experiments_qbert_results_qbert_sst2.csv.html")
    p.page.evaluate("document.body.style.zoom = '0.72'; window.dispatchEvent(new Event('resize'))")
    p.page.wait_for_timeout(300)
    png = p.page.screenshot()
    assert p.errors == []
    p.page.close()
    colours, inked = png_colours(png)
    assert colours > 50 and inked > 0.05
    if os.environ.get("LOWBIT_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(png)


# --------------------------------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------------------------------
def test_a_table_being_run_is_read_from_its_rows_as_its_csv_will_be(logs, tmp_path):
    """Row dirs of a conf/table spec without the CSV yet (the table is still running): the rows done so far, with the
    values ``lowbit.tables`` writes to the CSV at the end (checked against the CSV of a finished run)."""
    copy = tmp_path / "tables" / "qbert_sst2"
    for row in ("baseline", "qbert_mp_w23"):  # two rows done, and no qbert_sst2.csv
        shutil.copytree(logs.table_dir / row, copy / row, ignore=shutil.ignore_patterns("*.ckpt", "wandb"))
    (table,) = discover([tmp_path]).tables
    assert table.source == copy and table.note.startswith(f"2 of {len(table.spec.rows)} rows done")
    assert table.spec.name == TABLE and len(table.spec.rows) > 2
    finished = {r["row"]: r for r in logs.table_rows}
    assert table.rows == [finished["baseline"], finished["qbert_mp_w23"]]
    assert set(table.row_runs) == {"baseline", "qbert_mp_w23"}


# --------------------------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------------------------
def test_a_missing_root_is_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "no_such_logs"), "--out", str(tmp_path / "site")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"lowbit: error: report root '{tmp_path / 'no_such_logs'}' does not exist\n"
    assert not (tmp_path / "site").exists()


def test_an_out_dir_that_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    (tmp_path / "taken").write_text("a file, not a directory")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "logs"), "--out", str(tmp_path / "taken")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lowbit: error: cannot write the report to '{tmp_path / 'taken'}'") and err.count("\n") == 1


def test_wandb_without_api_key_is_one_line_after_the_local_site(logs, tmp_path, capsys, monkeypatch):
    """--wandb calls lowbit.report.wandb_report.create_report after writing the site; its one-line
    LowbitConfigError (no API key) is printed as ``lowbit: error:`` with exit code 2."""
    import types

    from lowbit.errors import LowbitConfigError

    calls = []

    def create_report(target, roots, project, entity):
        calls.append((target, roots, project, entity))
        raise LowbitConfigError("W&B reports need an API key (WANDB_API_KEY or `wandb login`)")

    monkeypatch.setitem(sys.modules, "lowbit.report.wandb_report", types.SimpleNamespace(create_report=create_report))
    with pytest.raises(SystemExit) as e:
        main([str(logs.root), "--out", str(tmp_path / "site"), "--wandb", TABLE])
    assert e.value.code == 2
    assert capsys.readouterr().err == "lowbit: error: W&B reports need an API key (WANDB_API_KEY or `wandb login`)\n"
    assert calls == [(TABLE, [logs.root], "lowbit", None)]
    assert (tmp_path / "site" / "index.html").is_file()


def test_wandb_with_the_real_module_and_no_api_key(logs, tmp_path, capsys, monkeypatch):
    pytest.importorskip("lowbit.report.wandb_report", reason="lowbit.report.wandb_report is not written yet")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main([str(logs.root), "--out", str(tmp_path / "site"), "--wandb"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: ") and err.count("\n") == 1, err
    assert (tmp_path / "site" / "index.html").is_file()

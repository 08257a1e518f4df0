"""The report page's unit explorer, driven in headless Chromium as a user drives it (keys, clicks), its DOM
checked against the stored Parquet columns."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from repsub.analysis.report import build_report
from repsub.analysis.thumbnails import THUMBNAIL_BUDGET, WEBP_BYTES_PER_PIXEL, thumbnail_side
from tests.chromium import Chromium
from tests.report_helpers import hand_run, real_run, stored_selectivity, stored_units

PAGE_SIZE = 120  # the page's default


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return real_run(tmp_path_factory)


@pytest.fixture(scope="module")
def real_page(real, tmp_path_factory):
    return build_report(real, tmp_path_factory.mktemp("page"), resamples=20)[0]


@pytest.fixture(scope="module")
def hand_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand")
    return build_report(hand_run(root / "run"), root / "out", resamples=20)[0]


@pytest.fixture(scope="module")
def browser():
    with Chromium(width=1280, height=1000) as chromium:
        yield chromium


def open_page(browser, page, fragment: str = "") -> None:
    browser.open(page.as_uri() + fragment)
    assert browser.evaluate("window.repsubExplorer.ready") is True


def close_detail(browser) -> None:
    """Escape closes the unit's dialog. Its `close` event is a queued task whose handler clears the address and
    gives focus back to the card: wait for it, or it can take focus from whatever the test focuses next."""
    browser.key("Escape")
    browser.wait_for("!document.getElementById('unit-detail').open && location.hash === ''")


def cards(browser) -> list[dict]:
    """The gallery's cards as shown: their row, label and image size."""
    return browser.evaluate("""Array.from(document.querySelectorAll("#gallery .card")).map((c) => {
        const img = c.querySelector("img");
        return {row: Number(c.dataset.row), label: c.getAttribute("aria-label"),
                width: img.naturalWidth, height: img.naturalHeight, complete: img.complete};
    })""")


def count_text(browser) -> str:
    return browser.evaluate("document.getElementById('match-count').textContent")


def focus_and_press(browser, element_id: str, *keys: str) -> None:
    browser.evaluate(f"document.getElementById({json.dumps(element_id)}).focus()")
    for key in keys:
        browser.key(key)


def describe(browser, row: int) -> dict:
    return browser.evaluate(f"window.repsubExplorer.describe({row})")


def test_gallery_shows_one_page_of_thumbnails(real, real_page, browser):
    units = stored_units(real)
    open_page(browser, real_page)
    shown = cards(browser)
    assert len(shown) == PAGE_SIZE < len(units) == 390
    assert all(c["complete"] and (c["width"], c["height"]) == (16, 16) for c in shown)  # the images whole
    assert count_text(browser) == "390 of 390 units rows match"
    assert browser.evaluate("document.getElementById('page-label').textContent") == "page 1 of 4"
    # Layer order (depth), then unit, then method: conv1 0 AM, conv1 0 IAM, conv1 1 AM...
    first = [describe(browser, c["row"]) for c in shown[:4]]
    assert [(d["layer"], d["unit"], d["method"]) for d in first] == [
        ("conv1", 0, "am"), ("conv1", 0, "iam"), ("conv1", 1, "am"), ("conv1", 1, "iam"),
    ]  # fmt: skip
    browser.click_element("#next-page")
    assert browser.evaluate("document.getElementById('page-label').textContent") == "page 2 of 4"
    assert describe(browser, cards(browser)[0]["row"])["unit"] == PAGE_SIZE // 2  # conv1 60 AM


def test_filters_and_sorting_by_keyboard(real, real_page, browser):
    units = stored_units(real)
    open_page(browser, real_page)
    # Type a minimum RS, as a user does, into the RS "min" field.
    browser.click_element("#f-rs-min")
    browser.type_text("0.5")
    expected = [k for k, row in units.items() if row["rs"] is not None and row["rs"] >= 0.5]
    browser.wait_for(f"document.getElementById('match-count').textContent.startsWith('{len(expected)} of')")
    assert len(browser.evaluate("window.repsubExplorer.filtered()")) == len(expected) > 0
    # The first layer in the layer list, by keyboard: conv1.
    focus_and_press(browser, "f-layer", "ArrowDown")
    conv1 = [k for k in expected if k[0] == "conv1"]
    browser.wait_for(f"document.getElementById('match-count').textContent.startsWith('{len(conv1)} of')")
    # Sort by RS, descending.
    focus_and_press(browser, "f-sort", "ArrowDown")
    focus_and_press(browser, "f-order", "ArrowDown")
    rows = [describe(browser, r) for r in browser.evaluate("window.repsubExplorer.filtered()")]
    assert {(d["layer"], d["method"], d["unit"]) for d in rows} == set(conv1)
    rs = [d["rs"] for d in rows]
    assert rs == sorted(rs, reverse=True) and min(rs) >= 0.5
    top = max(conv1, key=lambda k: units[k]["rs"])
    assert rs[0] == pytest.approx(units[top]["rs"], abs=1e-4)
    # Every card shown says what the filter asked for.
    for card in cards(browser):
        assert card["label"].startswith("conv1 unit ")
        assert float(card["label"].split("RS ")[1].split(",")[0]) >= 0.5
    # Status filter: only the rows that failed to respond, all of them left out of the statistics.
    browser.click_element("#f-reset")
    browser.evaluate("""(() => { const s = document.getElementById("f-status"); s.value = "no_response";
        s.dispatchEvent(new Event("input", {bubbles: true})); })()""")
    failed = [k for k, row in units.items() if row["status"] == "no_response"]
    assert len(browser.evaluate("window.repsubExplorer.filtered()")) == len(failed) > 0
    assert {describe(browser, c["row"])["category"] for c in cards(browser)} <= {"no_response", "dead"}


def test_unit_detail_matches_the_stored_rows(hand_page, browser):
    """The hand-made layer: a card opens its unit; the dialog shows both what the tables hold and why."""
    open_page(browser, hand_page)
    target = next(c for c in cards(browser) if c["label"].startswith("block unit 4 IAM"))
    assert (target["width"], target["height"]) == (12, 20)  # aspect kept (the PNGs are 12 x 20)
    browser.click_element(f'#gallery .card[data-row="{target["row"]}"]')
    detail = browser.evaluate("""(() => {
        const d = document.getElementById("unit-detail");
        const cells = {};
        for (const tr of d.querySelectorAll("tr")) cells[tr.cells[0].textContent] = tr.cells[1].textContent;
        return {open: d.open, title: document.getElementById("detail-title").textContent, cells,
                means: Array.from(d.querySelectorAll(".bars li")).map((li) => li.textContent),
                bold: d.querySelectorAll("b").length,
                images: Array.from(d.querySelectorAll("#detail-images img")).map((i) => i.naturalWidth),
                layer: document.getElementById("detail-layer").textContent, hash: location.hash};
    })()""")
    assert detail["open"] and detail["title"] == "block unit 4" and detail["hash"] == "#unit=block/4/iam"
    assert detail["cells"]["selectivity"] == "0.300" and detail["cells"]["RS"] == "0.6000"
    assert detail["cells"]["status"].startswith("ok:") and detail["cells"]["in statistics"] == "yes"
    assert detail["cells"]["top class"] == "cat (0)" and detail["cells"]["images in the pass"] == "12"
    assert detail["cells"]["objective start → final"] == "0.000 → 3.000"
    assert "read: block" in detail["layer"] and "depth 1" in detail["layer"]
    # Class means, largest first, names as text (a name with markup stays text).
    assert (
        detail["means"] == ["<b>eel</b> (2)0.4000", "dog (1)0.3000", "cat (0)0.2000"] and detail["bold"] == 0
    )
    assert detail["images"] == [12]
    close_detail(browser)
    assert browser.evaluate("document.getElementById('unit-detail').open") is False
    assert browser.evaluate("document.activeElement.dataset.row") == str(target["row"])  # focus returns
    # A left-out unit says why; opened from the keyboard (Enter on its card).
    failed = next(c for c in cards(browser) if c["label"].startswith("block unit 3 IAM"))
    browser.evaluate(f"document.querySelector('#gallery .card[data-row=\"{failed['row']}\"]').focus()")
    browser.key("Enter")
    browser.wait_for("document.getElementById('unit-detail').open")
    cells = browser.evaluate("""Object.fromEntries(Array.from(document.querySelectorAll("#unit-detail tr"))
        .map((tr) => [tr.cells[0].textContent, tr.cells[1].textContent]))""")
    assert cells["in statistics"].startswith("no: own activation <= 0") and cells["status"].startswith(
        "no_response"
    )
    assert cells["rs_ties"] == "0.5000"
    close_detail(browser)


def test_scatter_point_opens_its_unit(real, real_page, browser):
    sel = stored_selectivity(real)
    open_page(browser, real_page)
    focus_and_press(browser, "f-layer", "ArrowDown", "ArrowDown")  # fc5
    focus_and_press(browser, "f-method", "ArrowDown", "ArrowDown")  # IAM
    rows = browser.evaluate("window.repsubExplorer.filtered()")
    described = [describe(browser, r) for r in rows]
    assert {(d["layer"], d["method"]) for d in described} == {("fc5", "iam")} and len(rows) == 128
    # The point farthest from every other point (several units can share a point: selectivity 1, RS 0).
    drawn = [i for i, d in enumerate(described) if d["selectivity"] is not None and d["rs"] is not None]

    def isolation(i):
        a = described[i]
        return min(math.dist((a["selectivity"], a["rs"]), (b["selectivity"], b["rs"]))
                   for j, b in ((j, described[j]) for j in drawn) if j != i)  # fmt: skip

    chosen = max(drawn, key=isolation)
    assert isolation(chosen) > 0.02  # a few pixels at the least
    browser.evaluate("document.getElementById('scatter').scrollIntoView({block: 'center'})")
    x, y = browser.evaluate(f"window.repsubExplorer.scatterPoint({rows[chosen]})")
    browser.click(x, y)
    browser.wait_for("document.getElementById('unit-detail').open")
    unit = described[chosen]["unit"]
    assert browser.evaluate("document.getElementById('detail-title').textContent") == f"fc5 unit {unit}"
    shown = browser.evaluate("""Object.fromEntries(Array.from(document.querySelectorAll("#detail-selectivity tr"))
        .map((tr) => [tr.cells[0].textContent, tr.cells[1].textContent]))""")
    assert shown["selectivity"] == f"{sel[('fc5', unit)]['selectivity']:.3f}"
    assert browser.evaluate("location.hash") == f"#unit=fc5/{unit}/iam"
    close_detail(browser)


def test_address_opens_a_unit(real, real_page, browser):
    units = stored_units(real)
    open_page(browser, real_page, "#unit=fc5/7/am")
    assert browser.evaluate("document.getElementById('unit-detail').open") is True
    rs = browser.evaluate("""Array.from(document.querySelectorAll("#detail-images figure"))
        .map((f) => [f.dataset.method, f.querySelector("td").textContent])""")
    assert dict(rs) == {m: f"{units[('fc5', m, 7)]['rs']:.4f}" for m in ("am", "iam")}


def test_thumbnail_side_keeps_the_page_within_budget():
    vgg16_rows = 13_416 * 2
    side = thumbnail_side(vgg16_rows, 224)
    assert side == 48 and vgg16_rows * side**2 * WEBP_BYTES_PER_PIXEL * 4 / 3 <= THUMBNAIL_BUDGET
    assert thumbnail_side(vgg16_rows, 224, strips=True) == 40  # room for the exemplar and band strips
    assert thumbnail_side(1044, 32) == 32  # the demo's images are kept whole
    assert thumbnail_side(500, 224) == 128
    sides = [thumbnail_side(n, 224) for n in (100, 2_000, 10_000, 40_000, 10**6)]
    assert sides == sorted(sides, reverse=True) and sides[-1] >= 24


def test_stats_parquet_and_page_agree(real_page):
    """The page's table and stats.parquet come from the same rows."""
    stats = pq.read_table(real_page.parent / "stats.parquet").to_pylist()
    page = real_page.read_text(encoding="utf-8")
    for row in stats:
        assert f'data-layer="{row["layer"]}" data-method="{row["method"]}"' in page


def test_statistics_row_links_to_its_units(real_page, browser):
    open_page(browser, real_page)
    browser.click_element('#layer-stats tr[data-layer="fc5"][data-method="iam"] a')
    browser.wait_for("document.getElementById('match-count').textContent.startsWith('128 of')")
    shown = {(d["layer"], d["method"]) for d in (describe(browser, c["row"]) for c in cards(browser))}
    assert shown == {("fc5", "iam")} and browser.evaluate("location.hash") == "#explorer"


# ---------------------------------------------------------------- importance by ablation (issue 14)


@pytest.fixture(scope="module")
def importance_page(tmp_path_factory):
    from tests.importance_helpers import importance_run

    root = tmp_path_factory.mktemp("importance_page")
    return build_report(importance_run(root / "run"), root / "out", resamples=20)[0], root / "run"


def test_sorting_and_filtering_by_importance(importance_page, browser):
    from tests.importance_helpers import stored_importance

    page, run_dir = importance_page
    imp = stored_importance(run_dir)
    units = stored_units(run_dir)
    open_page(browser, page)
    # Sort by importance (the zero ablation: the first in the list), descending, by keyboard.
    sorts = browser.evaluate("Array.from(document.querySelectorAll('#f-sort option')).map((o) => o.value)")
    focus_and_press(browser, "f-sort", *["ArrowDown"] * sorts.index("importance"))
    focus_and_press(browser, "f-order", "ArrowDown")
    rows = [describe(browser, r) for r in browser.evaluate("window.repsubExplorer.filtered()")]
    assert len(rows) == len(units)
    expected = [imp.get((d["layer"], "zero", d["unit"]), {}).get("accuracy_drop") for d in rows]
    shown = [d["importance"] for d in rows]
    for got, want in zip(shown, expected, strict=True):  # the stored value, rounded to 4 digits
        assert (got is None and (want is None or math.isnan(want))) or got == pytest.approx(want, rel=1e-3)
    known = [v for v in shown if v is not None]
    assert known == sorted(known, reverse=True) and shown[: len(known)] == known  # missing last
    assert len(known) < len(shown)  # units without a zero ablation (or a NaN drop) exist
    first = cards(browser)[0]
    assert f"importance {shown[0]:#.4g}," in first["label"]  # JavaScript's toPrecision(4)
    # The mean ablation: conv units 0-39 only have one; the sort follows it.
    focus_and_press(browser, "f-ablation", "ArrowDown")
    rows = [describe(browser, r) for r in browser.evaluate("window.repsubExplorer.filtered()")]
    known = [d["importance"] for d in rows if d["importance"] is not None]
    assert len(known) == sum(1 for k in units if k[0] == "conv" and k[2] < 40)
    assert known == sorted(known, reverse=True)
    # A minimum accuracy drop, typed as a user does.
    browser.click_element("#f-imp-min")
    browser.type_text("0.2")
    want = [k for k in units if (imp.get((k[0], "mean", k[2])) or {}).get("accuracy_drop", -1) >= 0.2 - 1e-9]
    browser.wait_for(f"document.getElementById('match-count').textContent.startsWith('{len(want)} of')")
    got = {(d["layer"], d["method"], d["unit"]) for d in map(lambda r: describe(browser, r),
                                                               browser.evaluate("window.repsubExplorer.filtered()"))}  # fmt: skip
    assert got == set(want) and len(want) > 0
    browser.click_element("#f-reset")


def test_unit_detail_shows_importance(importance_page, browser):
    from tests.importance_helpers import stored_importance

    page, run_dir = importance_page
    imp = stored_importance(run_dir)
    open_page(browser, page, "#unit=conv/9/iam")
    cells = browser.evaluate("""Object.fromEntries(Array.from(document.querySelectorAll("#detail-importance tr"))
        .map((tr) => [tr.cells[0].textContent, tr.cells[1].textContent]))""")
    for ablation in ("zero", "mean"):
        row = imp[("conv", ablation, 9)]
        assert float(cells[f"{ablation}: accuracy drop"]) == pytest.approx(row["accuracy_drop"], rel=1e-3)
        assert float(cells[f"{ablation}: loss increase"]) == pytest.approx(row["loss_increase"], rel=1e-3)
        assert cells[f"{ablation}: baseline accuracy, images"] == "0.7500, 40"
        drops = row["class_accuracy_drop"]
        top = sorted((c for c in range(len(drops)) if not math.isnan(drops[c])), key=lambda c: -drops[c])
        assert cells[f"{ablation}: largest class drops"].split("; ")[0].startswith(f"class {top[0]} ")
        assert len(cells[f"{ablation}: largest class drops"].split("; ")) == 3  # class 3 had no images
    close_detail(browser)


def test_importance_table_on_the_page(importance_page, browser):
    page, _ = importance_page
    stats = pq.read_table(page.parent / "importance_stats.parquet").to_pylist()
    open_page(browser, page)
    shown = browser.evaluate("""Array.from(document.querySelectorAll("#importance-stats tbody tr")).map((tr) =>
        [tr.dataset.layer, tr.dataset.ablation, tr.dataset.measure, Array.from(tr.cells).map((c) => c.textContent)])""")
    assert len(shown) == len({(r["layer"], r["ablation"], r["measure"]) for r in stats})
    for layer, ablation, measure, cells in shown:
        mine = {
            r["against"]: r
            for r in stats
            if (r["layer"], r["ablation"], r["measure"]) == (layer, ablation, measure)
        }
        for i, against in enumerate(("rs_am", "rs_iam", "selectivity")):
            rho, n = cells[6 + 3 * i], cells[8 + 3 * i]
            row = mine[against]
            assert rho == ("nan" if math.isnan(row["spearman_rho"]) else f"{row['spearman_rho']:.3f}")
            assert n.split()[0] == str(row["n_included"])
    images = browser.evaluate("""Array.from(document.querySelectorAll("img.figure")).filter((i) =>
        i.alt.startsWith("Spearman rho of importance")).map((i) => i.naturalWidth)""")
    assert len(images) == 3 and all(w > 100 for w in images)

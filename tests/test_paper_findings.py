"""The paper-findings benchmark at tiny settings on a subset of the real digits (the full run is the benchmark)."""

import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from sklearn.datasets import load_digits

import repsub
from benchmarks.paper_findings import MODELS, Settings, check_findings, check_thesis, run, write_digits


def test_digits_become_a_stratified_image_folder(tmp_path):
    train, val = write_digits(tmp_path / "digits", subset=100)
    counts = {p.name: len(list(p.iterdir())) for p in sorted(train.iterdir())}
    assert sorted(counts) == [f"digit_{d}" for d in range(10)] and sum(counts.values()) == 80
    assert sum(len(list(p.iterdir())) for p in val.iterdir()) == 20
    assert max(counts.values()) - min(counts.values()) <= 1  # stratified
    # Every stored image is one of scikit-learn's digits, scaled to 0-255 and resized bilinearly to 32 px.
    stored = np.asarray(Image.open(next((train / "digit_3").iterdir())))
    assert stored.shape == (32, 32, 3) and (stored[..., 0] == stored[..., 2]).all()
    candidates = load_digits()
    expected = [
        np.asarray(Image.fromarray(np.uint8(np.round(d * 255 / 16))).resize((32, 32), Image.BILINEAR))
        for d, t in zip(candidates.images, candidates.target, strict=True)
        if t == 3
    ]
    assert any((e == stored[..., 0]).all() for e in expected)


def test_a_tiny_run_reports_every_layer_and_the_four_findings(tmp_path):
    settings = Settings(
        out=tmp_path / "pf", steps=3, epochs={m: 1 for m in MODELS}, subset=150, units="0-3", resamples=20
    )
    report = run(settings)["hybrid"]
    results = report["results"]
    layers = {(r.model, r.layer) for r in results}
    assert ("shallow_cnn", "conv1") in layers and ("mlp", "fc4") in layers and len(layers) == 6 + 5
    for r in results:
        frame = repsub.open_run(settings.out / f"{r.model}-hybrid").frame(
            layers=[r.layer], methods=[r.method]
        )
        rows = [u for u in frame.to_pylist() if u["dead"] is False]
        assert r.alive == len(rows) and r.failed == sum(u["status"] != "ok" for u in rows)
        assert r.n <= r.alive - r.failed
    assert sorted(f.number for f in report["findings"]) == [1, 1, 2, 3, 4, 5, 5, 5, 5, 6, 6]
    # Importance: every layer of both models, each rho the report's statistic of that run's importance table.
    importance = report["importance"]
    assert {(r.model, r.layer) for r in importance} == layers
    for r in importance:
        table = repsub.open_run(settings.out / f"{r.model}-hybrid").importance.to_table().to_pylist()
        rows = [row for row in table if row["layer"] == r.layer]
        assert sorted(row["unit"] for row in rows) == [0, 1, 2, 3]
        assert r.baseline_accuracy == rows[0]["baseline_accuracy"]
        if r.measure == "accuracy_drop" and r.n == 4 and not math.isnan(r.rho):
            other = "rs_am" if r.against == "rs_am" else None
            if other:
                frame = {
                    u["unit"]: u["rs"]
                    for u in repsub.open_run(settings.out / f"{r.model}-hybrid")
                    .frame(layers=[r.layer], methods=["am"])
                    .to_pylist()
                }
                drops = {row["unit"]: row["accuracy_drop"] for row in rows}
                units = sorted(drops)
                expected = stats.spearmanr([frame[u] for u in units], [drops[u] for u in units]).statistic
                assert r.rho == pytest.approx(expected)
    assert all(f.holds in (True, False, None) and f.evidence for f in report["findings"])
    assert 0 <= report["facts"]["shallow_cnn"]["val_accuracy"] <= 1


def test_findings_as_statements_on_a_hand_made_case():
    from benchmarks.paper_findings import LayerResult

    def row(model, layer, depth, method, sel, rs, rho, read="relu"):
        return LayerResult(model, layer, depth, read, method, 10, 0, sel, rs, rho, (rho - 0.1, rho + 0.1), 10)

    results = [
        row("shallow_cnn", "conv1", 0, "am", 0.2, 0.5, 0.6), row("shallow_cnn", "conv2", 1, "am", 0.25, 0.4, 0.3),
        row("shallow_cnn", "conv1", 0, "iam", 0.2, 0.3, 0.5), row("shallow_cnn", "conv2", 1, "iam", 0.25, 0.2, 0.6),
        row("shallow_cnn", "fc5", 2, "am", 0.7, 0.05, 0.1), row("shallow_cnn", "fc5", 2, "iam", 0.7, 0.01, 0.1),
        row("mlp", "fc1", 0, "am", 0.3, 0.05, 0.1), row("mlp", "fc2", 1, "am", 0.3, 0.1, 0.1),
        row("mlp", "fc1", 0, "iam", 0.3, 0.02, 0.1), row("mlp", "fc2", 1, "iam", 0.3, 0.3, 0.1),
    ]  # fmt: skip
    found = {
        (f.number, f.statement[:3]): f.holds
        for f in check_findings(results, {"conv1": (5, 1), "conv2": (2, 2)})
    }
    assert found[(1, "AM:")] is False  # only two conv layers: no rank trend computable (NaN is not < 0)
    assert found[(2, "fc5")] is True
    assert found[(3, "MLP")] is False  # IAM spreads 0.28
    assert found[(4, "IAM")] is False  # conv2 is 2:2
    tied = check_findings(results, {"conv1": (5, 1), "fc6": (0, 0)})  # 0:0: every pair tied, no verdict
    assert [f.holds for f in tied if f.number == 4] == [True]


def test_the_thesis_as_statements_on_a_hand_made_case():
    from benchmarks.paper_findings import ImportanceResult

    def row(layer, against, rho, low, high, read="relu"):
        return ImportanceResult(
            "mlp", layer, 0, read, "accuracy_drop", against, 0.9, 0.01, rho, (low, high), 10
        )

    rows = [
        row("fc1", "rs_am", -0.4, -0.7, -0.1), row("fc2", "rs_am", -0.1, -0.5, 0.3),
        row("fc1", "rs_iam", -0.4, -0.7, -0.1), row("fc2", "rs_iam", 0.2, -0.2, 0.5),
        row("fc1", "selectivity", 0.1, -0.2, 0.4), row("fc2", "selectivity", 0.5, 0.2, 0.8),
        row("fc3", "rs_am", 0.9, 0.8, 1.0, read="logits"),  # the logits are not a hidden layer
    ]  # fmt: skip
    am, iam, selective, *loss = check_thesis(rows)
    assert (am.number, am.holds) == (5, True) and "CI below 0 in 1 of 2" in am.statement
    assert (iam.number, iam.holds) == (5, False)
    assert (selective.number, selective.holds) == (6, False) and "fc2 +0.50" in selective.evidence
    assert [f.holds for f in loss] == [None, None, None]  # no loss_increase rows given
    assert check_thesis([]) and all(f.holds is None for f in check_thesis([]))

"""Gates, report files and plots on handmade result rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

from distill.eval.gates import check_gates
from distill.eval.plots import plot_budget, plot_tradeoff
from distill.eval.report import RESULT_KEYS, comparison, markdown, result_row, write_reports


def _rows():
    common = dict(benchmark="demo", samples_per_problem=1, n_problems=10)
    return [
        result_row(label="student", model="hf:s", backend="hf", pass_at_1=0.8, size_bytes=4e8,
                   decode_tokens_per_s=12.0, mean_kld=None, **common),
        result_row(label="q4", model="gguf:q4.gguf", backend="gguf", pass_at_1=0.7, size_bytes=1e8,
                   decode_tokens_per_s=40.0, mean_kld=0.08, top1_agreement=0.9, perplexity=3.2, **common),
    ]


def _gates(**kw):
    return SimpleNamespace(**{**dict(min_accuracy=None, baseline=None, max_drop=None, max_kld=None), **kw})


def test_no_gate_no_failure():
    gates = check_gates(_rows(), _gates())
    assert gates == {"checked": [], "verdicts": [], "failed": [], "warnings": []}


def test_min_accuracy_names_the_row_and_the_figure():
    gates = check_gates(_rows(), _gates(min_accuracy=0.75))
    assert gates["checked"] == ["min_accuracy 0.75"]
    assert gates["failed"] == ["row 'q4': pass_at_1 0.7000 is below --min-accuracy 0.75"]
    assert [(v["label"], v["gate"], v["status"]) for v in gates["verdicts"]] == [
        ("student", "min_accuracy", "passed"), ("q4", "min_accuracy", "failed")]


def test_max_kld_only_judges_measured_rows():
    gates = check_gates(_rows(), _gates(max_kld=0.05))
    assert gates["failed"] == ["row 'q4': mean_kld 0.08 is above --max-kld 0.05"]
    assert [v["status"] for v in gates["verdicts"]] == ["skipped", "failed"]
    assert "mean_kld not measured (hf backend)" in gates["verdicts"][0]["message"]
    assert check_gates(_rows(), _gates(max_kld=0.1))["failed"] == []


def test_report_files_have_every_key_and_the_table(tmp_path):
    report = {"benchmark": {"name": "demo", "source": "demo:test", "n_problems": 10},
              "settings": {"samples": 1, "temperature": 0.0, "top_p": 1.0, "prompt_template": "r1",
                           "speed_tokens": 64},
              "reference": None, "memory_method": "m", "results": _rows(),
              "gates": {"checked": ["min_accuracy 0.75"], "failed": ["row 'q4': pass_at_1 ..."]},
              "plots": ["accuracy_size_speed.png"]}
    json_path, md_path = write_reports(tmp_path, report)
    rows = json.loads(json_path.read_text())["results"]
    assert all(list(r) == list(RESULT_KEYS) for r in rows)
    text = md_path.read_text()
    assert "| label | backend | pass@1 |" in text and "| q4 | gguf | 70.0% |" in text
    assert "**failed**" in text and "- failed: row 'q4'" in text and "![accuracy_size_speed.png]" in text
    assert "maj@k" not in markdown(report)  # no column for figures nobody measured


def test_rows_are_compared_with_the_first(tmp_path):
    rows = _rows() + [result_row(label="forced", pass_at_1=0.1, think_budget=64)]
    (q4,) = comparison(rows)  # budget-forced rows are not compared
    assert q4 == {"label": "q4", "against": "student", "pass_at_1_ratio": 0.875, "pass_at_1_points": -10.0,
                  "size_ratio": 0.25, "decode_speed_ratio": 3.333}
    missing = comparison([rows[0], dict(rows[1], decode_tokens_per_s=None)])
    assert missing[0]["decode_speed_ratio"] is None and missing[0]["size_ratio"] == 0.25
    assert comparison(rows[:1]) == []
    report = {"benchmark": {"name": "demo", "source": "demo:test", "n_problems": 10},
              "settings": {"samples": 1, "temperature": 0.0, "top_p": 1.0, "prompt_template": "r1",
                           "speed_tokens": 64},
              "reference": None, "memory_method": "m", "results": _rows(), "comparison": comparison(_rows()),
              "gates": {}, "plots": []}
    assert ("- q4 against student: pass@1 0.88x (-10.0 points), size 0.25x, decode speed 3.33x"
            in markdown(report))


def test_plots_are_real_pngs(tmp_path):
    import matplotlib.image as mpimg

    path = plot_tradeoff(_rows(), tmp_path / "tradeoff.png")
    assert mpimg.imread(path).shape[0] > 200
    assert plot_tradeoff([dict(r, size_bytes=None) for r in _rows()], tmp_path / "none.png") is None
    sweep = [dict(r, think_budget=b, pass_at_1=p) for r in _rows() for b, p in ((64, 0.2), (256, 0.5), (1024, 0.7))]
    path = plot_budget(sweep, tmp_path / "budget.png")
    assert mpimg.imread(path).shape[1] > 300
    assert plot_budget(_rows(), tmp_path / "flat.png") is None


def test_labels_of_nearby_points_do_not_overlap():
    """The demo's q4_k_m, q8_0 and onnx-int4 points sit within a few MB and points of each other;
    their labels are placed apart, and off every marker."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distill.eval.plots import place_labels

    points = {"teacher": (20.8, 98.0), "student-sft": (10.05, 56.0), "student": (10.07, 56.5),
              "student-gguf-f16": (5.0, 56.5), "student-gguf-q8_0": (2.68, 56.5),
              "student-gguf-q4_k_m": (1.55, 56.5), "student-onnx-int4": (2.16, 56.5)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = ax.scatter([x for x, _ in points.values()], [y for _, y in points.values()], s=460, zorder=3)
    ax.set_xscale("log")
    ax.set_xlim(1, 33)
    ax.set_ylim(44, 102)
    texts = [ax.text(x, y, label, fontsize=8, ha="center", va="center") for label, (x, y) in points.items()]
    place_labels(fig, ax, texts, markers)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    centres = ax.transData.transform(list(points.values()))
    for box in boxes:
        assert not any(box.contains(x, y) for x, y in centres)
    plt.close(fig)

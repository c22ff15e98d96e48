"""benchmarks/ablations.py: statistics, verdicts and tables against hand computations, the
stride-32 configuration, and a smoke run of each block (2 iterations, 8 images, 1 seed)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _ablation_stats as stats  # noqa: E402
from _ablation_report import collect, compare, render_directions, render_table, summary_json  # noqa: E402
from _ablation_runner import Schedule, build_config, run_name  # noqa: E402
from _ablation_specs import DEFAULT_ITERATIONS, FAMILIES, Row, Table, tables, trainings, trainings_for  # noqa: E402


# ----------------------------------------------------------------------------- references
def _mean_std_reference(values: list[float]) -> tuple[float, float]:
    """Explicit loops in float64: mean and sample std (divide by n - 1)."""
    total = 0.0
    for v in values:
        total += v
    mean = total / len(values)
    squares = 0.0
    for v in values:
        squares += (v - mean) * (v - mean)
    return mean, math.sqrt(squares / (len(values) - 1))


# ----------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("values", [[30.0, 32.0, 34.0], [27.25, 27.5, 29.0, 31.125], [0.0, 1e-3]])
def test_summarize_matches_reference(values):
    s = stats.summarize(values)
    mean, std = _mean_std_reference(values)
    assert s.n == len(values)
    assert s.mean == pytest.approx(mean, abs=1e-12)
    assert s.std == pytest.approx(std, abs=1e-12)


def test_summarize_one_value_has_no_spread_and_nan_is_dropped():
    s = stats.summarize([12.5, float("nan")])
    assert (s.mean, s.n) == (12.5, 1) and math.isnan(s.std)
    assert stats.summarize([]).n == 0 and math.isnan(stats.summarize([]).mean)


def test_pooled_and_paired_spread_by_hand():
    a, b = stats.Summary(30.0, 1.0, 3), stats.Summary(28.0, 3.0, 3)
    assert stats.pooled_spread(a, b) == pytest.approx(math.sqrt((1.0 + 9.0) / 2.0))
    # per-seed differences 1, 2, 1: mean 4/3, sample std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3)
    assert stats.paired_spread([10.0, 12.0, 14.0], [9.0, 10.0, 13.0]) == pytest.approx(math.sqrt(1.0 / 3.0))
    with pytest.raises(ValueError):
        stats.paired_spread([1.0], [1.0, 2.0])


@pytest.mark.parametrize("paper, expected", [(3.4, 1), (-5.5, -1), (0.5, 1), (-0.1, 0), (0.49, 0), (None, None)])
def test_expected_direction(paper, expected):
    assert stats.expected_direction(paper) == expected


@pytest.mark.parametrize("delta, spread, paper, expected", [
    (2.0, 1.0, 3.4, "held"),                 # same sign, beyond the spread
    (-2.0, 1.0, 3.4, "reversed"),            # opposite sign, beyond the spread
    (0.8, 1.0, 3.4, "no difference"),        # within the spread
    (-1.0, 1.0, -5.5, "no difference"),      # exactly the spread is not beyond it
    (-1.01, 1.0, -5.5, "held"),
    (0.3, 0.5, -0.1, "held (no difference)"),  # the paper reports no real difference, nor do we
    (1.2, 0.5, -0.1, "differs"),
    (0.04, 0.0, 1.1, "no difference"),       # paired runs that agree on a change below the resolution
    (0.15, 0.0, 1.1, "held"),
    (1.2, float("nan"), 1.4, "n/a (1 seed)"),
    (1.2, 0.5, None, "no paper figure"),
])
def test_verdict(delta, spread, paper, expected):
    assert stats.verdict(delta, spread, paper) == expected


def test_formatting():
    assert stats.format_summary(stats.Summary(30.25, 1.234, 3)) == "30.2 ± 1.2 (3)"
    assert stats.format_summary(stats.Summary(30.25, float("nan"), 1), with_n=False) == "30.2"
    assert stats.format_summary(stats.Summary(float("nan"), float("nan"), 0)) == "-"
    assert stats.format_delta(1.44) == "+1.4" and stats.format_delta(-0.06, 0.51) == "-0.1 (± 0.5)"
    assert stats.format_delta(float("nan")) == "-"
    table = stats.markdown_table(["a", "b"], [["1", "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


# ----------------------------------------------------------------------------- tables
def _result(training: str, seed: int, **evaluations: tuple[float, float, float]) -> dict:
    """A result.json dict with mask AP, AP50, AP75 given in percent."""
    return {"training": training, "seed": seed, "evaluations": {
        name: {"segm": {"AP": ap / 100, "AP50": ap50 / 100, "AP75": ap75 / 100}, "bbox": {},
               "ms_per_image": 10.0 + seed, "suppress_ms_per_image": None}
        for name, (ap, ap50, ap75) in evaluations.items()}}


TOY = Table("toy", "Toy table", "a note", (
    Row("base", "base", paper=(30.0, 50.0, 31.0), versus=None),
    Row("trained variant", "other", paper=(26.0, 48.0, 26.0)),
    Row("inference variant", "base", "alt", paper_delta=1.0, paper_note="+1.0 AP"),
), timed=True)

TOY_RESULTS = [
    _result("base", 0, default=(30.0, 50.0, 31.0), alt=(31.0, 50.0, 32.0)),
    _result("base", 1, default=(32.0, 52.0, 33.0), alt=(33.5, 52.0, 34.0)),
    _result("base", 2, default=(34.0, 54.0, 35.0), alt=(35.0, 54.0, 36.0)),
    _result("other", 0, default=(29.0, 49.0, 28.0)),
    _result("other", 1, default=(30.0, 50.0, 29.0)),
    _result("other", 2, default=(34.0, 51.0, 30.0)),
]


def test_compare_pooled_for_separate_trainings():
    runs = collect(TOY_RESULTS)
    c = compare(runs, TOY.rows[1], TOY.rows[0])
    base_mean, base_std = _mean_std_reference([30.0, 32.0, 34.0])
    other_mean, other_std = _mean_std_reference([29.0, 30.0, 34.0])
    assert not c.paired
    assert c.delta_ap == pytest.approx(other_mean - base_mean)
    assert c.spread == pytest.approx(math.sqrt((base_std ** 2 + other_std ** 2) / 2))
    assert c.paper_delta == pytest.approx(-4.0) and c.paper_delta_ap75 == pytest.approx(-5.0)
    assert c.delta_ap75 == pytest.approx(29.0 - 33.0)
    assert c.verdict == "no difference"  # -1.0 against a spread of about 2.3


def test_compare_paired_for_inference_variants():
    runs = collect(TOY_RESULTS)
    c = compare(runs, TOY.rows[2], TOY.rows[0])
    mean, std = _mean_std_reference([1.0, 1.5, 1.0])  # per-seed differences
    assert c.paired
    assert c.delta_ap == pytest.approx(mean) and c.spread == pytest.approx(std)
    assert c.paper_delta == 1.0 and c.verdict == "held"  # +1.17 against a paired spread of 0.29


def test_render_table_rows_and_cells():
    runs = collect(TOY_RESULTS)
    text = render_table(TOY, runs)
    assert text.startswith("### Toy table\n\na note\n\n")
    lines = [l for l in text.splitlines() if l.startswith("|")]
    assert len(lines) == 2 + 3
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[-3:] == ["ms/img", "NMS ms/img", "paper ms/img"]
    base = [c.strip() for c in lines[2].strip("|").split("|")]
    assert base[:5] == ["base", "32.0 ± 2.0 (3)", "52.0 ± 2.0", "33.0 ± 2.0", "30.0 / 50.0 / 31.0"]
    assert base[5] == "(reference)" and base[-3] == "11.0 ± 1.0"
    variant = [c.strip() for c in lines[4].strip("|").split("|")]
    assert variant[4] == "+1.0 AP" and variant[5].startswith("+1.2 (±0.3 paired)") and variant[8] == "held"
    directions = render_directions([TOY], runs)
    assert "**held**" in directions and "**no difference**" in directions
    data = summary_json([TOY], runs)[0]["rows"]
    assert data[2]["verdict"] == "held" and data[0]["AP"]["n"] == 3


def test_maskiou_column_reads_the_default_evaluation():
    """The MaskIoU correlation is measured once per model (its "default" evaluation); every row of
    that model shows it."""
    table = Table("toy", "Scoring", "a note", (
        Row("class score", "base", "alt", versus=None),
        Row("scored", "base"),
    ), maskiou=True)
    results = [dict(r, evaluations={k: dict(v, maskiou_pearson=0.5 + 0.1 * r["seed"]) if k == "default" else v
                                    for k, v in r["evaluations"].items()})
               for r in TOY_RESULTS if r["training"] == "base"]
    text = render_table(table, collect(results))
    header, _, first, second = [l for l in text.splitlines() if l.startswith("|")]
    assert header.endswith("| MaskIoU Pearson r |")
    assert first.endswith("| 0.60 ± 0.10 |") and second.endswith("| 0.60 ± 0.10 |")
    assert summary_json([table], collect(results))[0]["rows"][1]["maskiou_pearson"]["n"] == 3


def test_retrain_takes_every_other_run_from_the_previous_json(tmp_path):
    import ablations

    out = tmp_path / "ablations.md"
    runs = [{**r, "iterations": 400} for r in TOY_RESULTS]
    runs = [dict(r, training={"base": "mrcnn", "other": "mrcnn_softmax"}[r["training"]]) for r in runs]
    out.with_suffix(".json").write_text(json.dumps({"runs": runs}))
    args = ablations.parse_args(["--retrain", "mrcnn_softmax", "--out", str(out), "--device", "cpu"])
    previous = ablations.previous_runs(args)
    assert sorted(previous) == [("mrcnn", 0, 400), ("mrcnn", 1, 400), ("mrcnn", 2, 400)]
    assert ablations.previous_runs(ablations.parse_args(["--out", str(out), "--device", "cpu"])) == {}
    with pytest.raises(SystemExit):
        ablations.parse_args(["--retrain", "nope"])
    # --report-only writes the tables from those runs and trains nothing (no dataset generated).
    work = tmp_path / "work"
    assert ablations.main(["--retrain", "mrcnn_softmax", "--report-only", "--blocks", "maskrcnn", "--out", str(out),
                           "--work", str(work), "--device", "cpu"]) == 0
    assert not work.exists()
    text = out.read_text()
    assert "| per-class sigmoid (ours: default) | 32.0 ± 2.0 (3) |" in text
    assert "| multinomial softmax | - |" in text


def test_single_seed_gives_no_verdict():
    runs = collect([r for r in TOY_RESULTS if r["seed"] == 0])
    assert compare(runs, TOY.rows[1], TOY.rows[0]).verdict == "n/a (1 seed)"
    assert compare(runs, TOY.rows[2], TOY.rows[0]).verdict == "n/a (1 seed)"


# ----------------------------------------------------------------------------- specs and configs
def test_every_row_names_a_known_training_and_evaluation():
    family = FAMILIES["tiny"]
    known = trainings(family)
    for table in tables():
        for row in table.rows:
            assert row.evaluation in {e.name for e in known[row.training].evaluations}, row.label
            assert row.versus is None or table.rows[row.versus].versus is None
    assert [t.name for t in trainings_for(tables(("msrcnn",)), family)] == ["mrcnn", "msrcnn"]
    assert [t.name for t in trainings_for(tables(("msrcnn_demo",)), family)] == ["mrcnn_demo", "msrcnn_demo"]
    assert len(trainings_for(tables(), family)) == 16


def test_configs_carry_the_ablation_switches():
    family = FAMILIES["tiny"]
    known = trainings(family)
    schedule = Schedule(iterations=50, overrides=("train.num_workers=0",))
    config = build_config(known["mrcnn_s32_roipool"], family, num_classes=6, schedule=schedule, seed=2)
    assert config.model.backbone.out_features == ("res5",) and config.model.box_head.pooler_type == "pool"
    assert config.train.max_iter == 50 and config.train.warmup_iters == 10 and config.train.seed == 2
    assert config.train.ims_per_batch == 4 and config.train.num_workers == 0 and config.model.num_classes == 6
    assert build_config(known["mrcnn_softmax"], family, 6, schedule, 0).model.mask_head.loss == "softmax"
    assert build_config(known["mrcnn_agnostic"], family, 6, schedule, 0).model.mask_head.class_agnostic
    assert build_config(known["mrcnn_mlp"], family, 6, schedule, 0).model.mask_head.head == "mlp"
    assert build_config(known["yolact_k64"], family, 6, schedule, 0).model.head.num_prototypes == 64
    nodcn = build_config(known["yolactpp_nodcn"], family, 6, schedule, 0).model
    assert not any(nodcn.backbone.deform_stages) and nodcn.rescoring is not None
    assert any(build_config(known["yolactpp"], family, 6, schedule, 0).model.backbone.deform_stages)


def test_stride32_model_pools_every_roi_at_stride_32():
    from instaseg.detectors.build import build_from_config

    family = FAMILIES["tiny"]
    config = build_config(trainings(family)["mrcnn_s32"], family, 6, Schedule(iterations=10), 0)
    model = build_from_config(config)
    assert model.roi_scales == [1.0 / 32]
    assert model.rpn_features == ["p5", "p6"]


def test_r50_family_for_a_gpu_and_a_real_dataset():
    family = FAMILIES["r50"]
    config = build_config(trainings(family)["mrcnn_s32"], family, 80, Schedule(iterations=1000), 1)
    assert config.name == "mask_rcnn_r50_fpn" and config.model.num_classes == 80
    assert config.model.rpn.anchor_sizes == ((32, 64, 128), (128, 256, 512))
    assert config.train.schedule == "cosine" and config.train.steps == () and config.train.ims_per_batch == 16
    assert build_config(trainings(family)["yolactpp"], family, 80, Schedule(iterations=10), 0).name == \
        "yolact_pp_r50_550"


def test_arguments_and_work_folders():
    import ablations

    for bad in (["--blocks", "maskrcnn,nope"], ["--train-json", "a.json"], ["--seeds", "0"]):
        with pytest.raises(SystemExit):
            ablations.parse_args(bad)
    base = ablations.parse_args(["--device", "cpu"])
    assert base.blocks == ("maskrcnn", "msrcnn", "msrcnn_demo", "yolact") and base.seeds == 3 and not base.coco
    dirs = {ablations.work_dir(ablations.parse_args(a), 500) for a in (
        [], ["--variant", "hard"], ["--set", "train.lr=0.01"], ["--models", "r50"])}
    dirs.add(ablations.work_dir(base, 40))
    assert len(dirs) == 5  # runs of other settings never share a folder (resuming would mix them)
    assert ablations.work_dir(base, 500) == ablations.work_dir(ablations.parse_args(["--seeds", "5"]), 500)
    # Each model kind has its dataset size unless --images sets one for all.
    family, known = FAMILIES["tiny"], trainings(FAMILIES["tiny"])
    assert ablations.images_for(base, family, known["mrcnn"]) == 500
    assert ablations.images_for(base, family, known["yolactpp"]) == 1500
    assert ablations.images_for(ablations.parse_args(["--images", "40"]), family, known["yolactpp"]) == 40
    assert ablations.images_for(base, family, known["msrcnn_demo"]) == 600  # the demo's dataset
    # Other iterations share the dataset folder but never a run folder.
    yolact = trainings(FAMILIES["tiny"])["yolact_k8"]
    assert run_name(yolact, 800, 1) == "yolact_k8-800it-s1" != run_name(yolact, 7, 1)


def test_iterations_per_model_kind_unless_given():
    family = FAMILIES["tiny"]
    known = trainings(family)
    default, fixed = Schedule(), Schedule(iterations=50)
    assert build_config(known["mrcnn"], family, 6, default, 0).train.max_iter == 400
    assert build_config(known["msrcnn"], family, 6, default, 0).train.max_iter == 400
    assert build_config(known["yolact_k8"], family, 6, default, 0).train.max_iter == 800
    assert build_config(known["yolactpp"], family, 6, default, 0).train.max_iter == 800
    assert build_config(known["msrcnn_demo"], family, 6, default, 0).train.max_iter == 1600  # the demo's recipe
    assert build_config(known["mrcnn_demo"], family, 6, default, 0).model.maskiou is None
    assert {build_config(t, family, 6, fixed, 0).train.max_iter for t in known.values()} == {50}
    assert FAMILIES["r50"].iterations_for("yolact") == DEFAULT_ITERATIONS


def test_dry_run_counts_the_runs(capsys):
    import ablations

    assert ablations.main(["--dry-run", "--device", "cpu", "--seeds", "3"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("16 trainings x 3 seeds = 48 training runs")
    assert ablations.main(["--dry-run", "--device", "cpu", "--blocks", "msrcnn", "--seeds", "4"]) == 0
    assert capsys.readouterr().out.startswith("2 trainings x 4 seeds = 8 training runs")


# ----------------------------------------------------------------------------- smoke runs
@pytest.fixture(scope="module")
def smoke_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablations")
    return root / "work", root / "out" / "ablations.md"


@pytest.mark.slow
@pytest.mark.parametrize("block", ["maskrcnn", "msrcnn", "msrcnn_demo", "yolact"])
def test_smoke_run_of_each_block(block, smoke_dirs, capsys):
    import ablations

    work, out = smoke_dirs
    # An untrained model fills every detection slot: 10 keep the evaluation of each variant quick.
    args = ["--iterations", "2", "--images", "8", "--seeds", "1", "--blocks", block, "--work", str(work),
            "--out", str(out), "--device", "cpu", "--set", "model.inference.detections_per_image=10"]
    assert ablations.main(args) == 0
    text = out.read_text()
    expected = [t.title for t in tables((block,))]
    assert all(f"### {title}" in text for title in expected) and "## Directions" in text
    assert text in capsys.readouterr().out
    data = json.loads(out.with_suffix(".json").read_text())
    names = {r["training"] for r in data["runs"]}
    assert names == {t.name for t in trainings_for(tables((block,)), FAMILIES["tiny"])}
    for run in data["runs"]:
        for evaluation in run["evaluations"].values():
            assert set(evaluation["segm"]) >= {"AP", "AP50", "AP75"}
        assert not any(work.glob(f"*/{run['training']}-2it-s0/checkpoints/*.pt"))  # deleted once evaluated
        assert any(work.glob(f"*/{run['training']}-2it-s0/result.json"))
        assert ("maskiou_pearson" in run["evaluations"]["default"]) == run["training"].startswith("msrcnn")
    # Resumable: a second call finds every result.json and trains nothing.
    stamps = {p: p.stat().st_mtime_ns for p in work.glob("*/*/result.json")}
    assert ablations.main(args) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in work.glob("*/*/result.json")}


@pytest.mark.slow
def test_run_on_a_coco_dataset_given_by_path(tmp_path, capsys):
    """The table on the user's own COCO-format data (here a small synthetic set written to disk)."""
    import ablations
    from instaseg.data.synthetic import generate_synthetic_dataset

    data = generate_synthetic_dataset(tmp_path / "mine", num_images=8, seed=3, val_fraction=0.25)
    out = tmp_path / "out" / "table.md"
    args = ["--train-json", str(data.train_annotations), "--train-images", str(data.train_images),
            "--val-json", str(data.val_annotations), "--val-images", str(data.val_images), "--blocks", "msrcnn",
            "--iterations", "2", "--seeds", "1", "--work", str(tmp_path / "work"), "--out", str(out),
            "--device", "cpu", "--set", "model.inference.detections_per_image=10"]
    assert ablations.main(args) == 0
    text = out.read_text()
    assert f"COCO-format dataset {data.train_annotations}" in text and "synthetic dataset" not in text
    work = [p.name for p in (tmp_path / "work").iterdir()]
    assert len(work) == 1 and work[0].startswith("coco-")  # no synthetic data generated
    assert not (tmp_path / "work" / work[0] / "data").exists()
    runs = {r["training"] for r in json.loads(out.with_suffix(".json").read_text())["runs"]}
    assert runs == {"mrcnn", "msrcnn"}
    capsys.readouterr()

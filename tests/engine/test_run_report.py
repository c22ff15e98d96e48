"""The run folder's data files and pictures: results.csv from metrics.jsonl, the stored training
batches and validation samples, and drawing that survives a broken file."""

import json
import logging
import math

import numpy as np
import pytest
import torch

from instaseg.engine.run_data import (ValSample, load_train_batch, load_val_samples, read_results_csv, results_table,
                                      save_train_batch, save_val_samples, train_pictures, write_results_csv)
from instaseg.engine.run_report import render_run_folder
from instaseg.structures.masks import bitmap_to_rle
from instaseg.structures.instances import Targets

from tests.engine.test_train import ToyDataset, run_training, tiny_config

RECORDS = [
    {"iteration": 5, "lr": 0.01, "losses": {"loss_cls": 1.5, "loss_mask": 0.7}, "total_loss": 2.2, "time": 0.1,
     "data_time": 0.01, "skipped_steps": 0},
    {"iteration": 10, "lr": 0.005, "losses": {"loss_cls": 1.25, "loss_mask": None}, "total_loss": 1.9, "time": 0.1,
     "data_time": 0.02, "skipped_steps": 1},
    {"iteration": 10, "eval": {"bbox": {"AP": 0.25, "AP50": 0.5}, "segm": {"AP": 0.125, "APl": None}}},
    {"iteration": 12, "eval": {"bbox": {"AP": 0.375, "AP50": 0.625}, "segm": {"AP": 0.25, "APl": None}}},
]


def test_results_table_one_row_per_iteration_stable_columns():
    table = results_table(RECORDS)
    assert list(table) == ["iteration", "lr", "total_loss", "loss_cls", "loss_mask", "time", "data_time",
                           "skipped_steps", "bbox_AP", "bbox_AP50", "segm_AP", "segm_APl"]
    assert table["iteration"] == [5.0, 10.0, 12.0]
    assert table["loss_cls"][:2] == [1.5, 1.25] and math.isnan(table["loss_cls"][2])  # 12: an evaluation only
    assert math.isnan(table["loss_mask"][1])  # null in the log (a skipped term) stays empty
    assert table["bbox_AP"][1:] == [0.25, 0.375] and math.isnan(table["bbox_AP"][0])


def test_results_csv_holds_the_log_exactly(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    records = [{**r, "lr": 0.1 + 1e-17 * i} if "lr" in r else r for i, r in enumerate(RECORDS)]
    records[0]["total_loss"] = 1 / 3
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"iteration": 13, "lo')  # a torn last line
    columns = read_results_csv(write_results_csv(jsonl, tmp_path / "results.csv"))
    assert columns["total_loss"][0] == 1 / 3 and columns["lr"][1] == records[1]["lr"]
    assert columns["segm_AP"][2] == 0.25 and columns["iteration"].tolist() == [5, 10, 12]
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header.startswith("iteration,lr,total_loss,loss_cls")


def test_train_batches_round_trip_and_shrink(tmp_path):
    masks = torch.zeros(2, 40, 60, dtype=torch.bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 25:35, 40:55] = True
    targets = Targets(boxes=torch.tensor([[5.0, 5.0, 30.0, 20.0], [40.0, 25.0, 55.0, 35.0]]),
                      labels=torch.tensor([0, 1]), masks=masks)
    batch = type("Batch", (), {"images": [torch.rand(3, 40, 60) * 255], "targets": [targets], "image_ids": [7]})
    pictures = train_pictures(batch, max_side=30)  # shrunk by 2
    assert pictures[0].image.shape == (20, 30, 3) and pictures[0].masks.shape == (2, 20, 30)
    np.testing.assert_allclose(pictures[0].boxes[0], [2.5, 2.5, 15, 10])
    loaded, names = load_train_batch(save_train_batch(pictures * 2, ["a", "b"], tmp_path / "b.npz"))
    assert names == ["a", "b"] and len(loaded) == 2
    for name in ("image", "boxes", "labels", "masks"):
        np.testing.assert_array_equal(getattr(loaded[1], name), getattr(pictures[0], name))
    assert loaded[0].image_id == 7


def test_val_samples_round_trip(tmp_path):
    image = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[2:8, 3:9] = True
    item = {"label": 1, "bbox": [3.0, 2.0, 9.0, 8.0], "segmentation": bitmap_to_rle(mask)}
    sample = ValSample(5, image, [item], [{**item, "score": 0.75}])
    samples, names = load_val_samples(save_val_samples([sample], ["a", "b"], tmp_path))
    assert names == ["a", "b"] and samples[0].image_id == 5
    np.testing.assert_array_equal(samples[0].image, image)
    assert samples[0].predictions[0]["score"] == 0.75 and samples[0].gt[0]["label"] == 1


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train, val = ToyDataset(root / "train", num_images=4), ToyDataset(root / "val", num_images=2, first_seed=50)
    config = tiny_config("train.max_iter=4", "train.eval_period=2", "train.plots=true")
    run_training(config, root / "run", train, val_dataset=val)
    return root / "run"


def test_training_fills_the_run_folder_with_the_batches_it_trained_on(toy_run):
    for name in ("results.csv", "results.png", "pr_curves_box.png", "pr_curves_mask.png", "f1_curves_mask.png",
                 "confusion_matrix.png", "per_class.csv", "labels.png", "train_batch_0.png", "train_batch_2.png"):
        assert (toy_run / name).is_file(), name
    assert len(list((toy_run / "val_predictions").glob("*.png"))) == 2
    batches = [load_train_batch(toy_run / "plot_data" / f"train_batch_{k}.npz") for k in range(3)]
    # the toy stream's micro-batch k (1 image) is sample k: images 100, 101, 102
    assert [[p.image_id for p in pictures] for pictures, _ in batches] == [[100], [101], [102]]
    assert not (toy_run / "plot_data" / "train_batch_3.npz").exists()
    assert batches[0][1] == []  # the toy dataset has no category names: the pictures show label numbers


def test_plots_false_draws_nothing(tmp_path):
    run_training(tiny_config("train.max_iter=1", "train.plots=false"), tmp_path, ToyDataset(tmp_path / "d", 2))
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "plot_data").exists()


def test_a_broken_file_costs_one_picture_with_a_warning(toy_run, tmp_path, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    (run / "plot_data" / "confusion.json").write_text("{not json")
    (run / "confusion_matrix.png").unlink()
    logger = logging.getLogger("instaseg")
    logger.addHandler(caplog.handler)
    try:
        written = render_run_folder(run)
    finally:
        logger.removeHandler(caplog.handler)
    assert not (run / "confusion_matrix.png").exists()
    assert "could not draw confusion_matrix.png" in caplog.text
    assert run / "pr_curves_mask.png" in written and run / "train_batch_1.png" in written

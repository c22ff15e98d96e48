"""Distributed helpers alone, and a real 2-process gloo DDP training run launched with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from instaseg.detectors.build import build_from_config
from instaseg.engine.checkpoint import load_checkpoint
from instaseg.engine.distributed import (all_gather_objects, any_across_ranks, barrier, broadcast_object, get_rank,
                                         get_world_size, init_distributed, is_distributed, is_main_process,
                                         unwrap_model, wrap_model)
from instaseg.structures.instances import Targets

from tests.engine.test_train import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() is False  # no torchrun environment: nothing to join
    assert not is_distributed() and get_rank() == 0 and get_world_size() == 1 and is_main_process()
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, torch.device("cpu")) is model and unwrap_model(model) is model
    assert all_gather_objects({"a": 1}) == [{"a": 1}] and broadcast_object(3) == 3
    assert any_across_ranks(True) and not any_across_ranks(False)
    barrier()


def test_every_trainable_parameter_gets_a_gradient_even_without_objects():
    """Why DDP runs with find_unused_parameters=False: no trainable parameter is ever left without a
    gradient, not even for an image with no objects (no positive RoI for the mask head)."""
    model = build_from_config(tiny_config()).train()
    image = torch.rand(3, 32, 32) * 255
    empty = Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 32, 32, dtype=torch.bool))
    total, _ = model.loss(model([image], [empty]), [empty])
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


_SCRIPT = textwrap.dedent("""
    import json, os, sys, warnings
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from instaseg.engine.distributed import destroy_distributed, exit_worker, init_distributed
    from instaseg.engine.evaluate import evaluate_model
    from instaseg.structures.instances import Instances, Targets
    from tests.engine.test_train import MODEL_FACTORY, ToyDataset, run_training, tiny_config, toy_test_loader

    rank, out = int(os.environ["RANK"]), Path(sys.argv[1])
    assert init_distributed()  # joined here so that the group outlives train_on_dataset
    data = ToyDataset(out / f"data{rank}")
    # sample 3 (read by rank 1 in iteration 1) has no objects at all
    image = data.samples[3][0]
    data.samples[3] = (image, Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                                      torch.zeros(0, *image.shape[1:], dtype=torch.bool)))
    built, calls = [], [0]
    original_build = MODEL_FACTORY["build"]

    def build(config):
        model = original_build(config)
        torch.save(model.state_dict(), out / f"init{rank}.pt")
        original = model.loss

        def loss(raw, targets):
            total, losses = original(raw, targets)
            calls[0] += 1
            if rank == 1 and calls[0] == 3:  # iteration 2: a non-finite loss on ONE rank only
                total = total * float("nan")
            return total, losses

        model.loss = loss
        built.append(model)
        return model

    MODEL_FACTORY["build"] = build
    warnings.simplefilter("ignore")
    config = tiny_config("train.max_iter=4", "train.ims_per_batch=2", "train.checkpoint_period=0")
    summary = run_training(config, out / "run", data)
    torch.save(built[0].state_dict(), out / f"final{rank}.pt")

    class ShardOracle:  # rank 0 predicts its images' ground truth exactly, rank 1 predicts nothing
        def __init__(self):
            self.queue = [data.samples[i][1] for i in range(rank, len(data), 2)]

        def predict(self, images):
            t = self.queue.pop(0)
            if rank == 1:
                return [Instances.empty(tuple(images[0].shape[1:]))]
            return [Instances(t.boxes, torch.ones(len(t)), t.labels, t.masks)]

    metrics = evaluate_model(ShardOracle(), data, progress=False, distributed=True, loader=toy_test_loader(data))
    (out / f"summary{rank}.json").write_text(json.dumps({"status": summary["status"],
                                                         "skipped": summary["skipped_steps"],
                                                         "oracle_segm_ap50": metrics["segm"]["AP50"]}))
    destroy_distributed()
    exit_worker(0)  # as the instaseg command does under torchrun
""")


def _torchrun_two_processes(script_text: str, folder: Path, timeout: float) -> None:
    """``torchrun --standalone --nproc_per_node 2 SCRIPT FOLDER`` (one thread each); fails the test on an error."""
    script = folder / "ddp_script.py"
    script.write_text(script_text)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(folder)]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_process_gloo_ddp_keeps_ranks_identical(tmp_path):
    _torchrun_two_processes(_SCRIPT, tmp_path, timeout=240)
    init = [torch.load(tmp_path / f"init{r}.pt", weights_only=True) for r in range(2)]
    final = [torch.load(tmp_path / f"final{r}.pt", weights_only=True) for r in range(2)]
    trainable = [k for k in final[0] if "neck" in k or "head" in k or "predictor" in k]
    # each rank initialised differently (seed + rank); DDP broadcast rank 0's weights, then kept them in sync
    assert any(not torch.equal(init[0][k], init[1][k]) for k in trainable)
    for key in final[0]:
        assert torch.equal(final[0][key], final[1][key]), key
    assert any(not torch.equal(final[0][k], init[0][k]) for k in trainable)
    # rank 0 wrote the checkpoint; it holds the synchronised weights and both ranks' RNG states
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert payload["iteration"] == 4 and len(payload["rng"]) == 2
    for key in final[0]:
        assert torch.equal(payload["model"][key], final[0][key]), key
    # the non-finite loss seen by rank 1 alone made both ranks skip that step together
    summaries = [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in range(2)]
    assert [(s["status"], s["skipped"]) for s in summaries] == [("finished", 1)] * 2
    # distributed evaluation: rank 1's empty shard was gathered too (rank 0 alone would score 1.0),
    # and every rank got the same metrics back
    ap50 = [s["oracle_segm_ap50"] for s in summaries]
    assert ap50[0] == ap50[1] and 0.2 < ap50[0] < 0.95


_COMPILED_SCRIPT = textwrap.dedent("""
    import functools, json, os, sys, warnings
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import instaseg.engine.train as train_module
    from instaseg.engine.compile import compile_parts
    from instaseg.engine.distributed import destroy_distributed, exit_worker, init_distributed
    from tests.engine.test_compile import Graphs
    from tests.engine.test_train import MODEL_FACTORY, ToyDataset, run_training, tiny_config

    rank, out = int(os.environ["RANK"]), Path(sys.argv[1])
    assert init_distributed()
    graphs = Graphs()  # aot_eager (dynamo + AOTAutograd) behind a graph counter
    train_module.compile_parts = functools.partial(compile_parts, backend=graphs)
    built, original_build = [], MODEL_FACTORY["build"]
    MODEL_FACTORY["build"] = lambda config: built.append(original_build(config)) or built[-1]
    warnings.simplefilter("ignore")
    config = tiny_config("train.max_iter=3", "train.ims_per_batch=2", "train.checkpoint_period=0",
                         "train.compile=true")
    summary = run_training(config, out / "run", ToyDataset(out / f"data{rank}"))
    model = built[0]
    torch.save(model.state_dict(), out / f"final{rank}.pt")
    still_compiled = [name for name in ("backbone", "neck", "rpn_head", "box_head", "mask_head")
                      if getattr(model, name)._compiled_call_impl is not None]
    (out / f"summary{rank}.json").write_text(json.dumps({"status": summary["status"], "graphs": graphs.count,
                                                         "compiled": still_compiled}))
    destroy_distributed()
    exit_worker(0)
""")


def test_two_process_gloo_ddp_trains_with_compiled_parts(tmp_path):
    """train.compile under DDP: the compiled parts sit inside the DDP wrapper, and DDP's gradient hooks
    fire from the compiled backward; both ranks stay identical and nothing falls back to eager."""
    _torchrun_two_processes(_COMPILED_SCRIPT, tmp_path, timeout=300)
    summaries = [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in range(2)]
    for summary in summaries:
        assert summary["status"] == "finished" and summary["graphs"] >= 5
        assert summary["compiled"] == ["backbone", "neck", "rpn_head", "box_head", "mask_head"]
    final = [torch.load(tmp_path / f"final{r}.pt", weights_only=True) for r in range(2)]
    for key in final[0]:
        assert torch.equal(final[0][key], final[1][key]), key
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert payload["iteration"] == 3 and set(payload["model"]) == set(final[0])


def test_exit_worker_flushes_streams_and_logs_and_keeps_the_code(tmp_path):
    code = textwrap.dedent(f"""
        import logging, sys
        from instaseg.engine.distributed import exit_worker
        log = logging.getLogger("probe")
        log.addHandler(logging.FileHandler({str(tmp_path / "probe.log")!r}))
        log.warning("logged")
        sys.stdout.write("out, unflushed")
        sys.stderr.write("err")
        exit_worker(3)
        print("never reached")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 3
    assert result.stdout == "out, unflushed" and result.stderr.endswith("err")
    assert (tmp_path / "probe.log").read_text() == "logged\n"


@pytest.mark.parametrize("world_size", [None, "2"])
def test_the_command_ends_torchrun_workers_through_exit_worker(monkeypatch, world_size):
    import instaseg.engine.distributed as distributed
    from instaseg.cli.main import main

    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(distributed, "exit_worker", fake_exit)
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        assert main(["presets"]) == 0 and exits == []
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
        with pytest.raises(SystemExit):
            main(["eval", "--results", "missing.json", "--json", "missing.json"])
        assert exits == [2]  # the command's own exit code (an error here) goes through


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to the interpreter")
def test_torchrun_is_available():
    assert TORCHRUN.exists()

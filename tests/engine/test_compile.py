"""``train.compile`` and the shared compile helper (instaseg.engine.compile).

The training tests compile through ``aot_eager`` (dynamo + AOTAutograd, the graphs inductor would get,
run by eager kernels), so they exercise the compiled training path without waiting minutes for
inductor's C++ builds on a 2-core CPU; inductor itself is measured in benchmarks/results/compile.md.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

import instaseg.engine.train as train_module
from instaseg.engine import compile as compile_module
from instaseg.engine.checkpoint import load_checkpoint
from instaseg.engine.compile import compile_parts, drop_compiled, eager_parts

from tests.engine.test_train import ToyDataset, run_training, tiny_config, wrap_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)

ITERS = 6
# freeze_at=0: the backbone's batch-norm statistics move, so an undone step that forgot them would show
# (2 images per batch: batch norm needs 2 values per channel at res5's 1x1).
COMPILE_CONFIG = (f"train.max_iter={ITERS}", "train.checkpoint_period=3", "train.ims_per_batch=2",
                  "model.backbone.freeze_at=0")


class Graphs:
    """A dynamo backend that counts the graphs it is given and runs them through ``inner``
    (``aot_eager``; ``eager``, dynamo alone, where AOTAutograd's minutes on a busy 2-core machine buy
    nothing); ``fail_at``: raise instead on that graph (0-based), as a broken compiler would."""

    def __init__(self, fail_at: int | None = None, inner: str = "aot_eager") -> None:
        self.count, self.fail_at, self.inner = 0, fail_at, inner

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.count += 1
        if self.fail_at is not None and self.count - 1 == self.fail_at:
            raise RuntimeError("forced compiler failure")
        return torch._dynamo.lookup_backend(self.inner)(graph, example_inputs)


def use_backend(monkeypatch, backend: object) -> None:
    """Make train.compile compile through ``backend`` instead of inductor."""
    monkeypatch.setattr(train_module, "compile_parts", functools.partial(compile_parts, backend=backend))


def record_losses(monkeypatch) -> list[float]:
    losses: list[float] = []

    def loss(original, call, model, raw, targets):
        total, terms = original(raw, targets)
        losses.append(float(total.detach()))
        return total, terms

    wrap_loss(monkeypatch, loss)
    return losses


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """Two 32 px images then two 48 px ones: batches of 2 alternate between 32 and 64 px once padded,
    so the compiled parts see their input shapes change (a recompilation with symbolic sizes)."""
    data = ToyDataset(tmp_path_factory.mktemp("data"), num_images=2)
    larger = ToyDataset(tmp_path_factory.mktemp("data48"), num_images=2, size=48, first_seed=2)
    data.samples += larger.samples
    data.image_ids += [102, 103]
    return data


@pytest.fixture(scope="module")
def eager_run(toy_data, tmp_path_factory):
    """``ITERS`` eager iterations: the losses and the final checkpoint the compiled runs are held to."""
    out = tmp_path_factory.mktemp("eager")
    with pytest.MonkeyPatch.context() as monkeypatch:
        losses = record_losses(monkeypatch)
        run_training(tiny_config(*COMPILE_CONFIG), out, toy_data)
    return losses, load_checkpoint(out / "checkpoints" / "last.pt")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # no graphs cached by an earlier test's model
    yield
    torch._dynamo.reset()


class Part(nn.Module):
    """A module of this package's own (dynamo does not trace into torch.nn's built-in forwards)."""

    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width_in, width_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def test_compile_parts_keeps_state_dict_keys_and_drop_compiled_returns_to_eager():
    model = nn.Module()
    model.backbone, model.neck, model.other = Part(3, 4), Part(4, 2), Part(2, 2)
    keys = list(model.state_dict())
    graphs = Graphs()
    assert compile_parts(model, ("backbone", "neck", "missing"), backend=graphs) == ["backbone", "neck"]
    assert list(model.state_dict()) == keys  # no _orig_mod. prefix
    x = torch.randn(5, 3)
    expected = model.neck(model.backbone(x)).detach()  # compiled: two graphs
    assert graphs.count == 2
    with eager_parts(model, ["backbone", "neck"]):
        torch.testing.assert_close(model.neck(model.backbone(x)), expected)
        assert graphs.count == 2  # nothing compiled inside the block
    assert model.backbone._compiled_call_impl is not None  # compiled again after it
    drop_compiled(model, ["backbone", "neck"])
    assert model.backbone._compiled_call_impl is None and model.neck._compiled_call_impl is None


@pytest.mark.parametrize("freeze, training, options", [
    (False, True, {"layout_optimization": False}),  # training: NCHW graphs (channels-last backward is slow)
    (True, False, {"freezing": True}),  # inference: weights frozen into the graph
    (False, False, None),
])
def test_inductor_options_for_training_and_inference(monkeypatch, freeze, training, options):
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    model = nn.Module()
    model.backbone = Part(3, 4)
    compile_parts(model, ("backbone",), freeze=freeze, training=training)
    assert calls == [{"backend": "inductor", "dynamic": None, "options": options}]


def test_train_compile_asks_for_training_graphs(toy_data, tmp_path, monkeypatch):
    calls = []

    def record(model, parts, **kwargs):
        calls.append(kwargs)
        return []  # nothing compiled: the run goes on eagerly

    monkeypatch.setattr(train_module, "compile_parts", record)
    run_training(tiny_config("train.max_iter=1", "train.compile=true"), tmp_path, toy_data)
    assert calls == [{"dynamic": None, "training": True}]


def test_compiled_training_follows_the_eager_loss_trajectory_and_saves_the_same_keys(
        eager_run, toy_data, tmp_path, monkeypatch):
    """train.compile through aot_eager: the same losses as eager for ITERS iterations at several image
    sizes. Stated tolerance: relative 1e-4 per iteration (measured: at most 2e-6; AOTAutograd's
    decompositions round a little differently). The checkpoint has the eager run's keys exactly."""
    graphs = Graphs()
    use_backend(monkeypatch, graphs)
    losses = record_losses(monkeypatch)
    summary = run_training(tiny_config(*COMPILE_CONFIG, "train.compile=true"), tmp_path, toy_data)
    assert summary["status"] == "finished" and summary["iteration"] == ITERS
    assert graphs.count >= 5  # backbone, neck, rpn_head, box_head, mask_head at least once each
    eager_losses, eager_payload = eager_run
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4)
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert list(payload["model"]) == list(eager_payload["model"])
    assert "compiled with torch.compile" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("fail_at", [0, 2], ids=["first-graph", "after-the-backbone-ran"])
def test_a_compiler_failure_falls_back_to_eager_with_a_message_and_loses_nothing(
        eager_run, toy_data, tmp_path, monkeypatch, fail_at):
    """The compiler raises on graph ``fail_at`` of the first step (2: the backbone and neck have already
    run compiled, moving the batch-norm statistics): one message names the error, the step is redone
    eagerly and the run equals the eager run exactly (losses and final weights and buffers)."""
    use_backend(monkeypatch, Graphs(fail_at=fail_at))
    losses = record_losses(monkeypatch)
    summary = run_training(tiny_config(*COMPILE_CONFIG, "train.compile=true"), tmp_path, toy_data)
    assert summary["status"] == "finished" and summary["iteration"] == ITERS
    log = (tmp_path / "log.txt").read_text()
    assert log.count("train.compile: torch.compile failed") == 1
    assert "BackendCompilerFailed (RuntimeError: forced compiler failure)" in log and "redoing iteration 0 with the eager modules" in log
    eager_losses, eager_payload = eager_run
    assert losses == eager_losses
    weights = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert list(weights) == list(eager_payload["model"])
    for key, value in weights.items():
        assert torch.equal(value, eager_payload["model"][key]), key


def test_a_failure_to_wrap_falls_back_to_eager_with_a_message(eager_run, toy_data, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(train_module, "compile_parts", broken)
    losses = record_losses(monkeypatch)
    summary = run_training(tiny_config(*COMPILE_CONFIG, "train.compile=true"), tmp_path, toy_data)
    assert summary["status"] == "finished"
    assert "torch.compile failed (RuntimeError: no compiler here); training with the eager modules" in \
        (tmp_path / "log.txt").read_text()
    assert losses == eager_run[0]


def test_a_genuine_model_error_after_a_compiled_step_is_raised_not_swallowed(toy_data, tmp_path, monkeypatch):
    """Once a compiled step has finished, only compiler errors fall back; the model's own errors raise."""
    use_backend(monkeypatch, Graphs(inner="eager"))

    def loss(original, call, model, raw, targets):
        if call == 1:
            raise ValueError("a bug in the loss")
        return original(raw, targets)

    wrap_loss(monkeypatch, loss)
    with pytest.raises(ValueError, match="a bug in the loss"):
        run_training(tiny_config(*COMPILE_CONFIG, "train.compile=true"), tmp_path, toy_data)
    assert "torch.compile failed" not in (tmp_path / "log.txt").read_text()


def test_a_compiled_run_resumes_from_its_checkpoint_and_an_eager_one_loads_it(toy_data, tmp_path, monkeypatch):
    """Stop a compiled run at iteration 3, resume it compiled to ITERS; and an eager resume of the same
    checkpoint: the two end within float rounding of each other (the checkpoint is eager-shaped)."""
    use_backend(monkeypatch, Graphs(inner="eager"))
    config = tiny_config(*COMPILE_CONFIG, "train.compile=true")
    original = train_module._periodic

    def periodic_then_stop(run, lr):
        original(run, lr)
        if run.iteration == 3:
            run.stop.requested = True

    monkeypatch.setattr(train_module, "_periodic", periodic_then_stop)
    assert run_training(config, tmp_path / "compiled", toy_data)["iteration"] == 3
    monkeypatch.setattr(train_module, "_periodic", original)
    (tmp_path / "eager").mkdir()
    (tmp_path / "eager" / "checkpoints").mkdir()
    checkpoint = tmp_path / "compiled" / "checkpoints" / "model_0000003.pt"
    (tmp_path / "eager" / "checkpoints" / "last.pt").write_bytes(checkpoint.read_bytes())
    assert run_training(config, tmp_path / "compiled", toy_data, resume=True)["iteration"] == ITERS
    assert run_training(tiny_config(*COMPILE_CONFIG), tmp_path / "eager", toy_data, resume=True)["iteration"] == ITERS
    compiled = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt")["model"]
    eager = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.pt")["model"]
    assert list(compiled) == list(eager)
    for key in compiled:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5, msg=key)


def test_the_bench_compiles_through_the_shared_helper(monkeypatch):
    """``instaseg bench --modes compile`` and train.compile share instaseg.engine.compile.compile_parts."""
    import instaseg.engine.bench as bench_module

    calls = []
    monkeypatch.setattr(bench_module, "compile_parts", lambda model, parts, **options: calls.append(options) or [])
    model = nn.Module()
    model.num_classes = 1
    model.predict = lambda images: [[]]
    bench_module.benchmark_model(model, (32, 32), "toy", iters=1, warmup=0, compile=True, stages=False, flops=False)
    assert calls == [{"dynamic": False, "freeze": True, "training": False}]
    assert compile_module.TRAIN_PARTS  # what train.compile compiles


@pytest.mark.parametrize("preset, size", [("mask_rcnn_r18_fpn_tiny", (96, 128)), ("yolact_pp_r18_tiny", (96, 96)),
                                          ("keypoint_rcnn_r18_fpn_tiny", (96, 128))])
def test_every_dense_part_is_one_graph_without_breaks(preset, size):
    """What train.compile and ``bench --modes compile`` compile traces whole: a graph break splits a part
    into eager pieces and each break spends the recompile budget (YOLACT++'s deformable convolutions
    read the fast-kernel ContextVar: 12 breaks in its backbone before)."""
    from instaseg.config.presets import get_preset
    from instaseg.engine.bench import synthetic_targets
    from instaseg.hub import build_model
    from instaseg.hub.outputs import num_keypoints

    model = build_model(preset, num_classes=3).train()
    keypoints = num_keypoints(get_preset(preset))
    calls: dict[str, tuple] = {}
    hooks = [part.register_forward_pre_hook(lambda m, args, kwargs, name=name: calls.setdefault(name, (args, kwargs)),
                                            with_kwargs=True)
             for name in compile_module.DENSE_PARTS if isinstance(part := getattr(model, name, None), nn.Module)]
    images = [torch.rand(3, *size) * 255 for _ in range(2)]
    model(images, [synthetic_targets(size, 3, num_keypoints=keypoints) for _ in range(2)])
    for hook in hooks:
        hook.remove()
    assert len(calls) == len(hooks) >= 4
    for name, (args, kwargs) in calls.items():
        explained = torch._dynamo.explain(getattr(model, name))(*args, **kwargs)
        torch._dynamo.reset()
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (name, explained.break_reasons[:3])

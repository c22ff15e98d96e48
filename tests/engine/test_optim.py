import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from instaseg.config.schema import TrainConfig
from instaseg.engine.optim import LRSchedule, build_optimizer, parameter_groups, resolve_schedule
from instaseg.errors import ConfigError


def _reference_lr(cfg: TrainConfig, max_iter: int, steps, it: int) -> float:
    """Slow, independent statement of the schedule: a loop over the warmup and the decay steps."""
    factor = 1.0
    if it < cfg.warmup_iters:
        # linear from warmup_factor at 0 towards 1 at warmup_iters
        factor = cfg.warmup_factor + (1.0 - cfg.warmup_factor) * (it / cfg.warmup_iters)
    if cfg.schedule == "step":
        for s in steps:
            if it >= s:
                factor *= cfg.gamma
    else:
        factor *= (1.0 + math.cos(math.pi * it / max_iter)) / 2.0
    return cfg.lr * factor


def test_step_schedule_values_by_hand():
    cfg = TrainConfig(lr=0.02, schedule="step", warmup_iters=1000, warmup_factor=0.001, gamma=0.1)
    s = LRSchedule(cfg, 90000, (60000, 80000))  # Mask R-CNN 1x
    assert s.lr_at(0) == pytest.approx(0.02 * 0.001)  # warmup start
    assert s.lr_at(500) == pytest.approx(0.02 * (0.001 + 0.999 * 0.5))  # half way through warmup
    assert s.lr_at(999) == pytest.approx(0.02 * (0.001 + 0.999 * 999 / 1000))
    assert s.lr_at(1000) == pytest.approx(0.02)  # after warmup
    assert s.lr_at(59999) == pytest.approx(0.02)
    assert s.lr_at(60000) == pytest.approx(0.002)  # first step
    assert s.lr_at(79999) == pytest.approx(0.002)
    assert s.lr_at(80000) == pytest.approx(0.0002)  # second step
    assert s.lr_at(89999) == pytest.approx(0.0002)


def test_cosine_schedule_values_by_hand():
    cfg = TrainConfig(lr=0.04, schedule="cosine", warmup_iters=200, warmup_factor=0.001, steps=())
    s = LRSchedule(cfg, 3000, ())
    assert s.lr_at(0) == pytest.approx(0.04 * 0.001)
    assert s.lr_at(1500) == pytest.approx(0.02)  # cos(pi / 2) = 0: half the base LR
    assert s.lr_at(3000) == pytest.approx(0.0, abs=1e-12)  # cosine end
    assert s.lr_at(200) == pytest.approx(0.04 * (1 + math.cos(math.pi * 200 / 3000)) / 2)


@pytest.mark.parametrize("schedule,steps,warmup", [("step", (7, 13), 5), ("step", (3, 13), 5),
                                                    ("cosine", (), 4), ("step", (), 0)])
def test_schedule_matches_reference_at_every_iteration(schedule, steps, warmup):
    cfg = TrainConfig(lr=0.1, schedule=schedule, warmup_iters=warmup, warmup_factor=0.01, gamma=0.5, steps=steps)
    s = LRSchedule(cfg, 20, steps)
    for it in range(21):
        assert s.lr_at(it) == pytest.approx(_reference_lr(cfg, 20, steps, it), rel=1e-12, abs=1e-15)


def test_apply_sets_every_group_and_is_pure():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    cfg = TrainConfig(lr=0.1, schedule="step", steps=(5,), warmup_iters=0)
    opt = build_optimizer(model, cfg)
    s = LRSchedule(cfg, 10, (5,))
    assert s.apply(opt, 7) == pytest.approx(0.01)
    assert all(g["lr"] == pytest.approx(0.01) for g in opt.param_groups)
    s.apply(opt, 2)
    assert all(g["lr"] == pytest.approx(0.1) for g in opt.param_groups)
    assert s.lr_at(7) == s.lr_at(7)


def test_resolve_schedule_iterations_and_epochs():
    mask_rcnn_1x = TrainConfig(max_iter=90000, steps=(60000, 80000))
    assert resolve_schedule(mask_rcnn_1x, 118287) == (90000, (60000, 80000))
    # MS R-CNN: 18 epochs, LR / 10 at epochs 14 and 17, 16 images per step on COCO train2017.
    ms_rcnn = TrainConfig(max_epochs=18, step_epochs=(14, 17), ims_per_batch=16)
    n = 118287

    def ceil_div(a, b):  # integer ceiling, independent of floats
        return -(-a // b)

    assert resolve_schedule(ms_rcnn, n) == (ceil_div(18 * n, 16), (ceil_div(14 * n, 16), ceil_div(17 * n, 16)))
    assert resolve_schedule(replace(ms_rcnn, ims_per_batch=4), 8) == (36, (28, 34))  # 2 its / epoch


def test_schedule_errors():
    with pytest.raises(ConfigError, match="ascending"):
        resolve_schedule(TrainConfig(max_epochs=10, step_epochs=(8, 4)), 100)
    with pytest.raises(ConfigError, match="within"):
        resolve_schedule(TrainConfig(max_epochs=10, step_epochs=(12,)), 100)
    with pytest.raises(ConfigError, match="ascending"):
        LRSchedule(TrainConfig(schedule="step"), 100, (50, 20))
    with pytest.raises(ConfigError, match="schedule"):
        LRSchedule(TrainConfig(schedule="poly"), 100, ())
    with pytest.warns(UserWarning, match="never apply"):
        LRSchedule(TrainConfig(schedule="step"), 100, (60000,))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_parameter_groups_no_decay_on_norms_and_biases():
    net = _Net()
    groups = parameter_groups(net, 1e-4)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(net.conv.weight), id(net.fc.weight)}
    assert no_decay == {id(p) for p in (net.conv.bias, net.bn.weight, net.bn.bias, net.gn.weight, net.gn.bias,
                                        net.fc.bias)}
    assert id(net.frozen.weight) not in decay | no_decay


def test_sgd_step_applies_decay_and_momentum_as_documented():
    net = _Net()
    cfg = TrainConfig(optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.1)
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    w0, b0 = net.fc.weight.detach().clone(), net.bn.weight.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay moves the parameters
    assert torch.allclose(net.fc.weight, w0 - 0.5 * 0.1 * w0)
    assert torch.equal(net.bn.weight, b0)
    assert isinstance(build_optimizer(net, replace(cfg, optimizer="adamw")), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="optimizer"):
        build_optimizer(net, replace(cfg, optimizer="lamb"))


def test_adamw_is_fused_and_matches_a_float64_reference():
    torch.manual_seed(0)
    net = _Net()
    cfg = TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1)
    opt = build_optimizer(net, cfg)
    assert opt.defaults["fused"]
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    params = [p for g in opt.param_groups for p in g["params"]]
    reference = {id(p): p.detach().double().clone() for p in params}
    m = {k: torch.zeros_like(v) for k, v in reference.items()}
    v2 = {k: torch.zeros_like(v) for k, v in reference.items()}
    for step in range(1, 4):
        grads = {id(p): torch.randn_like(p) for p in params}
        for p in params:
            p.grad = grads[id(p)].clone()
        opt.step()
        for p in params:  # Loshchilov & Hutter: decoupled decay, then the Adam update (betas 0.9, 0.999)
            k, g = id(p), grads[id(p)].double()
            reference[k] *= 1 - 0.01 * (0.1 if k in decay else 0.0)
            m[k] = 0.9 * m[k] + 0.1 * g
            v2[k] = 0.999 * v2[k] + 0.001 * g * g
            m_hat, v_hat = m[k] / (1 - 0.9**step), v2[k] / (1 - 0.999**step)
            reference[k] -= 0.01 * m_hat / (v_hat.sqrt() + 1e-8)
    for p in params:
        assert torch.allclose(p.detach().double(), reference[id(p)], atol=1e-6)

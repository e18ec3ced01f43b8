"""DDP (gloo, 2 CPU processes) through dlwt.ddp.wrap, as `dlwt train` uses it: every rank keeps the same B
while training on different data, with no more traffic than backprop's model, and kp keeps its exact rule."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

import dlwt
from dlwt import ddp
from dlwt.devices import Device

RULES = ("bp", "fa", "ss", "wm", "kp")


def _worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    for rule in RULES:
        _train_and_compare(rank, world, rule, out)
    dist.destroy_process_group()


def _train_and_compare(rank, world, rule, out):
    torch.manual_seed(0)  # same W and B on every rank
    model = dlwt.models.build("resnet18", 10, rule, stem="small")
    lr, wd = 0.1, 5e-4
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)  # plain SGD: kp's W - B shrinks exactly
    net = ddp.wrap(model, Device.resolve("cpu"), opt)
    sent = []

    def counting_hook(state, bucket):  # what DDP all-reduces: count it, then do it
        sent.append(bucket.buffer().numel() * bucket.buffer().element_size())
        return allreduce_hook(state, bucket)

    net.register_comm_hook(dist.group.WORLD, counting_hook)
    mirror_gen = torch.Generator().manual_seed(123)  # wm: the same noise on every rank
    data_gen = torch.Generator().manual_seed(1000 + rank)  # ... but different data
    before = model.conv1.feedback_weight().clone() if rule != "bp" else None
    gap0 = (model.conv1.weight - model.conv1.feedback).detach().clone() if rule == "kp" else None
    steps = 3
    for _ in range(steps):
        x, y = torch.randn(4, 3, 8, 8, generator=data_gen), torch.randint(0, 10, (4,), generator=data_gen)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if rule == "wm":
            dlwt.mirror_step(model, generator=mirror_gen)
    b = torch.cat([m.feedback_weight().flatten() if rule != "bp" else m.weight.detach().flatten()
                   for _, m in dlwt.rules.weight_layers(model)])
    gathered = [torch.empty_like(b) for _ in range(world)]
    dist.all_gather(gathered, b)
    if rank == 0:
        res = {"same": all(torch.equal(gathered[0], g) for g in gathered[1:]),
               "grad_bytes": sum(sent) // steps,
               "buffer_bytes": sum(t.numel() * t.element_size() for t in net.modules_buffers)}
        if rule != "bp":
            res["changed"] = not torch.equal(before, model.conv1.feedback_weight())
        if rule == "kp":  # paper eq. 16-17: W - B <- (1 - lr wd)(W - B) when B gets W's averaged gradient
            gap = (model.conv1.weight - model.conv1.feedback).detach()
            res["kp_gap_err"] = float((gap - (1 - lr * wd) ** steps * gap0).abs().max())
        out[rule] = res


@pytest.mark.timeout(240)
def test_b_identical_on_every_rank_and_traffic_no_more_than_backprop(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
        out = dict(out)
    bp = out["bp"]
    for rule in RULES[1:]:
        assert out[rule]["same"], rule
        assert out[rule]["changed"] == (rule != "fa"), rule  # B moved (kp: gradient; wm: mirror; ss: W's signs)
        assert out[rule]["grad_bytes"] == bp["grad_bytes"], rule  # kp's B gradient is not all-reduced again
        assert out[rule]["buffer_bytes"] == bp["buffer_bytes"], rule  # fa/wm's B is not broadcast
    assert out["kp"]["kp_gap_err"] < 1e-6
    assert bp["grad_bytes"] > 40e6  # ResNet-18's 11M float32 gradients: the counter sees real traffic

"""Under DDP (gloo, 2 CPU processes) every rank keeps the same B while training on different data."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import dlwt


def _worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    for rule in ("kp", "wm", "ss"):
        _train_and_compare(rank, world, rule, out)
    dist.destroy_process_group()


def _train_and_compare(rank, world, rule, out):
    torch.manual_seed(0)  # same W and B on every rank
    model = dlwt.models.build("resnet18", 10, rule, stem="small")
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    mirror_gen = torch.Generator().manual_seed(123)  # wm: the same noise on every rank
    data_gen = torch.Generator().manual_seed(1000 + rank)  # ... but different data
    before = model.conv1.feedback_weight().clone()
    for _ in range(3):
        x, y = torch.randn(4, 3, 8, 8, generator=data_gen), torch.randint(0, 10, (4,), generator=data_gen)
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
        dlwt.mirror_step(model, generator=mirror_gen)
    b = torch.cat([m.feedback_weight().flatten() for _, m in dlwt.rules.weight_layers(model)])
    gathered = [torch.empty_like(b) for _ in range(world)]
    dist.all_gather(gathered, b)
    if rank == 0:
        out[rule] = {"same": all(torch.equal(gathered[0], g) for g in gathered[1:]),
                     "changed": not torch.equal(before, model.conv1.feedback_weight())}


@pytest.mark.timeout(180)
def test_b_identical_on_every_rank(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
        out = dict(out)
    for rule in ("kp", "wm", "ss"):
        assert out[rule]["same"], rule
        assert out[rule]["changed"], rule  # B really moved (kp: shared gradient; wm: mirror; ss: W's signs)

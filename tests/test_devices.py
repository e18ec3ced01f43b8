"""The device decisions, checked on CPU with stand-ins for what no CI machine has: the meta device for the
loader's device path, affinity masks for core-bound cluster jobs, a faked GPU count for GPU claims."""
import json
import os
import subprocess
import sys

import pytest
import torch

from dlwt import devices
from dlwt.data.loaders import normalize
from dlwt.errors import DlwtError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_normalize_is_the_same_function_on_every_device():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    cpu = normalize(x, torch.device("cpu"))
    meta = normalize(x, torch.device("meta"))  # takes the path a CUDA device takes: no CPU-only shortcut
    assert cpu.dtype == meta.dtype == torch.float32 and cpu.shape == meta.shape and meta.is_meta
    assert cpu.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    torch.testing.assert_close(cpu, (x.float() - mean) / std)


def test_cuda_wanted_but_absent_stops_at_once_naming_the_fix():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DlwtError, match=r"train.device=cuda but CUDA is not usable .*torch .* built for CUDA .*"
                                        r"--gpus all .*--nv"):
        devices.Device.resolve("cuda")
    auto = devices.Device.resolve("auto", amp="bf16", channels_last=True)
    assert auto.torch.type == "cpu" and auto.amp_dtype is None  # CPU runs float32 whatever train.amp says
    assert auto.memory_format == torch.channels_last


def test_worker_counts_follow_the_affinity_mask_not_the_node():
    # what a SLURM job bound to one core sees: numba (FFCV) refuses more threads than the mask allows
    code = ("import os; os.sched_setaffinity(0, {0}); from dlwt import devices; "
            "print(devices.cpus(), devices.workers(12)); os.environ['LOCAL_WORLD_SIZE'] = '2'; "
            "print(devices.workers(12))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "0"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_training_under_a_one_cpu_mask_with_more_workers_asked(tmp_path, ffcv_synthetic):
    """A train job whose cpus_per_task is below data.num_workers: FFCV's loader on the real .beton (conftest's,
    read only)."""
    from dlwt.params import deep_merge, load

    root, _ = ffcv_synthetic
    params = deep_merge(load(os.path.join(REPO, "params.yaml"), [os.path.join(REPO, "config/ci.yaml")]),
                        {"data": {"root": str(root), "num_workers": 12}})
    (tmp_path / "p.yaml").write_text(json.dumps(params))
    code = ("import os, sys; os.sched_setaffinity(0, {0}); from dlwt.cli import main; "
            f"sys.exit(main(['train', '--params', {str(tmp_path / 'p.yaml')!r}, '--arch', 'resnet18', "
            f"'--rule', 'fa', '--out', {str(tmp_path / 'run')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()


def _claim(n, env):
    code = f"from dlwt import devices; import os, time; print(devices.claim_gpus({n}), flush=True); time.sleep(300)"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_concurrent_jobs_claim_disjoint_gpus(tmp_path):
    env = {**os.environ, "DLWT_FAKE_GPUS": "4", "DLWT_GPU_LOCKS": str(tmp_path)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    jobs = [_claim(1, env), _claim(1, env), _claim(2, env)]
    got = [p.stdout.readline().strip() for p in jobs]
    late = subprocess.run([sys.executable, "-c", "from dlwt import devices; devices.claim_gpus(1)"], env=env,
                          capture_output=True, text=True)  # all 4 are held now
    for p in jobs:
        p.kill()
        p.wait()
    ids = [json.loads(g) for g in got]
    assert sorted(i for claim in ids for i in claim) == [0, 1, 2, 3] and [len(c) for c in ids] == [1, 1, 2]
    assert late.returncode != 0 and "1 free GPU(s) wanted, 0 of 4 free" in late.stderr
    after = subprocess.run([sys.executable, "-c", "from dlwt import devices; print(devices.claim_gpus(3))"],
                           env=env, capture_output=True, text=True, check=True)
    assert after.stdout.strip() == "[0, 1, 2]"  # released when the jobs ended


def test_the_scheduler_choice_stands():
    env = {**os.environ, "DLWT_FAKE_GPUS": "8", "CUDA_VISIBLE_DEVICES": "5"}  # SLURM, docker --gpus device=5
    code = "from dlwt import devices; import os; print(devices.claim_gpus(1), os.environ['CUDA_VISIBLE_DEVICES'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "5"]


def test_a_claim_survives_the_torchrun_exec(tmp_path):
    """`dlwt train` claims, then execs torchrun: the lock must stay held by the new program."""
    env = {**os.environ, "DLWT_FAKE_GPUS": "1", "DLWT_GPU_LOCKS": str(tmp_path)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    code = ("from dlwt import devices; import os, sys; devices.claim_gpus(1); "
            "os.execv(sys.executable, [sys.executable, '-c', 'import time; print(1, flush=True); time.sleep(300)'])")
    holder = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    probe = subprocess.run([sys.executable, "-c", "from dlwt import devices; devices.claim_gpus(1)"], env=env,
                           capture_output=True, text=True)
    holder.kill()
    holder.wait()
    assert probe.returncode != 0 and "0 of 1 free" in probe.stderr

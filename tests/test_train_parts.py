"""The training loop's parts that need no training run: the per-rule after-step hook and wm's noise generator
(kept on the CPU whatever the device: meta stand-ins for CUDA), cudnn.benchmark on the one Device, the FFCV
thread fixed_batch must not leak, and live metrics that never block a run."""
import json
import threading
import time

import pytest
import torch

import dlwt
from dlwt import devices, mirror
from dlwt.engine import fixed_batch
from dlwt.live import LiveLog


def test_only_wm_has_an_after_step_and_it_keeps_its_phase_on_resume(monkeypatch):
    calls = []
    monkeypatch.setattr(mirror, "mirror_step", lambda model, steps, generator=None, **kw: calls.append(steps))
    model = dlwt.models.build("resnet8", 10, "wm", "small")
    for rule in ("bp", "fa", "ss", "kp"):
        assert mirror.after_step(model, rule, every=1) is None  # nothing between steps: no per-step cost
    hook = mirror.after_step(model, "wm", every=3, steps=2, done=5)  # resumed after 5 steps: the 6th mirrors
    for _ in range(3):
        hook()
    assert calls == [2]  # after step 6 (not after this process's 3rd step, 8th), 2 mirror steps


def test_wm_noise_state_stays_a_cpu_generator_on_another_device(monkeypatch):
    # the weights on "meta" stand in for CUDA: a generator of their device is asked for and seeded from the CPU
    # one, whose state (what a checkpoint keeps) never changes type; equal CPU seeds give equal device seeds
    made, seen = [], []
    real = torch.Generator

    class DeviceGenerator:
        def __init__(self, device="cpu"):
            self.device = torch.device(device)
            made.append(self.device.type)

        def manual_seed(self, seed):
            self.seed = seed
            return self

    model = dlwt.models.build("resnet8", 10, "wm", "small").to("meta")
    monkeypatch.setattr(mirror.torch, "Generator", DeviceGenerator)
    monkeypatch.setattr(mirror, "mirror_step", lambda model, steps, generator=None, **kw: seen.append(generator))
    masters = [real().manual_seed(0), real().manual_seed(0)]
    for master in masters:
        hook = mirror.after_step(model, "wm", generator=master)
        hook()
        hook()
    assert made == ["meta"] * 4 and all(g.device.type == "meta" for g in seen)
    assert [g.seed for g in seen[:2]] == [g.seed for g in seen[2:]] and seen[0].seed != seen[1].seed
    assert all(m.get_state().numel() == real().get_state().numel() for m in masters)  # loads on any device
    cpu = real().manual_seed(1)
    assert mirror.noise_generator(cpu, torch.device("cpu")) is cpu  # on the CPU: the same stream as ever


def test_cudnn_benchmark_is_set_on_the_device_every_stage_resolves(monkeypatch):
    monkeypatch.setattr(devices, "_cuda_problem", lambda local_rank: None)  # a usable GPU, without one
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    dev = devices.Device.resolve("auto", amp="bf16")
    assert dev.cuda and torch.backends.cudnn.benchmark is True


@pytest.mark.timeout(240)
def test_fixed_batch_leaves_no_ffcv_thread(tmp_path):
    pytest.importorskip("ffcv")
    from dlwt.data.imagenet import extract
    from dlwt.data.loaders import make_loader
    from dlwt.data.stages import convert_stage
    from dlwt.data.synthetic import write_archives

    write_archives(str(tmp_path / "raw" / "synthetic"), classes=3, train_per_class=2, val_per_class=4, size=32)
    extract(str(tmp_path / "raw" / "synthetic"), str(tmp_path), "synthetic")
    convert_stage({"root": str(tmp_path), "dataset": "synthetic", "max_resolution": 32, "page_size": 1 << 21,
                   "num_workers": 1})
    # batch 1 over 12 images: FFCV's thread fills its queue ahead and would wait there for ever
    loader = make_loader("val", {"root": str(tmp_path), "dataset": "synthetic", "batch_size": 1, "num_workers": 1,
                                 "res": 32, "backend": "ffcv"}, torch.device("cpu"))
    before = set(threading.enumerate())
    for _ in range(3):
        x, y = fixed_batch(loader, 2)
        assert x.shape[0] == 2 and y.shape == (2,)
    deadline = time.monotonic() + 30
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(threading.enumerate()) - before


def test_damaged_live_metrics_are_set_aside_and_logging_goes_on(tmp_path, capsys):
    pytest.importorskip("dvclive")
    live_dir = tmp_path / "dvclive"
    live_dir.mkdir()
    (live_dir / "metrics.json").write_text("")  # DVCLive rewrites it in place: a kill leaves it empty
    live = LiveLog(live_dir, enabled=True, resume=True)
    live.progress(7, loss=1.0, lr=0.1, images_per_s=10.0)
    live.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.json was damaged" in err[0] and "going on" in err[0]
    assert json.loads((live_dir / "metrics.json").read_text())["train"]["loss"] == 1.0
    assert len(list(live_dir.glob("metrics.json.damaged-*"))) == 1


def test_a_failing_live_logger_turns_off_with_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("dvclive")
    live = LiveLog(tmp_path / "dvclive", enabled=True, resume=False)

    def disk_full():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(live.live, "make_summary", disk_full)
    live.progress(1, loss=1.0, lr=0.1, images_per_s=10.0)  # no exception reaches the training loop
    live.progress(2, loss=1.0, lr=0.1, images_per_s=10.0)
    live.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "live metrics off" in err[0] and "No space left" in err[0]

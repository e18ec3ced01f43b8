"""SIGTERM/SIGINT stop `dlwt train` at the next step boundary whatever the epoch's length (the demo has 39 steps
an epoch, the ci settings 3, both fewer than train.check_every), save last.pt, print one line and exit 128+signal;
also during start-up and under DDP (2 gloo ranks). Signals are the point, so each property is one process."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dlwt.cli import main
from dlwt.data.digits import write_digits
from dlwt.params import deep_merge, load
from dlwt.train import StopSignal, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = {"images_per_s", "train_seconds", "val_seconds", "seconds"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_digits(str(root), "digits", size=8)  # 1,437 train / 360 val images
    return root


def params_for(root, batch_size, **train_cfg):
    """digits at 8 px with the schema's sync intervals (check_every 50, log_every 100): longer than an epoch."""
    over = {"exp": "test",
            "data": {"source": "digits", "dataset": "digits", "root": str(root), "backend": "torchvision",
                     "batch_size": batch_size, "res": 8, "val_res": 8, "crop_ratio": 1.0, "num_workers": 0,
                     "train_crop_scale": [0.9, 1.0], "train_flip": False},
            "model": {"stem": "small"},
            "train": {"epochs": 3, "lr": 0.1, "lr_batch": 64, "schedule": "linear", "device": "cpu",
                      "align_batch": 0, **train_cfg},
            "mirror": {"warmup_steps": 5, "lr": 0.05, "weight_decay": 0.05, "batch_size": 8}}
    return deep_merge(load(os.path.join(REPO, "params.yaml")), over)


def _start(tmp_path, params, rule="bp", **popen):
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    cmd = [sys.executable, "-m", "dlwt", "train", "--params", str(tmp_path / "params.yaml"), "--arch", "resnet8",
           "--rule", rule, "--seed", "0", "--out", str(tmp_path / "run")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _signal_after_first_epoch(proc, signum=signal.SIGTERM):
    """Send `signum` once epoch 1's line is out (training of epoch 2 under way); (stdout, stderr)."""
    first = proc.stdout.readline()
    assert "epoch 1/" in first, first + proc.stderr.read()[-2000:]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=240)
    return first + out, err


def _stop_lines(err):
    return [line for line in err.splitlines() if "stopped by" in line]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("batch_size, steps", [(36, 39), (479, 3)], ids=["demo-39-steps", "ci-3-steps"])
def test_sigterm_stops_an_epoch_shorter_than_the_sync_interval(digits, tmp_path, batch_size, steps):
    proc = _start(tmp_path, params_for(digits, batch_size, epochs=40))
    out, err = _signal_after_first_epoch(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert len(_stop_lines(err)) == 1 and "rerun the same command to resume" in err and "Traceback" not in err
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] >= 1 and ckpt["step"] <= steps
    assert ckpt["epoch"] + (ckpt["step"] > 0) <= 3  # within an epoch or so of the signal, not 37 epochs later
    assert not (tmp_path / "run" / "checkpoints" / "final.pt").exists()


@pytest.mark.timeout(300)
def test_sigterm_to_the_whole_job_with_loader_workers_is_one_line(digits, tmp_path):
    """SLURM's time limit and scancel signal every process of the job step, the DataLoader's workers too: a
    worker killed by it made the run end in a traceback, without its checkpoint."""
    params = params_for(digits, 36, epochs=40)
    params["data"]["num_workers"] = 1
    proc = _start(tmp_path, params, start_new_session=True)
    first = proc.stdout.readline()
    assert "epoch 1/" in first, first + proc.stderr.read()[-2000:]
    children = f"/proc/{proc.pid}/task/{proc.pid}/children"
    deadline = time.monotonic() + 60
    while not open(children).read().split() and time.monotonic() < deadline:
        time.sleep(0.005)  # until a loader worker is up: the signal must reach one
    assert open(children).read().split(), "no DataLoader worker process seen"
    time.sleep(0.2)  # past its start (torch's worker set-up); it lives for the rest of the epoch
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert len(_stop_lines(err)) == 1 and "Traceback" not in err and "killed by signal" not in err, err[-2000:]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["epoch"] >= 1


class StopAt(StopSignal):
    """A SIGTERM that arrives after the `n`-th training step of this process (deterministic, in-process)."""

    def __init__(self, n):
        super().__init__()
        self.calls, self.n = 0, n

    def requested(self):
        self.calls += 1  # once before the loop, then once after every step
        if self.calls > self.n:
            self.signum = signal.SIGTERM
        return self.signum is not None


@pytest.mark.timeout(300)
def test_stop_at_an_epochs_last_step_resumes_to_the_uninterrupted_metrics(digits, tmp_path, capsys):
    params = params_for(digits, 479, epochs=2)  # 3 steps an epoch
    params["mirror"]["warmup_steps"] = 0  # StopAt counts the loop's reads of the flag only
    reference = train(params, "resnet8", "wm", 0, tmp_path / "reference")
    run = tmp_path / "run"
    stopped = train(params, "resnet8", "wm", 0, run, stop=StopAt(3))  # right after epoch 1's last step
    assert stopped["status"] == "stopped" and stopped["signal"] == signal.SIGTERM
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, 3)
    assert ckpt["mirror_rng"].numel() == torch.Generator().get_state().numel()  # a CPU generator's state
    assert "stopped by SIGTERM at a mid-epoch checkpoint" in capsys.readouterr().err
    (run / "dvclive" / "metrics.json").write_text('{"step": 1, "train/lo')  # torn by a kill mid-write
    resumed = train(params, "resnet8", "wm", 0, run)
    err = capsys.readouterr().err
    assert "resuming" in err and "metrics.json was damaged" in err and resumed["status"] == "finished"
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in
             [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]]
    expect = [{k: v for k, v in r.items() if k not in TIMING} for r in
              [json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]]
    assert len(strip) == 2 and strip == expect and reference["status"] == "finished"
    assert list((run / "dvclive").glob("metrics.json.damaged-*"))


@pytest.mark.timeout(300)
def test_sigterm_during_start_up_is_one_line(digits, tmp_path):
    # wm's mirror warm-up runs before the first step: the run is locked (signals handled) but not training
    params = params_for(digits, 64, epochs=1)
    params["mirror"]["warmup_steps"] = 1_000_000  # hours: the signal must cut it short
    proc = _start(tmp_path, params, rule="wm")
    lock = tmp_path / "run" / ".lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert _stop_lines(err) == [
        "dlwt train: resnet8-wm-s0 stopped by SIGTERM before training started; rerun the same command to resume"]
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists() and "epoch 1/1" not in out


@pytest.mark.timeout(300)
def test_sigterm_under_ddp_saves_at_once_and_exits_143(digits, tmp_path):
    # 2 gloo ranks through dlwt's own launcher (torchrun would print a SignalException traceback and exit 1)
    proc = _start(tmp_path, params_for(digits, 32, epochs=20, gpus=2))
    out, err = _signal_after_first_epoch(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert len(_stop_lines(err)) == 1 and "Traceback" not in err and "SignalException" not in err
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] + (ckpt["step"] > 0) <= 3 and ckpt["run_info"]["world_size"] == 2


def test_ctrl_c_is_one_line_not_a_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt  # what Ctrl-C raises at start-up or in a data stage

    import dlwt.train

    monkeypatch.setattr(dlwt.train, "main", interrupted)
    assert main(["train", "--arch", "resnet8", "--rule", "bp", "--out", "x"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "dlwt train: interrupted (Ctrl-C); rerun the same command to go on"]

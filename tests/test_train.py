"""dlwt train / dlwt evaluate end to end on real data (scikit-learn's digits as an ImageFolder, conftest's
session fixture), CPU. Training runs in this process; a subprocess only where the process is the point (a
SIGTERM, a second process holding the run's lock, torchrun)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import copy_tree
from dlwt.errors import DlwtError
from dlwt.evaluate import evaluate_checkpoint
from dlwt.params import deep_merge, load
from dlwt.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CIFAR ResNet-8 of He et al. (75k weights: every rule's Conv2d and Linear layers, BatchNorm), the demo's
# family: what trains, resumes, stops and launches here does not depend on the net's width, and an epoch on
# digits costs several times less CPU than ResNet-18's (11M weights). ResNet-18 itself trains in
# test_evaluate_writes_metrics... below, in test_ddp (every rule) and in the ci pipeline (bp, wm).
ARCH = "resnet8"


@pytest.fixture(scope="module")
def bp_one_epoch(digits, tmp_path_factory):
    """A finished 1-epoch bp ARCH run on digits (digits_params(epochs=1)), trained once: tests copy it."""
    run = tmp_path_factory.mktemp("bp1") / "run"
    train(digits_params(digits, epochs=1), ARCH, "bp", 0, run)
    return run


def digits_params(root, **train):
    """params.yaml with a digits overlay: 8 px, small stem, torchvision loader, mild crops."""
    over = {"exp": "test",
            "data": {"source": "digits", "dataset": "digits", "root": str(root), "backend": "torchvision",
                     "batch_size": 64, "res": 8, "val_res": 8, "crop_ratio": 1.0, "num_workers": 0,
                     "train_crop_scale": [0.9, 1.0], "train_flip": False},
            "model": {"stem": "small"},
            "train": {"epochs": 2, "lr": 0.1, "lr_batch": 64, "schedule": "linear", "weight_decay": 5e-4,
                      "grad_batch": 32, "device": "cpu", "check_every": 5, "log_every": 5,
                      "align_batch": 32, **train},
            "mirror": {"warmup_steps": 50, "lr": 0.05, "weight_decay": 0.05, "batch_size": 8}}
    return deep_merge(load(os.path.join(REPO, "params.yaml")), over)


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rule", ["bp", "fa", "ss", "wm", "kp"])
def test_every_rule_trains_and_loss_falls(digits, tmp_path, rule):
    run = tmp_path / rule
    last = train(digits_params(digits), ARCH, rule, 0, run)["metrics"]
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert last["val_top1_err"] < 0.8  # better than chance (0.9) after two short epochs
    if rule == "bp":  # backprop reaches 90% on digits (measured: 95.8% after these two epochs)
        assert last["val_top1_err"] < 0.10
    assert (run / "checkpoints" / "final.pt").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["rule"] == rule and config["params"]["train"]["epochs"] == 2
    assert {"git_sha", "versions", "device", "world_size"} <= set(config)
    angles = [a["angle_deg"] for a in rows[-1]["alignment"].values()]
    assert (max(angles) == 0) == (rule == "bp")
    grad_angles = rows[-1]["grad_alignment"]  # the rule's update against backprop's, every epoch
    assert grad_angles["fc"] < 1e-3 and (grad_angles["conv1"] > 1) == (rule != "bp")


def test_evaluate_writes_metrics_and_refuses_a_mismatched_checkpoint(digits, tmp_path):
    params = digits_params(digits, epochs=1)
    run = tmp_path / "run"
    train(params, "resnet18", "fa", 0, run)
    out = tmp_path / "eval" / "resnet18-fa-s0.json"
    result = evaluate_checkpoint(params, "resnet18", "fa", 0, run / "checkpoints" / "final.pt", out)
    saved = json.loads(out.read_text())
    assert saved["val_top1_err"] == result["val_top1_err"] and saved["val_images"] == 360
    assert saved["gradient_alignment"]["fc"] < 1e-3 and saved["gradient_alignment"]["conv1"] > 10
    assert saved["rule"] == "fa" and saved["params"] > 11_000_000
    with pytest.raises(DlwtError, match="holds resnet18-fa-s0, not resnet18-kp-s0"):
        evaluate_checkpoint(params, "resnet18", "kp", 0, run / "checkpoints" / "final.pt", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_nan_loss_stops_cleanly_and_keeps_last_good_checkpoint(digits, tmp_path):
    # epoch 1 at lr 0.1, then the step schedule multiplies it by 1e12: the loss blows up in epoch 2
    params = digits_params(digits, epochs=2, schedule="step", milestones=[1], gamma=1e12)
    run = tmp_path / "run"
    with pytest.raises(DlwtError, match=r"loss not finite at epoch 2, between steps \d+ and \d+: lower the "
                       r"learning rate .*the last good checkpoint is kept"):
        train(params, ARCH, "bp", 0, run)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert len(read_metrics(run)) == 1
    assert not (run / "checkpoints" / "final.pt").exists()


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_files_stay_consistent(digits, tmp_path, monkeypatch):
    # epoch 2's last.pt hits ENOSPC mid-write: one line naming the disk, last.pt and metrics.jsonl both still
    # say epoch 1, no temp file left, and the same command resumes to the end
    import errno

    real_save, calls = torch.save, []

    def save(obj, f, *a, **kw):
        calls.append(obj.get("epoch"))
        if len(calls) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    params, run = digits_params(digits, epochs=2), tmp_path / "run"
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(DlwtError, match=r"disk full writing \S*/last\.pt: free space") as e:
        train(params, ARCH, "bp", 0, run)
    assert "\n" not in str(e.value) and calls == [1, 2]
    monkeypatch.undo()
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]
    train(params, ARCH, "bp", 0, run)
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2] and (run / "checkpoints" / "final.pt").is_file()


def test_changed_params_start_afresh_and_keep_the_old_checkpoint(digits, bp_one_epoch, tmp_path, capsys):
    run = copy_tree(bp_one_epoch, tmp_path / "run")  # train(digits_params(digits, epochs=1), ARCH, "bp", ...)
    first = read_metrics(run)[-1]
    second = train(digits_params(digits, epochs=1, lr=0.02), ARCH, "bp", 0, run)
    assert "setting train.lr changed" in capsys.readouterr().err
    assert second["metrics"]["lr"] != first["lr"] and len(read_metrics(run)) == 1  # a new run
    assert len(list((run / "checkpoints").glob("last-stale-*.pt"))) == 1


def test_a_finished_run_whose_outputs_were_removed_is_not_retrained(digits, bp_one_epoch, tmp_path, capsys):
    # what snakemake --rerun-incomplete does after a kill: delete the declared outputs, run the command again
    run = copy_tree(bp_one_epoch, tmp_path / "run")  # train(digits_params(digits, epochs=1), ARCH, "bp", ...)
    before = read_metrics(run)
    for name in ("metrics.jsonl", "config.json", "checkpoints/final.pt"):
        (run / name).unlink()
    again = train(digits_params(digits, epochs=1), ARCH, "bp", 0, run)
    assert "is a finished run; rewrote final.pt from it" in capsys.readouterr().err
    assert read_metrics(run) == before and again["metrics"] == before[-1]  # the same numbers: nothing retrained
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert "optimizer" not in final and final["epoch"] == 1 and (run / "config.json").is_file()
    train(digits_params(digits, epochs=1), ARCH, "bp", 0, run, restart=True)  # only on request
    assert "--restart; moved last.pt" in capsys.readouterr().err


def _command(params_file, out, rule="wm"):
    return [sys.executable, "-m", "dlwt", "train", "--params", str(params_file), "--arch", ARCH, "--rule",
            rule, "--seed", "0", "--out", str(out)]


def _wait_for(proc, pattern):
    """Read proc's stderr until a line contains `pattern`; returns the lines read."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if pattern in line:
            return lines
    raise AssertionError("".join(lines)[-2000:])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_at_a_random_step_then_resume_gives_the_same_metrics(digits, tmp_path, capsys):
    # what SLURM does at the time limit; wm: the mirror's noise generator must come back too. The stopped run is
    # a process of its own (the signal); the uninterrupted reference and the resumed run train in this one
    import random

    params = digits_params(digits, epochs=2)
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    reference, run = tmp_path / "reference", tmp_path / "stopped"
    train(params, ARCH, "wm", 0, reference)
    # float sums depend on the thread count: the stopped process gets this one's (another test may have set it)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(_command(tmp_path / "params.yaml", run), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    # a progress line (every 5 steps) of a random epoch, then a random moment within the next few steps: well
    # before the run's last step, so the signal always meets a run still training (up to 2 s of sleep after
    # step 5 of epoch 2 once landed after the end, on an unloaded machine: 17 steps took under a second)
    _wait_for(proc, f"epoch {random.choice([1, 2])}/2: {random.choice([5, 10])}/22")
    time.sleep(random.uniform(0, 0.1))
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM at a mid-epoch checkpoint" in err and "rerun the same command" in err
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] > 0 and not (run / "checkpoints" / "final.pt").exists()
    capsys.readouterr()
    train(params, ARCH, "wm", 0, run)  # `dlwt train` with the same command line, resumed
    assert f"resuming {run} at epoch {ckpt['epoch'] + 1}, step {ckpt['step']}" in capsys.readouterr().err
    timing = {"images_per_s", "train_seconds", "val_seconds", "seconds"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(run)]
    expect = [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(reference)]
    assert len(strip) == 2 and strip == expect


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_progressive_resizing_resumes_at_the_right_resolution(digits, tmp_path):
    import threading

    params = digits_params(digits, epochs=3, log_every=1, check_every=1)
    params["data"].update({"res": 16, "val_res": 16, "min_res": 8, "ramp": [0, 2]})
    run = tmp_path / "run"
    stopper = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))  # a preemption mid-run
    stopper.start()
    first = train(params, ARCH, "bp", 0, run)
    stopper.cancel()
    assert first["status"] == "stopped" or first["status"] == "finished"
    train(params, ARCH, "bp", 0, run)
    assert [r["res"] for r in read_metrics(run)] == [8, 16, 16]  # epoch 1 at min_res, the ramp, then res


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_writer_per_run_folder(digits, tmp_path, cli):
    (tmp_path / "params.yaml").write_text(json.dumps(digits_params(digits, epochs=2)))
    first = subprocess.Popen(_command(tmp_path / "params.yaml", tmp_path / "run", "bp"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(first, "epoch 1/2: 5/22")
        second = cli(*_command(tmp_path / "params.yaml", tmp_path / "run", "bp")[3:])  # in this process
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"dlwt train: {tmp_path / 'run'} is being trained by another process (pid {first.pid}, lock "
        f"{tmp_path / 'run' / '.lock'}): wait for it, or stop it first"]


@pytest.mark.timeout(300)
def test_train_gpus_2_runs_ddp_under_torchrun(digits, tmp_path):
    # train.gpus > 1 makes `dlwt train` run itself as that many DDP ranks; on CPU the ranks use gloo
    (tmp_path / "params.yaml").write_text(json.dumps(digits_params(digits, epochs=1, gpus=2)))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dlwt", "train", "--params", str(tmp_path / "params.yaml"),
                           "--arch", ARCH, "--rule", "kp", "--seed", "0", "--out", str(run)],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 DDP ranks on this node" in proc.stderr  # dlwt's launcher (torchrun's signal handling lost saves)
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    rows = read_metrics(run)
    assert len(rows) == 1 and rows[0]["val_images"] == 360  # validation summed over both ranks' shards
    assert (run / "checkpoints" / "final.pt").is_file()


@pytest.mark.timeout(300)
def test_nan_under_ddp_stops_every_rank(digits, tmp_path):
    # gamma 1e40: epoch 2's lr overflows float32, so its first step makes the weights inf/NaN whatever the ranks'
    # batch split. (1e12 only makes the loss huge: BatchNorm keeps it finite on some splits, and the run passed.)
    params = digits_params(digits, epochs=2, gpus=2, schedule="step", milestones=[1], gamma=1e40)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))  # JSON's 1e+40 is a string to YAML 1.1
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dlwt", "train", "--params", str(tmp_path / "params.yaml"),
                           "--arch", ARCH, "--rule", "bp", "--seed", "0", "--out", str(run)],
                          capture_output=True, text=True, timeout=280)  # a hang would time out here
    assert proc.returncode != 0
    assert "at epoch 2, between steps" in proc.stderr and "lower the learning rate" in proc.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1

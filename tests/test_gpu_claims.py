"""GPU claims on a shared machine: the lock folder cannot be turned against its user (a planted symlink, a
folder of someone else's, a file, a read-only folder), and a GPU count that cannot be read stops the job
instead of letting it run unclaimed. DLWT_FAKE_GPUS stands in for the GPUs."""
import os

import pytest

from dlwt import devices
from dlwt.errors import DlwtError


@pytest.fixture
def locks(tmp_path, monkeypatch):
    monkeypatch.setenv("DLWT_FAKE_GPUS", "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "_HELD", [])
    folder = tmp_path / "locks"
    monkeypatch.setenv("DLWT_GPU_LOCKS", str(folder))
    yield folder
    for fd in devices._HELD:
        os.close(fd)


def test_the_lock_folder_is_made_private(locks):
    assert devices.claim_gpus(1) == [0]
    assert oct(locks.stat().st_mode & 0o777) == "0o700"
    assert oct((locks / "gpu0.lock").stat().st_mode & 0o777) == "0o600"


def test_a_planted_symlink_is_refused_and_its_target_untouched(locks, tmp_path):
    locks.mkdir(mode=0o700)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    (locks / "gpu0.lock").symlink_to(victim)
    with pytest.raises(DlwtError, match=r"gpu0.lock: .*symlink"):
        devices.claim_gpus(1)
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("mode", [0o755, 0o777])
def test_a_lock_folder_others_can_enter_is_refused(locks, mode):
    locks.mkdir()
    locks.chmod(mode)
    with pytest.raises(DlwtError, match=r"is not yours alone .*want uid \d+, 700"):
        devices.claim_gpus(1)


def test_a_lock_folder_that_is_a_file_is_one_line(locks):
    locks.write_text("")
    with pytest.raises(DlwtError, match="is not a folder"):
        devices.claim_gpus(1)


@pytest.mark.skipif(os.getuid() == 0, reason="root writes through read-only modes")
def test_a_read_only_lock_folder_is_one_line(locks):
    locks.mkdir(mode=0o500)
    with pytest.raises(DlwtError, match="read-only"):
        devices.claim_gpus(1)


def test_a_gpu_count_that_hangs_stops_the_job(monkeypatch):
    monkeypatch.delenv("DLWT_FAKE_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "COUNT_TIMEOUT_S", 0.01)  # the real child process, given no time
    with pytest.raises(DlwtError, match="counting this machine's GPUs took over .*CUDA_VISIBLE_DEVICES"):
        devices.claim_gpus(1)

"""Lock support of the cache folder, probed before any work: a file system that refuses ``flock`` (ENOLCK on NFS
without its lock service, EOPNOTSUPP or EINVAL on some FUSE and Lustre mounts) stops the run at once with a
message naming the folder, the error and what to do; a probe lock that is merely busy is no error."""
from __future__ import annotations

import errno
import fcntl
import os

import pytest
from conftest import write_grid

from benchmark import cli
from benchmark.storage import claims

REAL_FLOCK = fcntl.flock


def refusing(number):
    def flock(handle, operation):
        if operation & fcntl.LOCK_EX:
            raise OSError(number, os.strerror(number))
        return REAL_FLOCK(handle, operation)
    return flock


@pytest.mark.parametrize("number", [errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL])
def test_a_folder_refusing_locks_is_named_with_the_error_and_the_remedy(tmp_path, monkeypatch, number):
    monkeypatch.setattr(fcntl, "flock", refusing(number))
    with pytest.raises(claims.LocksUnsupported) as raised:
        claims.check_lock_support(tmp_path / "cache")
    message = str(raised.value)
    assert f"the cache folder {tmp_path / 'cache'} does not support file locks" in message
    assert errno.errorcode[number] in message and "--cache" in message and "mount" in message
    assert raised.value.errno == number
    with pytest.raises(claims.LocksUnsupported, match=errno.errorcode[number]), \
            claims.claim(tmp_path / "cache", "victims", "k"):  # a claim says the same
        pass


def test_a_busy_probe_is_no_error_and_locks_that_work_pass(tmp_path):
    claims.check_lock_support(tmp_path)
    probe = tmp_path / "claims" / f"{claims.PROBE_NAME}.lock"
    assert probe.exists()
    handle = os.open(probe, os.O_RDWR)
    try:
        REAL_FLOCK(handle, fcntl.LOCK_EX)  # another run probing at this moment
        claims.check_lock_support(tmp_path)
    finally:
        os.close(handle)


def test_a_run_on_such_a_folder_stops_before_any_cell(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fcntl, "flock", refusing(errno.ENOLCK))
    grid = write_grid(tmp_path / "grid.toml", '[[block]]\ndataset = "fashion_mnist"\nhashing = "dpsh"\n'
                                              'backbone = "smallcnn"\nbits = 16\nattack = "none"\n')
    code = cli.main(["run", "--grid", str(grid), "--results", str(tmp_path / "results"), "--cache",
                     str(tmp_path / "cache"), "--device", "cpu", "--threads", "1", "--no-leaderboard"])
    assert code != 0
    error = capsys.readouterr().err
    assert f"the cache folder {tmp_path / 'cache'} does not support file locks" in error and "ENOLCK" in error
    assert not list((tmp_path / "results").glob("*.parquet"))
    assert not (tmp_path / "cache" / "victims").exists()

"""bench_peers reports a missing peer as skipped instead of failing (no peer, no timing)."""

import sys

from benchmarks import bench_peers


def test_modelopt_skipped_without_its_interpreter(monkeypatch):
    monkeypatch.delenv(bench_peers.MODELOPT_PYTHON_ENV, raising=False)
    out = bench_peers._modelopt(quick=True)
    assert list(out) == ["skipped"] and bench_peers.MODELOPT_PYTHON_ENV in out["skipped"]


def test_modelopt_skipped_when_its_interpreter_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv(bench_peers.MODELOPT_PYTHON_ENV, str(tmp_path / "no-python"))
    assert "did not run" in bench_peers._modelopt(quick=True)["skipped"]


def test_a_peer_that_raises_is_reported_as_skipped():
    def broken(quick):
        raise RuntimeError("head_mask gone")

    out = bench_peers._guarded(broken, True)
    assert out == {"skipped": "failed at run time (RuntimeError: head_mask gone)"}


def test_peer_path_goes_first_on_sys_path(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv(bench_peers.PEERS_PATH_ENV, str(tmp_path))
    bench_peers._add_peer_path()
    assert sys.path[0] == str(tmp_path)

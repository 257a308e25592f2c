"""Ray indexing checks of the default suite: without the [ray] extra, ``--ray`` / ``Library.index(ray=...)``
fail with one line naming it; the actor counts fit the cluster (the slow tests are in test_runtime_ray)."""

from __future__ import annotations

import sys

import pytest

from edge_xmr import Library
from edge_xmr.cli import main
from edge_xmr.ray_index import RayIndexError, RayOptions


@pytest.fixture()
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError


def test_library_names_the_extra(no_ray, tmp_path, photo_tree, fake_bundle):
    with Library.open(tmp_path / "i.db", fake_bundle) as lib:
        with pytest.raises(RayIndexError, match=r"pip install 'edge-xmr\[ray\]'"):
            lib.index(photo_tree, ray=RayOptions())
        assert lib.count() == 0


def test_cli_ray_without_the_extra_is_one_line_exit_2(no_ray, fake_cli, tmp_path, photo_tree, capsys):
    assert main(["index", str(photo_tree), "--db", str(tmp_path / "i.db"), "--ray", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "edge-xmr[ray]" in err


def test_actor_counts_fit_the_cluster():
    """Defaults split the CPUs between encoders and decoders; a split that cannot fit is refused
    (Ray would wait for the missing CPUs forever)."""
    pytest.importorskip("ray")
    from edge_xmr.ray_index import RayPipeline

    assert RayPipeline().actors(2) == (1, 1)
    assert RayPipeline().actors(16) == (8, 8)
    assert RayPipeline(RayOptions(encoder_threads=2)).actors(16) == (4, 8)
    with pytest.raises(RayIndexError, match="1 CPUs"):
        RayPipeline().actors(1)
    with pytest.raises(RayIndexError, match="need 3"):
        RayPipeline(RayOptions(encoder_threads=2)).actors(2)

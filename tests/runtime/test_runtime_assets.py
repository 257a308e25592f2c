"""Photos fed by an app's asset ids and modification stamps (``Library.sync_assets``), fake bundle."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
import pytest
from PIL import Image
from runtime_fakes import FakeBundle

from edge_xmr import Library
from edge_xmr.assets import Asset


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


class App:
    """A photo library as an app sees it: id -> (stamp, bytes); counts the loads."""

    def __init__(self, n: int):
        self.photos = {f"{i:04X}-UUID/L0/001": (1000 + i, _jpeg(i)) for i in range(n)}
        self.loads: list[str] = []

    def assets(self) -> list[Asset]:
        return [Asset(i, stamp, self._loader(i), taken=datetime(2021, 5, 1 + n % 27, 12, 0))
                for n, (i, (stamp, _)) in enumerate(sorted(self.photos.items()))]

    def _loader(self, i: str):
        def load() -> bytes:
            self.loads.append(i)
            return self.photos[i][1]
        return load


@pytest.fixture()
def lib(tmp_path):
    with Library.open(tmp_path / "i.db", FakeBundle()) as lib:
        yield lib


def _stored(lib: Library) -> dict[str, int]:
    rows = lib.store.connection.execute("SELECT path, mtime_ns, size, hash FROM photos").fetchall()
    assert all(size == 0 and bytes(h) == b"" for _, _, size, h in rows)  # nothing of the original
    return {str(p): int(m) for p, m, _, _ in rows}


def test_sync_is_incremental_by_stamp(lib):
    app = App(5)
    r = lib.sync_assets(app.assets())
    assert (r.seen, r.added, r.unchanged, r.updated, r.removed) == (5, 5, 0, 0, 0)
    assert len(app.loads) == 5
    want = {f"asset:{i}": s for i, (s, _) in app.photos.items()}
    assert _stored(lib) == want
    app.loads.clear()
    r = lib.sync_assets(app.assets())
    assert (r.added, r.unchanged, r.updated) == (0, 5, 0) and app.loads == []  # no download
    first = sorted(app.photos)[0]
    old_id = lib.store.key_id(f"asset:{first}")
    app.photos[first] = (5000, _jpeg(99))  # edited in the app: new stamp, new pixels
    r = lib.sync_assets(app.assets())
    assert (r.added, r.unchanged, r.updated) == (0, 4, 1) and app.loads == [first]
    new_id = lib.store.key_id(f"asset:{first}")
    fresh = lib.bundle.encode_images([Image.open(io.BytesIO(_jpeg(99))).convert("RGB").resize((32, 32))])[0]
    np.testing.assert_allclose(lib.store.embeddings([new_id])[0], fresh[0], atol=0.02)
    assert old_id != new_id and lib.count() == 5


def test_ids_left_out_are_removed_only_by_a_complete_sync(lib):
    app = App(4)
    lib.sync_assets(app.assets())
    part = app.assets()[:2]
    assert lib.sync_assets(part).removed == 0 and lib.count() == 4  # a partial list: nothing removed
    r = lib.sync_assets(part, complete=True)
    assert r.removed == 2 and sorted(_stored(lib)) == sorted(f"asset:{a.id}" for a in part)
    assert lib.remove_assets([part[0].id, "never-indexed"]) == 1 and lib.count() == 1


def test_hits_name_the_asset_and_its_capture_time(lib):
    app = App(3)
    lib.sync_assets(app.assets())
    hits = lib.search("a photo", k=3)
    by_id = {a.id: a for a in app.assets()}
    assert sorted(h.asset_id for h in hits) == sorted(by_id)
    for h in hits:
        assert h.taken == by_id[h.asset_id].taken and (h.width, h.height) == (64, 48)
    assert lib.similar(hits[0].photo_id, k=2)[0].asset_id in by_id


def test_files_and_assets_live_side_by_side(lib, photo_tree):
    lib.index(photo_tree)
    lib.sync_assets(App(2).assets(), complete=True)
    assert lib.count() == 11
    assert lib.index(photo_tree).removed == 0 and lib.count() == 11  # a folder sync leaves assets alone
    lib.sync_assets([], complete=True)
    assert lib.count() == 9 and all(h.asset_id is None for h in lib.search("x", k=9))


def test_loader_failures_are_recorded_and_retried_as_for_files(lib):
    app = App(3)
    lib.sync_assets(app.assets())
    a, b, c = sorted(app.photos)
    calls: list[str] = []

    def offline() -> bytes:
        calls.append("offline")
        raise OSError("iCloud download failed")

    def garbage() -> bytes:
        calls.append("garbage")
        return b"not an image"

    batch = [Asset(a, 2000, offline), Asset(b, 2000, garbage), Asset(c, app.photos[c][0], app.assets()[2].load)]
    r = lib.sync_assets(batch)
    assert (r.skipped, r.unchanged) == (2, 1)
    assert lib.store.key_id(f"asset:{a}") is not None  # could not fetch the new version: old one kept
    assert lib.store.key_id(f"asset:{b}") is None  # its new data is no image: it is gone
    reasons = dict(lib.stats().skipped_files)
    assert "iCloud download failed" in reasons[f"asset:{a}"] and "cannot decode" in reasons[f"asset:{b}"]
    calls.clear()
    r = lib.sync_assets(batch)
    assert calls == ["offline"] and r.unchanged == 2  # bad data: not again until the stamp changes
    r = lib.sync_assets([Asset(b, 2001, lambda: app.photos[b][1])])
    assert r.added == 1 and f"asset:{b}" not in dict(lib.stats().skipped_files)


def test_pil_images_and_arrays_are_accepted(lib):
    arr = np.random.default_rng(0).integers(0, 255, (40, 30, 3), np.uint8)
    r = lib.sync_assets([Asset("pil", 1, lambda: Image.fromarray(arr)), Asset("np", 1, lambda: arr)])
    assert r.added == 2
    e = lib.store.embeddings([lib.store.key_id("asset:pil"), lib.store.key_id("asset:np")])
    np.testing.assert_allclose(e[0], e[1], atol=1e-6)


@pytest.mark.parametrize("bad", [Asset("", 1, bytes), Asset("x", "7", bytes), Asset("x", True, bytes)])  # type: ignore[arg-type]
def test_bad_ids_and_stamps_are_refused(lib, bad):
    with pytest.raises(ValueError):
        lib.sync_assets([bad])


def test_an_id_given_twice_is_refused(lib):
    with pytest.raises(ValueError, match="twice"):
        lib.sync_assets([Asset("x", 1, bytes), Asset("x", 2, bytes)])

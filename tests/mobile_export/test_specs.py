"""The declarative graph specs: one per graph, names as in docs/bundle.md, every spec tested."""

from __future__ import annotations

from pathlib import Path

from edge_xmr.config import preset
from mobile_export.specs import DYNAMIC_DIMS, GRAPHS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "bundle.md").read_text()
TESTED = {"text_encoder", "image_encoder", "cross_encoder"}  # graphs with parity tests below / in test_export


def test_every_registered_graph_is_tested():
    assert set(GRAPHS) == TESTED


def test_names_match_the_bundle_contract():
    for name, spec in GRAPHS.items():
        assert spec.name == name and f"| {name} |" in DOC
        for t in spec.inputs + spec.outputs:
            assert f"`{t.name}` {t.dtype}" in DOC, (name, t.name)


def test_dynamic_axes_and_shapes():
    cfg = preset("tiny")
    assert GRAPHS["text_encoder"].dynamic_axes() == {
        "input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
        "text_embeds": {0: "batch"}, "text_states": {1: "batch", 2: "length"}}
    assert GRAPHS["text_encoder"].io(cfg)["outputs"][1]["shape"] == [cfg.cross_layers + 1, "batch", "length",
                                                                   cfg.text.width]
    cross = GRAPHS["cross_encoder"]
    assert cross.dynamic_axes()["image_tokens"] == {0: "n"} and cross.dynamic_axes()["joint"] == {0: "n"}
    io = GRAPHS["image_encoder"].io(cfg)
    assert io["outputs"][1]["shape"] == ["batch", cfg.n_image_tokens, cfg.token_dim]
    assert GRAPHS["image_encoder"].io(cfg)["inputs"][0]["shape"] == ["batch", 3, 32, 32]


def test_dummy_inputs_follow_the_spec():
    import numpy as np

    cfg = preset("tiny")
    for spec in GRAPHS.values():
        for sizes in (spec.export_sizes, *spec.parity_sizes):
            feeds = spec.dummy(cfg, sizes, np.random.default_rng(0))
            assert list(feeds) == [t.name for t in spec.inputs]
            for t in spec.inputs:
                shape = [sizes[d] if d in DYNAMIC_DIMS else d for d in spec.concrete_shape(t, cfg)]
                assert list(feeds[t.name].shape) == shape and feeds[t.name].dtype == t.dtype
        assert all(v >= 2 for v in spec.export_sizes.values())  # no dim specialised at trace time
        assert any(s.get("n", s.get("batch")) == 1 for s in spec.parity_sizes)  # n = 1 / batch = 1 checked

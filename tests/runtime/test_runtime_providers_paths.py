"""Execution-provider choice and reporting; the platform's default locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_xmr import paths, providers
from edge_xmr.providers import CPU, ProviderError, choose_providers


def test_ranking_prefers_accelerators_and_ends_with_cpu():
    avail = [CPU, "OpenVINOExecutionProvider", "AzureExecutionProvider", "CUDAExecutionProvider",
             "TensorrtExecutionProvider", "CoreMLExecutionProvider"]
    assert choose_providers(None, avail) == ["CoreMLExecutionProvider", "CUDAExecutionProvider",
                                             "TensorrtExecutionProvider", "OpenVINOExecutionProvider", CPU]
    assert choose_providers(None, [CPU, "AzureExecutionProvider"]) == [CPU]
    assert choose_providers(None, ["XnnpackExecutionProvider", CPU, "NnapiExecutionProvider"]) == [
        "NnapiExecutionProvider", "XnnpackExecutionProvider", CPU]


def test_override_aliases_and_missing_provider(monkeypatch):
    avail = ["CUDAExecutionProvider", "DmlExecutionProvider", CPU]
    assert choose_providers("dml", avail) == ["DmlExecutionProvider", CPU]
    assert choose_providers(["cpu"], avail) == [CPU]
    assert choose_providers("CUDAExecutionProvider,cpu", avail) == ["CUDAExecutionProvider", CPU]
    with pytest.raises(ProviderError, match="not available in this onnxruntime build"):
        choose_providers("coreml", avail)
    with pytest.raises(ProviderError, match="unknown execution provider"):
        choose_providers("warp-drive", avail)
    monkeypatch.setenv(providers.PROVIDERS_ENV, "cpu")
    assert choose_providers(None, avail) == [CPU]


def test_threads(monkeypatch):
    monkeypatch.delenv(providers.THREADS_ENV, raising=False)
    assert providers.thread_count(None) == 0 and providers.thread_count(3) == 3
    monkeypatch.setenv(providers.THREADS_ENV, "2")
    assert providers.thread_count(None) == 2
    with pytest.raises(ValueError):
        providers.thread_count(-1)


def test_session_reports_the_provider_that_runs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    sess = providers.create_session(tmp_path / "m.onnx", providers="cpu", threads=1)
    assert providers.active_provider(sess) == CPU
    sess = providers.create_session(tmp_path / "m.onnx")  # automatic choice
    assert providers.active_provider(sess) in providers.available_providers()
    with pytest.raises(ProviderError):
        providers.create_session(tmp_path / "m.onnx", providers="coreml" if "CoreMLExecutionProvider"
                                 not in providers.available_providers() else "qnn")


def test_default_locations(monkeypatch):
    home = Path("/home/u")
    assert paths.data_dir("linux", {}, home) == home / ".local/share/edge-xmr"
    assert paths.data_dir("linux", {"XDG_DATA_HOME": "/x"}, home) == Path("/x/edge-xmr")
    assert paths.data_dir("darwin", {}, home) == home / "Library/Application Support/edge-xmr"
    assert paths.data_dir("win32", {"LOCALAPPDATA": "C:/Users/u/AppData/Local"}, home) == \
        Path("C:/Users/u/AppData/Local/edge-xmr")
    monkeypatch.setenv(paths.DB_ENV, "/tmp/my.db")
    assert paths.default_db_path() == Path("/tmp/my.db")
    monkeypatch.delenv(paths.DB_ENV)
    assert paths.default_db_path().name == "library.db"
    monkeypatch.setenv(paths.BUNDLE_ENV, "/b")
    assert paths.default_bundle_dir() == Path("/b")

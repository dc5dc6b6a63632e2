"""prefkit.models.native: the C++ operators build and load once, ``prefkit_native::
packed_linear`` computes ``x W^T + b`` through the packed copy held for ``W`` (and ``F.linear``
where none is held), the copies are held only inside a packing context, a compiled decode step
calls the C++ operator from inductor's C++ wrapper with the tokens of the eager loop, and where
the operators cannot be built the reason is given and the Python paths stay."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prefkit.models import native
from prefkit.models.packed_linear import packed_linears, packing_unsupported

needs_native = pytest.mark.skipif(
    packing_unsupported(nn.Linear(2, 2)) is not None or native.native_unavailable() is not None,
    reason=f"{packing_unsupported(nn.Linear(2, 2)) or native.native_unavailable()}")


@needs_native
def test_operator_uses_the_held_pack_and_linear_otherwise():
    torch.manual_seed(0)
    layer, other = nn.Linear(48, 40), nn.Linear(48, 40)
    x = torch.randn(3, 5, 48)
    op = torch.ops.prefkit_native.packed_linear
    with torch.no_grad():
        assert torch.equal(op(x, other.weight, other.bias), F.linear(x, other.weight, other.bias))
        assert torch.ops.prefkit_native.held_count() == 0
        with packed_linears(layer, rows=16) as n:
            assert n == 1 and torch.ops.prefkit_native.held_count() == 1
            got = op(x, layer.weight, layer.bias)
            torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias),
                                       rtol=1e-5, atol=1e-5)
            # the operator reads the copy held for the weight's address, not the weight:
            # a copy of -2 W shows in the result
            torch.ops.prefkit_native.hold(
                layer.weight, torch.ops.mkldnn._reorder_linear_weight(-2.0 * layer.weight, 16))
            torch.testing.assert_close(op(x, layer.weight, None), -2.0 * F.linear(x, layer.weight),
                                       rtol=1e-5, atol=1e-5)
            # float64 input: no oneDNN float32 copy applies, F.linear does it
            x64, w64 = x.double(), layer.weight.double()
            assert torch.equal(op(x64, w64, None), F.linear(x64, w64))
        assert torch.ops.prefkit_native.held_count() == 0


@needs_native
def test_the_library_is_built_once_into_the_cache():
    path = native.library_path(native.cpp_compiler())
    assert path.exists() and path.parent.parent.name == "native"
    assert native.native_unavailable() is None and native.is_loaded()


def test_without_a_compiler_the_reason_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path))
    reason = native.native_unavailable.__wrapped__()
    assert reason.startswith("no C++ compiler on PATH (g++, c++, clang++ or $CXX)")
    assert not (tmp_path / "native").exists()


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("PREFKIT_NATIVE", "0")
    assert native.native_unavailable.__wrapped__() == \
        "prefkit's C++ operators are turned off ($PREFKIT_NATIVE=0)"


@pytest.mark.parametrize("loaded", [False, True])
def test_compiled_forward_calls_the_cpp_operator_only_when_loaded(loaded, monkeypatch):
    if loaded and native.native_unavailable() is not None:
        pytest.skip(native.native_unavailable())
    monkeypatch.setattr(native, "_LOADED", ["loaded"] if loaded else [])
    torch.manual_seed(0)
    net, x = nn.Linear(8, 4), torch.randn(3, 8)
    graphs: list[str] = []

    def backend(gm, example_inputs):  # records the compiled graph, runs it as traced
        graphs.append(gm.code)
        return gm.forward

    with torch.no_grad(), packed_linears(net):
        got = torch.compile(net, backend=backend, dynamic=False)(x)
    torch._dynamo.reset()
    torch.testing.assert_close(got, F.linear(x, net.weight, net.bias), rtol=1e-5, atol=1e-5)
    assert ("prefkit_native.packed_linear" in graphs[0]) is loaded
    assert ("prefkit.packed_linear" in graphs[0]) is not loaded


@needs_native
def test_a_compile_error_is_a_reason_not_an_exception(tmp_path, monkeypatch):
    bad = tmp_path / "bad.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCES", (bad, *native.SOURCES[1:]))
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "cache"))
    reason = native.native_unavailable.__wrapped__()
    assert reason.startswith("building prefkit's C++ operators with") and "exit" in reason
    assert "bad.cpp" in reason  # the compiler's own message, naming the file
    built = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in built if p.is_file()]  # no half-written library left behind


@pytest.mark.slow
@needs_native
def test_compiled_decode_step_calls_the_cpp_operator_with_the_eager_tokens():
    """inductor's C++ wrapper runs the step: the profiler sees the C++ operator once per
    linear layer per step (7 per layer + the head), and the tokens equal the eager loop's."""
    from online_helpers import tiny_sort_decoder
    from prefkit.models.decode import DecodeSettings, StaticCacheBackend

    tok, rows, model = tiny_sort_decoder(4, 4)
    s = DecodeSettings(max_new_tokens=8, min_new_tokens=8, temperature=1.0,
                       eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, batch_size=16)
    compiled = StaticCacheBackend(compile=True)
    compiled.generate(model, rows, s, seed=1)  # compiles
    with torch.profiler.profile() as prof:
        got = compiled.generate(model, rows, s, seed=2)
    calls = sum(e.count for e in prof.key_averages() if e.key == "prefkit_native::packed_linear")
    assert calls == (2 * 7 + 1) * 7  # 7 decode steps after the prefill's logits
    assert got.ids == StaticCacheBackend().generate(model, rows, s, seed=2).ids
    assert torch.ops.prefkit_native.held_count() == 0


def test_compiled_decode_warns_once_when_the_operator_is_missing(monkeypatch):
    from prefkit.models import packed_linear

    monkeypatch.setattr(native, "native_unavailable", lambda: "no C++ compiler on PATH")
    with pytest.warns(UserWarning, match=r"without prefkit's C\+\+ operator \(no C\+\+ "
                                         r"compiler on PATH\).*the same tokens, slower"):
        packed_linear._native_for_compiled.__wrapped__()
    monkeypatch.setenv("PREFKIT_NATIVE", "0")  # asked for: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed_linear._native_for_compiled.__wrapped__()


@pytest.mark.slow
@needs_native
def test_a_fresh_cache_builds_the_library_in_a_new_process(tmp_path):
    """The build itself (the suite's other tests may find the library already built): a new
    process with an empty cache compiles it once for two threads asking at once, loads it and
    runs the operator."""
    import os
    import subprocess
    import sys

    code = ("import threading, torch\nfrom prefkit.models import native\n"
            "said = []\n"
            "ask = lambda: said.append(native.native_unavailable.__wrapped__())\n"
            "threads = [threading.Thread(target=ask) for _ in range(2)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "print(*said)\n"
            "print(native.native_unavailable())\n"
            "w, x = torch.randn(4, 8), torch.randn(3, 8)\n"
            "print(torch.equal(torch.ops.prefkit_native.packed_linear(x, w, None), x @ w.T))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=False,
                          env={**os.environ, "PREFKIT_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["None", "None", "None", "True"]  # two threads at once
    built = list((tmp_path / "native").glob("*/prefkit_native.so"))
    assert len(built) == 1 and not list((tmp_path / "native").glob("*/*.tmp*"))

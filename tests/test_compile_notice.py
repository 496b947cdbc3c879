"""The compile notice: numba compiles of servegym code are announced on stderr, once, with their duration."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from servegym.envs.sim.jit import _CompileNotice


def _event(module: str, name: str = "advance"):
    fn = SimpleNamespace(__module__=module, __qualname__=name)
    return SimpleNamespace(data={"dispatcher": SimpleNamespace(py_func=fn)})


def _compile(notice, outer, inner=()):
    notice.on_start(outer)
    for ev in inner:
        notice.on_start(ev)
    if notice.timer is not None:
        notice.timer.join()  # the delay is zero: the announcement has been printed (or cancelled)
    for ev in inner:
        notice.on_end(ev)
    notice.on_end(outer)


@pytest.fixture
def notice(monkeypatch):
    monkeypatch.delenv("SERVEGYM_QUIET_COMPILE", raising=False)
    n = _CompileNotice()
    n.DELAY_S = 0.0
    return n


def test_outer_servegym_compile_is_announced_once_with_its_duration(notice, capsys):
    outer = _event("servegym.envs.sim.core", "advance")
    _compile(notice, outer, [_event("servegym.envs.sim.replica", "launch"), _event("numba.np", "impl")])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("servegym: compiling servegym.envs.sim.core.advance ")
    assert "cached in" in err[0]
    assert err[1].startswith("servegym: compile finished in ")
    assert notice.depth == 0


def test_other_libraries_and_quiet_mode_print_nothing(notice, capsys, monkeypatch):
    _compile(notice, _event("numba.np.arraymath", "impl"))
    monkeypatch.setenv("SERVEGYM_QUIET_COMPILE", "1")
    _compile(notice, _event("servegym.envs.sim.core", "advance"))
    assert capsys.readouterr().err == ""
    assert notice.depth == 0


def test_a_quick_compile_is_not_announced(capsys, monkeypatch):
    monkeypatch.delenv("SERVEGYM_QUIET_COMPILE", raising=False)
    n = _CompileNotice()  # default delay: the compile below ends long before it
    outer = _event("servegym.envs.sim.core", "finalize")
    n.on_start(outer)
    n.on_end(outer)
    assert capsys.readouterr().err == ""


def test_a_function_without_a_module_is_ignored(notice, capsys):
    nameless = _event("servegym.x")
    nameless.data["dispatcher"].py_func.__module__ = None  # what exec() without __name__ gives
    _compile(notice, nameless)
    assert capsys.readouterr().err == "" and notice.depth == 0

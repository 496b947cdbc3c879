"""Data directory, registry, and the download/verify/cache logic, on local files only (no network)."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import pytest

from servegym.envs import data as sgdata


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class FakeOpener:
    """Stands in for urllib.request.urlopen; records every URL it is asked for."""

    def __init__(self, payload: bytes, fail_after: int | None = None):
        self.payload, self.fail_after, self.calls = payload, fail_after, []

    def __call__(self, url: str):
        self.calls.append(url)
        if self.fail_after is None:
            return io.BytesIO(self.payload)
        opener = self

        class Broken(io.BytesIO):
            def read(self, n=-1):
                if self.tell() >= opener.fail_after:
                    raise ConnectionError("connection reset")
                return super().read(min(n, opener.fail_after - self.tell()))

        return Broken(self.payload)


@pytest.fixture
def entry(monkeypatch):
    payload = b"arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n"
    src = sgdata.DataSource(
        "unit_test", "https://example.invalid/t.csv", "unit/t.csv", _sha(payload), "MIT", "t"
    )
    monkeypatch.setitem(sgdata.REGISTRY, "unit_test", src)
    return src, payload


def _no_parts(folder: Path) -> bool:
    return not list(folder.glob(".*.part"))


# ---------------------------------------------------------------- data_dir / resolve


def test_data_dir_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "/nowhere")
    assert sgdata.data_dir() == tmp_path.resolve()


def test_data_dir_relative_env_var_is_taken_from_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SERVEGYM_DATA_DIR", "../shared/data")
    assert sgdata.data_dir() == (tmp_path / "../shared/data").resolve()


def test_data_dir_respects_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SERVEGYM_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sgdata.data_dir() == tmp_path / "xdg" / "servegym" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sgdata.data_dir() == tmp_path / "home" / ".cache" / "servegym" / "data"


def test_resolve_missing_file_explains_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path))
    rel = sgdata.REGISTRY["azure_conv_2023"].rel_path
    with pytest.raises(FileNotFoundError) as ei:
        sgdata.resolve_data_path(rel)
    msg = str(ei.value)
    assert str(tmp_path / rel) in msg
    assert "SERVEGYM_DATA_DIR" in msg
    assert "python -m servegym.envs.data fetch azure_conv_2023" in msg


def test_resolve_present_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f.csv").write_text("a")
    assert sgdata.resolve_data_path("x/f.csv") == tmp_path / "x" / "f.csv"


def test_registry_is_well_formed():
    rels = [s.rel_path for s in sgdata.REGISTRY.values()]
    assert len(rels) == len(set(rels))
    for name, s in sgdata.REGISTRY.items():
        assert s.name == name
        assert s.url.startswith("https://")
        assert s.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", s.sha256)
    for required in ("azure_conv_2023", "azure_code_2023", "azure_conv_2024", "azure_code_2024"):
        assert required in sgdata.REGISTRY
    assert {"mooncake_synthetic", "burstgpt"} <= set(sgdata.REGISTRY)


def test_pinned_hashes_match_the_shared_reference_copies():
    d = os.environ.get("SERVEGYM_DATA_DIR")
    if not d:
        pytest.skip("SERVEGYM_DATA_DIR is not set (CI sets ../shared/data)")
    status = sgdata.verify()
    present = {n: st for n, st in status.items() if st != "missing"}
    if not present:
        pytest.skip(f"no registry file present under {d}")
    assert all(st == "ok" or st.startswith("unpinned") for st in present.values()), present


# ---------------------------------------------------------------- download_verified


def test_download_file_url_with_real_urlopen(tmp_path):
    payload = b"hello trace\n" * 1000
    src = tmp_path / "upstream.bin"
    src.write_bytes(payload)
    target = tmp_path / "cache" / "sub" / "f.bin"
    got = sgdata.download_verified(src.as_uri(), target, _sha(payload))
    assert got == _sha(payload)
    assert target.read_bytes() == payload
    assert _no_parts(target.parent)


def test_checksum_mismatch_raises_with_both_hashes_and_leaves_nothing(tmp_path):
    payload = b"tampered"
    src = tmp_path / "upstream.bin"
    src.write_bytes(payload)
    target = tmp_path / "cache" / "f.bin"
    wrong = "0" * 64
    with pytest.raises(sgdata.ChecksumError) as ei:
        sgdata.download_verified(src.as_uri(), target, wrong)
    assert wrong in str(ei.value) and _sha(payload) in str(ei.value)
    assert not target.exists()
    assert _no_parts(target.parent)


def test_mismatch_keeps_the_previous_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(sgdata.ChecksumError):
        sgdata.download_verified("x", target, "0" * 64, url_opener=FakeOpener(b"new"))
    assert target.read_bytes() == b"old"
    assert _no_parts(tmp_path)


def test_interrupted_download_cleans_up(tmp_path):
    target = tmp_path / "f.bin"
    opener = FakeOpener(b"x" * (3 << 20), fail_after=1 << 20)
    with pytest.raises(ConnectionError):
        sgdata.download_verified("x", target, None, url_opener=opener)
    assert not target.exists()
    assert _no_parts(tmp_path)


# ---------------------------------------------------------------- fetch (cache logic)


def test_fetch_downloads_once_then_uses_cache(entry, tmp_path):
    src, payload = entry
    opener = FakeOpener(payload)
    logs: list[str] = []
    path = sgdata.fetch("unit_test", tmp_path, url_opener=opener, log=logs.append)
    assert path == tmp_path / src.rel_path
    assert path.read_bytes() == payload
    assert opener.calls == [src.url]
    again = sgdata.fetch("unit_test", tmp_path, url_opener=opener, log=logs.append)
    assert again == path
    assert opener.calls == [src.url]  # not downloaded again
    assert any("present and verified" in m for m in logs)


def test_fetch_replaces_a_corrupt_cached_file(entry, tmp_path):
    src, payload = entry
    target = tmp_path / src.rel_path
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupt")
    opener = FakeOpener(payload)
    sgdata.fetch("unit_test", tmp_path, url_opener=opener, log=lambda m: None)
    assert opener.calls == [src.url]
    assert target.read_bytes() == payload


def test_fetch_with_upstream_change_raises_and_keeps_nothing(entry, tmp_path):
    src, _ = entry
    with pytest.raises(sgdata.ChecksumError):
        sgdata.fetch("unit_test", tmp_path, url_opener=FakeOpener(b"changed upstream"), log=lambda m: None)
    assert not (tmp_path / src.rel_path).exists()
    assert _no_parts((tmp_path / src.rel_path).parent)


def test_fetch_unpinned_reports_the_computed_hash(monkeypatch, tmp_path):
    payload = b"no hash known"
    monkeypatch.setitem(
        sgdata.REGISTRY, "unpinned", sgdata.DataSource("unpinned", "u", "u/f.bin", None, "MIT", "t")
    )
    logs: list[str] = []
    opener = FakeOpener(payload)
    sgdata.fetch("unpinned", tmp_path, url_opener=opener, log=logs.append)
    assert any(_sha(payload) in m and "NOT verified" in m for m in logs)
    sgdata.fetch("unpinned", tmp_path, url_opener=opener, log=logs.append)
    assert len(opener.calls) == 1  # present: kept
    sgdata.fetch("unpinned", tmp_path, url_opener=opener, log=logs.append, force=True)
    assert len(opener.calls) == 2


def test_fetch_default_destination_is_data_dir(entry, monkeypatch, tmp_path):
    src, payload = entry
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path / "dd"))
    path = sgdata.fetch("unit_test", url_opener=FakeOpener(payload), log=lambda m: None)
    assert path == tmp_path / "dd" / src.rel_path


def test_fetch_unknown_name():
    with pytest.raises(KeyError, match="unknown data source"):
        sgdata.fetch("no_such_trace")


def test_verify_statuses(entry, tmp_path):
    src, payload = entry
    assert sgdata.verify(["unit_test"], tmp_path) == {"unit_test": "missing"}
    (tmp_path / src.rel_path).parent.mkdir(parents=True)
    (tmp_path / src.rel_path).write_bytes(payload)
    assert sgdata.verify(["unit_test"], tmp_path) == {"unit_test": "ok"}
    (tmp_path / src.rel_path).write_bytes(b"x")
    assert sgdata.verify(["unit_test"], tmp_path)["unit_test"] == f"mismatch {_sha(b'x')}"


def test_cli(entry, monkeypatch, tmp_path, capsys):
    src, payload = entry
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path))
    assert sgdata.main(["list"]) == 0
    assert "unit_test" in capsys.readouterr().out
    assert sgdata.main(["fetch", "nope"]) == 2
    assert sgdata.main(["verify", "unit_test"]) == 0
    (tmp_path / src.rel_path).parent.mkdir(parents=True)
    (tmp_path / src.rel_path).write_bytes(b"bad")
    assert sgdata.main(["verify", "unit_test"]) == 1
    assert "mismatch" in capsys.readouterr().out

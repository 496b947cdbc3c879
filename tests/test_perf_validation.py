"""The independent public measurements (envs/perf/validation/*.csv) and how the validation table uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servegym.envs.perf import external
from servegym.envs.perf.model import iteration_time_py, load_perf_coefficients
from servegym.envs.perf.specs import MODELS

HEADER = ",".join(external.COLUMNS)


def _write(tmp_path: Path, rows: list[str], name: str = "x.csv") -> Path:
    (tmp_path / name).write_text("# provenance line\n" + "\n".join([HEADER, *rows]) + "\n")
    return tmp_path


def test_shipped_sources_cover_both_model_sizes_and_both_gpus() -> None:
    cells = external.load_cells()
    sources = {c.source for c in cells}
    assert len(sources) >= 3
    assert not any("splitwise" in s or "sageserve" in s for s in sources)  # fit source / kept aside
    small = {c.gpu for c in cells if MODELS[c.model].num_params < 10e9}
    large = {c.gpu for c in cells if MODELS[c.model].num_params > 60e9}
    assert small >= {"a100-80gb", "h100-80gb"} and large >= {"a100-80gb", "h100-80gb"}
    assert {c.metric for c in cells} == set(external.METRICS)  # prefill, decode and end-to-end cells


def test_every_shipped_file_states_provenance_and_licence() -> None:
    for path in sorted(external.VALIDATION_DIR.glob("*.csv")):
        head = "\n".join(ln for ln in path.read_text().splitlines() if ln.startswith("#")).lower()
        assert "https://" in head and "licence" in head and "read 2026" in head, path.name
        assert "not used in any fit" in head, path.name


def test_every_source_names_an_engine_profile() -> None:
    for c in external.load_cells():
        assert external.engine_for(c) == external.SOURCE_ENGINES[c.source]
    c = external.load_cells()[0]
    assert external.engine_for(c, "none") == "none"  # --engine overrides every source
    with pytest.raises(ValueError, match="unknown engine"):
        external.engine_for(c, "tgi")


def test_unknown_source_is_rejected_with_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path, ["mystery,llama-2-7b,a100-80gb,1,1,128,1,ttft,10"])
    with pytest.raises(ValueError, match=r"x\.csv:3: source 'mystery' has no engine profile.*SOURCE_ENGINES"):
        external.load_cells(tmp_path)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("vllm_nightly,llama-2-7b,a100-80gb,1,1,128,1,itl,10", "metric 'itl'"),
        ("vllm_nightly,llama-2-7b,a100-80gb,1,0,128,1,ttft,10", "counts must be >= 1"),
        ("vllm_nightly,llama-2-7b,a100-80gb,1,1,128,1,ttft,-3", "measured_ms > 0"),
        ("vllm_nightly,llama-2-7b,a100-80gb,one,1,128,1,ttft,10", "x.csv:3"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, row: str, match: str) -> None:
    _write(tmp_path, [row])
    with pytest.raises(ValueError, match=match):
        external.load_cells(tmp_path)


def test_wrong_columns_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("source,model\nvllm_nightly,llama-2-7b\n")
    with pytest.raises(ValueError, match="bad.csv: columns"):
        external.load_cells(tmp_path)


def test_prediction_replays_the_request_shape() -> None:
    """ttft = one prefill of the batch; decode = mean of the growing-context steps; e2e = prefill + steps."""
    kw = {"source": "vllm_nightly", "model": "llama-3-8b", "gpu": "h100-80gb", "tp": 1, "batch": 8}
    shape = {"prompt_tokens": 32, "output_tokens": 128, "measured_ms": 1.0}
    ttft, decode, e2e = (
        external.predict_ms(external.Cell(**kw, **shape, metric=m)) for m in external.METRICS
    )
    coef = load_perf_coefficients("llama-3-8b", "h100-80gb", 1, "vllm")
    assert ttft == pytest.approx(1e3 * iteration_time_py(coef, 256, 8 * 32 * 33 / 2, 0, 0))
    first, last = (1e3 * iteration_time_py(coef, 0, 0, 8, 8 * (32 + k)) for k in (1, 127))
    assert first <= decode <= last and first < last
    assert e2e == pytest.approx(ttft + 127 * decode)


def test_summary_flags_a_group_that_misses_its_goal(tmp_path: Path) -> None:
    c = external.Cell("vllm_nightly", "llama-2-7b", "a100-80gb", 1, 1, 128, 1, "ttft", 1.0)
    p = external.predict_ms(c)
    rows = [
        f"vllm_nightly,llama-2-7b,a100-80gb,1,1,128,1,ttft,{p:.6f}",  # exact
        f"vllm_nightly,llama-2-7b,a100-80gb,1,1,128,2,ttft,{p / 1.2:.6f}",  # 20% slow: MAPE 10, worst +20
    ]
    (row,) = external.summarize(external.load_cells(_write(tmp_path, rows)))
    assert row["n"] == 2 and row["engine"] == "vllm"
    assert row["mape"] == pytest.approx(10.0, abs=0.05) and row["worst"] == pytest.approx(20.0, abs=0.05)
    assert row["met"] is True  # prefill goal: MAPE <= 15, every cell within 25
    (rows_none,) = external.summarize(external.load_cells(tmp_path), engine="none")
    assert rows_none["engine"] == "none" and rows_none["bias"] < row["bias"]  # no host costs: faster
    (tmp_path / "x.csv").write_text(
        "\n".join([HEADER, f"vllm_nightly,llama-2-7b,a100-80gb,1,1,128,1,ttft,{p / 1.3:.6f}"]) + "\n"
    )
    (miss,) = external.summarize(external.load_cells(tmp_path))
    assert miss["worst"] == pytest.approx(30.0, abs=0.05) and miss["met"] is False


def test_table_over_the_shipped_sources_has_one_row_per_group() -> None:
    cells = external.load_cells()
    rows = external.summarize(cells)
    assert sum(r["n"] for r in rows) == len(cells)
    assert len({(r["source"], r["model"], r["gpu"], r["metric"]) for r in rows}) == len(rows)
    assert all(np.isfinite(r["mape"]) for r in rows)
    text = external.format_table(rows)
    assert text.count("\n") == len(rows) + 1 and "vllm_nightly" in text and "lmdeploy_turbomind" in text


def test_splitwise_measurements_are_a_registered_download() -> None:
    """scripts/validate_perf_model.py reads splitwise_sim/perf_model.csv: `fetch splitwise_perf_model` gets it."""
    from servegym.envs import data
    from servegym.envs.perf import validate

    src = data.REGISTRY["splitwise_perf_model"]
    assert src.rel_path == validate.SPLITWISE_CSV and src.sha256 and src.licence == "MIT"
    assert "Mutinifni/splitwise-sim/" in src.url and src.url.endswith("/data/perf_model.csv")


def test_fit_uses_the_data_directory_of_envs_data(monkeypatch, tmp_path: Path) -> None:
    from servegym.envs import data
    from servegym.envs.perf import fit

    monkeypatch.delenv("SERVEGYM_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fit.default_data_dir() == data.data_dir() == tmp_path / "xdg" / "servegym" / "data"
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path / "d"))
    assert fit.default_data_dir() == tmp_path / "d"


def _validate_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "validate_perf_model.py"
    spec = importlib.util.spec_from_file_location("validate_perf_model_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_without_splitwise_data_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fetch splitwise_perf_model"):
        _validate_script().main(["--data-dir", str(tmp_path)])


def test_script_prints_one_table_over_every_source(capsys) -> None:
    from servegym.envs.data import data_dir
    from servegym.envs.perf import validate

    if not (data_dir() / validate.SPLITWISE_CSV).is_file():
        pytest.skip("needs splitwise_sim/perf_model.csv in the data directory (SERVEGYM_DATA_DIR)")
    assert _validate_script().main([]) == 0
    table = capsys.readouterr().out.split("\n\n")[0].splitlines()
    sources = {ln.split(" | ")[0].lstrip("| ") for ln in table[2:]}
    assert sources == set(external.SOURCE_ENGINES) | {"splitwise (fit source, held-out)"}

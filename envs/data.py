"""Where servegym finds public reference data, and how it downloads it.

The data directory is `$SERVEGYM_DATA_DIR`, or `$XDG_CACHE_HOME/servegym/data` (default
`~/.cache/servegym/data`). CI and tests set `SERVEGYM_DATA_DIR=../shared/data`. Files keep the layout
of the registry's `rel_path` so a fetched cache and the shared reference folder are interchangeable.

    python -m servegym.envs.data list                 # registry, and which files are present
    python -m servegym.envs.data fetch NAME [NAME..]  # download, verify sha256, move into place atomically
    python -m servegym.envs.data verify [NAME..]      # re-hash present files against the registry

Checksums: `sha256` was computed from the copy in the shared reference folder (or, for BurstGPT, taken
from the Git LFS pointer at the pinned commit). Entries with `sha256=None` have no known hash: `fetch`
then verifies nothing, prints the hash it computed, and that hash can be pinned here after checking
the file by hand. A hash mismatch means either a corrupted download or a changed upstream file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ENV_VAR = "SERVEGYM_DATA_DIR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataSource:
    name: str
    url: str
    rel_path: str
    sha256: str | None
    licence: str
    description: str


_AZ = "https://raw.githubusercontent.com/Azure/AzurePublicDataset/master/data/"
# AzureLLMInferenceDataset2024.md links the one-week files as release assets, not repo files.
_AZ24 = "https://github.com/Azure/AzurePublicDataset/releases/download/dataset-llm-2024/"
_MC = "https://raw.githubusercontent.com/kvcache-ai/Mooncake/main/FAST25-release/traces/"
# BurstGPT's data/*.csv are Git LFS objects; the media URL at a pinned commit serves exactly the
# object whose sha256 (the LFS oid) the pointer file records.
_BG = (
    "https://media.githubusercontent.com/media/HPMLL/BurstGPT/5d93d820d9b6bee4e26914df003e5713538164ae/data/"
)

REGISTRY: dict[str, DataSource] = {
    s.name: s
    for s in [
        DataSource(
            "azure_conv_2023",
            _AZ + "AzureLLMInferenceTrace_conv.csv",
            "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
            "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
            "CC-BY-4.0",
            "Azure LLM inference 2023 (Splitwise, ISCA'24), conversation: 19,366 requests, 1 h",
        ),
        DataSource(
            "azure_code_2023",
            _AZ + "AzureLLMInferenceTrace_code.csv",
            "azure_llm_2023/AzureLLMInferenceTrace_code.csv",
            None,
            "CC-BY-4.0",
            "Azure LLM inference 2023 (Splitwise, ISCA'24), code completion, 1 h",
        ),
        DataSource(
            "azure_conv_2024",
            _AZ24 + "AzureLLMInferenceTrace_conv_1week.csv",
            "azure_llm_2024/AzureLLMInferenceTrace_conv_1week.csv",
            None,
            "CC-BY-4.0",
            "Azure LLM inference 2024 (DynamoLLM, HPCA'25), conversation, one week (large)",
        ),
        DataSource(
            "azure_code_2024",
            _AZ24 + "AzureLLMInferenceTrace_code_1week.csv",
            "azure_llm_2024/AzureLLMInferenceTrace_code_1week.csv",
            None,
            "CC-BY-4.0",
            "Azure LLM inference 2024 (DynamoLLM, HPCA'25), code completion, one week (large)",
        ),
        DataSource(
            "mooncake_synthetic",
            _MC + "synthetic_trace.jsonl",
            "mooncake/synthetic_trace.jsonl",
            "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131",
            "Apache-2.0",
            "Mooncake FAST'25 synthetic trace: 3,993 requests, Poisson arrivals, 512-token prefix hashes",
        ),
        DataSource(
            "mooncake_conversation",
            _MC + "conversation_trace.jsonl",
            "mooncake/conversation_trace.jsonl",
            None,
            "Apache-2.0",
            "Mooncake FAST'25 conversation trace: 12,031 requests, 1 h of Kimi traffic",
        ),
        DataSource(
            "mooncake_toolagent",
            _MC + "toolagent_trace.jsonl",
            "mooncake/toolagent_trace.jsonl",
            None,
            "Apache-2.0",
            "Mooncake FAST'25 tool-and-agent trace: 23,608 requests, 1 h of Kimi traffic",
        ),
        DataSource(
            "burstgpt",
            _BG + "BurstGPT_1.csv",
            "burstgpt/BurstGPT_1.csv",
            "4bb3783693d0a435686fbfc885615d2349bd067239079fa4b749f2e679e12122",
            "CC-BY-4.0",
            "BurstGPT first 2 months (ChatGPT/GPT-4 on Azure), failures included, 52 MB",
        ),
        DataSource(
            "burstgpt_without_fails",
            _BG + "BurstGPT_without_fails_1.csv",
            "burstgpt/BurstGPT_without_fails_1.csv",
            "a4d068a7113ec0290e74063a1b3447dc6001a30e4298eb313581b71006dda1f4",
            "CC-BY-4.0",
            "BurstGPT first 2 months, failed requests removed, 51 MB",
        ),
        DataSource(
            "sharegpt_stats",
            "https://raw.githubusercontent.com/microsoft/sarathi-serve/main/data/processed_traces/"
            "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
            "sharegpt/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
            "6d6c296302a853e2669a674a96f269283e60c57e60363bd450588a1066919f9f",
            "Apache-2.0",
            "ShareGPT prompt/decode token counts (Llama-2 tokenizer), 30,731 rows, no timestamps",
        ),
        DataSource(
            "splitwise_perf_model",
            # pinned to the last commit that changed the file
            "https://raw.githubusercontent.com/Mutinifni/splitwise-sim/"
            "378088013a54df6f2052c27ff5ae6ea7619c3ecc/data/perf_model.csv",
            "splitwise_sim/perf_model.csv",
            "dbbe505d1d64fc4bd1ec03c50edf944643586de4f68a81e94cbd55dd5bdfbf41",
            "MIT",
            "Splitwise measured prompt/token times of Llama2-70B and BLOOM-176B on A100/H100 (fit and "
            "validation source of the timing-v0 engine profile; scripts/validate_perf_model.py)",
        ),
        DataSource(
            "arxiv_summarization_stats",
            "https://raw.githubusercontent.com/microsoft/vidur/main/data/processed_traces/"
            "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
            "vidur_profiling/processed_traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
            "9d3580538d915ca75e4aaaa54590b42dbb17abc6d74c8913310cf07c232adcdc",
            "MIT",
            "arXiv summarization prompt/decode token counts (Llama-2 tokenizer), 28,257 rows",
        ),
    ]
}


class ChecksumError(ValueError):
    def __init__(self, url: str, expected: str, actual: str):
        self.url, self.expected, self.actual = url, expected, actual
        super().__init__(f"sha256 mismatch for {url}: expected {expected}, got {actual} (download discarded)")


def data_dir() -> Path:
    """`$SERVEGYM_DATA_DIR` if set (relative paths are taken from the current directory), else the user
    cache folder `$XDG_CACHE_HOME/servegym/data` (XDG default `~/.cache`)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "servegym" / "data"


TRACE_ROOTS_VAR = "SERVEGYM_TRACE_ROOTS"


class DataPathError(ValueError):
    """A data file path that leaves the data directory (an absolute path, ``..``, or a symlink out)."""


def trace_roots() -> list[Path]:
    """Folders a scenario's trace ``file`` may resolve into: the data directory, plus the folders a user
    lists explicitly in ``$SERVEGYM_TRACE_ROOTS`` (separated by ``os.pathsep``)."""
    extra = [p for p in os.environ.get(TRACE_ROOTS_VAR, "").split(os.pathsep) if p.strip()]
    return [data_dir().resolve(), *(Path(p).expanduser().resolve() for p in extra)]


def resolve_data_path(rel: str) -> Path:
    """`data_dir() / rel`, which must stay inside the data directory (or a root listed in
    ``$SERVEGYM_TRACE_ROOTS``), else DataPathError; a missing file raises FileNotFoundError saying how
    to get it. A scenario file can then never make the simulator read (and quote) an arbitrary file."""
    path = data_dir() / rel
    real = path.resolve()
    roots = trace_roots()
    if not any(real.is_relative_to(r) for r in roots):
        raise DataPathError(
            f"data file {rel!r} resolves to {real}, outside the data directory {roots[0]}; give a path "
            f"relative to it without '..', or allow another folder with ${TRACE_ROOTS_VAR}="
            f"/that/folder (several separated by {os.pathsep!r})"
        )
    if path.is_file():
        return path
    names = [s.name for s in REGISTRY.values() if s.rel_path == rel]
    how = (
        f"python -m servegym.envs.data fetch {names[0]}"
        if names
        else "python -m servegym.envs.data list (no registry entry)"
    )
    raise FileNotFoundError(
        f"data file not found: {path}\n  data directory comes from ${ENV_VAR} "
        f"(now {os.environ.get(ENV_VAR, 'unset, so the user cache folder is used')}); "
        f"point it at a folder that holds {rel}, or download it with: {how}"
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def download_verified(
    url: str,
    target: Path,
    sha256: str | None,
    *,
    url_opener: Callable[[str], IO[bytes]] = urllib.request.urlopen,
) -> str:
    """Stream `url` into a temp file next to `target`, hash it, and move it over `target` atomically
    (os.replace on the same filesystem) only if the hash matches `sha256` (any hash when None).
    Returns the hash. On mismatch or any error the temp file is deleted and `target` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, url_opener(url) as resp:
            while block := resp.read(_CHUNK):
                h.update(block)
                out.write(block)
        actual = h.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise ChecksumError(url, sha256, actual)
        os.replace(tmp, target)
        return actual
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    name: str,
    dest: Path | str | None = None,
    *,
    url_opener: Callable[[str], IO[bytes]] = urllib.request.urlopen,
    force: bool = False,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Path:
    """Download registry entry `name` into `dest` (a data directory; default `data_dir()`) at its
    `rel_path`, and return the file's path.

    A present file whose hash matches is not downloaded again; a present file with a wrong hash is
    replaced by a verified download. For entries without a pinned hash a present file is kept (unless
    `force`), and the computed hash of a new download is logged, not checked."""
    if name not in REGISTRY:
        raise KeyError(f"unknown data source {name!r}; known: {', '.join(sorted(REGISTRY))}")
    src = REGISTRY[name]
    target = (Path(dest).expanduser() if dest is not None else data_dir()) / src.rel_path
    if target.is_file() and not force:
        if src.sha256 is None:
            log(f"{name}: present at {target} (no pinned sha256; sha256 {sha256_file(target)})")
            return target
        actual = sha256_file(target)
        if actual == src.sha256:
            log(f"{name}: present and verified at {target}")
            return target
        log(f"{name}: {target} has sha256 {actual}, expected {src.sha256}; downloading again")
    log(f"{name}: downloading {src.url}")
    actual = download_verified(src.url, target, src.sha256, url_opener=url_opener)
    if src.sha256 is None:
        log(f"{name}: NOT verified (no pinned sha256); computed sha256 {actual}")
    else:
        log(f"{name}: verified sha256 {actual}")
    return target


def verify(names: list[str] | None = None, dest: Path | str | None = None) -> dict[str, str]:
    """Status per entry: 'ok', 'missing', 'mismatch <hash>' or 'unpinned <hash>'."""
    root = Path(dest).expanduser() if dest is not None else data_dir()
    out = {}
    for name in names or list(REGISTRY):
        src = REGISTRY[name]
        path = root / src.rel_path
        if not path.is_file():
            out[name] = "missing"
            continue
        actual = sha256_file(path)
        if src.sha256 is None:
            out[name] = f"unpinned {actual}"
        else:
            out[name] = "ok" if actual == src.sha256 else f"mismatch {actual}"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m servegym.envs.data", description="servegym public data sets")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list known data sets and whether they are present")
    f = sub.add_parser("fetch", help="download and verify data sets")
    f.add_argument("names", nargs="+", metavar="NAME")
    f.add_argument("--dest", type=Path, default=None, help=f"data directory (default: ${ENV_VAR} or cache)")
    f.add_argument("--force", action="store_true", help="download even if present")
    v = sub.add_parser("verify", help="re-hash present files")
    v.add_argument("names", nargs="*", metavar="NAME")
    v.add_argument("--dest", type=Path, default=None)
    args = ap.parse_args(argv)

    if args.cmd == "list":
        root = data_dir()
        print(f"data directory: {root}")
        for s in REGISTRY.values():
            mark = "present" if (root / s.rel_path).is_file() else "-"
            print(f"{s.name:26s} {mark:8s} {s.rel_path}\n{'':35s} {s.url}\n{'':35s} {s.description}")
        return 0
    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        print(f"unknown: {', '.join(unknown)}; known: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    if args.cmd == "fetch":
        for n in args.names:
            fetch(n, args.dest, force=args.force)
        return 0
    status = verify(args.names or None, args.dest)
    for n, st in status.items():
        print(f"{n:26s} {st}")
    return 1 if any(st.startswith("mismatch") for st in status.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

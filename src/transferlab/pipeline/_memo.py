"""`RunMemo`: the outputs of a run kept in the cache folder under a key over everything they
depend on, so the same run again restores them instead of recomputing.

A `fit` is a pure function of its images' contents, their labels and splits, the backbone's
identity and preprocessing, its settings and the library versions: with all of those equal,
the probe, the metrics and the plots come out the same, bit for bit. Like a build cache
(ccache, Bazel), a warm re-run then copies them back: no model, no scikit-learn, no plotting
(issue 17: a warm `fit` >= 10x faster than a cold one). Anything that changes - one image's
bytes, a label, `--C`, a library upgrade - changes the key, and the run is computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from transferlab._version import __version__

__all__ = ["RunMemo"]

#: Bump when what a memo holds, or what its key covers, changes.
MEMO_FORMAT = 1
_METRICS = "metrics.pickle"  # the run's typed metrics object, as the run returns it


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


@dataclass(frozen=True)
class RunMemo:
    """One run's memo folder: ``<cache>/runs/<key>/`` holding its files and metrics."""

    directory: Path
    key: str

    @classmethod
    def of(cls, folder: str | os.PathLike[str], kind: str, inputs: dict[str, Any]) -> RunMemo:
        """The memo of a `kind` run whose results depend on `inputs` (JSON-able) alone."""
        body = {
            "memo_format": MEMO_FORMAT,
            "kind": kind,
            "versions": {
                "transferlab": __version__,
                **{d: _version(d) for d in ("scikit-learn", "numpy", "scipy", "matplotlib")},
            },
            "inputs": inputs,
        }
        key = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
        return cls(Path(folder) / "runs" / f"{kind}-{key[:32]}", key[:32])

    def restore(self, out: Path, files: list[str]) -> Any | None:
        """Copy the memo's `files` into `out` and return its metrics object; None when there is
        none (or it is unreadable: then the run is computed and the memo written again).

        The metrics are pickled: the memo lives in the user's own cache folder, written by this
        library only (like the feature cache), and the run must return the same typed object."""
        metrics = self.directory / _METRICS
        if not metrics.is_file() or not all((self.directory / f).exists() for f in files):
            return None
        try:
            loaded = pickle.loads(metrics.read_bytes())
        except Exception:  # another version's classes, a truncated file: compute again
            return None
        for name in files:
            src, dst = self.directory / name, out / name
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
        return loaded

    def store(self, out: Path, files: list[str], metrics: Any) -> None:
        """Keep `files` of `out` and `metrics` as this memo (atomically; a failure to write it
        only costs the next run its shortcut)."""
        tmp: Path | None = None
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.directory.parent, prefix=".memo-"))
            for name in files:
                src = out / name
                if src.is_dir():
                    shutil.copytree(src, tmp / name)
                else:
                    shutil.copy2(src, tmp / name)
            (tmp / _METRICS).write_bytes(pickle.dumps(metrics))
            if self.directory.exists():
                shutil.rmtree(self.directory)
            os.replace(tmp, self.directory)
        except OSError:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

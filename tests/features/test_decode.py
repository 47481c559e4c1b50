"""`decoded_batches`: threads ahead of the network, input order kept, broken files reported."""

from __future__ import annotations

import numpy as np

from tests._helpers import build_image_folder
from transferlab.data._preprocess import NumpyEvalTransform
from transferlab.features._decode import decoded_batches

CFG = {
    "input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
    "crop_pct": 1.0, "crop_mode": "center",
}  # fmt: skip


def test_threads_keep_order_and_report_failures(tmp_path):
    folder = build_image_folder(tmp_path / "imgs", n_per_class=7)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths.insert(5, str(tmp_path / "broken.jpg"))
    paths.append(str(tmp_path / "missing.png"))
    tf = NumpyEvalTransform(CFG)
    runs = {}
    for threads in (0, 1, 3):
        got = list(decoded_batches(paths, tf, batch_size=4, max_pixels=None, threads=threads))
        idx = [i for ok, _, _ in got for i in ok]
        bad = [b for _, _, bads in got for b in bads]
        arrays = np.concatenate([x for _, x, _ in got if x is not None])
        runs[threads] = (idx, [i for i, _ in bad], arrays)
        assert idx == [i for i in range(len(paths)) if i not in (5, len(paths) - 1)]
        assert [i for i, _ in bad] == [5, len(paths) - 1]
        assert all(reason for _, reason in bad)
        assert arrays.shape == (len(paths) - 2, 3, 32, 32)
    np.testing.assert_array_equal(runs[0][2], runs[3][2])
    # the caller may stop early (an error on a broken file) without leaving threads behind
    it = decoded_batches(paths, tf, batch_size=2, max_pixels=None, threads=2)
    next(it)
    it.close()

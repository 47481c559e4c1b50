"""Image files -> preprocessed float32 batches, decoded in threads ahead of the network, with no
torch import: the input side of the ONNX Runtime engine (issue 17).

PIL releases the GIL while it decodes and resizes, so threads overlap decoding with ONNX
Runtime's own threads without starting processes (each a fresh interpreter: seconds of start-up
that a few hundred images do not repay). At most `ahead` batches are in flight, so memory stays
bounded however many images there are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from transferlab.data._images import load_image
from transferlab.exceptions import ImageLoadError

__all__ = ["Batch", "decoded_batches"]

#: (positions in the input list of the decoded images, their stacked arrays or None,
#: (position, reason) of each image that failed)
Batch = tuple[list[int], np.ndarray | None, list[tuple[int, str]]]


def _decode_batch(
    paths: Sequence[str],
    start: int,
    transform: Callable[[Image.Image], np.ndarray],
    max_pixels: int | None,
) -> Batch:
    ok: list[int] = []
    arrays: list[np.ndarray] = []
    bad: list[tuple[int, str]] = []
    for j, path in enumerate(paths, start=start):
        try:
            arrays.append(transform(load_image(path, max_pixels=max_pixels)))
            ok.append(j)
        except ImageLoadError as exc:
            bad.append((j, exc.reason))
    return ok, (np.stack(arrays) if arrays else None), bad


def decoded_batches(
    paths: Sequence[str],
    transform: Callable[[Image.Image], np.ndarray],
    *,
    batch_size: int,
    max_pixels: int | None,
    threads: int = 1,
    ahead: int = 2,
) -> Iterator[Batch]:
    """Batches of `paths` in input order, each decoded by one of `threads` threads while the
    caller works on the previous one; ``threads=0`` decodes in the calling thread."""
    starts = range(0, len(paths), batch_size)
    if threads <= 0:
        for s in starts:
            yield _decode_batch(paths[s : s + batch_size], s, transform, max_pixels)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending: deque[Future[Batch]] = deque()
        it = iter(starts)
        try:
            for s in it:
                pending.append(
                    pool.submit(_decode_batch, paths[s : s + batch_size], s, transform, max_pixels)
                )
                if len(pending) > max(ahead, threads):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:  # the caller stopped early (an error): drop what is queued
                f.cancel()

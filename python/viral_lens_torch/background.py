"""Off-the-forward capture I/O: pinned host buffers for GPU -> CPU copies and a background writer thread.

The forward only launches the copies (``non_blocking`` into pinned memory on CUDA, plain tensors on the CPU) and
hands the batch to a bounded queue; one thread waits for the copies and calls ``CaptureWriter.append_batch`` (which
keeps its atomic shard + manifest writes, so a crash still leaves a resumable capture of the batches committed).
"""

import logging
import queue
import threading
import time

import torch

log = logging.getLogger("viral_lens_torch")


class PinnedPool:
    """Reusable page-locked CPU buffers keyed by (shape, dtype): pinning is slow, so buffers go back to the pool
    once the writer thread has written them. At most ``max_per_key`` idle buffers are kept per key."""

    def __init__(self, max_per_key=4):
        self._free = {}
        self._lock = threading.Lock()
        self.max_per_key = max_per_key

    def take(self, shape, dtype):
        key = (tuple(shape), dtype)
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        return torch.empty(key[0], dtype=dtype, pin_memory=True)

    def give(self, buf):
        key = (tuple(buf.shape), buf.dtype)
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self.max_per_key:
                free.append(buf)


def to_host(t, dtype, pool):
    """``t`` cast to ``dtype`` on the CPU. On CUDA the copy goes asynchronously into a pinned buffer from ``pool``
    (complete once the current stream passes an event recorded after it); returns (tensor, pooled or None)."""
    t = t.to(dtype)
    if t.is_cuda and pool is not None:
        buf = pool.take(t.shape, dtype)
        buf.copy_(t, non_blocking=True)
        return buf, buf
    return t.cpu(), None


class _Job:
    __slots__ = ("args", "kwargs", "event", "buffers")

    def __init__(self, args, kwargs, event, buffers):
        self.args, self.kwargs, self.event, self.buffers = args, kwargs, event, buffers


class BackgroundWriter:
    """Runs ``writer.append_batch`` on one thread, at most ``max_pending`` batches behind the caller.

    :meth:`submit` blocks while the queue is full (back-pressure: host memory stays bounded by about
    ``max_pending + 2`` batches). The first write error stops further writes (the capture on disk keeps the batches
    committed before it) and is raised in the caller at the next :meth:`submit` or at :meth:`close`.
    ``bytes_written`` / ``busy_s`` give the writer's own throughput.
    """

    def __init__(self, writer, max_pending=2, pool=None):
        if int(max_pending) < 1:
            raise ValueError("max_pending must be >= 1")
        self.writer = writer
        self.pool = pool
        self._q = queue.Queue(maxsize=int(max_pending))
        self._error = None
        self._reported = False
        self._closed = False
        self.bytes_written = 0
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="viral-lens-writer", daemon=True)
        self._thread.start()

    def submit(self, *args, event=None, buffers=(), **kwargs):
        """Queue one ``append_batch(*args, **kwargs)``; ``event`` (a CUDA event) is waited for before writing,
        ``buffers`` go back to the pinned pool afterwards."""
        self.raise_if_failed()
        if self._closed:
            raise RuntimeError("the background writer is closed")
        self._q.put(_Job(args, kwargs, event, list(buffers)))

    def _run(self):
        while True:
            job = self._q.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    if job.event is not None:
                        job.event.synchronize()
                    t0 = time.perf_counter()
                    self.writer.append_batch(*job.args, **job.kwargs)
                    self.busy_s += time.perf_counter() - t0
                    self.bytes_written += _nbytes(job.args, job.kwargs)
            except BaseException as err:  # handed to the caller; the thread keeps draining the queue
                if self._error is None:
                    self._error = err
            finally:
                if job is not None and self.pool is not None:
                    for b in job.buffers:
                        self.pool.give(b)
                self._q.task_done()

    def raise_if_failed(self):
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def flush(self):
        """Wait until every queued batch is written; raise the first write error."""
        self._q.join()
        self.raise_if_failed()

    def close(self, raise_errors=True):
        """Write what is queued, stop the thread; raise the first write error unless ``raise_errors`` is false
        (then it is logged: used while another exception is already propagating)."""
        if not self._closed:
            self._closed = True
            self._q.put(None)
            self._thread.join()
        if raise_errors:
            self.raise_if_failed()
        elif self._error is not None and not self._reported:
            self._reported = True
            log.error("viral-lens background writer failed as well: %s", self._error)


def _nbytes(args, kwargs):
    layers = args[2] if len(args) > 2 else kwargs.get("layers")
    targets = args[3] if len(args) > 3 else kwargs.get("targets")
    n = 0
    for d in (layers, targets):
        for t in (d or {}).values():
            n += t.numel() * t.element_size()
    return n

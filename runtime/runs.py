"""One graph call at a time, as the sampler makes it: in a worker thread, terminated on a signal, its failure named.

onnxruntime runs a session call to its end; ``GraphRun`` runs it where a Ctrl-C or SIGTERM can stop it
(``RunOptions.terminate``) and turns onnxruntime's errors into one ``GraphRunError`` naming the graph.
numpy + onnxruntime only.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

import onnxruntime as ort

from export.format.manifest import BundleError
from zoo.validate import first_line

__all__ = ["GraphRun", "GraphRunError", "ORT_ERRORS", "TERMINATE_WAIT_S"]

log = logging.getLogger(__name__)

# What onnxruntime raises for a graph it cannot load or run (its pybind classes derive from Exception alone).
ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, n) for n in (
    "Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NoModel", "NotImplemented",
    "RuntimeException", "EngineError", "ModelLoaded") if hasattr(ort.capi.onnxruntime_pybind11_state, n))

# How long a terminated run gets to return: onnxruntime checks RunOptions.terminate between nodes, so only a node
# that never returns (a hostile graph) outlives it; its thread is then left behind, and the caller goes on.
TERMINATE_WAIT_S = 5.0


class GraphRunError(RuntimeError):
    """A bundle graph that loaded but failed while running (out of memory, a bad op, a wrong output); names it."""


class GraphRun:
    """One ``run_batch``'s session calls: run in a worker thread, terminated on Ctrl-C or SIGTERM, failures named.

    The caller's thread waits in an interruptible lock, so a signal's exception (KeyboardInterrupt, the CLI's
    Terminated) is raised there at once; every RunOptions of the run is then told to terminate, and the worker
    gets ``TERMINATE_WAIT_S`` to return before the exception goes on.
    """

    def __init__(self, artifact: str, path: Path):
        self.artifact, self.path = artifact, path
        self.options = ort.RunOptions()
        self._all = [self.options]

    def __call__(self, method: Callable[..., Any], *args: Any, options: ort.RunOptions | None = None) -> Any:
        """``method(*args, run_options)`` of a session; onnxruntime's failure as a ``GraphRunError`` naming the graph."""
        if options is not None and options not in self._all:
            self._all.append(options)
        try:
            return method(*args, options or self.options)
        except (RuntimeError, *ORT_ERRORS) as e:  # io binding's failures are plain RuntimeErrors
            raise GraphRunError(f"the {self.artifact!r} graph of the bundle {str(self.path)!r} failed while running: "
                                f"{first_line(e, 300)}") from None

    def check_shapes(self, i: int, state: dict[str, ort.OrtValue], shape: tuple[int, ...]) -> None:
        """Every carried value keeps x_T's shape after step i (the manifest declares it so)."""
        for name, v in state.items():
            if tuple(v.shape()) != tuple(shape):
                raise BundleError(f"the {self.artifact!r} graph of the bundle {str(self.path)!r} returned {name} of shape "
                                  f"{tuple(v.shape())} at step {i} for x_T {tuple(shape)}: not the graph its manifest "
                                  "declares")

    def interruptibly(self, work: Callable[[], Any]) -> Any:
        """``work()`` in a worker thread; the caller waits, and a signal's exception terminates every run first."""
        done, box = threading.Event(), {}

        def target() -> None:
            try:
                box["out"] = work()
            except BaseException as e:  # noqa: BLE001  handed to the caller's thread below
                box["err"] = e
            finally:
                done.set()

        threading.Thread(target=target, name=f"diffzoo-run-{self.artifact}", daemon=True).start()
        try:
            done.wait()
        except BaseException:
            for options in self._all:
                options.terminate = True
            if not done.wait(TERMINATE_WAIT_S):
                log.warning("the %r graph did not stop within %.0f s of being terminated: left behind", self.artifact,
                            TERMINATE_WAIT_S)
            else:
                for options in self._all:  # the CUDA-graph path keeps its RunOptions for the next call
                    options.terminate = False
            raise
        if "err" in box:
            raise box["err"]
        return box["out"]

"""A client of a served bundle (KServe v2 over HTTP, ``tritonclient``): rows in, images out.

What ``diffzoo request`` and ``diffzoo bench --serve`` send. A request larger than the server's
``max_batch_size`` is split into requests that fit, sent concurrently and joined in order.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from runtime.apps.serve.protocol import INPUTS, NUMPY_TYPES, OUTPUTS, REQUIRED

__all__ = ["Client", "ServerError"]

_DTYPES = {i.name: i.datatype for i in INPUTS}


class ServerError(RuntimeError):
    """The server answered with an error; ``status`` is its HTTP status (400: the request was refused)."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


class Client:
    """One connection to a served model; not shared between threads (make one per thread)."""

    def __init__(self, url: str, model: str = "diffzoo", timeout_s: float = 300.0, concurrency: int = 4):
        try:
            import tritonclient.http as http
        except ImportError:
            raise ImportError("diffzoo request needs tritonclient: pip install 'tritonclient[http]'") from None
        self._http = http
        self.url, self.model = url, model
        ssl = url.startswith("https://")
        self._client = http.InferenceServerClient(url.split("://", 1)[-1].rstrip("/"), ssl=ssl, concurrency=concurrency,
                                                  connection_timeout=timeout_s, network_timeout=timeout_s)
        self._config: dict[str, Any] | None = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, fn, *args, **kwargs):
        """A tritonclient call with its failures as one-line errors: unreachable (OSError) or refused (ServerError)."""
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as e:
            status = e.status()
            code = int(status) if status and str(status).isdigit() else None
            raise ServerError(f"the server at {self.url} answered {status or 'an error'}: {_message(e)}", code) from None
        except OSError as e:  # refused, reset, timed out, no route
            raise ConnectionError(f"cannot reach a Triton server at {self.url} (model {self.model!r}): "
                                  f"{e.strerror or e.__class__.__name__}") from None
        except Exception as e:  # noqa: BLE001  the HTTP layer's own errors: something else answers there
            raise ConnectionError(f"{self.url} did not answer as a KServe v2 HTTP server ({e.__class__.__name__}: "
                                  f"{str(e)[:200]}): is it the server's HTTP port?") from None

    @property
    def config(self) -> dict[str, Any]:
        """The served model's configuration (its ``max_batch_size``, its parameters)."""
        if self._config is None:
            self._config = self._call(self._client.get_model_config, self.model)
        return self._config

    @property
    def class_names(self) -> list[str]:
        """The served bundle's class names (empty: an unconditional bundle)."""
        return json.loads(self.config.get("parameters", {}).get("classes", {}).get("string_value", "[]"))

    def sample(self, rows: dict[str, Any], output: str = "image") -> np.ndarray:
        """Send rows (input name -> one value per row, or one value for every row; ``seed`` and ``index``
        required) and return the ``output`` of each row: "image" (B, H, W, C) uint8 or "sample" (B, C, H, W)
        float32 (the sampler's values). Split into requests of at most the server's ``max_batch_size`` rows.
        """
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}: expected one of {list(OUTPUTS)}")
        unknown = sorted(set(rows) - set(_DTYPES))
        if unknown:
            raise ValueError(f"unknown input(s) {unknown}: expected some of {list(_DTYPES)}")
        if not set(REQUIRED) <= set(rows):
            raise ValueError(f"rows need {' and '.join(map(repr, REQUIRED))} (one index per image); got {sorted(rows)}")
        b = len(np.atleast_1d(rows["index"]))
        columns = {k: _column(k, v, b) for k, v in rows.items() if v is not None}
        chunk = max(1, int(self.config.get("max_batch_size") or b))
        pending = [self._call(self._client.async_infer, self.model, self._inputs(columns, s, min(s + chunk, b)),
                              outputs=[self._http.InferRequestedOutput(output, binary_data=True)])
                   for s in range(0, b, chunk)]
        return np.concatenate([self._call(p.get_result).as_numpy(output) for p in pending])

    def _inputs(self, columns: dict[str, np.ndarray], start: int, stop: int) -> list:
        out = []
        for name, col in columns.items():
            part = col[start:stop, None]
            tensor = self._http.InferInput(name, list(part.shape), _DTYPES[name])
            tensor.set_data_from_numpy(part, binary_data=True)
            out.append(tensor)
        return out


def _column(name: str, value: Any, b: int) -> np.ndarray:
    dtype = NUMPY_TYPES[_DTYPES[name]]
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(b, value)
    if arr.shape != (b,):
        raise ValueError(f"{name!r} has {arr.shape[0] if arr.ndim else 1} values for {b} rows: give one, or one per row")
    if dtype is np.object_:
        return np.array([str(v).encode() for v in arr], dtype=object)
    return arr.astype(dtype)


def _message(e) -> str:
    text = e.message() if hasattr(e, "message") else str(e)
    return " ".join(str(text).split()) if text else str(e)


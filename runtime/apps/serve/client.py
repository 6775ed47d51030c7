"""A client of a served bundle (KServe v2 over HTTP, ``tritonclient``): rows in, images out.

What ``diffzoo request`` and ``diffzoo bench --serve`` send. A request larger than the server's
``max_batch_size`` is split into requests that fit, sent concurrently and joined in order.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from runtime.apps.serve.protocol import INPUTS, NUMPY_TYPES, OUTPUTS, REQUIRED
from runtime.noise import MAX_SEED

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
        address, ssl = server_address(url)
        self.timeout_s = timeout_s
        self._client = http.InferenceServerClient(address, ssl=ssl, concurrency=concurrency,
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
        from http.client import HTTPException  # what geventhttpclient raises on an answer that is not HTTP

        from rapidjson import JSONDecodeError  # tritonclient's JSON parser
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as e:
            status = e.status()
            code = int(status) if status and str(status).isdigit() else None
            raise ServerError(f"the server at {self.url} answered {status or 'an error'}: {_message(e)}", code) from None
        except TimeoutError:  # reached, but no answer in time: not "cannot reach"
            raise ServerError(f"the server at {self.url} did not answer within {self.timeout_s:g} s (--timeout); it may "
                              "still be working on the request", None) from None
        except OSError as e:  # refused, reset, no route
            raise ConnectionError(f"cannot reach a Triton server at {self.url} (model {self.model!r}): "
                                  f"{e.strerror or e.__class__.__name__}") from None
        except (HTTPException, JSONDecodeError) as e:  # not HTTP, or not JSON: something else answers there
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

    @property
    def conditioning(self) -> dict[str, Any] | None:
        """The served bundle's conditioning declaration as its manifest records it (None: an unconditional bundle)."""
        return json.loads(self.config.get("parameters", {}).get("conditioning", {}).get("string_value", "null"))

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
        import gevent

        def infer(start: int) -> tuple[Any, BaseException | None]:  # in a greenlet: its failure is returned, so gevent
            try:  # prints no traceback of its own; raised below, in order, as one line
                outputs = [self._http.InferRequestedOutput(output, binary_data=True)]
                return self._call(self._client.infer, self.model, self._inputs(columns, start, min(start + chunk, b)),
                                  outputs=outputs), None
            except (ServerError, ConnectionError) as e:
                return None, e

        pending = [gevent.spawn(infer, s) for s in range(0, b, chunk)]  # at once: the server batches them
        gevent.joinall(pending)
        parts = []
        for g in pending:
            result, error = g.value
            if error is not None:
                raise error
            parts.append(result.as_numpy(output))
        return np.concatenate(parts)

    def _inputs(self, columns: dict[str, np.ndarray], start: int, stop: int) -> list:
        out = []
        for name, col in columns.items():
            part = col[start:stop, None]
            tensor = self._http.InferInput(name, list(part.shape), _DTYPES[name])
            tensor.set_data_from_numpy(part, binary_data=True)
            out.append(tensor)
        return out


def server_address(url: str) -> tuple[str, bool]:
    """``(host:port, ssl)`` of a server's HTTP URL (``http://HOST:PORT`` or ``https://...``; a bare ``HOST:PORT`` is
    http); ``ValueError`` naming the URL and what is accepted otherwise."""
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    expected = "expected http://HOST:PORT or https://HOST:PORT, e.g. http://127.0.0.1:8000"
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"URL {url!r} is invalid: {parts.scheme}:// is not served by Triton's HTTP endpoint; {expected}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"URL {url!r} is invalid: its port is not a number in 1..65535; {expected}") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"URL {url!r} is invalid: {expected}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port or (443 if parts.scheme == 'https' else 80)}", parts.scheme == "https"


def _column(name: str, value: Any, b: int) -> np.ndarray:
    dtype = NUMPY_TYPES[_DTYPES[name]]
    if dtype is np.int64:  # a Python integer past int64 cannot travel: say which
        for v in np.atleast_1d(np.asarray(value, dtype=object)).tolist():
            if isinstance(v, int) and not -MAX_SEED - 1 <= v <= MAX_SEED:
                raise ValueError(f"{name} {v} is invalid: expected an integer in 0..{MAX_SEED}")
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


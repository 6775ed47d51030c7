"""A bundle's one weights file as the external data of every ONNX graph: written by the exporter, read once per process.

A safetensors file is 8 bytes of header length, a JSON header, then each tensor's raw little-endian
bytes at known offsets, which is exactly ONNX's external data (``TensorProto.external_data``:
location, offset, length; onnx's ``external_data_helper``). So the weights file that rebuilds the
eager model also holds the tensors of every graph, and the graphs hold structure only:

- ``externalize`` (export) points each initializer that is a parameter into the file, by its name.
- ``Weights`` holds the file's verified bytes, read and hashed once per process and shared by every
  session. Each graph's external initializers are views of those bytes, handed to onnxruntime with
  ``SessionOptions.add_external_initializers``, so nothing is read by path after the check.
- ``read_graph`` returns an artifact's verified graph bytes, its stamped identity checked; that
  identity covers the weights file's hash (``graph_identity``).

numpy + onnx; onnxruntime on first use.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.format.manifest import BundleError, check_identity, read_verified
from zoo.weights_header import read_header

__all__ = ["Weights", "externalize", "external_tensors", "read_graph"]

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


@dataclass(frozen=True)
class _Stored:
    """One tensor of the weights file: where its bytes are (from the file's start) and what they hold."""

    offset: int
    length: int
    dtype: np.dtype


class Weights:
    """The verified bytes of a weights file (``data``, whose sha256 is ``sha256``), and views of its tensors.

    Build one with ``Weights.of_bundle`` (read and hashed once per process, shared by every sampler
    of that file) or from bytes already verified (the exporter's own file).
    """

    _loaded: weakref.WeakValueDictionary[str, Weights] = weakref.WeakValueDictionary()  # sha256 -> weights in use
    _lock = threading.Lock()

    def __init__(self, data: bytes, sha256: str, name: str) -> None:
        self.data = data
        self.sha256 = sha256
        self.name = name  # the file name every external reference must carry
        self._buffer = np.frombuffer(data, np.uint8)
        header, start = read_header(io.BytesIO(data), name)
        self.stored: dict[str, _Stored] = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            try:
                begin, end = (int(v) for v in info["data_offsets"])
                dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            except (KeyError, TypeError, ValueError):
                continue  # a dtype numpy has no name for (BF16): never bound, so never referenced
            if not 0 <= begin <= end <= len(data) - start:
                raise BundleError(f"{name!r}: tensor {key!r} lies outside the file (bytes {begin}..{end})")
            self.stored[key] = _Stored(start + begin, end - begin, dtype)
        self._values: dict[tuple, Any] = {}  # (offset, dtype, dims) -> OrtValue, shared by every session

    @classmethod
    def of_bundle(cls, bundle_dir: str | os.PathLike, manifest: dict[str, Any]) -> Weights:
        """The bundle's weights file, verified against the manifest; read at most once per process while in use."""
        name = manifest["weights"]
        sha256 = manifest["files"][name]["sha256"]
        with cls._lock:
            weights = cls._loaded.get(sha256)
            if weights is None:
                weights = cls(read_verified(bundle_dir, manifest, name), sha256, name)
                cls._loaded[sha256] = weights
        return weights

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> Weights:
        """A weights file read here and hashed (the exporter's own staged file)."""
        data = Path(path).read_bytes()
        return cls(data, hashlib.sha256(data).hexdigest(), Path(path).name)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def raw(self, key: str) -> bytes:
        """The bytes of stored tensor ``key``."""
        stored = self.stored[key]
        return self.data[stored.offset:stored.offset + stored.length]

    def view(self, tensor: TensorProto) -> np.ndarray:
        """The (read-only) values of an external ``tensor`` of a graph: a view of these bytes, never a copy.

        Raises ``BundleError`` naming the tensor for a reference to another file, outside this one, or of
        a length its dtype and dims do not have.
        """
        return _values_in(tensor, self._buffer, self.name, "a bundle's graphs refer to its weights file")

    def session(self, model: bytes, options=None, providers=("CPUExecutionProvider",),
                derived: dict[str, np.ndarray] | None = None):
        """An onnxruntime session of the graph ``model`` (verified bytes) with its external initializers from these
        weights, and those named in ``derived`` (``adopt``) from there; the session holds on to them, which
        onnxruntime may use in place (1.31 copies them into each session: docs/ARCHITECTURE.md)."""
        import onnxruntime as ort

        options = options or ort.SessionOptions()
        session_values = self._add_to(options, onnx.load_model_from_string(model), derived or {})
        session = ort.InferenceSession(model, sess_options=options, providers=list(providers))
        session.diffzoo_weights = self, session_values  # the OrtValues' buffers live as long as the session
        return session

    def _add_to(self, options, graph: onnx.ModelProto, derived: dict[str, np.ndarray]) -> list:
        """Hand every external initializer of ``graph`` to onnxruntime ``options``: a view of these bytes, or the
        array ``derived`` holds under its name; returns the OrtValues made for ``derived``.

        The OrtValues of these weights are made once per tensor and kept here, alive as long as any
        session built with them, which holds this object (``session``).
        """
        import onnxruntime as ort

        names, values, own = [], [], []
        for tensor in external_tensors(graph):
            if tensor.name in derived:
                own.append(ort.OrtValue.ortvalue_from_numpy(derived[tensor.name]))
                value = own[-1]
            else:
                key = (tensor.data_type, tuple(tensor.dims), tuple((e.key, e.value) for e in tensor.external_data))
                if key not in self._values:
                    self._values[key] = ort.OrtValue.ortvalue_from_numpy(self.view(tensor))
                value = self._values[key]
            names.append(tensor.name)
            values.append(value)
        if names:
            options.add_external_initializers(names, values)
        return own

    def holding(self, name: str, values: np.ndarray) -> _Stored | None:
        """The stored tensor a graph's tensor ``name`` with ``values`` is, if any: its name is the stored key's, under
        a prefix (``model.unet.conv_in.weight`` holds ``unet.conv_in.weight``), and its bytes are that tensor's.
        The binding follows the parameter, never a coincidence of values."""
        key = max((k for k in self.stored if name == k or name.endswith(("." + k, "/" + k))), key=len, default=None)
        if key is None or values.dtype != self.stored[key].dtype or values.nbytes != self.stored[key].length:
            return None
        stored = self.stored[key]
        same = memoryview(np.ascontiguousarray(values)).cast("B") == memoryview(self.data)[
            stored.offset:stored.offset + stored.length]
        return stored if same else None

    def bind(self, tensor: TensorProto, values: np.ndarray) -> bool:
        """Point ``tensor``, whose values are ``values``, into this file if it holds one of its tensors (``holding``)."""
        stored = self.holding(tensor.name, values)
        if stored is not None:
            _refer(tensor, stored, self.name)
        return stored is not None

    def adopt(self, graph: onnx.ModelProto, location: str, data: bytes) -> dict[str, np.ndarray]:
        """Take in ``graph``, whose initializers onnxruntime wrote to the file ``location`` (its bytes: ``data``) when
        it saved its optimised copy of a graph of these weights (``runtime.sessions``' CPU loop): each one that
        is a tensor of these weights is pointed back into them (``bind``); the others, what onnxruntime
        derived (a folded transpose, a reordered filter, a constant), are returned by name, copied out of
        ``data``, for ``session(derived=)``. Either way no graph holds them, so one past 2 GB is written too.
        """
        derived = {}
        buffer = np.frombuffer(data, np.uint8)
        for tensor in external_tensors(graph):
            values = _values_in(tensor, buffer, location, "onnxruntime's optimised graph refers to the file it wrote")
            if not self.bind(tensor, values):
                derived[tensor.name] = values.copy()  # not a view: the file's copy of the weights is let go
        return derived

    def inline(self, graph: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of ``graph`` holding its external initializers' values itself (for tools that take one protobuf)."""
        out = onnx.ModelProto()
        out.CopyFrom(graph)
        for tensor in external_tensors(out):
            values = self.view(tensor)
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]
            tensor.raw_data = values.tobytes()
        return out


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph of its nodes (a Loop's body, an If's branches), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def external_tensors(graph: onnx.ModelProto) -> list[TensorProto]:
    """The initializers of ``graph`` that refer to external data; ``BundleError`` if a subgraph holds one (diffzoo's
    graphs keep every weight in the outer scope, which is where onnxruntime takes external initializers)."""
    for i, sub in enumerate(_graphs(graph.graph)):
        if i and any(t.data_location == TensorProto.EXTERNAL for t in sub.initializer):
            raise BundleError(f"the subgraph {sub.name!r} refers to external data: not a graph diffzoo exported; refused")
    return [t for t in graph.graph.initializer if t.data_location == TensorProto.EXTERNAL]


def _values_in(tensor: TensorProto, buffer: np.ndarray, location: str, only: str) -> np.ndarray:
    """The values of external ``tensor``, a read-only view of ``buffer``, the bytes of the file ``location``.

    Raises ``BundleError`` naming the tensor for a reference to another file (``only`` says which
    ones are expected), outside this one, or of a length its dtype and dims do not have.
    """
    ref = {e.key: e.value for e in tensor.external_data}
    where = f"the graph's tensor {tensor.name!r}"
    if ref.get("location") != location:
        raise BundleError(f"{where} refers to {ref.get('location')!r}; {only} {location!r} only")
    try:
        offset, length = int(ref.get("offset", 0)), int(ref["length"])
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, ValueError, TypeError):
        raise BundleError(f"{where} has an external reference without a valid offset, length and dtype: "
                          f"{dict(ref)!r}") from None
    count = int(np.prod(tensor.dims, dtype=np.int64))
    if not (0 <= offset and offset + length <= len(buffer) and length == count * dtype.itemsize
            and offset % dtype.itemsize == 0):
        raise BundleError(f"{where} refers to bytes {offset}..{offset + length} of {location!r} ({len(buffer)} "
                          f"bytes) for {count} x {dtype.name}: not a tensor of the file; refused")
    return buffer[offset:offset + length].view(dtype).reshape(tuple(tensor.dims))


def _refer(tensor: TensorProto, stored: _Stored, location: str) -> None:
    tensor.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(stored.offset)), ("length", str(stored.length))):
        tensor.external_data.add(key=key, value=value)


def externalize(graph: onnx.ModelProto, weights: Weights) -> onnx.ModelProto:
    """A copy of ``graph`` whose initializers that hold a tensor of ``weights`` refer to it, and without the
    exporter's per-node debugging metadata (stack traces with the exporting machine's paths).

    An initializer holds a stored tensor by ``Weights.bind``'s rule (its name under a prefix, its bytes):
    the exporter keeps every parameter as its own named initializer (``export.onnx_export``).
    Everything else (the schedule's table, shape constants) stays in the graph.
    """
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    for sub in _graphs(out.graph):
        for node in sub.node:
            del node.metadata_props[:]
    for tensor in out.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            weights.bind(tensor, numpy_helper.to_array(tensor))
    return out


def read_graph(bundle_dir: str | os.PathLike, manifest: dict[str, Any], artifact: str) -> bytes:
    """The ONNX graph of bundle artifact ``artifact`` as verified bytes, its stamped identity checked against the
    manifest (which covers the weights file it refers to): what is checked is exactly what runs."""
    files = manifest["artifacts"].get(artifact, {}).get("files", {})
    if "onnx" not in files:
        raise ValueError(f"bundle {str(bundle_dir)!r} has no ONNX file for {artifact!r}: re-export it with formats "
                         "including 'onnx'")
    data = read_verified(bundle_dir, manifest, files["onnx"])
    check_identity(data, artifact, manifest, bundle_dir)
    return data

"""The bundle manifest: its writer, its reader and schema, hashing and verified reads.

Part of the bundle format (``export.format``). Torch-free, so the deployment runtime checks a
bundle with the standard library alone. The exporter hands ``write_manifest`` the facts and the
staged files; ``load_manifest`` verifies every file's size and sha256 and the manifest's settings
against the hashed weights' header before anything loads, and brings bundles exported before an
artifact's kind, solver and body were recorded up to date (``_compat``, the one place that knows
older bundles).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from export.format.artifacts import ArtifactSpec, artifact_specs
from zoo.conditioning import Conditions, class_labels
from zoo.diffusion import EPS_RULES
from zoo.files import write_synced
from zoo.weights_header import read_weights_metadata

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "BUNDLE_FORMAT",
    "WEIGHTS_NAME",
    "BundleError",
    "BundleFileMissingError",
    "BundleHashMismatchError",
    "BundleVersionError",
    "sha256_file",
    "load_manifest",
    "read_verified",
    "artifact_entry",
    "write_manifest",
    "not_a_bundle",
    "IDENTITY_KEY",
    "graph_identity",
    "check_identity",
    "weights_sha256",
    "conditions_of",
    "table_spec",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "diffzoo-bundle"  # the manifest's "format"
IDENTITY_KEY = "diffzoo.identity"  # an ONNX graph's metadata entry holding its identity (graph_identity)
WEIGHTS_NAME = "weights.safetensors"
# The eps rule of every step graph exported before the rule was recorded: the network's own eps
# (zoo.diffusion.EPS_RULES); what _compat fills into their manifests and check_identity reads from their stamps.
LEGACY_EPS_RULE = "model"


class BundleError(ValueError):
    """A bundle that cannot be trusted or read; the message names the file."""


class BundleFileMissingError(BundleError):
    """A file listed in the manifest (or the manifest itself) is missing."""


class BundleHashMismatchError(BundleError):
    """A file's size or sha256 differs from the manifest: truncated, tampered with or replaced."""


class BundleVersionError(BundleError):
    """The manifest's format version is not one this diffzoo reads."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(bundle_dir: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read ``manifest.json`` and (by default) check every listed file's size and sha256.

    Raises:
        BundleFileMissingError, BundleHashMismatchError, BundleVersionError, BundleError.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleFileMissingError(f"bundle directory {str(root)!r} does not exist")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleFileMissingError(f"{str(path)!r} is missing: {str(root)!r} is not a diffzoo bundle")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{str(path)!r} is not valid JSON: {e}") from None
    except RecursionError:
        raise BundleError(f"{str(path)!r} nests its JSON too deeply to be a diffzoo manifest") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if type(version) is not int or version != FORMAT_VERSION:  # `true == 1` in Python: the type is checked too
        raise BundleVersionError(
            f"{str(path)!r} has format_version={version!r}; this diffzoo reads format_version={FORMAT_VERSION}"
        )
    _check_schema(manifest, path)
    _compat(manifest)
    if verify:
        _check_references(manifest, path)
        for name, info in manifest["files"].items():
            f = root / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise BundleError(f"{str(path)!r} lists {name!r}, which is outside the bundle")
            if not f.is_file():
                raise BundleFileMissingError(f"bundle file {str(f)!r} listed in the manifest is missing")
            size = f.stat().st_size
            if size != info["size"]:
                raise BundleHashMismatchError(
                    f"bundle file {str(f)!r} has {size} bytes, the manifest says {info['size']} (truncated or replaced)"
                )
            digest = sha256_file(f)
            if digest != info["sha256"]:
                raise BundleHashMismatchError(
                    f"bundle file {str(f)!r} has sha256 {digest[:12]}..., the manifest says {info['sha256'][:12]}... (modified)"
                )
        _check_settings(root, manifest, path)
    return manifest


_SCHEMA: list[tuple[str, type | tuple[type, ...]]] = [  # (dotted key, type): what the runtime reads
    ("files", dict), ("weights", str), ("model", dict), ("model.name", str), ("model.config", dict),
    ("schedule", dict), ("schedule.name", str), ("schedule.num_train_timesteps", int), ("data", dict),
    ("data.shape", list), ("artifacts", dict), ("clip_range", (int, float, type(None))),
]
_ARTIFACT_SCHEMA: list[tuple[str, type | tuple[type, ...]]] = [("files", dict), ("stochastic", bool), ("precision", str)]


def _check_schema(manifest: dict[str, Any], path: Path) -> None:
    """Every key the runtime reads is present with its type: a bad manifest is one ``BundleError`` naming the key."""

    def check(obj: Any, key: str, want, where: str) -> None:
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise BundleError(f"{str(path)!r} lacks {where + key!r}: not a complete diffzoo bundle manifest")
            obj = obj[part]
        if not isinstance(obj, want) or (isinstance(obj, bool) and bool not in (want if isinstance(want, tuple) else (want,))):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise BundleError(f"{str(path)!r}: {where}{key} = {obj!r} is a {type(obj).__name__}, expected {names}")

    for key, want in _SCHEMA:
        check(manifest, key, want, "")
    shape = manifest["data"]["shape"]
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise BundleError(f"{str(path)!r}: data.shape = {shape!r} is invalid: expected [C, H, W] positive integers")
    classes = manifest.get("classes")
    if classes is not None:  # a class-conditional bundle: as many names as classes, the null class after them
        k = manifest["model"]["config"].get("num_classes")
        if not (isinstance(classes, dict) and classes.get("count") == k and classes.get("null") == k
                and isinstance(classes.get("names"), list) and len(classes["names"]) == k
                and all(isinstance(n, str) for n in classes["names"])):
            raise BundleError(f"{str(path)!r}: classes = {classes!r} is invalid: expected count and null equal to the "
                              f"model's num_classes ({k!r}) and that many names")
    for name, info in manifest["files"].items():
        check(info, "sha256", str, f"files.{name}.")
        check(info, "size", int, f"files.{name}.")
    for name, entry in manifest["artifacts"].items():
        for key, want in _ARTIFACT_SCHEMA:
            check(entry, key, want, f"artifacts.{name}.")


def _check_settings(root: Path, manifest: dict[str, Any], path: Path) -> None:
    """The manifest's settings must be those in the header of its hashed weights file.

    The manifest itself is not hashed; the weights are, and their safetensors header carries the
    model, schedule and data shape that export wrote. Editing ``schedule.beta_end`` or
    ``data.shape`` in the manifest alone is refused here instead of silently changing the output,
    and so is a header that lacks one of them.
    """
    weights = root / manifest["weights"]
    try:  # the header only: the whole file was hashed a moment ago by load_manifest
        meta = read_weights_metadata(weights)
    except ValueError as e:
        raise BundleError(f"{str(weights)!r} has no diffzoo settings in its header ({e})") from None
    pairs = [("model", manifest["model"], meta.get("model")), ("schedule", manifest["schedule"], meta.get("schedule")),
             ("data.shape", manifest["data"]["shape"], (meta.get("data") or {}).get("shape"))]
    for key, got, want in pairs:
        if got != want:
            raise BundleError(f"{str(path)!r}: {key} = {got!r} differs from the hashed weights' {want!r} "
                              "(the manifest was edited after export, or the weights carry no such setting); refused")


def _check_references(manifest: dict[str, Any], path: Path) -> None:
    """Every file the manifest points to is a plain name in its hashed ``files`` table: nothing outside the bundle."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{str(path)!r} has no 'files' table: not a diffzoo bundle manifest")
    refs = [("weights", manifest.get("weights"))] + [
        (f"artifacts.{a}.files.{fmt}", name)
        for a, entry in (manifest.get("artifacts") or {}).items()
        for fmt, name in (entry.get("files") or {}).items()
    ]
    for where, name in refs:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or name not in files:
            raise BundleError(f"{str(path)!r}: {where} = {name!r} is not one of the bundle's hashed files; refused")


def read_verified(bundle_dir: str | os.PathLike, manifest: dict[str, Any], name: str) -> bytes:
    """The bytes of bundle file ``name``, checked against the manifest's size and sha256 as they are read.

    Build sessions from these bytes, never from the path: a file replaced after ``load_manifest``
    checked it (another export into the same directory, a hand edit) is refused here instead of
    being run.
    """
    root = Path(bundle_dir)
    info = manifest["files"].get(name) if isinstance(manifest.get("files"), dict) else None
    if info is None or Path(name).is_absolute() or ".." in Path(name).parts or Path(name).name != name:
        raise BundleError(f"{name!r} is not a file of the bundle {str(root)!r} (not in its manifest's hashed files)")
    try:
        data = (root / name).read_bytes()
    except FileNotFoundError:
        raise BundleFileMissingError(f"bundle file {str(root / name)!r} listed in the manifest is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != info["size"] or digest != info["sha256"]:
        raise BundleHashMismatchError(
            f"bundle file {str(root / name)!r} changed after the bundle was loaded (sha256 {digest[:12]}..., "
            f"the manifest says {info['sha256'][:12]}...): reload the bundle"
        )
    return data


def _compat(manifest: dict[str, Any]) -> None:
    """Bundles exported before an artifact's kind, solver and body, or the eps rule, were recorded: fill them in.

    The one place that knows older bundles: their artifacts had the table's names, so each missing
    field is the table's value for that name. An unknown name without a kind is left alone (the
    runtime never selects it). Their step graphs remix the network's own eps (``LEGACY_EPS_RULE``).
    """
    rule = manifest.setdefault("eps_rule", LEGACY_EPS_RULE)
    if not isinstance(rule, str) or rule not in EPS_RULES:
        raise BundleError(f"the manifest's eps_rule = {rule!r} is invalid: expected one of {sorted(EPS_RULES)}")
    manifest.setdefault("conditioning", _legacy_conditioning(manifest))
    conditions = conditions_of(manifest)
    classes = conditions and conditions.of_kind("class")
    if (classes.null if classes else None) != (manifest.get("classes") or {}).get("null"):
        raise BundleError(f"the manifest's conditioning = {manifest['conditioning']!r} is invalid: its class input must "
                          f"have the null class of the bundle's classes ({manifest.get('classes')!r})"[:400])
    table = artifact_specs(manifest["data"]["shape"][0], int8=True)
    for name, entry in manifest["artifacts"].items():
        spec = table.get(name)
        if spec is not None and "kind" not in entry:
            entry.update(kind=spec.kind, solver=spec.solver, **({"body": spec.body} if spec.body else {}))


def _compat_identity(stamped: dict[str, Any], manifest: dict[str, Any], external: bool) -> None:
    """A graph identity stamped before the eps rule, the conditioning or the weights were: what those graphs are.

    Their step graphs remix the network's own eps (``LEGACY_EPS_RULE``), their conditioning is the
    classes' labels, and they hold their weights themselves, so they go with any weights file; a graph
    that refers to external data was stamped with its weights' hash, and without one it is refused.
    """
    stamped.setdefault("eps_rule", LEGACY_EPS_RULE)
    stamped.setdefault("conditioning", _legacy_conditioning(manifest))
    if not external:
        stamped.setdefault("weights", weights_sha256(manifest))


def _legacy_conditioning(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What a bundle exported before conditioning was declared is conditioned on: its classes' labels, or nothing."""
    classes = manifest.get("classes")
    return class_labels(classes["null"]).to_dict() if classes else None


def conditions_of(manifest: dict[str, Any]) -> Conditions | None:
    """The bundle's conditioning declaration (``zoo.conditioning``), or None for an unconditional bundle; a declaration
    that is not one is a ``BundleError``."""
    d = manifest.get("conditioning")
    if d is None:
        return None
    try:
        return Conditions.from_dict(d)
    except ValueError as e:
        raise BundleError(f"the manifest's {e}") from None


def table_spec(manifest: dict[str, Any], name: str) -> ArtifactSpec | None:
    """The artifact table's spec of the manifest's artifact ``name`` (its bundle's channels and conditioning), or None."""
    return artifact_specs(manifest["data"]["shape"][0], int8=True, conditions=conditions_of(manifest)).get(name)


def artifact_entry(spec: ArtifactSpec, files: dict[str, str]) -> dict[str, Any]:
    """An artifact as the manifest records it, from its spec: the runtime selects and feeds it from this."""
    return {
        "description": spec.description,
        "kind": spec.kind,
        "solver": spec.solver,
        **({"body": spec.body} if spec.body else {}),
        "precision": spec.precision,
        "stochastic": spec.stochastic,
        "files": files,
        "inputs": [i.to_dict() for i in spec.inputs],
        "outputs": [o.to_dict() for o in spec.outputs],
        "dynamic_axes": sorted({d for io in spec.inputs + spec.outputs for d in io.dims if isinstance(d, str)}),
    }


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file of ``directory`` into ``manifest["files"]``, then write the manifest last (fsynced).

    ``manifest`` holds everything but the file table: model, schedule, data, clip_range, weights,
    artifacts (``artifact_entry``), export facts and verification. Returns it, completed.
    """
    root = Path(directory)
    manifest = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, **manifest}
    manifest["files"] = {
        p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted(root.iterdir()) if p.is_file()
    }
    write_synced(root / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def not_a_bundle(directory: str | os.PathLike) -> str | None:
    """None if ``directory`` is a diffzoo bundle, else why not (what ``--force`` may replace, and nothing else).

    A bundle's ``manifest.json`` parses as a diffzoo manifest, and its hashed file table lists
    exactly the entries present beside it: a directory that holds anything more (another tool's
    ``manifest.json`` and its files, a subdirectory) is not one.
    """
    root = Path(directory)
    try:
        manifest = load_manifest(root, verify=False)
    except BundleError as e:
        return str(e)
    if manifest.get("format") != BUNDLE_FORMAT:
        return f"its {MANIFEST_NAME} has format {manifest.get('format')!r}, not {BUNDLE_FORMAT!r}"
    present = {p.name for p in root.iterdir()} - {MANIFEST_NAME}
    listed = set(manifest["files"])
    if present != listed:
        extra, missing = sorted(present - listed), sorted(listed - present)
        return "its manifest does not list exactly the files present: " + "; ".join(
            part for part in (extra and f"not listed: {extra[:5]}", missing and f"missing: {missing[:5]}") if part)
    return None


def graph_identity(name: str, entry: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """What an ONNX graph of artifact ``name`` is, as stamped into its own (hashed) bytes at export.

    The artifact's name, kind, solver, precision, stochastic and body, and the settings baked into
    the graph (clip range, eps rule, schedule): a manifest that says otherwise was edited after export.
    """
    keys = ("kind", "solver", "precision", "stochastic", "body")
    return {"artifact": name, **{k: entry.get(k) for k in keys}, "clip_range": manifest["clip_range"],
            "eps_rule": manifest["eps_rule"], "schedule": manifest["schedule"], "conditioning": manifest.get("conditioning"),
            "weights": weights_sha256(manifest)}


def weights_sha256(manifest: dict[str, Any]) -> str:
    """The sha256 of the bundle's weights file: part of every graph's identity, since its graphs read their tensors
    from it (``export.format.graphs``)."""
    return manifest["files"][manifest["weights"]]["sha256"]


def check_identity(data: bytes, name: str, manifest: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse the verified bytes of artifact ``name`` if they are another graph than the manifest says.

    The bytes' stamped identity (``IDENTITY_KEY``) must equal ``graph_identity`` of the manifest's
    entry. Bundles exported before identities were stamped carry none: there the artifact must be
    the table's artifact of that name, in the file of that name (``<name>.onnx``), so editing the
    manifest alone still cannot make one graph run in place of another.
    """
    import onnx

    entry = manifest["artifacts"][name]
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001  protobuf's DecodeError and friends: not an ONNX graph at all
        raise BundleError(f"{name!r} of the bundle {str(path)!r} is not a readable ONNX graph ({type(e).__name__})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    if IDENTITY_KEY in meta:
        try:
            stamped = json.loads(meta[IDENTITY_KEY])
        except ValueError:
            stamped = None
        if isinstance(stamped, dict):
            _compat_identity(stamped, manifest, external)
        expected = graph_identity(name, entry, manifest)
        if stamped != expected:
            diff = sorted(k for k in expected if not isinstance(stamped, dict) or stamped.get(k) != expected[k])
            if diff == ["weights"]:
                raise BundleError(f"the graph in {entry['files'].get('onnx')!r} of the bundle {str(path)!r} was exported "
                                  f"with other weights (sha256 {str(stamped.get('weights'))[:12]}...) than its weights file "
                                  f"(sha256 {expected['weights'][:12]}...): a graph runs only with "
                                  "the weights it was verified with; refused")
            raise BundleError(f"the graph in {entry['files'].get('onnx')!r} of the bundle {str(path)!r} is not the manifest's "
                              f"{name!r}: its own bytes differ on {diff} (the manifest was edited after export); refused")
        return
    spec = table_spec(manifest, name)
    legacy_ok = not external and spec is not None and entry["files"].get("onnx") == f"{name}.onnx" and all(
        entry.get(k) == getattr(spec, k) for k in ("kind", "solver", "precision", "stochastic", "body"))
    if not legacy_ok:
        raise BundleError(f"{name!r} of the bundle {str(path)!r} carries no identity (exported before diffzoo stamped one) "
                          "and its manifest entry is not the table's: re-export the bundle")

"""Shared fixtures: small models and seeded inputs so the suite stays fast on 2 cores."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

import zoo

SMALL = {"hidden": 8}

# The suite runs in two pytest-xdist workers (pyproject's addopts), one a core. The fixtures below export or train for
# a minute or more each; every test that uses one joins that fixture's group, and a group runs in one worker, so each is
# built once. A test using two joins the first listed (the other is then built in its worker too).
SHARED_FIXTURES = ("bundles", "cond_bundle", "int8_bundles", "diffusers_bundle", "digits_bundle", "digits_run")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        shared = next((name for name in SHARED_FIXTURES if name in getattr(item, "fixturenames", ())), None)
        if shared is not None:
            item.add_marker(pytest.mark.xdist_group(shared))


def pytest_configure(config):
    """Refuse a pytest whose xdist cannot group; a worker is one of two on two cores: one thread each (its subprocesses
    inherit it), not two fighting for both."""
    version = tuple(int(p) for p in pytest.__version__.split(".")[:2] if p.isdigit())
    if getattr(config.option, "dist", "no") == "loadgroup" and getattr(config.option, "numprocesses", None) and version >= (9, 2):
        # pytest 9.2 silently stopped xdist's grouping (pytest-xdist #1386): each shared fixture would be built in both
        # workers, minutes more.
        raise pytest.UsageError(f"pytest {pytest.__version__} breaks pytest-xdist's --dist loadgroup, which this suite "
                                "runs under (pytest-xdist #1386): install pytest<9.2, or run with -n 0")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)

# The zoo's own networks, built from `hidden` (SMALL): the generic tests run over these. The "diffusers_unet" entry
# wraps a diffusers config instead, and tests/test_diffusers.py covers it (one small UNet2DModel bundle a session).
ZOO_MODELS = [name for name in zoo.available() if "hidden" in zoo.registry.config_fields(name)]


@pytest.fixture(params=ZOO_MODELS)
def model_name(request) -> str:
    return request.param


@pytest.fixture
def small_model(model_name):
    torch.manual_seed(0)
    return zoo.build(model_name, **SMALL).eval()


EXAMPLE_SHAPE = (3, 12, 12)

# (solver, eta): every sampler a bundle ships, from the solver table (eta 0.6 too where the solver takes eta)
SOLVER_RUNS = [(s, 0.0) for s in zoo.solvers.SOLVERS] + [(s, 0.6) for s in zoo.solvers.SOLVERS
                                                         if zoo.solvers.get_solver(s).takes_eta]


INT8_MODELS = [name for name in ZOO_MODELS if zoo.build(name, **SMALL).supports_int8]


def _export_all(tmp_path_factory, names, int8: bool, **kwargs) -> dict:
    import export

    out = {}
    for name in names:
        torch.manual_seed(0)
        model = zoo.build(name, **SMALL)
        out[name] = export.export_bundle(model, tmp_path_factory.mktemp("bundles") / name, example_shape=EXAMPLE_SHAPE,
                                         int8=int8, **kwargs)
    return out


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict:
    """One fp32 bundle per zoo model (hidden=8), exported once per test session."""
    return _export_all(tmp_path_factory, ZOO_MODELS, int8=False)


@pytest.fixture(scope="session")
def int8_bundles(tmp_path_factory) -> dict:
    """One bundle with int8 variants per model that supports them (hidden=8; ONNX and DDIM only: what int8 covers)."""
    return _export_all(tmp_path_factory, INT8_MODELS, int8=True, formats=["onnx"], solvers=["ddim"])


# The class names of the session's conditional bundle (the digits): UTF-8 and a quote, as a served model's config must
# carry them; a number names the class of its index.
COND_NAMES = ("zéro", "one", '"two"', *(str(d) for d in range(3, 10)))


@pytest.fixture(scope="session")
def cond_bundle(tmp_path_factory):
    """One class-conditional bundle a session (unet hidden=8, 1 channel, the 10 digit classes ``COND_NAMES``, 8x8, ONNX,
    its data recorded as the digits): the guided, the served and the evaluated ones'."""
    import export

    torch.manual_seed(0)
    model = zoo.build("unet", hidden=8, num_classes=10, channels=1).eval()
    return export.export_bundle(model, tmp_path_factory.mktemp("cond") / "b", example_shape=(1, 8, 8), formats=["onnx"],
                                class_names=COND_NAMES, data_source="digits")


@pytest.fixture(autouse=True, scope="session")
def _classifier_cache(tmp_path_factory):
    """Quality classifiers are trained into a per-session cache, never the user's ~/.cache."""
    import os

    os.environ["DIFFZOO_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def bundle(bundles, model_name):
    return bundles[model_name]


@pytest.fixture
def small_fs(tmp_path):
    """A 300 KB file system (tmpfs, mounted for the test): room for a run's config, none for a checkpoint.

    Skips where mounting is not allowed (not root).
    """
    path = tmp_path / "small"
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _own_memory_cgroup() -> tuple[Path, str] | None:
    """(this process's memory cgroup directory, its limit file) where cgroup v1's memory controller is mounted."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
    return None


@pytest.fixture
def memory_cgroup():
    """``run(cmd, limit_bytes)``: a command run in a new memory cgroup of that limit (a container's), waited for.

    Skips where a cgroup cannot be made here (not root, or cgroup v2 without delegation).
    """
    own = _own_memory_cgroup()
    made: list[Path] = []

    def run(cmd: list[str], limit: int) -> subprocess.CompletedProcess:
        if own is None:
            pytest.skip("no cgroup v1 memory controller here")
        base, limit_file = own
        d = base / f"diffzoo-test-{os.getpid()}-{len(made)}"
        try:
            d.mkdir()
            made.append(d)
            (d / limit_file).write_text(str(limit))
        except OSError as e:
            pytest.skip(f"cannot make a memory cgroup here (needs root): {e.strerror}")
        return subprocess.run(["sh", "-c", f'echo $$ > "{d}/cgroup.procs" && exec "$@"', "sh", *cmd], capture_output=True,
                              text=True, timeout=600)

    yield run
    for d in made:
        try:
            d.rmdir()
        except OSError:
            pass


def replace_graph(bundle, tmp_path: Path, name: str, edit) -> Path:
    """A copy of ``bundle`` (a ``Bundle`` or its path) whose graph file ``name`` is ``edit(graph)`` (an ``onnx.ModelProto``
    in, one out), stamped with the original's identity and its hash redone: a forger's bundle, which passes every hash."""
    import json
    import shutil

    import onnx

    from export.format.manifest import IDENTITY_KEY, sha256_file

    src = Path(getattr(bundle, "path", bundle))
    path = tmp_path / "forged"
    shutil.copytree(src, path)
    original = onnx.load(str(src / name), load_external_data=False)
    identity = next(p.value for p in original.metadata_props if p.key == IDENTITY_KEY)
    model = edit(original)
    if not any(p.key == IDENTITY_KEY for p in model.metadata_props):
        model.metadata_props.add(key=IDENTITY_KEY, value=identity)
    (path / name).write_bytes(model.SerializeToString())
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": sha256_file(path / name), "size": (path / name).stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def as_older_bundle(path: Path, key: str) -> None:
    """The bundle at ``path``, in place, as exported before ``key`` was recorded: ``key`` dropped from its manifest and
    from every graph's stamped identity, the hashes redone."""
    import json

    import onnx

    from export.format.manifest import IDENTITY_KEY, sha256_file

    manifest = json.loads((path / "manifest.json").read_text())
    del manifest[key]
    for name in (p.name for p in path.glob("*.onnx")):
        g = onnx.load(str(path / name), load_external_data=False)
        for prop in g.metadata_props:
            if prop.key == IDENTITY_KEY:
                identity = json.loads(prop.value)
                del identity[key]
                prop.value = json.dumps(identity, sort_keys=True)
        onnx.save(g, str(path / name))
        manifest["files"][name] = {"sha256": sha256_file(path / name), "size": (path / name).stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))

"""Check that the wheels in ``.whl/`` have every requirement they declare, before a device call.

Every wheel's ``Requires-Dist`` lines (extras left out; markers evaluated for CPython 3.12 on
Linux x86-64, the device's python) are checked against

* here (default): the device image's packages (the list in the device tool's KINDS.md, with the
  versions its pip-list row gives; a package listed there without a version counts as present,
  any version) plus the wheels themselves;
* ``--installed`` (on the device, after ``pip install --target /tmp/site .whl/*.whl`` and with
  ``PYTHONPATH=/tmp/site``): what ``importlib.metadata`` finds in that interpreter, versions
  included.

``--imports`` then imports what the GPU calibration benchmark needs (quantport's CLI,
llm-compressor's oneshot and GPTQModifier, GPTQModel). Prints what is missing or off and exits
1 if anything is, outside the deviations accepted below (each with its reason).

Usage:
    python benchmarks/_wheel_check.py                 # here
    python3 benchmarks/_wheel_check.py --installed --imports   # on the device
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # quantport runs from the source tree on the device

# The device image's packages (KINDS.md, "Python packages already there", read 2026-11-17) and
# the versions its pip-list row gives (None: present, version not listed).
DEVICE_VERSIONS = {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "onnx": "1.23.1",
    "onnx-ir": "1.0.0", "onnxruntime": "1.30.0", "safetensors": "0.8.0",
    "sentencepiece": "0.2.2", "tokenizers": "0.23.2", "torch": "2.11.0",
    "transformers": "5.17.0", "triton": "3.6.0",
}
DEVICE_PACKAGES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc
anyio attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama
contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist
fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy
numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp""".split()

# Requirements knowingly left unmet, with the reason (read in the packages' sources).
ACCEPTED = {
    ("gptqmodel", "numpy"): "GPTQModel 7.6.0 pins numpy==2.2.6 for python<3.14; the device's "
    "numpy 2.5.2 stays (a carried numpy would shadow the one torch and pyarrow were built with)",
    ("gptqmodel", "torchao"): "imported only inside try/except (quantization/dtype.py, "
    "nn_modules/qlinear/fp4.py: NVFP4 paths), not on the int4 GPTQ path",
    ("gptqmodel", "maturin"): "a build tool (Rust extensions), never imported at run time",
}

# What the benchmark imports in each tool's process.
IMPORTS = [
    "quantport.cli.main",
    "datasets",
    "compressed_tensors.quantization",
    "llmcompressor",
    "llmcompressor.modifiers.quantization",
    "gptqmodel",
]


def device_env() -> dict[str, str]:
    env = default_environment()
    env.update(python_version="3.12", python_full_version="3.12.3", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64",
               implementation_name="cpython", platform_python_implementation="CPython",
               os_name="posix")
    return env


def wheel_meta(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    field = dict.fromkeys(("Name", "Version"), "")
    reqs = []
    for line in head.splitlines():
        k, _, v = line.partition(": ")
        if k in field and not field[k]:
            field[k] = v.strip()
        elif k == "Requires-Dist":
            reqs.append(v.strip())
    return field["Name"], field["Version"], reqs


def installed_version(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=ROOT / ".whl")
    ap.add_argument("--installed", action="store_true",
                    help="check against this interpreter's packages (on the device)")
    ap.add_argument("--imports", action="store_true", help="also import the benchmark's needs")
    a = ap.parse_args(argv)

    wheels = sorted(a.dir.glob("*.whl"))
    if not wheels:
        print(f"no wheels in {a.dir}")
        return 1
    env = device_env()
    carried: dict[str, str] = {}
    problems: list[str] = []
    metas = []
    for w in wheels:
        name, version, reqs = wheel_meta(w)
        key = canonicalize_name(name)
        if key in carried:
            problems.append(f"two versions of {name}: {carried[key]} and {version} (keep one)")
        carried[key] = version
        metas.append((w, key, version, reqs))
        print(f"{w.name}: {w.stat().st_size / 2**20:.2f} MiB")
    total = sum(w.stat().st_size for w in wheels)
    print(f"total {total / 2**20:.1f} MiB in {len(wheels)} wheels")

    for w, key, _version, reqs in metas:
        for line in reqs:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(dict(env, extra="")):
                continue
            dep = canonicalize_name(req.name)
            if a.installed:
                have = installed_version(req.name)
                where = "installed"
            elif dep in carried:
                have, where = carried[dep], "carried"
            elif dep in {canonicalize_name(p) for p in DEVICE_PACKAGES}:
                have, where = DEVICE_VERSIONS.get(dep, "any"), "device"
            else:
                have, where = None, "-"
            ok = have is not None and (
                have == "any" or not req.specifier
                or req.specifier.contains(Version(have), prereleases=True))
            if ok:
                continue
            msg = (f"{w.name}: needs {req}, "
                   + ("missing" if have is None else f"{where} has {have}"))
            reason = ACCEPTED.get((key, dep))
            if reason:
                print(f"accepted: {msg} ({reason})")
            else:
                problems.append(msg)
    if not a.installed:
        unknown = [p for p in ("fsspec", "pyarrow", "protobuf", "typing-extensions")
                   if canonicalize_name(p) not in carried]
        if unknown:
            print("device versions not known here (checked with --installed there): "
                  + ", ".join(unknown))

    if a.imports:
        for mod in IMPORTS:
            try:
                importlib.import_module(mod)
                print(f"import {mod}: ok")
            except Exception as e:  # report every failing import, not only the first
                problems.append(f"import {mod}: {type(e).__name__}: {e}")

    for p in problems:
        print("MISSING/OFF: " + p)
    print("wheel check: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

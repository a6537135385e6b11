"""Virtualenvs of the peers, one per library, cached under ~/.cache/streamflow-bench/venvs;
and the Kafka Streams reference (``ensure_java``), built under ~/.cache/streamflow-bench/java.

A venv is made with ``python3 -m venv`` + pip when it is missing or was made for other
requirements (a ``.bench-requirements`` file inside records them), else reused as is.
Each peer has its own because Quix Streams pins a different confluent-kafka than ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("STREAMFLOW_BENCH_CACHE", Path.home() / ".cache" / "streamflow-bench"))
PEERS: dict[str, list[str]] = {
    "quixstreams": ["quixstreams==3.28.1"],
    "faust": ["faust-streaming==0.15.3"],
}
# distributions whose versions the report shows, per peer
REPORTED: dict[str, list[str]] = {
    "quixstreams": ["quixstreams", "confluent-kafka", "orjson"],
    "faust": ["faust-streaming", "aiokafka", "mode-streaming"],
}
MARKER = ".bench-requirements"


@dataclass
class PeerEnv:
    name: str
    python: Path | None
    error: str | None
    created: bool
    seconds: float
    versions: dict[str, str]
    command: list[str] | None = None  # what runs the peer (the module's arguments follow)


def ensure(name: str, base_python: str | None = None) -> PeerEnv:
    """The venv of peer ``name``, made if missing; never raises (errors are reported)."""
    reqs = PEERS[name]
    root = CACHE / "venvs" / name
    python = root / "bin" / "python"
    marker = root / MARKER
    started = time.perf_counter()
    wanted = "\n".join(reqs)
    created = False
    try:
        if not (python.exists() and marker.exists() and marker.read_text() == wanted):
            created = True
            shutil.rmtree(root, ignore_errors=True)
            root.parent.mkdir(parents=True, exist_ok=True)
            interpreter = base_python or os.environ.get("STREAMFLOW_BENCH_PEER_PYTHON", "python3")
            _call([interpreter, "-m", "venv", str(root)], 120)
            _call([str(python), "-m", "pip", "install", "-q", *reqs], 900)
            marker.write_text(wanted)
        versions = _versions(python, REPORTED[name])
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as exc:
        return PeerEnv(name, None, str(exc), created, time.perf_counter() - started, {})
    return PeerEnv(name, python, None, created, time.perf_counter() - started, versions)


REPO = Path(__file__).resolve().parent.parent
KSTREAMS = REPO / "bench" / "peers" / "kstreams"
KSTREAMS_MAIN = "bench.BenchApp"


def ensure_java() -> PeerEnv:
    """The Kafka Streams app of bench/peers/kstreams: its jars resolved from Maven Central by
    ``mvn dependency:copy-dependencies`` (pom.xml) and BenchApp.java compiled with javac, once
    per content of those two files; never raises (errors are reported)."""
    started = time.perf_counter()
    pom, src = KSTREAMS / "pom.xml", KSTREAMS / "src" / "main" / "java" / "bench" / "BenchApp.java"
    created = False
    try:
        digest = hashlib.sha256(pom.read_bytes() + src.read_bytes()).hexdigest()[:16]
        root = CACHE / "java" / digest
        libs, classes = root / "libs", root / "classes"
        if not (root / MARKER).exists():
            created = True
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _call(
                ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={libs}"], 900,
            )  # fmt: skip
            _call(["javac", "-cp", f"{libs}/*", "-d", str(classes), str(src)], 300)
            (root / MARKER).write_text(digest)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        versions = {"java": _java_version()}
        versions.update(
            {j.rsplit("-", 1)[0]: j.rsplit("-", 1)[1].removesuffix(".jar")
             for j in jars if j.startswith(("kafka-streams", "kafka-clients"))}
        )  # fmt: skip
        command = ["java", "-Xms256m", "-Xmx512m", "-cp", f"{classes}:{libs}/*", KSTREAMS_MAIN]
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, IndexError) as exc:
        return PeerEnv("kstreams", None, str(exc), created, time.perf_counter() - started, {})
    return PeerEnv(
        "kstreams", None, None, created, time.perf_counter() - started, versions, command
    )


def _java_version() -> str:
    proc = subprocess.run(
        ["java", "-version"], capture_output=True, text=True, timeout=60, check=True
    )
    first = (proc.stderr or proc.stdout).strip().splitlines()[0]
    return first.split('"')[1] if '"' in first else first


def _call(cmd: list[str], timeout: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}: " + "\n".join(tail))


def _versions(python: Path, dists: list[str]) -> dict[str, str]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "out = {'python': sys.version.split()[0]}\n"
        f"for d in {dists!r}:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = 'missing'\n"
        "try:\n"
        "    import confluent_kafka as c; out['librdkafka'] = c.libversion()[0]\n"
        "except ImportError: pass\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    versions: dict[str, str] = json.loads(proc.stdout)
    return versions

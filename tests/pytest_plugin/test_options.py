"""The plugin's options: ini keys and command-line options of the same names, the command line winning."""

from __future__ import annotations

import pytest

from emulator.pytest_plugin.options import allow_all_pins, configured

pytestmark = pytest.mark.unit

PROJECT = """
[tool.pytest.ini_options]
twin_handler = "orders.handler"
twin_code = "function"
twin_init_sql = ["schema", "seed.sql"]
twin_env = ["DB_HOST=${DB_PROXY_ENDPOINT}", "STAGE=test"]
twin_proxy_setting = ["connection_borrow_timeout=30", "max_connections_percent=25"]
twin_function = "reports=reports:main.handler"
twin_max_connections = "40"
"""


def test_the_ini_file_configures_the_twin_with_paths_from_its_directory(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(PROJECT)
    (pytester.path / "tests").mkdir()
    config = pytester.parseconfig(pytester.path / "tests")
    here = pytester.path
    assert configured(config) == {
        "handler": "orders.handler",
        "code": here / "function",
        "init_sql": (here / "schema", here / "seed.sql"),
        "env": {"DB_HOST": "${DB_PROXY_ENDPOINT}", "STAGE": "test"},
        "proxy_settings": {"connection_borrow_timeout": "30", "max_connections_percent": "25"},
        "functions": {"reports": f"{here / 'reports'}:main.handler"},
        "max_connections": 40,
    }
    assert not allow_all_pins(config)


def test_the_command_line_wins_name_by_name_and_its_paths_are_the_current_directory_s(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyprojecttoml(PROJECT + 'twin_allow_pins = "false"\n')
    elsewhere = pytester.mkdir("elsewhere")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)
        config = pytester.parseconfig(
            "--rootdir", str(pytester.path), "-c", str(pytester.path / "pyproject.toml"),
            "--twin-handler", "orders.other",
            "--twin-proxy-setting", "connection_borrow_timeout=7",
            "--twin-env", "STAGE=ci",
            "--twin-init-sql", "other.sql",
            "--twin-max-connections", "50",
            "--twin-allow-pins",
        )  # fmt: skip
    options = configured(config)
    assert options["handler"] == "orders.other"
    assert options["proxy_settings"] == {"connection_borrow_timeout": "7", "max_connections_percent": "25"}
    assert options["env"] == {"DB_HOST": "${DB_PROXY_ENDPOINT}", "STAGE": "ci"}
    assert options["init_sql"] == (elsewhere / "other.sql",)
    assert options["code"] == pytester.path / "function"
    assert options["max_connections"] == 50
    assert allow_all_pins(config)


def test_without_options_the_plugin_configures_nothing(pytester: pytest.Pytester) -> None:
    assert configured(pytester.parseconfig()) == {}


def test_a_handler_without_a_code_directory_is_in_the_ini_file_s(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntwin_handler = app.handler\n")
    assert configured(pytester.parseconfig())["code"] == pytester.path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--twin-env", "STAGE"], "twin_env / --twin-env takes NAME=VALUE, not 'STAGE'"),
        (["--twin-function", "reports=main.handler"], "takes NAME=DIR:MODULE.FUNCTION"),
        (["--twin-pool-size", "five"], "twin_pool_size / --twin-pool-size: not a number: 'five'"),
    ],
)
def test_a_value_that_cannot_be_right_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    config = pytester.parseconfig(*args)
    with pytest.raises(pytest.UsageError, match=message):
        configured(config)


def test_the_readme_documents_every_option_and_fixture() -> None:
    from emulator.paths import REPO  # noqa: PLC0415
    from emulator.pytest_plugin.options import OPTIONS  # noqa: PLC0415

    readme = (REPO / "README.md").read_text()
    options_table = [line for line in readme.splitlines() if line.startswith("| `twin_")]
    for option in OPTIONS:
        assert any(f"`{option.ini}`" in line and f"`{option.flag}`" in line for line in options_table), option
    for fixture in ("twin", "twin_fixture(", "twin_within_cap", "twin_failover"):
        assert any(line.startswith(f"| `{fixture}") for line in options_table), fixture

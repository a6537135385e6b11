"""Config values: defaults, required, coercion, enums, unknown names, config files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamflow.errors import ConfigError
from streamflow.topology.models import ConfigVar
from streamflow.topology.values import parse_assignments, read_config_file, resolve_config


def var(**kw: Any) -> ConfigVar:
    return ConfigVar(**kw)


# --- defaults and required ----------------------------------------------------------------


def test_defaults_apply_when_nothing_is_supplied() -> None:
    variables = {
        "url": var(default="http://127.0.0.1:8081"),
        "retries": var(type="integer", default=3),
        "opts": var(type="object", default={"a": 1}),
        "off": var(type="boolean", default=False),  # a falsy default is still a default
        "zero": var(type="number", default=0),
    }
    assert resolve_config(variables, {}) == {
        "url": "http://127.0.0.1:8081",
        "retries": 3,
        "opts": {"a": 1},
        "off": False,
        "zero": 0,
    }


def test_supplied_value_beats_the_default() -> None:
    variables = {"retries": var(type="integer", default=3)}
    assert resolve_config(variables, {"retries": "7"}) == {"retries": 7}


def test_a_variable_without_default_is_required() -> None:
    with pytest.raises(ConfigError, match=r"^config variable 'token' is required \(no default\)$"):
        resolve_config({"token": var(secret=True)}, {})
    with pytest.raises(ConfigError, match="'token' is required"):
        resolve_config({"token": var(required=True)}, {})


def test_required_with_a_default_uses_the_default() -> None:
    assert resolve_config({"x": var(required=True, default="d")}, {}) == {"x": "d"}


def test_optional_variable_without_default_is_none() -> None:
    assert resolve_config({"x": var(type="integer", required=False)}, {}) == {"x": None}


def test_supplied_empty_string_is_a_value_not_missing() -> None:
    assert resolve_config({"x": var()}, {"x": ""}) == {"x": ""}


# --- coercion from strings (the command line) -----------------------------------------------


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        ("string", "hello", "hello"),
        ("string", "42", "42"),
        ("string", " spaced ", " spaced "),
        ("string", "true", "true"),
        ("integer", "42", 42),
        ("integer", "-3", -3),
        ("integer", " 7 ", 7),
        ("integer", "0", 0),
        ("number", "1.5", 1.5),
        ("number", "3", 3.0),
        ("number", "-2e3", -2000.0),
        ("boolean", "true", True),
        ("boolean", "TRUE", True),
        ("boolean", "Yes", True),
        ("boolean", "on", True),
        ("boolean", "1", True),
        ("boolean", "false", False),
        ("boolean", "False", False),
        ("boolean", "no", False),
        ("boolean", "OFF", False),
        ("boolean", "0", False),
        ("object", '{"a": {"b": [1, "ü"]}}', {"a": {"b": [1, "ü"]}}),
        ("object", "{}", {}),
        ("array", '[1, "two", null]', [1, "two", None]),
        ("array", "[]", []),
    ],
)
def test_strings_are_coerced_to_the_variable_type(type_: str, text: str, expected: Any) -> None:
    got = resolve_config({"v": var(type=type_)}, {"v": text})["v"]
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("type_", "text", "fragment"),
    [
        ("integer", "4.5", "'4.5' is not an integer"),
        ("integer", "abc", "'abc' is not an integer"),
        ("integer", "", "'' is not an integer"),
        ("number", "fast", "'fast' is not a number"),
        ("boolean", "maybe", "'maybe' is not a boolean"),
        ("boolean", "", "'' is not a boolean"),
        ("object", "not json", "config variable 'v'"),
        ("object", "[1, 2]", "is not an object"),
        ("object", '"text"', "is not an object"),
        ("array", '{"a": 1}', "is not an array"),
        ("array", "[1,", "config variable 'v'"),
    ],
)
def test_bad_strings_are_refused(type_: str, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config({"v": var(type=type_)}, {"v": text})
    assert str(err.value).startswith("config variable 'v': ")
    assert fragment in str(err.value)


# --- native values (config files, tests) ------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "value"),
    [
        ("integer", 5),
        ("number", 2.5),
        ("number", 2),
        ("boolean", True),
        ("boolean", False),
        ("object", {"k": [1]}),
        ("array", [{"k": 1}]),
        ("string", "s"),
    ],
)
def test_native_values_of_the_right_type_pass_unchanged(type_: str, value: Any) -> None:
    assert resolve_config({"v": var(type=type_)}, {"v": value}) == {"v": value}


def test_non_strings_become_strings_for_string_variables() -> None:
    assert resolve_config({"v": var()}, {"v": 8080}) == {"v": "8080"}
    assert resolve_config({"v": var()}, {"v": 1.5}) == {"v": "1.5"}


@pytest.mark.parametrize(
    ("type_", "value", "message"),
    [
        ("integer", True, "expected an integer, got a boolean"),
        ("integer", 1.0, "expected an integer, got a number"),
        ("integer", [1], "expected an integer, got an array"),
        ("number", False, "expected a number, got a boolean"),
        ("number", None, "expected a number, got null"),
        ("boolean", 1, "expected a boolean, got an integer"),
        ("object", [1], "expected an object, got an array"),
        ("array", {"a": 1}, "expected an array, got an object"),
        ("array", 3, "expected an array, got an integer"),
    ],
)
def test_native_values_of_the_wrong_type_are_refused(type_: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^config variable 'v': {message}$"):
        resolve_config({"v": var(type=type_)}, {"v": value})


# --- enums ---------------------------------------------------------------------------------------


def test_enum_accepts_listed_values_after_coercion() -> None:
    variables = {"env": var(enum=["dev", "prod"]), "level": var(type="integer", enum=[1, 2, 3])}
    assert resolve_config(variables, {"env": "prod", "level": "2"}) == {"env": "prod", "level": 2}


def test_enum_refuses_other_values() -> None:
    only = r"^config variable 'env' must be one of \['dev', 'prod'\]$"
    with pytest.raises(ConfigError, match=only):
        resolve_config({"env": var(enum=["dev", "prod"])}, {"env": "staging"})
    with pytest.raises(ConfigError, match=r"'level' must be one of \[1, 2\]"):
        resolve_config({"level": var(type="integer", enum=[1, 2])}, {"level": "3"})


def test_enum_checks_the_default_too() -> None:
    assert resolve_config({"env": var(enum=["dev", "prod"], default="dev")}, {}) == {"env": "dev"}
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="default is not one of enum"):  # at validate
        var(enum=["dev", "prod"], default="qa")


def test_optional_enum_left_unset_is_none() -> None:
    assert resolve_config({"env": var(enum=["dev", "prod"], required=False)}, {}) == {"env": None}


# --- unknown names and the combined message -------------------------------------------------------


def test_unknown_names_are_refused_in_strict_mode() -> None:
    with pytest.raises(ConfigError, match=r"^unknown config variable\(s\): alpha, zeta$"):
        resolve_config({"known": var(default="x")}, {"zeta": "1", "alpha": "2", "known": "k"})


def test_unknown_names_are_ignored_when_not_strict() -> None:
    got = resolve_config({"known": var(default="x")}, {"extra": "1"}, strict=False)
    assert got == {"known": "x"}


def test_one_message_lists_every_problem() -> None:
    variables = {
        "token": var(secret=True),
        "port": var(type="integer"),
        "env": var(enum=["dev", "prod"]),
        "debug": var(type="boolean"),
        "fine": var(default="ok"),
    }
    with pytest.raises(ConfigError) as err:
        resolve_config(
            variables, {"port": "eighty", "env": "qa", "debug": "perhaps", "typo": "1", "oops": "2"}
        )
    problems = str(err.value).split("; ")
    assert problems[0] == "unknown config variable(s): oops, typo"
    assert "config variable 'token' is required (no default)" in problems
    assert "config variable 'port': 'eighty' is not an integer" in problems
    assert "config variable 'env' must be one of ['dev', 'prod']" in problems
    assert "config variable 'debug': 'perhaps' is not a boolean" in problems
    assert len(problems) == 5
    assert "fine" not in str(err.value)


# --- parse_assignments ---------------------------------------------------------------------------


def test_parse_assignments() -> None:
    assert parse_assignments([]) == {}
    assert parse_assignments(["a=1", "url=http://h/x?y=1&z=2", "empty=", " spaced =  v "]) == {
        "a": "1",
        "url": "http://h/x?y=1&z=2",  # only the first '=' splits
        "empty": "",
        "spaced": "  v ",  # the name is trimmed, the value kept as typed
    }
    assert parse_assignments(["a=1", "a=2"]) == {"a": "2"}  # the last one wins


@pytest.mark.parametrize("item", ["novalue", "=value", ""])
def test_parse_assignments_refuses_malformed_items(item: str) -> None:
    with pytest.raises(ConfigError, match="--config expects NAME=VALUE, got"):
        parse_assignments(["ok=1", item])


# --- read_config_file ----------------------------------------------------------------------------


def test_read_config_file_keeps_yaml_types(tmp_path: Path) -> None:
    f = tmp_path / "values.yaml"
    f.write_text(
        "url: http://h\nport: 8080\nratio: 0.5\ndebug: true\nopts: {a: [1, 2]}\nnames: [x, y]\n"
    )
    assert read_config_file(f) == {
        "url": "http://h",
        "port": 8080,
        "ratio": 0.5,
        "debug": True,
        "opts": {"a": [1, 2]},
        "names": ["x", "y"],
    }
    assert read_config_file(str(f))["port"] == 8080


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_read_config_file_empty_is_empty(tmp_path: Path, text: str) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    assert read_config_file(f) == {}


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_read_config_file_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    f = tmp_path / "list.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=r"list\.yaml: a config file is a mapping of NAME: VALUE"):
        read_config_file(f)


def test_read_config_file_missing_or_broken(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config file"):
        read_config_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: }\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: cannot read config file"):
        read_config_file(bad)


def test_file_then_command_line_then_resolve(tmp_path: Path) -> None:
    # the order cli/inputs.py uses: file values, overridden by --config NAME=VALUE
    f = tmp_path / "values.yaml"
    f.write_text("port: 8080\ndebug: false\nenv: dev\n")
    supplied: dict[str, Any] = read_config_file(f)
    supplied.update(parse_assignments(["debug=yes", "env=prod"]))
    variables = {
        "port": var(type="integer"),
        "debug": var(type="boolean"),
        "env": var(enum=["dev", "prod"]),
        "url": var(default="http://127.0.0.1"),
    }
    assert resolve_config(variables, supplied) == {
        "port": 8080,
        "debug": True,
        "env": "prod",
        "url": "http://127.0.0.1",
    }


def test_a_conversion_error_names_the_variable_never_the_value() -> None:
    """F5: a wrongly typed secret (or any value) is not printed back."""
    from streamflow.errors import ConfigError
    from streamflow.topology.models import ConfigVar
    from streamflow.topology.values import resolve_config

    secret = "hunter2-S3CR3T"
    variables = {
        "pin": ConfigVar(type="integer", secret=True),
        "rate": ConfigVar(type="number", secret=True),
        "flag": ConfigVar(type="boolean", secret=True),
        "doc": ConfigVar(type="object", secret=True),
        "ids": ConfigVar(type="array"),
    }
    supplied = {"pin": secret, "rate": secret, "flag": secret, "doc": '{"pw": "' + secret,
                "ids": "[1,"}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        resolve_config(variables, supplied)
    message = str(info.value)
    assert secret not in message and "hunter2" not in message
    for name in variables:
        assert f"config variable '{name}'" in message
    assert "a secret value is not an integer" in message
    assert "'[1,' is not an array" in message  # not a secret: shown
    for hostile in ("nan", "inf", "1" * 5000, "1_000"):
        with pytest.raises(ConfigError) as info:
            resolve_config({"n": ConfigVar(type="number" if hostile != "1_000" else "integer",
                                           secret=True)}, {"n": hostile})  # fmt: skip
        assert "sys." not in str(info.value) and hostile[:20] not in str(info.value)


def test_a_wrongly_typed_default_fails_validation_without_its_value() -> None:
    from pydantic import ValidationError

    from streamflow.topology.models import ConfigVar

    for kind, default in [("integer", "S3CR3T-tok"), ("number", "x"), ("boolean", "yes"),
                          ("object", [1]), ("array", {"a": 1}), ("integer", True)]:  # fmt: skip
        with pytest.raises(ValidationError) as info:
            ConfigVar(type=kind, secret=True, default=default)  # type: ignore[arg-type]
        assert "default must be" in str(info.value)
        assert "S3CR3T" not in str(info.value).split("input_value")[0]
    assert ConfigVar(type="integer", default=5).default == 5
    assert ConfigVar(type="string", default=5).default == 5
    with pytest.raises(ValidationError, match="not one of enum"):
        ConfigVar(type="string", default="c", enum=["a", "b"])

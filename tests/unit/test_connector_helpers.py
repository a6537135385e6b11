"""Pure helpers of the connectors: SQL placeholders, identifiers, masking, naming."""

from __future__ import annotations

import pytest

from streamflow.connectors.sql import camel
from streamflow.util.secrets import Masker, mask_urls, safe_dsn
from streamflow.util.sqldb import compile_sql, quote_ident, sqlite_path


def test_named_placeholders() -> None:
    sql = compile_sql("SELECT * FROM t WHERE a = :a AND b = :b OR a2 = :a")
    assert sql.postgres == "SELECT * FROM t WHERE a = $1 AND b = $2 OR a2 = $1"
    assert sql.sqlite == "SELECT * FROM t WHERE a = :a AND b = :b OR a2 = :a"
    assert sql.names == ("a", "b")


def test_positional_placeholders() -> None:
    sql = compile_sql("SELECT $2, $1")
    assert (sql.postgres, sql.sqlite, sql.positional) == ("SELECT $2, $1", "SELECT ?2, ?1", 2)


@pytest.mark.parametrize(
    "text",
    [
        "SELECT ':a', \"col:b\" FROM t",
        "SELECT 1 -- :a\n",
        "SELECT /* :a $1 */ 1",
        "SELECT x::text FROM t",
        "SELECT 'it''s :a'",
        "SELECT $$ :a $1 $$, $tag$ :b $tag$",
    ],
)
def test_no_placeholders_in_literals_comments_or_casts(text: str) -> None:
    sql = compile_sql(text)
    assert sql.names == () and sql.positional == 0
    assert sql.postgres == text == sql.sqlite


def test_cast_after_placeholder() -> None:
    sql = compile_sql("SELECT :a::int")
    assert sql.postgres == "SELECT $1::int" and sql.names == ("a",)


def test_mixed_styles_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        compile_sql("SELECT :a, $1")


def test_identifiers() -> None:
    assert quote_ident("customers") == '"customers"'
    assert quote_ident("crm.customers") == '"crm"."customers"'
    for bad in ("a b", 'a"b', "a;drop", "a.b.c", "", "1a"):
        with pytest.raises(ValueError):
            quote_ident(bad)


def test_masking() -> None:
    m = Masker(["tok-abcdef", None, "x"])
    assert m.mask("Bearer tok-abcdef failed, x stays") == "Bearer *** failed, x stays"
    m.add("postgresql://u:pa55word@h/db")
    assert m.mask("auth failed for pa55word") == "auth failed for ***"
    assert mask_urls("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_urls("host=h password=hunter2 user=u") == "host=h password=*** user=u"
    assert safe_dsn("postgresql://u:pw@h:5432/db?sslmode=require") == "postgresql://h:5432/db"


def test_names_and_paths() -> None:
    assert camel("first_name") == "firstName"
    assert camel("_id") == "_id"
    assert camel("a_b_c") == "aBC"
    assert sqlite_path("sqlite:///rel/x.db") == "rel/x.db"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    assert sqlite_path("sqlite://:memory:") == ":memory:"


def test_a_non_finite_retry_after_is_no_advice() -> None:
    """BH08's kind on the client side: `nan`/`inf` from a remote never becomes a delay."""
    from streamflow.connectors.httpclient import retry_after

    assert [retry_after(v) for v in ("nan", "inf", "-inf", "1e999", "NaN")] == [None] * 5
    assert retry_after("3") == 3.0
    assert retry_after("-5") == 0.0

"""The message helpers of ``entropy_probe.errors`` that every one-line refusal uses."""

from __future__ import annotations

from entropy_probe.errors import first_line, one_line


def test_first_line_quotes_the_first_non_blank_line() -> None:
    assert first_line(ValueError("bad shape\n  at line 3\n")) == "bad shape"
    assert first_line(RuntimeError("\n\n  leading blank lines\nmore")) == "leading blank lines"


def test_first_line_of_an_empty_message_is_the_type_name() -> None:
    # bare `str(exc).splitlines()[0]` raised IndexError here
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("   \n ")) == "RuntimeError"


def test_first_line_limit() -> None:
    assert first_line(ValueError("x" * 500), 160) == "x" * 160
    assert first_line(ValueError("x" * 500)) == "x" * 500


def test_one_line_escapes_control_characters() -> None:
    assert one_line("a\nb\x07") == "a\\nb\\x07"

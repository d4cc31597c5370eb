"""The generic Registry: registration, lookup, fnmatch listing and its error messages."""

from __future__ import annotations

import pytest

from entropy_probe.errors import DuplicateNameError, EntropyProbeError, UnknownNameError
from entropy_probe.registry import Entry, Registry


@pytest.fixture
def reg() -> Registry[int]:
    r: Registry[int] = Registry("widget")
    r.register("alpha", 1, owner="pkg_a")
    r.register("alphabet", 2, owner="pkg_a")
    r.register("beta", 3, owner="pkg_b")
    return r


def test_register_returns_the_object_and_get_finds_it(reg: Registry[int]) -> None:
    assert reg.register("gamma", 4, owner="pkg_c") == 4
    assert reg.get("gamma") == 4
    assert reg.owner("gamma") == "pkg_c"
    assert "gamma" in reg
    assert "delta" not in reg
    assert len(reg) == 4


def test_decorator_registers_and_returns_the_object() -> None:
    r: Registry[object] = Registry("thing")

    @r.decorator("fn", owner="me")
    def fn() -> int:
        return 1

    assert r.get("fn") is fn
    assert fn() == 1
    assert r.owner("fn") == "me"


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", ["alpha", "alphabet", "beta"]),
        ("alpha*", ["alpha", "alphabet"]),
        ("alpha", ["alpha"]),
        ("*et*", ["alphabet", "beta"]),
        ("?eta", ["beta"]),
        ("[ab]*", ["alpha", "alphabet", "beta"]),
        ("zzz*", []),
        ("ALPHA", []),  # fnmatchcase: case-sensitive on every platform
    ],
)
def test_names_filters_with_fnmatch(reg: Registry[int], pattern: str, expected: list[str]) -> None:
    assert reg.names(pattern) == expected


def test_iteration_is_sorted(reg: Registry[int]) -> None:
    reg.register("aardvark", 0)
    assert list(reg) == ["aardvark", "alpha", "alphabet", "beta"]


def test_duplicate_names_both_owners(reg: Registry[int]) -> None:
    with pytest.raises(
        DuplicateNameError, match=r"widget 'beta' is registered twice: by pkg_b and by pkg_z"
    ):
        reg.register("beta", 99, owner="pkg_z")
    assert reg.get("beta") == 3  # the first registration survives


def test_duplicate_without_owner_says_unknown() -> None:
    r: Registry[int] = Registry("widget")
    r.register("x", 1)
    with pytest.raises(DuplicateNameError, match=r"by unknown and by unknown"):
        r.register("x", 2)


def test_duplicate_error_is_a_value_error_and_entropy_probe_error(reg: Registry[int]) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha", 0)
    with pytest.raises(EntropyProbeError):
        reg.register("alpha", 0)


def test_unknown_name_suggests_close_match_and_lists_valid(reg: Registry[int]) -> None:
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert message.startswith("unknown widget 'alpah'.")
    assert "Did you mean 'alpha'" in message
    assert message.endswith("Valid: alpha, alphabet, beta.")
    # KeyError.__str__ would wrap the message in quotes: UnknownNameError must not
    assert not message.startswith('"')


def test_unknown_name_without_close_match_has_no_hint(reg: Registry[int]) -> None:
    with pytest.raises(
        UnknownNameError, match=r"^unknown widget 'zzzzzz'\. Valid: alpha, alphabet, beta\.$"
    ):
        reg.get("zzzzzz")


def test_unknown_name_in_empty_registry() -> None:
    r: Registry[int] = Registry("widget")
    with pytest.raises(UnknownNameError, match=r"Valid: \(none\)\."):
        r.get("anything")


def test_unknown_name_is_a_key_error(reg: Registry[int]) -> None:
    with pytest.raises(KeyError, match="Did you mean 'beta'"):
        reg.get("betta")


@pytest.mark.parametrize("bad", ["", " alpha", "alpha ", "\tx"])
def test_invalid_names_are_refused(bad: str) -> None:
    r: Registry[int] = Registry("widget")
    with pytest.raises(ValueError, match=r"invalid widget name"):
        r.register(bad, 1)
    assert len(r) == 0


def test_unregister_forgets_and_is_idempotent(reg: Registry[int]) -> None:
    reg.unregister("beta")
    reg.unregister("beta")
    assert "beta" not in reg
    reg.register("beta", 5, owner="new")  # the name is free again
    assert reg.get("beta") == 5


def test_entry_is_frozen() -> None:
    entry = Entry("a", 1, "me")
    with pytest.raises(AttributeError):
        entry.name = "b"  # type: ignore[misc]

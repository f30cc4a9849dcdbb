import dataclasses

import pytest

from libs.schema import ConfigError, describe, option, parse, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    width: int = option(8, "a width", min=1)
    kind: str = option("a", "a kind", choices=("a", "b"))


@dataclasses.dataclass(frozen=True)
class Outer:
    required: int = option(doc="must be given")
    rate: float = option(0.5, "a rate", min=0.0, max=1.0, min_exclusive=True)
    names: tuple[str, ...] = option(doc="names", default_factory=lambda: ("x",))
    inner: Inner = option(doc="inner", default_factory=lambda: Inner(width=16))
    items: tuple[Inner, ...] = option(doc="items", default_factory=tuple)


def test_parse_fills_defaults_and_converts():
    cfg = parse(Outer, {"required": 3, "rate": 1, "items": [{"width": 2}], "inner": {"kind": "b"}}, source="f.toml")
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)
    assert cfg.items == (Inner(width=2),)
    assert cfg.inner == Inner(width=16, kind="b")   # a partial table keeps the default table's other keys
    assert to_dict(cfg)["inner"] == {"width": 16, "kind": "b"}


@pytest.mark.parametrize("data, fragment", [
    ({"required": 1, "bogus": 2}, "unknown key 'bogus'"),
    ({}, "required key 'required' is missing"),
    ({"required": "3"}, "key 'required' has value '3'; allowed: an integer"),
    ({"required": True}, "allowed: an integer"),
    ({"required": 1, "rate": 0}, "key 'rate' has value 0.0; allowed: a number > 0.0"),
    ({"required": 1, "rate": 2.0}, "allowed: a number <= 1.0"),
    ({"required": 1, "inner": {"kind": "c"}}, "key 'inner.kind' has value 'c'; allowed: one of 'a', 'b'"),
    ({"required": 1, "inner": {"nope": 1}}, "unknown key 'inner.nope'"),
    ({"required": 1, "items": [{"width": 0}]}, "items[0].width"),
    ({"required": 1, "names": "x"}, "key 'names'"),
])
def test_errors_name_file_key_value_and_allowed(data, fragment):
    with pytest.raises(ConfigError) as err:
        parse(Outer, data, source="my.toml")
    assert str(err.value).startswith("my.toml: ")
    assert fragment in str(err.value)


def test_describe_lists_every_key_with_its_doc():
    keys = {row["key"]: row for row in describe(Outer)}
    assert set(keys) == {"rate", "names", "inner.width", "inner.kind", "items[].width", "items[].kind", "required"}
    assert keys["rate"]["allowed"] == "> 0.0, <= 1.0"
    assert keys["required"]["default"] == "(required)"

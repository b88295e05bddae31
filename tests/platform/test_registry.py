"""The generic registry: register, look up, duplicates refused, unknown names explained."""

import pytest

from mdm.platform.registry import Registry, UnknownNameError, get_registry, load_builtins


def test_register_and_get():
    reg = Registry("widgets")
    reg.register("a", 1)

    @reg.register("b")
    class B:
        pass

    assert reg.get("a") == 1 and reg.get("b") is B
    assert reg.names() == ["a", "b"] and "a" in reg and list(reg) == ["a", "b"]


def test_duplicate_name_rejected():
    reg = Registry("widgets")
    reg.register("a", 1)
    reg.register("a", 1)  # the same object again (module re-import) is fine
    with pytest.raises(ValueError, match="widgets name 'a' is already registered"):
        reg.register("a", 2)


def test_unknown_name_lists_valid_names_and_suggests():
    reg = Registry("p_models")
    reg.register("EPR", 1)
    reg.register("AP", 2)
    with pytest.raises(UnknownNameError) as e:
        reg.get("EPX")
    assert str(e.value) == "unknown p_models 'EPX'; did you mean 'EPR'? valid: AP, EPR"


def test_builtins_register_every_kind():
    load_builtins()
    assert "llada_plus" in get_registry("engines")
    for kind in ("tasks", "p_models", "samplers"):
        assert get_registry(kind).names(), f"no {kind} registered by the builtin modules"

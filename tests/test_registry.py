import pytest

from bioscale.registry import Registry, UnknownNameError


def test_get_and_did_you_mean() -> None:
    reg: Registry[int] = Registry("rule")
    reg.register("sdtp", 1)
    reg.register("dtp", 2)
    assert reg.get("dtp") == 2
    with pytest.raises(UnknownNameError, match=r"Unknown rule 'stdp'\. Did you mean 'sdtp'\?.*Known rules: sdtp, dtp"):
        reg.get("stdp")


def test_no_suggestion_for_far_names_and_no_double_registration() -> None:
    reg: Registry[int] = Registry("arch")
    reg.register("resnet18", 1)
    with pytest.raises(UnknownNameError) as info:
        reg.get("xyz")
    assert "Did you mean" not in str(info.value)
    with pytest.raises(ValueError, match="twice"):
        reg.register("resnet18", 2)

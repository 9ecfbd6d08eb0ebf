"""CreditConfig validation, the strategy registry and the checks get_credit_fn adds."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from rlattn.credit.registry import CREDIT_REGISTRY, CreditConfig, get_credit_fn, register_credit

BUILTINS = {"uniform", "local_chunk", "global_anchor", "coupled", "random", "high_entropy"}


def small_inputs():
    # left pad {0}, prompt {1}, R = 2..4, right pad {5}
    waad = torch.tensor([[0.0, 0, 1, 3, 2, 0]])
    fai = torch.tensor([[math.nan, 0.5, 0.2, math.nan, math.nan, math.nan]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    return waad, fai, mask


@pytest.fixture
def scratch_names():
    """Names registered by a test are removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        CREDIT_REGISTRY.pop(name, None)


# ---------------------------------------------------------------------------------------------
# CreditConfig
# ---------------------------------------------------------------------------------------------
def test_config_defaults_match_the_spec():
    c = CreditConfig()
    assert (c.strategy, c.quantile, c.gamma, c.alpha, c.k, c.sign, c.combine, c.seed) == (
        "coupled", 0.4, 1.5, 0.5, 3, "both", "sum", 0,
    )
    assert (c.dominated_waad_quantile, c.dominated_delta_quantile) == (0.5, 0.6)
    assert [f.name for f in dataclasses.fields(CreditConfig)][:8] == [
        "strategy", "quantile", "gamma", "alpha", "k", "sign", "combine", "seed",
    ]
    assert all(f.metadata.get("help") for f in dataclasses.fields(CreditConfig))


def test_config_error_names_key_value_and_allowed():
    with pytest.raises(ValueError) as err:
        CreditConfig(sign="up")
    assert str(err.value) == "CreditConfig.sign='up' is not one of 'both', 'positive', 'negative'"


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("strategy", "nope", "valid names: 'coupled', 'global_anchor', 'high_entropy', 'local_chunk', 'random'"),
        ("strategy", "", "non-empty string"),
        ("strategy", "pkg.mod:", "'package.module:function'"),
        ("quantile", 0.0, "is not a number in (0, 1]"),
        ("quantile", 1.2, "is not a number in (0, 1]"),
        ("quantile", math.nan, "is not a number in (0, 1]"),
        ("gamma", 0.9, ">= 1"),
        ("gamma", math.inf, ">= 1"),
        ("alpha", -0.1, "is not a number in [0, 1]"),
        ("alpha", 1.5, "is not a number in [0, 1]"),
        ("k", 0, "integer >= 1"),
        ("k", 2.0, "integer >= 1"),
        ("k", True, "integer >= 1"),
        ("combine", "mean", "'sum', 'max'"),
        ("seed", 1.5, "integer"),
        ("dominated_waad_quantile", 1.1, "is not a number in [0, 1]"),
        ("dominated_delta_quantile", -1, "is not a number in [0, 1]"),
    ],
)
def test_config_rejects_bad_values(key, value, allowed):
    with pytest.raises(ValueError) as err:
        CreditConfig(**{key: value})
    message = str(err.value)
    assert message.startswith(f"CreditConfig.{key}={value!r} "), message
    assert allowed in message, message


def test_config_accepts_edges_and_dotted_paths_without_importing():
    CreditConfig(quantile=1.0, gamma=1.0, alpha=0.0, k=1, sign="negative", combine="max", seed=-3)
    CreditConfig(dominated_waad_quantile=0.0, dominated_delta_quantile=1.0)
    CreditConfig(strategy="some_package_that_is_not_installed.mod:fn")  # resolved by get_credit_fn


def test_config_mutated_after_construction_is_rechecked_by_the_credit_fn():
    waad, fai, mask = small_inputs()
    config = CreditConfig()
    config.combine = "avg"
    with pytest.raises(ValueError, match="CreditConfig.combine='avg'"):
        get_credit_fn("coupled")(waad, fai, mask, config=config)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def test_builtins_registered():
    assert BUILTINS <= set(CREDIT_REGISTRY)


def test_registry_loads_builtins_from_a_bare_import():
    # A fresh interpreter that imports only get_credit_fn (or only CREDIT_REGISTRY) finds them all.
    code = textwrap.dedent(
        """
        import sys, torch
        from rlattn.credit.registry import get_credit_fn
        fn = get_credit_fn('coupled')
        from rlattn.credit.registry import CREDIT_REGISTRY
        print(sorted(CREDIT_REGISTRY))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(BUILTINS))
    code = "from rlattn.credit.registry import CREDIT_REGISTRY; print(sorted(CREDIT_REGISTRY))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(BUILTINS))


def test_duplicate_names_raise(scratch_names):
    with pytest.raises(ValueError, match="'coupled' is already registered"):

        @register_credit("coupled")
        def mine(waad, fai, mask, entropies=None, config=None):
            return torch.ones_like(waad)

    @register_credit("test_dup_strategy")
    def first(waad, fai, mask, entropies=None, config=None):
        return torch.ones_like(waad)

    scratch_names.append("test_dup_strategy")
    with pytest.raises(ValueError, match="'test_dup_strategy' is already registered"):

        @register_credit("test_dup_strategy")
        def second(waad, fai, mask, entropies=None, config=None):
            return torch.ones_like(waad)

    assert CREDIT_REGISTRY["test_dup_strategy"] is first


def test_register_rejects_bad_names():
    for name in ("", "a:b", None):
        with pytest.raises(ValueError, match="credit strategy name"):
            register_credit(name)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_credit_fn("copuled")
    message = str(err.value)
    assert "unknown credit strategy 'copuled'" in message
    for name in BUILTINS:
        assert repr(name) in message
    assert "package.module:function" in message
    with pytest.raises(ValueError, match="':' before the function"):
        get_credit_fn("my_pkg.my_mod.fn")


def test_registered_user_strategy_gets_the_config(scratch_names):
    seen = {}

    @register_credit("test_user_strategy")
    def user(waad, fai, mask, entropies=None, config=None):
        seen["config"] = config
        return torch.full(waad.shape, config.gamma)

    scratch_names.append("test_user_strategy")
    waad, fai, mask = small_inputs()
    gamma = get_credit_fn("test_user_strategy")(waad, fai, mask, config=CreditConfig(gamma=2.0))
    assert gamma.tolist() == [[1, 1, 2, 2, 2, 1]]  # 1.0 outside R
    assert seen["config"].gamma == 2.0
    get_credit_fn("test_user_strategy")(waad, fai, mask)  # config=None → defaults
    assert seen["config"] == CreditConfig()
    assert CreditConfig(strategy="test_user_strategy").strategy == "test_user_strategy"


# ---------------------------------------------------------------------------------------------
# Dotted paths
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "rlattn_test_user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "credits.py").write_text(
        textwrap.dedent(
            """
            import torch

            NOT_A_FUNCTION = 3

            def double_first(waad, fai, mask, entropies=None, config=None):
                gamma = torch.ones(waad.shape)
                gamma[:, 2] = 2.0
                return gamma

            class Holder:
                @staticmethod
                def triple(waad, fai, mask, entropies=None, config=None):
                    return torch.full(waad.shape, 3.0)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "rlattn_test_user_pkg.credits"
    for name in ("rlattn_test_user_pkg.credits", "rlattn_test_user_pkg"):
        sys.modules.pop(name, None)


def test_dotted_path_works(user_package):
    waad, fai, mask = small_inputs()
    gamma = get_credit_fn(f"{user_package}:double_first")(waad, fai, mask)
    assert gamma.tolist() == [[1, 1, 2, 1, 1, 1]]
    gamma = get_credit_fn(f"{user_package}:Holder.triple")(waad, fai, mask)
    assert gamma.tolist() == [[1, 1, 3, 3, 3, 1]]


def test_dotted_path_errors(user_package):
    with pytest.raises(ValueError, match="cannot import module 'rlattn_no_such_module'"):
        get_credit_fn("rlattn_no_such_module:fn")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        get_credit_fn(f"{user_package}:missing")
    with pytest.raises(ValueError, match="is not callable"):
        get_credit_fn(f"{user_package}:NOT_A_FUNCTION")
    with pytest.raises(ValueError, match="'package.module:function'"):
        get_credit_fn(":fn")


# ---------------------------------------------------------------------------------------------
# Output and input checks
# ---------------------------------------------------------------------------------------------
def _wrong_shape(waad, fai, mask, entropies=None, config=None):
    return torch.ones(waad.shape[0], waad.shape[1] + 1)


def _nan_on_response(waad, fai, mask, entropies=None, config=None):
    gamma = torch.ones(waad.shape)
    gamma[0, 3] = math.nan  # t=3 ∈ R
    return gamma


def _inf_on_response(waad, fai, mask, entropies=None, config=None):
    gamma = torch.ones(waad.shape)
    gamma[0, 4] = math.inf
    return gamma


def _negative_on_response(waad, fai, mask, entropies=None, config=None):
    gamma = torch.ones(waad.shape)
    gamma[0, 2] = -0.5
    return gamma


def _not_a_tensor(waad, fai, mask, entropies=None, config=None):
    return [[1.0] * waad.shape[1]]


@pytest.mark.parametrize(
    "fn, message",
    [
        (_wrong_shape, r"returned shape \(1, 7\); expected the mask's \(1, 6\)"),
        (_nan_on_response, "returned NaN weights on 1 response tokens"),
        (_inf_on_response, "returned infinite weights on 1 response tokens"),
        (_negative_on_response, "returned negative weights on 1 response tokens"),
        (_not_a_tensor, "returned list, not a tensor"),
    ],
)
def test_bad_user_outputs_raise_naming_the_function(fn, message, scratch_names):
    name = "test_bad" + fn.__name__
    register_credit(name)(fn)
    scratch_names.append(name)
    waad, fai, mask = small_inputs()
    with pytest.raises(ValueError, match=message) as err:
        get_credit_fn(name)(waad, fai, mask)
    assert f"'{name}'" in str(err.value) and fn.__name__ in str(err.value)


def test_bad_values_outside_the_response_are_replaced_by_one(scratch_names):
    @register_credit("test_junk_outside")
    def junk(waad, fai, mask, entropies=None, config=None):
        return torch.tensor([[math.nan, -4.0, 1.5, 1.0, 1.25, math.inf]], dtype=torch.float64)

    scratch_names.append("test_junk_outside")
    waad, fai, mask = small_inputs()
    gamma = get_credit_fn("test_junk_outside")(waad, fai, mask)
    assert gamma.dtype == torch.float32
    assert gamma.tolist() == [[1, 1, 1.5, 1, 1.25, 1]]


def test_output_is_detached(scratch_names):
    @register_credit("test_grad_output")
    def with_grad(waad, fai, mask, entropies=None, config=None):
        return torch.ones(waad.shape, requires_grad=True) * 2

    scratch_names.append("test_grad_output")
    waad, fai, mask = small_inputs()
    assert not get_credit_fn("test_grad_output")(waad, fai, mask).requires_grad


def test_inputs_are_checked():
    fn = get_credit_fn("uniform")
    waad, fai, mask = small_inputs()
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        fn(waad, fai, mask.long())
    with pytest.raises(ValueError, match=r"fai has shape \(1, 5\) but mask has \(1, 6\)"):
        fn(waad, fai[:, :5], mask)
    with pytest.raises(ValueError, match=r"waad has shape \(2, 6\)"):
        fn(torch.zeros(2, 6), fai, mask)
    with pytest.raises(ValueError, match=r"entropies has shape \(1, 3\)"):
        fn(waad, fai, mask, entropies=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="waad must be a floating-point tensor"):
        fn(waad.long(), fai, mask)
    with pytest.raises(ValueError, match="mask must be 2-D"):
        fn(waad[0], fai[0], mask[0])
    with pytest.raises(ValueError, match="config must be a CreditConfig"):
        fn(waad, fai, mask, config={"gamma": 1.5})


def test_credit_fn_keyword_call_matches_the_spec_signature():
    waad, fai, mask = small_inputs()
    gamma = get_credit_fn("coupled")(waad=waad, fai=fai, mask=mask, entropies=None, config=CreditConfig())
    assert gamma.dtype == torch.float32 and gamma.shape == (1, 6)


# ---------------------------------------------------------------------------------------------
# Declared needs
# ---------------------------------------------------------------------------------------------
def test_builtins_declare_what_they_need():
    from rlattn.credit.registry import strategy_needs

    assert strategy_needs("uniform") == {"identity"}
    assert strategy_needs("random") == {"reseed"}
    assert strategy_needs("high_entropy") == {"entropies"}
    for name in ("coupled", "local_chunk", "global_anchor"):
        assert strategy_needs(name) == {"attention"}


def test_user_strategies_declare_needs_default_attention(scratch_names, tmp_path, monkeypatch):
    from rlattn.credit.registry import strategy_needs

    @register_credit("test_needs_default")
    def plain(waad, fai, mask, entropies=None, config=None):
        return torch.ones_like(waad)

    @register_credit("test_needs_entropy", needs=("entropies", "reseed"))
    def ent(waad, fai, mask, entropies=None, config=None):
        return torch.ones_like(waad)

    scratch_names += ["test_needs_default", "test_needs_entropy"]
    assert strategy_needs("test_needs_default") == {"attention"}  # what every strategy got before
    assert strategy_needs("test_needs_entropy") == {"entropies", "reseed"}
    with pytest.raises(ValueError, match=r"needs=\['attn'\] has \['attn'\]; allowed: attention, entropies, reseed, identity"):
        register_credit("test_needs_bad", needs=("attn",))
    assert "test_needs_bad" not in CREDIT_REGISTRY

    pkg = tmp_path / "rlattn_test_needs_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(
        """
        import torch
        from rlattn.credit import credit_needs

        def undeclared(waad, fai, mask, entropies=None, config=None):
            return torch.ones_like(waad)

        @credit_needs("entropies")
        def declared(waad, fai, mask, entropies=None, config=None):
            return torch.ones_like(waad)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert strategy_needs("rlattn_test_needs_pkg:undeclared") == {"attention"}
        assert strategy_needs("rlattn_test_needs_pkg:declared") == {"entropies"}
    finally:
        sys.modules.pop("rlattn_test_needs_pkg", None)

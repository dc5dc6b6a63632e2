"""Registry, combination, input plumbing and the ``--loss`` spec parser."""

from __future__ import annotations

import inspect
import math
import re
import subprocess
import sys

import pytest
import torch

from prefkit import losses
from prefkit.losses import registry

C = [-5.0, -8.0, -3.0]
R = [-6.0, -7.0, -3.0]
RC = [-5.5, -7.5, -4.0]
RR = [-5.0, -7.0, -2.0]
LC = [2.0, 4.0, 1.0]
LR = [3.0, 2.0, 1.0]


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _pair_inputs(**extra):
    d = {
        "chosen_logps": torch.tensor(C, dtype=torch.float64),
        "rejected_logps": torch.tensor(R, dtype=torch.float64),
        "ref_chosen_logps": torch.tensor(RC, dtype=torch.float64),
        "ref_rejected_logps": torch.tensor(RR, dtype=torch.float64),
        "chosen_lengths": torch.tensor(LC, dtype=torch.float64),
        "rejected_lengths": torch.tensor(LR, dtype=torch.float64),
    }
    d.update(extra)
    return d


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


# ---------------------------------------------------------------- registry


@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
def test_import_pulls_only_torch():
    code = (
        "import sys, prefkit.losses\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('transformers', 'numpy', 'scipy', 'accelerate', 'trl', 'peft')"
        " or (m.startswith('prefkit.') and not m.startswith('prefkit.losses'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    bad = eval(out.stdout.strip())  # a printed list of module names
    # numpy may come in with torch itself; nothing else may
    assert [m for m in bad if not m.startswith("numpy")] == []


def test_unknown_name_lists_known_names():
    with pytest.raises(losses.UnknownLossError) as info:
        losses.get("dpoo")
    msg = str(info.value)
    assert "dpoo" in msg
    for name in ("dpo", "ipo", "simpo", "kto", "lipo", "sft"):
        assert re.search(rf"\b{name}\b", msg)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError):
        losses.spec("nope")


EXPECTED_KINDS = {
    "pairwise": {
        "dpo",
        "cdpo",
        "rdpo",
        "ipo",
        "hinge",
        "simpo",
        "cpo",
        "orpo",
        "fdpo",
        "exo",
        "bco_pair",
        "apo_zero",
        "apo_down",
        "rpo",
        "nca_pair",
    },
    "listwise": {"lipo", "pro", "listwise_dpo", "infonca", "nca"},
    "unpaired": {"kto", "bco"},
    "sft": {"sft"},
    "reward": {"bt", "bt_ties", "pl_rm", "regression", "reward_centering", "gpm", "odin"},
}
REFERENCE_FREE = {"simpo", "cpo", "orpo", "pro", "sft"} | EXPECTED_KINDS["reward"]


def test_registered_names_and_kinds():
    avail = losses.available()
    assert set(avail) == set().union(*EXPECTED_KINDS.values())
    for kind, names in EXPECTED_KINDS.items():
        assert set(losses.available(kind)) == names
        for n in names:
            assert avail[n].kind == kind


@pytest.mark.parametrize("name", sorted(losses.available()))
def test_every_loss_is_documented(name):
    s = losses.spec(name)
    assert s.name == name and s.kind in losses.KINDS
    assert s.needs_reference is (name not in REFERENCE_FREE)
    assert s.needs_reference == any(i.startswith("ref_") for i in s.inputs)
    assert s.fn is losses.get(name)
    doc = inspect.getdoc(s.fn) or ""
    assert "arXiv" in doc or re.search(r"\b(19|20)\d\d\b", doc)
    assert "Formula" in doc
    assert s.summary and s.summary == doc.splitlines()[0]
    for hp in s.hyperparameters:
        sig = inspect.signature(s.fn).parameters[hp]
        assert sig.kind is inspect.Parameter.KEYWORD_ONLY
        assert s.hyperparameters[hp] == sig.default


def test_hyperparameter_defaults():
    assert losses.spec("dpo").hyperparameters == {"beta": 0.1}
    assert losses.spec("simpo").hyperparameters == {"beta": 2.0, "gamma_beta_ratio": 0.5}
    assert losses.spec("orpo").hyperparameters == {"beta": 0.1}
    assert losses.spec("kto").hyperparameters == {
        "beta": 0.1,
        "desirable_weight": 1.0,
        "undesirable_weight": 1.0,
    }
    assert losses.spec("exo").hyperparameters["label_smoothing"] == 1e-3
    assert losses.spec("rpo").hyperparameters["alpha"] == 1.0
    assert losses.spec("listwise_dpo").optional_inputs == ("scores", "mask")
    assert losses.spec("kto").optional_inputs == ("kl_logps", "ref_kl_logps")


def test_register_infers_kind_and_reference(scratch_registry):
    @losses.register("toy")
    def toy(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *, k: float = 2.0):
        """Toy loss (2024)."""
        return k * (chosen_logps - rejected_logps), {}

    s = losses.spec("toy")
    assert (s.kind, s.needs_reference, s.hyperparameters) == ("pairwise", True, {"k": 2.0})
    assert s.summary == "Toy loss (2024)."
    assert toy.loss_spec is s

    @losses.register("toy_list")
    def toy_list(logps, scores, mask=None):
        """Toy."""
        return logps.sum(-1), {}

    assert losses.spec("toy_list").kind == "listwise"
    assert not losses.spec("toy_list").needs_reference
    with pytest.raises(ValueError, match="already registered"):
        losses.register("toy")(toy)
    with pytest.raises(ValueError, match="kind"):
        losses.register("toy_bad", kind="weird")(toy)


# ---------------------------------------------------------------- call_loss


def test_call_loss_filters_inputs():
    inp = _pair_inputs(logps=torch.zeros(3), scores=torch.ones(3), something_else=None)
    loss, _ = losses.call_loss("dpo", inp, beta=0.2)
    want = [-logsig(0.2 * ((c - rc) - (r - rr))) for c, r, rc, rr in zip(C, R, RC, RR, strict=True)]
    assert loss.tolist() == pytest.approx(want)
    assert set(losses.select_inputs("simpo", inp)) == {
        "chosen_logps",
        "rejected_logps",
        "chosen_lengths",
        "rejected_lengths",
    }


def test_call_loss_missing_input_is_named():
    inp = _pair_inputs()
    del inp["ref_rejected_logps"]
    with pytest.raises(losses.MissingInputError, match="ref_rejected_logps"):
        losses.call_loss("dpo", inp)
    inp["ref_rejected_logps"] = None  # None counts as missing
    with pytest.raises(KeyError, match="'dpo' needs input 'ref_rejected_logps'"):
        losses.call_loss("dpo", inp)


def test_call_loss_unknown_hyperparameter():
    with pytest.raises(TypeError, match="gamma.*accepted.*beta"):
        losses.call_loss("dpo", _pair_inputs(), gamma=1.0)


def test_optional_inputs_are_passed_only_when_present():
    t = torch.tensor
    inp = {
        "logps": t([[-1.0, -2.0, float("nan")]]),
        "ref_logps": t([[-1.0, -1.0, float("nan")]]),
        "scores": t([[1.0, 0.0, 5.0]]),
        "mask": None,
    }
    loss, _ = losses.call_loss("listwise_dpo", inp)
    assert torch.isnan(loss).all()  # without a mask the NaN response counts
    loss, _ = losses.call_loss("listwise_dpo", {**inp, "mask": t([[True, True, False]])})
    assert loss.item() == pytest.approx(-logsig(0.1))


# ---------------------------------------------------------------- combine


def _dpo_plus_nll_by_hand(weight: float, beta: float = 0.1) -> list[float]:
    return [
        -logsig(beta * ((c - rc) - (r - rr))) + weight * (-c / lc)
        for c, r, rc, rr, lc in zip(C, R, RC, RR, LC, strict=True)
    ]


def test_combine_dpo_and_sft_on_chosen():
    fn = losses.combine([("dpo", 1.0), ("sft", 0.2)])
    loss, m = losses.call_loss(fn, _pair_inputs())
    assert loss.tolist() == pytest.approx(_dpo_plus_nll_by_hand(0.2))
    assert m["sft/loss"].tolist() == pytest.approx([-c / lc for c, lc in zip(C, LC, strict=True)])
    dpo_loss = [
        -logsig(0.1 * ((c - rc) - (r - rr))) for c, r, rc, rr in zip(C, R, RC, RR, strict=True)
    ]
    assert m["dpo/loss"].tolist() == pytest.approx(dpo_loss)
    for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "sft/nll"):
        assert key in m
    assert all(v.shape == (3,) and not v.requires_grad for v in m.values())
    params = inspect.signature(fn).parameters
    assert list(params) == [
        "chosen_logps",
        "rejected_logps",
        "ref_chosen_logps",
        "ref_rejected_logps",
        "chosen_lengths",
    ]
    s = losses.spec(fn)
    assert (s.kind, s.needs_reference, s.name) == ("pairwise", True, "dpo+0.2*sft")


def test_combine_with_hparams_and_missing_input():
    fn = losses.combine([("dpo", 1.0, {"beta": 0.5}), ("sft", 0.3, {"per_token_mean": True})])
    loss, _ = losses.call_loss(fn, _pair_inputs())
    assert loss.tolist() == pytest.approx(_dpo_plus_nll_by_hand(0.3, beta=0.5))
    inp = _pair_inputs()
    del inp["chosen_lengths"]
    with pytest.raises(losses.MissingInputError, match="chosen_lengths"):
        losses.call_loss(fn, inp)
    with pytest.raises(TypeError, match="hyper-parameter"):
        losses.call_loss(fn, _pair_inputs(), beta=0.1)


def test_combine_gradients_add_up():
    inp = _pair_inputs()
    c = inp["chosen_logps"].clone().requires_grad_(True)
    loss, _ = losses.call_loss("dpo+0.2*sft", {**inp, "chosen_logps": c})
    loss.sum().backward()
    want = [
        -0.1 * (1 - math.exp(logsig(0.1 * ((cc - rc) - (r - rr))))) - 0.2 / lc
        for cc, r, rc, rr, lc in zip(C, R, RC, RR, LC, strict=True)
    ]
    assert c.grad.tolist() == pytest.approx(want)


def test_combine_rejects_mixed_kinds_and_bad_hparams():
    with pytest.raises(losses.LossSpecError, match="different kinds"):
        losses.combine([("dpo", 1.0), ("lipo", 1.0)])
    with pytest.raises(losses.LossSpecError, match="gamma"):
        losses.combine([("dpo", 1.0, {"gamma": 1.0})])
    with pytest.raises(losses.UnknownLossError):
        losses.combine([("nope", 1.0)])


def test_combine_listwise_sft_is_on_best_response():
    t = torch.tensor
    inp = {
        "logps": t([[-4.0, -2.0, -6.0]], dtype=torch.float64),
        "ref_logps": t([[-4.0, -3.0, -5.0]], dtype=torch.float64),
        "lengths": t([[2.0, 4.0, 3.0]], dtype=torch.float64),
        "scores": t([[0.0, 1.0, 2.0]], dtype=torch.float64),
    }
    loss, m = losses.call_loss("lipo+0.5*sft", inp)
    lipo_only = losses.call_loss("lipo", inp)[0]
    assert (loss - lipo_only).item() == pytest.approx(0.5 * 6.0 / 3.0)
    assert m["sft/loss"].item() == pytest.approx(2.0)


def test_combine_unpaired_sft_is_on_desirable_only():
    t = torch.tensor
    inp = {
        "logps": t([-4.0, -6.0], dtype=torch.float64),
        "ref_logps": t([-4.0, -6.0], dtype=torch.float64),
        "labels": t([True, False]),
        "lengths": t([2.0, 3.0], dtype=torch.float64),
    }
    loss, _ = losses.call_loss("kto+sft", inp)
    assert loss.tolist() == pytest.approx([0.5 + 2.0, 0.5])


def test_single_term_combination_keeps_metric_names():
    loss, m = losses.call_loss("dpo(beta=0.2)", _pair_inputs())
    torch.testing.assert_close(loss, losses.call_loss("dpo", _pair_inputs(), beta=0.2)[0])
    assert "dpo/loss" not in m and "rewards/chosen" in m


# ---------------------------------------------------------------- parse_loss_spec


def test_parse_loss_spec():
    assert losses.parse_loss_spec("dpo+0.2*sft") == [("dpo", 1.0, {}), ("sft", 0.2, {})]
    assert losses.parse_loss_spec(" 0.5 * ipo + sft*2 ") == [("ipo", 0.5, {}), ("sft", 2.0, {})]
    assert losses.parse_loss_spec("fdpo(beta=0.2, divergence=js)+1e-1*sft") == [
        ("fdpo", 1.0, {"beta": 0.2, "divergence": "js"}),
        ("sft", 0.1, {}),
    ]
    assert losses.parse_loss_spec("sft(per_token_mean=false)") == [
        ("sft", 1.0, {"per_token_mean": False})
    ]
    terms = losses.parse_loss_spec("dpo(beta=0.5)+0.25*sft")
    assert losses.format_loss_spec(terms) == "dpo(beta=0.5)+0.25*sft"


@pytest.mark.parametrize("bad", ["dpo+*x", "dpo+", "+dpo", "dpo sft", "2*", "dpo(beta)", ""])
def test_parse_loss_spec_rejects_malformed(bad):
    with pytest.raises(losses.LossSpecError) as info:
        losses.parse_loss_spec(bad)
    msg = str(info.value)
    assert "expected" in msg
    assert repr(bad) in msg or "beta" in msg


def test_parse_loss_spec_unknown_name():
    with pytest.raises(losses.UnknownLossError, match="known losses"):
        losses.parse_loss_spec("dpo+0.2*sftt")
    assert losses.parse_loss_spec("foo", check_names=False) == [("foo", 1.0, {})]

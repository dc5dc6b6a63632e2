"""Direct-preference losses as pure functions of tensors, behind a small registry.

    >>> from prefkit import losses
    >>> loss, metrics = losses.get("dpo")(cw, cl, ref_cw, ref_cl, beta=0.1)
    >>> loss, metrics = losses.call_loss("dpo+0.2*sft", inputs)   # inputs: dict of tensors

Every loss returns ``(loss_per_example [B], metrics)``; ``metrics`` maps TRL-style names
(``rewards/chosen``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ...)
to detached ``[B]`` tensors. Inputs use canonical names (see the modules
:mod:`.pairwise`, :mod:`.listwise`, :mod:`.unpaired`, :mod:`.sft`, and :mod:`.reward` for
reward-model objectives); hyper-parameters are keyword-only. This package imports only torch.
"""

from __future__ import annotations

from . import listwise, pairwise, reward, rl, sft, unpaired
from .listwise import infonca, lipo, listwise_dpo, nca, pro
from .pairwise import (
    apo_down,
    apo_zero,
    bco_pair,
    cdpo,
    cpo,
    dpo,
    exo,
    fdpo,
    hinge,
    ipo,
    nca_pair,
    orpo,
    rdpo,
    rpo,
    simpo,
)
from .registry import (
    KINDS,
    LossFn,
    LossOutput,
    LossSpec,
    LossSpecError,
    MissingInputError,
    UnknownLossError,
    available,
    build_loss,
    call_loss,
    combine,
    format_loss_spec,
    get,
    parse_loss_spec,
    register,
    select_inputs,
    spec,
)
from .reward import (
    bt,
    bt_ties,
    gpm,
    gpm_logit,
    odin,
    pearson_corr,
    pl_rm,
    regression,
    reward_centering,
)
from .sft import sft_loss
from .unpaired import bco, kto

__all__ = [
    "KINDS",
    "LossFn",
    "LossOutput",
    "LossSpec",
    "LossSpecError",
    "MissingInputError",
    "UnknownLossError",
    "apo_down",
    "apo_zero",
    "available",
    "bco",
    "bco_pair",
    "bt",
    "bt_ties",
    "build_loss",
    "call_loss",
    "cdpo",
    "combine",
    "cpo",
    "dpo",
    "exo",
    "fdpo",
    "format_loss_spec",
    "get",
    "gpm",
    "gpm_logit",
    "hinge",
    "infonca",
    "ipo",
    "kto",
    "lipo",
    "listwise",
    "listwise_dpo",
    "nca",
    "nca_pair",
    "odin",
    "orpo",
    "pairwise",
    "parse_loss_spec",
    "pearson_corr",
    "pl_rm",
    "pro",
    "rdpo",
    "register",
    "regression",
    "reward",
    "reward_centering",
    "rl",
    "rpo",
    "select_inputs",
    "sft",
    "sft_loss",
    "simpo",
    "spec",
    "unpaired",
]

"""Generative reward model (GenRM): a causal LM that emits the verdict of a pairwise comparison.

Papers: Zhang et al. 2024, "Generative Verifiers: Reward Modeling as Next-Token Prediction"
(arXiv:2408.15240); Mahan et al. 2024, "Generative Reward Models" (arXiv:2410.12832). The
position calibration is the Balanced Position Calibration of Wang et al. 2023, "Large Language
Models are not Fair Evaluators" (arXiv:2305.17926).

Input format (:func:`encode_pair`; each fixed piece tokenized on its own, so the layout is the
same whatever the responses contain)::

    {prompt}
    Response A:{a}
    Response B:{b}
    Better response:  -> verdict token " A" or " B"

The prompt is encoded as a policy prompt (:func:`prefkit.models.generate.encode_prompt`: BOS,
chat template for conversations). The verdict tokens must be single tokens; a word-level
tokenizer without them (the lab's) gets the template's words added
(:func:`prepare_tokenizer`, embeddings resized).

Training (:func:`prefkit.train.genrm.train_genrm`, inside the shared loop
:func:`prefkit.train.loop.fit`): each
pair ``(x, y_w, y_l)`` gives two examples -- ``(x, y_w, y_l) -> " A"`` and
``(x, y_l, y_w) -> " B"`` (position-balanced) -- and the loss is the next-token cross-entropy
of the verdict token only (every other position is masked; :func:`verdict_loss`)::

    L = -log softmax(z)[v],   z = LM logits at the last input position, v = the verdict id

The preference (the reward of a pair): with ``q(a, b) = softmax(z_A, z_B)[0]``, the two-way
softmax over the verdict logits when ``a`` is shown first,

    p(a > b) = (q(a, b) + 1 - q(b, a)) / 2          (:func:`balanced_preference`)

so ``p(a > b) = 1 - p(b > a)`` exactly. Pairwise accuracy: the share of held-out pairs with
``p(chosen > rejected) > 0.5``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["GENRM_CONFIG", "TEMPLATE", "GenerativeRewardModel", "balanced_preference",
           "collate_verdict_batch", "encode_pair", "prepare_tokenizer", "verdict_logits",
           "verdict_loss"]

#: The fixed pieces of the input: before response A, before response B, the question, and the
#: two verdicts (" A": the first response is better).
TEMPLATE: dict[str, Any] = {"header_a": "\nResponse A:", "header_b": "\nResponse B:",
                            "question": "\nBetter response:", "verdicts": [" A", " B"]}
#: File saved next to the weights by :meth:`GenerativeRewardModel.save_pretrained`.
GENRM_CONFIG = "genrm_config.json"


# --------------------------------------------------------------------------- tokens


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prepare_tokenizer(tokenizer, model: torch.nn.Module | None = None,
                      template: dict[str, Any] = TEMPLATE) -> tuple[int, int]:
    """The ids of the two verdict tokens; when a fixed piece of ``template`` encodes to the
    unknown token (a word-level tokenizer), its words are added to ``tokenizer`` (as whole
    words), and when a verdict is more than one token (a small BPE vocabulary), it is added as
    one token; ``model``'s embeddings are resized then. Raises ``ValueError`` when a verdict
    still is not one token."""
    from tokenizers import AddedToken

    pieces = [template["header_a"], template["header_b"], template["question"],
              *template["verdicts"]]
    unk = tokenizer.unk_token_id
    if unk is not None and any(unk in _ids(tokenizer, p) for p in pieces):
        words = list(dict.fromkeys(w for p in pieces for w in p.split()))
        tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=False)
                              for w in words])
        if model is not None:
            model.resize_token_embeddings(len(tokenizer))
    split = [v for v in template["verdicts"] if len(_ids(tokenizer, v)) != 1]
    if split:
        tokenizer.add_tokens([AddedToken(v, normalized=False) for v in split])
        if model is not None:
            model.resize_token_embeddings(len(tokenizer))
    out = []
    for v in template["verdicts"]:
        ids = _ids(tokenizer, v)
        if len(ids) != 1 or ids[0] == unk:
            raise ValueError(f"verdict {v!r} is not a single token of this tokenizer: {ids}")
        out.append(ids[0])
    if out[0] == out[1]:
        raise ValueError(f"the verdicts {template['verdicts']} map to the same token")
    return out[0], out[1]


def encode_pair(tokenizer, prompt: Any, a: str, b: str, *, max_length: int | None = None,
                template: dict[str, Any] = TEMPLATE) -> list[int]:
    """Token ids of the GenRM input for ``(prompt, a, b)`` (module docstring), without the
    verdict. Over ``max_length``, the two responses are cut (their ends) to equal budgets,
    then the prompt from the left."""
    from ..models.generate import encode_prompt

    ra, rb = _ids(tokenizer, a), _ids(tokenizer, b)
    fixed = [_ids(tokenizer, template[k]) for k in ("header_a", "header_b", "question")]
    prompt_ids = encode_prompt(tokenizer, prompt)
    if max_length is not None:
        n_fixed = sum(map(len, fixed))
        over = len(prompt_ids) + n_fixed + len(ra) + len(rb) - max_length
        if over > 0:  # responses share what the fixed pieces and <= 1/4 prompt leave
            room = max(2, max_length - n_fixed - min(len(prompt_ids), max_length // 4))
            if len(ra) + len(rb) > room:
                short = min(len(ra), len(rb))
                ka, kb = ((room - short, room - short) if short <= room // 2
                          else (room // 2, room - room // 2))
                ra, rb = ra[:ka], rb[:kb]
            keep = max(1, max_length - n_fixed - len(ra) - len(rb))
            prompt_ids = encode_prompt(tokenizer, prompt, max_length=keep)
    return [*prompt_ids, *fixed[0], *ra, *fixed[1], *rb, *fixed[2]]


# --------------------------------------------------------------------------- maths


def verdict_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """LM logits ``[B, V]`` at the last position of LEFT-padded rows (the position whose next
    token is the verdict); positions count real tokens only, so padding changes nothing."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=1, use_cache=False)
    return out.logits[:, -1]


def verdict_loss(logits: torch.Tensor, targets: torch.Tensor, *, a_id: int, b_id: int
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token cross-entropy of the verdict token only (GenRM SFT loss, arXiv:2408.15240).

    Args:
        logits: ``[B, V]`` LM logits at the position before the verdict.
        targets: ``[B]`` verdict token ids (``a_id`` or ``b_id``).
    Returns ``(loss [B], metrics)``: ``loss = -log softmax(logits)[target]``; metrics
    ``accuracy`` (the two-way softmax over ``(a_id, b_id)`` puts > 0.5 on the target) and
    ``verdict_mass`` (``p(a_id) + p(b_id)`` under the full softmax).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    loss = -logp.gather(1, targets[:, None].long())[:, 0]
    p_a = torch.softmax(logits.float()[:, [a_id, b_id]], dim=-1)[:, 0]
    right = (p_a > 0.5) == (targets == a_id)
    mass = logp[:, a_id].exp() + logp[:, b_id].exp()
    return loss, {"accuracy": right.float().detach(), "verdict_mass": mass.detach()}


def balanced_preference(p_ab: torch.Tensor, p_ba: torch.Tensor) -> torch.Tensor:
    """Balanced Position Calibration (arXiv:2305.17926): ``p(a > b) = (q(a,b) + 1 - q(b,a)) / 2``
    where ``q(x, y)`` is the probability of the first-position verdict with ``x`` shown first."""
    return (p_ab + 1.0 - p_ba) / 2.0


def collate_verdict_batch(items: Sequence[tuple[list[int], int]], pad_id: int
                          ) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``/``attention_mask`` and the ``targets`` of ``(ids, target)``."""
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, (ids, _) in enumerate(items):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    return {"input_ids": input_ids, "attention_mask": mask,
            "targets": torch.tensor([t for _, t in items], dtype=torch.long)}


# --------------------------------------------------------------------------- the model


class GenerativeRewardModel:
    """A causal LM + tokenizer used as a pairwise reward model (module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, max_length: int = 1024,
                 template: dict[str, Any] | None = None) -> None:
        self.template = dict(template or TEMPLATE)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.a_id, self.b_id = prepare_tokenizer(tokenizer, model, self.template)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def encode(self, prompt: Any, a: str, b: str) -> list[int]:
        return encode_pair(self.tokenizer, prompt, a, b, max_length=self.max_length,
                           template=self.template)

    @torch.no_grad()
    def first_wins(self, prompts: Sequence[Any], first: Sequence[str], second: Sequence[str],
                   *, batch_size: int = 32) -> torch.Tensor:
        """``q(first, second)``: the two-way verdict probability of ``" A"``, ``[N]``."""
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        rows = [self.encode(p, a, b) for p, a, b in zip(prompts, first, second, strict=True)]
        for s in range(0, len(rows), batch_size):
            batch = collate_verdict_batch([(r, 0) for r in rows[s:s + batch_size]], self.pad_id)
            logits = verdict_logits(model, batch["input_ids"].to(device),
                                    batch["attention_mask"].to(device))
            out.append(torch.softmax(logits.float()[:, [self.a_id, self.b_id]], -1)[:, 0].cpu())
        model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def preferences(self, prompts: Sequence[Any], a: Sequence[str], b: Sequence[str], *,
                    batch_size: int = 32) -> torch.Tensor:
        """Position-calibrated ``p(a > b)`` for each row, ``[N]`` (:func:`balanced_preference`)."""
        n = len(prompts)
        q = self.first_wins([*prompts, *prompts], [*a, *b], [*b, *a], batch_size=batch_size)
        return balanced_preference(q[:n], q[n:])

    def preference(self, prompt: Any, a: str, b: str) -> float:
        """``p(a > b)`` for one pair."""
        return float(self.preferences([prompt], [a], [b])[0])

    def accuracy(self, pairs: Sequence[tuple[Any, str, str]], *, batch_size: int = 32
                 ) -> float:
        """Share of ``(prompt, chosen, rejected)`` pairs with ``p(chosen > rejected) > 0.5``."""
        if not pairs:
            return float("nan")
        p = self.preferences([x for x, _, _ in pairs], [c for _, c, _ in pairs],
                             [r for _, _, r in pairs], batch_size=batch_size)
        return float((p > 0.5).float().mean())

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        getattr(self.model, "module", self.model).save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / GENRM_CONFIG).write_text(json.dumps(
            {"template": self.template, "max_length": self.max_length,
             "verdict_ids": [self.a_id, self.b_id]}, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, **load_kwargs: Any) -> GenerativeRewardModel:
        from ..models.load import load_model

        path = Path(path)
        if not (path / GENRM_CONFIG).exists():
            raise FileNotFoundError(f"{path}: no {GENRM_CONFIG} (not a generative reward "
                                    "model saved by prefkit)")
        meta = json.loads((path / GENRM_CONFIG).read_text())
        model, tokenizer = load_model(path, **load_kwargs)
        out = cls(model.eval(), tokenizer, max_length=meta["max_length"],
                  template=meta["template"])
        if [out.a_id, out.b_id] != meta["verdict_ids"]:
            raise ValueError(f"{path}: the tokenizer maps the verdicts to {[out.a_id, out.b_id]}"
                             f", saved as {meta['verdict_ids']}")
        return out

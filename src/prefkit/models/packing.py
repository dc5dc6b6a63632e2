"""Batch layouts for sequence log-probs: prompt-shared packed rows and plain padded rows.

A :class:`PromptGroup` is one prompt with its K >= 1 responses (K=2 for pairwise preference
data, K>2 for listwise rankings, K=1 for SFT, KTO and other unpaired data).

:func:`pack_groups` places each group contiguously in a row as
``[prompt | resp_1 | ... | resp_K]`` so the prompt is computed ONCE, and fills each row with
several groups (first-fit decreasing bin packing); only the row tail is padding. A 4D
attention mask lets every token see its own group's prompt and, causally, its own response --
never a sibling response or another group -- and ``position_ids`` restart at ``len(prompt)``
for each response, so each response is computed exactly as in its own unpacked row.

:func:`pad_groups` builds the ordinary layout (one right-padded row per (group, response),
2D mask); it is the reference the packed layout is tested against.

Both batch types carry the same flat index tensors for the log-prob hot path
(:mod:`prefkit.models.logprobs`): ``logit_positions`` (row, column of the hidden state whose
logits predict a completion token), ``target_ids`` (the predicted token) and ``segment``
(``group * k_max + response``, the (group, response) each completion token belongs to).
Truncation to a length budget: :func:`truncate_group` / :func:`truncate_groups`.

A :class:`PackedBatch` also keeps per-token segment ids, ``token_group`` (the group, -1 for
padding) and ``token_part`` (0 for a prompt token, ``k + 1`` for response ``k``), from which
either mask is built: the dense one (:func:`segment_mask`, what ``sdpa`` gets on the CPU) or a
flex-attention block mask without any ``L x L`` tensor
(:func:`prefkit.models.attention.packed_block_mask`, GPUs). ``pack_groups(mask_dtype=None)``
skips the dense mask. :func:`pack_sequences` is the layout without prefix sharing for
FlashAttention-2: every (prompt, response) its own sequence in ONE padding-free row, with
``position_ids`` restarting at 0 where each sequence starts.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "PackedBatch",
    "PaddedBatch",
    "PromptGroup",
    "SkippedGroup",
    "TruncationReport",
    "additive_mask",
    "document_segments",
    "pack_groups",
    "pack_sequences",
    "packed_groups",
    "pad_groups",
    "segment_mask",
    "truncate_group",
    "truncate_groups",
]


@dataclass(frozen=True)
class PromptGroup:
    """One prompt and its K >= 1 responses, as token ids.

    ``prompt_ids`` must hold at least one token (typically BOS): the first response token is
    predicted from the last prompt position. Responses must be non-empty.
    """

    prompt_ids: list[int]
    response_ids: list[list[int]]

    @property
    def k(self) -> int:
        """Number of responses."""
        return len(self.response_ids)

    @property
    def packed_length(self) -> int:
        """Tokens this group takes in a packed row: the prompt once plus every response."""
        return len(self.prompt_ids) + sum(len(r) for r in self.response_ids)

    def validate(self) -> None:
        """Raise ``ValueError`` if the group cannot be scored (empty prompt or response)."""
        if len(self.prompt_ids) == 0:
            raise ValueError("PromptGroup.prompt_ids is empty; it needs at least one token (BOS)")
        if not self.response_ids:
            raise ValueError("PromptGroup has no responses (K must be >= 1)")
        for k, resp in enumerate(self.response_ids):
            if len(resp) == 0:
                raise ValueError(f"PromptGroup response {k} is empty; use truncate_group first")


@dataclass(kw_only=True)
class _Targets:
    """Fields shared by both layouts (see the module docstring)."""

    input_ids: torch.Tensor  # [R, L] long
    position_ids: torch.Tensor  # [R, L] long
    logit_positions: torch.Tensor  # [N, 2] long: (row, column)
    target_ids: torch.Tensor  # [N] long
    segment: torch.Tensor  # [N] long: group * k_max + response
    k: torch.Tensor  # [G] long: responses per group
    completion_lengths: torch.Tensor  # [G, Kmax] long, 0 where a group has fewer responses

    @property
    def n_groups(self) -> int:
        """Number of groups G."""
        return int(self.k.numel())

    @property
    def k_max(self) -> int:
        """Largest K in the batch (the second dimension of the ``[G, Kmax]`` outputs)."""
        return int(self.completion_lengths.shape[1])

    @property
    def response_mask(self) -> torch.Tensor:
        """``[G, Kmax]`` bool: True where response k of group g exists."""
        return torch.arange(self.k_max, device=self.k.device)[None, :] < self.k[:, None]

    @property
    def n_completion_tokens(self) -> int:
        """Number N of scored completion tokens."""
        return int(self.target_ids.numel())


@dataclass(kw_only=True)
class PackedBatch(_Targets):
    """Prompt-shared packed rows.

    Fields: ``input_ids [R, L]``, ``position_ids [R, L]``, ``attention_mask [R, 1, L, L]``
    (additive float: 0 = attend, dtype-min = blocked; or bool: True = attend, sdpa only; None
    when the pack was built without it), ``token_group [R, L]`` / ``token_part [R, L]`` (the
    segment ids the mask is built from: module docstring),
    ``logit_positions [N, 2]``, ``target_ids [N]``, ``segment [N]``, ``k [G]``,
    ``completion_lengths [G, Kmax]``, ``group_rows [G]`` (the row each group sits in),
    ``group_offsets [G]`` (its first column) and ``n_tokens`` (non-pad tokens).
    """

    attention_mask: torch.Tensor | None  # [R, 1, L, L]
    token_group: torch.Tensor  # [R, L] long, -1 = padding
    token_part: torch.Tensor  # [R, L] long, 0 = prompt, k + 1 = response k
    group_rows: torch.Tensor  # [G]
    group_offsets: torch.Tensor  # [G]
    n_tokens: int

    def to(self, device: torch.device | str) -> PackedBatch:
        """Return a copy with every tensor on ``device``."""
        return _to(self, device)


@dataclass(kw_only=True)
class PaddedBatch(_Targets):
    """Ordinary layout: one right-padded row per (group, response), ``attention_mask [R, L]``.

    ``row_of [G, Kmax]`` gives the row of each (group, response), -1 where absent.
    """

    attention_mask: torch.Tensor  # [R, L]
    row_of: torch.Tensor  # [G, Kmax]

    def to(self, device: torch.device | str) -> PaddedBatch:
        """Return a copy with every tensor on ``device``."""
        return _to(self, device)


def _to(batch, device):
    fields = {
        name: (value.to(device) if isinstance(value, torch.Tensor) else value)
        for name, value in vars(batch).items()
    }
    return type(batch)(**fields)


def _check_groups(groups: Sequence[PromptGroup]) -> None:
    if len(groups) == 0:
        raise ValueError("no groups to batch")
    for i, group in enumerate(groups):
        try:
            group.validate()
        except ValueError as err:
            raise ValueError(f"group {i}: {err}") from None


def _first_fit(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: bins (rows) of group indices, largest groups placed first."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for b, room in enumerate(free):
            if sizes[i] <= room:
                bins[b].append(i)
                free[b] -= sizes[i]
                break
        else:
            bins.append([i])
            free.append(capacity - sizes[i])
    return bins


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn a bool "may attend" mask into an additive one: 0 where allowed, dtype-min elsewhere.

    The finite minimum (not -inf) keeps fully-blocked rows NaN-free in eager attention.
    """
    zero = torch.zeros((), dtype=dtype)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, blocked)


def segment_mask(
    token_group: torch.Tensor, token_part: torch.Tensor, mask_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The dense ``[R, 1, L, L]`` mask of the segment rule over ``[R, L]`` segment ids.

    Query ``q`` may attend key ``k`` iff both are in the same group, ``k <= q``, and ``k`` is a
    prompt token or in ``q``'s own response; a pad query (group -1) attends to itself only, so
    no softmax row is empty. ``mask_dtype`` as in :func:`pack_groups`.
    """
    width = token_group.shape[1]
    device = token_group.device
    same_group = token_group[:, :, None] == token_group[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    same_part = token_part[:, :, None] == token_part[:, None, :]
    key_is_prompt = (token_part == 0)[:, None, :]
    real_query = (token_group >= 0)[:, :, None]
    allowed = same_group & causal & (key_is_prompt | same_part) & real_query
    # Pad queries attend to themselves only, so no softmax row is empty.
    allowed |= torch.eye(width, dtype=torch.bool, device=device)
    allowed = allowed[:, None, :, :]
    return allowed if mask_dtype == torch.bool else additive_mask(allowed, mask_dtype)


def pack_groups(
    groups: Sequence[PromptGroup],
    *,
    max_length: int,
    pad_id: int,
    rows: int | None = None,
    mask_dtype: torch.dtype | None = torch.float32,
) -> PackedBatch:
    """Pack groups into rows of at most ``max_length`` tokens, each prompt computed once.

    Args:
        groups: the groups; group ``g`` of the result is ``groups[g]`` (input order is kept in
            every ``[G, ...]`` output whatever row a group lands in).
        max_length: the row capacity. A group longer than this raises ``ValueError`` (run
            :func:`truncate_groups` first). The returned rows are
            only as long as the fullest row.
        pad_id: token id written into the row tails (never scored, never attended to).
        rows: if given, return exactly this many rows (empty rows are all padding; useful to
            keep shapes equal across data-parallel ranks); ``ValueError`` if more are needed.
        mask_dtype: ``torch.float32`` / ``torch.bfloat16`` / ... for an additive mask (works
            with every attention implementation), or ``torch.bool`` (True = attend) which is
            correct with ``sdpa`` only -- eager attention adds the mask, so
            :func:`~prefkit.models.logprobs.sequence_logps` converts a bool mask for eager;
            or None: no dense mask (``attention_mask=None``; the flex path builds a block mask
            from ``token_group`` / ``token_part``, any other path builds the dense mask from
            them on the batch's device).
    """
    _check_groups(groups)
    sizes = [g.packed_length for g in groups]
    for i, size in enumerate(sizes):
        if size > max_length:
            raise ValueError(
                f"group {i} needs {size} tokens (prompt {len(groups[i].prompt_ids)} + "
                f"responses {[len(r) for r in groups[i].response_ids]}) > max_length "
                f"{max_length}; truncate it first"
            )
    bins = _first_fit(sizes, max_length)
    if rows is not None:
        if len(bins) > rows:
            raise ValueError(f"the groups need {len(bins)} rows of {max_length}, rows={rows}")
        bins += [[] for _ in range(rows - len(bins))]
    n_rows = len(bins)
    width = max(sum(sizes[i] for i in b) for b in bins)
    k_max = max(g.k for g in groups)
    n_groups = len(groups)

    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    # Per token: group id (-1 = pad) and part (0 = prompt, k + 1 = response k).
    tok_group = torch.full((n_rows, width), -1, dtype=torch.long)
    tok_part = torch.zeros((n_rows, width), dtype=torch.long)
    group_rows = torch.zeros(n_groups, dtype=torch.long)
    group_offsets = torch.zeros(n_groups, dtype=torch.long)
    completion_lengths = torch.zeros((n_groups, k_max), dtype=torch.long)
    # Per group: (rows, cols, targets, segments) of its completion tokens, so the flat
    # tensors come out in group order whatever the row placement.
    flat: list[tuple[list[int], list[int], list[int], list[int]]] = [
        ([], [], [], []) for _ in groups
    ]

    for r, members in enumerate(bins):
        col = 0
        for g in members:
            group = groups[g]
            n_prompt = len(group.prompt_ids)
            group_rows[g], group_offsets[g] = r, col
            input_ids[r, col : col + n_prompt] = torch.tensor(group.prompt_ids)
            position_ids[r, col : col + n_prompt] = torch.arange(n_prompt)
            tok_group[r, col : col + n_prompt] = g
            last_prompt = col + n_prompt - 1
            col += n_prompt
            for k, resp in enumerate(group.response_ids):
                n_resp = len(resp)
                input_ids[r, col : col + n_resp] = torch.tensor(resp)
                position_ids[r, col : col + n_resp] = torch.arange(n_prompt, n_prompt + n_resp)
                tok_group[r, col : col + n_resp] = g
                tok_part[r, col : col + n_resp] = k + 1
                completion_lengths[g, k] = n_resp
                # Token j of the response is predicted by the hidden state before it; for
                # j = 0 that is the last prompt token, shared by all K responses.
                pos_rows, pos_cols, targets, segment = flat[g]
                pos_rows.extend([r] * n_resp)
                pos_cols.append(last_prompt)
                pos_cols.extend(range(col, col + n_resp - 1))
                targets.extend(resp)
                segment.extend([g * k_max + k] * n_resp)
                col += n_resp

    mask = None if mask_dtype is None else segment_mask(tok_group, tok_part, mask_dtype)

    pos_rows = [x for f in flat for x in f[0]]
    pos_cols = [x for f in flat for x in f[1]]
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        logit_positions=torch.tensor([pos_rows, pos_cols], dtype=torch.long).T.contiguous(),
        target_ids=torch.tensor([x for f in flat for x in f[2]], dtype=torch.long),
        segment=torch.tensor([x for f in flat for x in f[3]], dtype=torch.long),
        k=torch.tensor([g.k for g in groups], dtype=torch.long),
        completion_lengths=completion_lengths,
        attention_mask=mask,
        token_group=tok_group,
        token_part=tok_part,
        group_rows=group_rows,
        group_offsets=group_offsets,
        n_tokens=sum(sizes),
    )


def document_segments(position_ids: torch.Tensor) -> torch.Tensor:
    """``[R, L]`` document index of every token of rows whose ``position_ids`` restart at 0
    where each document starts (the cumulative count of restarts, minus one): as segment ids
    (``token_group`` = document, ``token_part`` = 0) the segment rule is the document-causal
    mask FlashAttention-2 applies to such a row."""
    return torch.cumsum((position_ids == 0).long(), dim=1) - 1


def packed_groups(batch: PackedBatch) -> list[PromptGroup]:
    """The groups a :func:`pack_groups` batch holds, in group order (its inverse): group ``g``
    starts at ``(group_rows[g], group_offsets[g])`` with its prompt (``token_part == 0``), then
    its responses of ``completion_lengths[g, :k[g]]`` tokens."""
    ids, parts = batch.input_ids.tolist(), batch.token_part.tolist()
    owner = batch.token_group.tolist()
    lengths, ks = batch.completion_lengths.tolist(), batch.k.tolist()
    groups = []
    for g, (r, col) in enumerate(zip(batch.group_rows.tolist(), batch.group_offsets.tolist(),
                                     strict=True)):
        end = col
        while end < len(parts[r]) and parts[r][end] == 0 and owner[r][end] == g:
            end += 1
        prompt, responses = ids[r][col:end], []
        for n in lengths[g][: ks[g]]:
            responses.append(ids[r][end : end + n])
            end += n
        groups.append(PromptGroup(prompt, responses))
    return groups


def pack_sequences(groups: Sequence[PromptGroup]) -> PackedBatch:
    """Every (group, response) as its own sequence ``prompt + response`` (the prompt repeated
    K times: no prefix sharing) in ONE padding-free row, ``position_ids`` restarting at 0 per
    sequence: the packed layout FlashAttention-2 reads from ``position_ids`` alone (no mask).

    ``attention_mask`` is None; ``token_group`` is the sequence index
    (:func:`document_segments` of the positions) and ``token_part`` is 0, so the dense or flex
    mask built from them is the document-causal mask. ``group_rows`` is 0 and
    ``group_offsets`` the column of each group's first sequence. The ``[G, ...]`` outputs and
    the flat target tensors are those of :func:`pack_groups` for the same groups.
    """
    _check_groups(groups)
    k_max = max(g.k for g in groups)
    ids: list[int] = []
    positions: list[int] = []
    pos_cols: list[int] = []
    targets: list[int] = []
    segment: list[int] = []
    offsets: list[int] = []
    completion_lengths = torch.zeros((len(groups), k_max), dtype=torch.long)
    for g, group in enumerate(groups):
        offsets.append(len(ids))
        n_prompt = len(group.prompt_ids)
        for k, resp in enumerate(group.response_ids):
            start = len(ids)
            ids.extend(group.prompt_ids + resp)
            positions.extend(range(n_prompt + len(resp)))
            pos_cols.extend(range(start + n_prompt - 1, start + n_prompt + len(resp) - 1))
            targets.extend(resp)
            segment.extend([g * k_max + k] * len(resp))
            completion_lengths[g, k] = len(resp)
    position_ids = torch.tensor([positions], dtype=torch.long)
    n = len(targets)
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=position_ids,
        logit_positions=torch.stack([torch.zeros(n, dtype=torch.long),
                                     torch.tensor(pos_cols, dtype=torch.long)], dim=1),
        target_ids=torch.tensor(targets, dtype=torch.long),
        segment=torch.tensor(segment, dtype=torch.long),
        k=torch.tensor([g.k for g in groups], dtype=torch.long),
        completion_lengths=completion_lengths,
        attention_mask=None,
        token_group=document_segments(position_ids),
        token_part=torch.zeros_like(position_ids),
        group_rows=torch.zeros(len(groups), dtype=torch.long),
        group_offsets=torch.tensor(offsets, dtype=torch.long),
        n_tokens=len(ids),
    )


def pad_groups(
    groups: Sequence[PromptGroup], *, pad_id: int, max_length: int | None = None
) -> PaddedBatch:
    """One right-padded row ``prompt + response`` per (group, response), with a 2D mask.

    The prompt is repeated K times; this is the reference layout. ``max_length`` (optional)
    only checks that no row is longer.
    """
    _check_groups(groups)
    k_max = max(g.k for g in groups)
    pairs = [(g, k) for g, group in enumerate(groups) for k in range(group.k)]
    lengths = [len(groups[g].prompt_ids) + len(groups[g].response_ids[k]) for g, k in pairs]
    width = max(lengths)
    if max_length is not None and width > max_length:
        raise ValueError(f"a (prompt, response) row has {width} tokens > max_length {max_length}")
    n_rows = len(pairs)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n_rows, width), dtype=torch.long)
    row_of = torch.full((len(groups), k_max), -1, dtype=torch.long)
    completion_lengths = torch.zeros((len(groups), k_max), dtype=torch.long)
    pos_rows: list[int] = []
    pos_cols: list[int] = []
    targets: list[int] = []
    segment: list[int] = []
    for r, ((g, k), length) in enumerate(zip(pairs, lengths, strict=True)):
        prompt, resp = groups[g].prompt_ids, groups[g].response_ids[k]
        input_ids[r, :length] = torch.tensor(prompt + resp)
        attention_mask[r, :length] = 1
        row_of[g, k] = r
        completion_lengths[g, k] = len(resp)
        pos_rows.extend([r] * len(resp))
        pos_cols.extend(range(len(prompt) - 1, length - 1))
        targets.extend(resp)
        segment.extend([g * k_max + k] * len(resp))
    return PaddedBatch(
        input_ids=input_ids,
        position_ids=torch.arange(width).expand(n_rows, width).clone(),
        logit_positions=torch.tensor([pos_rows, pos_cols], dtype=torch.long).T.contiguous(),
        target_ids=torch.tensor(targets, dtype=torch.long),
        segment=torch.tensor(segment, dtype=torch.long),
        k=torch.tensor([g.k for g in groups], dtype=torch.long),
        completion_lengths=completion_lengths,
        attention_mask=attention_mask,
        row_of=row_of,
    )


@dataclass(frozen=True)
class SkippedGroup:
    """A group :func:`truncate_groups` dropped: its input ``index``, caller ``id`` and why."""

    index: int
    id: Hashable | None
    reason: str


@dataclass
class TruncationReport:
    """What :func:`truncate_groups` did, so the caller can warn naming the skipped records."""

    n_total: int = 0
    n_prompt_truncated: int = 0
    n_response_truncated: int = 0  # groups with at least one response cut
    kept_indices: list[int] = field(default_factory=list)
    skipped: list[SkippedGroup] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        """Groups returned."""
        return len(self.kept_indices)

    @property
    def n_skipped(self) -> int:
        """Groups dropped."""
        return len(self.skipped)

    def summary(self, limit: int = 5) -> str:
        """One human-readable line, naming up to ``limit`` skipped records."""
        text = (
            f"kept {self.n_kept}/{self.n_total} groups (prompt truncated in "
            f"{self.n_prompt_truncated}, responses truncated in {self.n_response_truncated})"
        )
        if self.skipped:
            named = "; ".join(
                f"#{s.index}" + (f" (id {s.id!r})" if s.id is not None else "") + f": {s.reason}"
                for s in self.skipped[:limit]
            )
            more = f"; ... and {self.n_skipped - limit} more" if self.n_skipped > limit else ""
            text += f"; skipped {self.n_skipped}: {named}{more}"
        return text


def _truncate(
    group: PromptGroup,
    max_length: int | None,
    max_prompt_length: int | None,
    max_packed_length: int | None,
) -> tuple[PromptGroup | None, str, bool, bool]:
    """Return (group or None, reason if None, prompt was cut, a response was cut)."""
    prompt = list(group.prompt_ids)
    responses = [list(r) for r in group.response_ids]
    if not responses:
        return None, "no responses", False, False
    if any(len(r) == 0 for r in responses):
        return None, "empty response in the input", False, False
    prompt_cut = max_prompt_length is not None and len(prompt) > max_prompt_length
    if prompt_cut:
        prompt = prompt[len(prompt) - max_prompt_length :] if max_prompt_length > 0 else []
    if not prompt:
        return None, "empty prompt (needs at least one token, e.g. BOS)", prompt_cut, False
    response_cut = False
    if max_length is not None:
        room = max_length - len(prompt)
        if room <= 0:
            return (
                None,
                f"prompt of {len(prompt)} tokens leaves no room for a completion under "
                f"max_length {max_length}",
                prompt_cut,
                False,
            )
        response_cut = any(len(r) > room for r in responses)
        responses = [r[:room] for r in responses]
    out = PromptGroup(prompt_ids=prompt, response_ids=responses)
    if max_packed_length is not None and out.packed_length > max_packed_length:
        return (
            None,
            f"packed size {out.packed_length} (prompt {len(prompt)} + responses "
            f"{[len(r) for r in responses]}) exceeds max_packed_length {max_packed_length}",
            prompt_cut,
            response_cut,
        )
    return out, "", prompt_cut, response_cut


def truncate_group(
    group: PromptGroup,
    max_length: int | None,
    max_prompt_length: int | None = None,
    *,
    max_packed_length: int | None = None,
) -> PromptGroup | None:
    """Fit one group to the length budget, or return None if it cannot be scored.

    1. The prompt keeps its LAST ``max_prompt_length`` tokens (left truncation).
    2. Each response is cut from the right so ``prompt + response <= max_length``
       (the per-sequence budget, as in TRL's ``max_length``).
    3. The group is dropped (None) if that would leave an empty completion or an empty
       prompt, if a response was empty already, or if its packed size
       ``prompt + sum(responses)`` exceeds ``max_packed_length`` (the row capacity given
       to :func:`pack_groups`). :func:`truncate_groups` reports the reason.
    """
    return _truncate(group, max_length, max_prompt_length, max_packed_length)[0]


def truncate_groups(
    groups: Sequence[PromptGroup],
    *,
    max_length: int | None,
    max_prompt_length: int | None = None,
    max_packed_length: int | None = None,
    ids: Sequence[Hashable] | None = None,
) -> tuple[list[PromptGroup], TruncationReport]:
    """:func:`truncate_group` over many groups; returns the kept groups and a report.

    ``ids`` (optional, one per group) are record ids copied into the report's skipped
    entries; ``report.kept_indices[i]`` is the input index of the i-th returned group.
    """
    if ids is not None and len(ids) != len(groups):
        raise ValueError(f"{len(ids)} ids for {len(groups)} groups")
    report = TruncationReport(n_total=len(groups))
    kept: list[PromptGroup] = []
    for i, group in enumerate(groups):
        out, reason, prompt_cut, response_cut = _truncate(
            group, max_length, max_prompt_length, max_packed_length
        )
        report.n_prompt_truncated += prompt_cut
        report.n_response_truncated += response_cut
        if out is None:
            report.skipped.append(SkippedGroup(i, None if ids is None else ids[i], reason))
        else:
            kept.append(out)
            report.kept_indices.append(i)
    return kept, report

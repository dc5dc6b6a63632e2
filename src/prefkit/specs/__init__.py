"""Spec strings resolved into objects: the layer above ``rewards``, ``train``, ``judges`` and
``lab`` (which take built objects: a judge, a reward source, a model, prompts), below the
commands that read the strings from the command line.

- :func:`judge_from_spec` / :func:`judge_from_config` (``--judge``): ``http:MODEL@URL``,
  ``hf:PATH`` (``hf:lab:TASK``), ``genrm:PATH``, ``lab:TASK:NAME``, ``rm:PATH``,
  ``gold:TASK``, ``implicit:POLICY[,REF]``, ``python:module:function``, or a JSON / YAML /
  TOML config file (a jury too);
- :func:`reward_from_spec` (``--reward``): ``rm:PATH``, ``implicit:POLICY[,REF]``,
  ``gold:TASK``, ``python:module:function``, ``judge:CONFIG``;
- :func:`resolve_model` / :func:`resolve_prompts` (online training's ``--model`` /
  ``--prompts``): ``lab:TASK`` and ``lab:TASK[:N]``, else files.

The submodules import what a spec needs when it is resolved, so ``import prefkit.specs`` is
light (no torch).
"""

from __future__ import annotations

from .judges import judge_from_config, judge_from_spec, read_config
from .models import lab_model, resolve_model, resolve_prompts
from .rewards import reward_from_spec

__all__ = ["judge_from_config", "judge_from_spec", "lab_model", "read_config",
           "resolve_model", "resolve_prompts", "reward_from_spec"]

"""``--judge CONFIG``: a judge from a short spec or a config file (it was
``prefkit.judges.config``; spec strings name objects of the lab, rewards and train layers, so
they are resolved here, above them, and ``prefkit.judges`` takes built judges).

Short specs:

- ``http:MODEL@URL`` -- an OpenAI-compatible server (``http:qwen2.5-7b@http://127.0.0.1:8000/v1``);
- ``lab:TASK:NAME`` -- a simulated judge of the lab's pool on that task's gold reward (``NAME``:
  fair, positional, verbose, self_preferring; :func:`prefkit.lab.simulated_judge.lab_judge_pool`,
  temperature :data:`~prefkit.lab.simulated_judge.LAB_JUDGE_TEMPERATURE`); ``lab:TASK:jury``: the
  four as a majority jury;
- ``rm:PATH``, ``gold:TASK``, ``implicit:POLICY[,REF]`` -- a reward as a judge
  (:class:`~prefkit.judges.reward.RewardJudge`);
- ``python:module:function`` -- :class:`~prefkit.judges.base.FunctionJudge`;
- ``genrm:PATH`` -- a generative reward model (``prefkit rm train-genrm``) as a judge;
- ``hf:PATH`` -- a local transformers model as a text judge (:class:`~prefkit.judges.local.
  TransformersJudge`: a checkpoint folder, a tiny-model file or ``hf:lab:TASK``).

A config file (``.json``, ``.yaml`` / ``.yml`` or ``.toml``) holds one object::

    {"backend": "http", "base_url": "http://127.0.0.1:8000/v1", "model": "qwen2.5-7b",
     "template": "pairwise_tie", "api": "chat", "temperature": 0, "max_tokens": 512,
     "logprobs": 5, "concurrency": 16, "rpm": 600, "tpm": 200000, "timeout": 60,
     "retries": 4, "parse_retries": 2, "api_key_env": "OPENAI_API_KEY"}

or ``{"spec": "lab:sort:positional"}`` (any short spec, with ``template`` /
``parse_retries`` where they apply), or a jury::

    {"jury": ["lab:sort:fair", {"spec": "http:m@http://..."}, "judge2.yaml"],
     "aggregate": "majority" | "mean" | "weighted", "weights": [1.2, 0.8, 0.5]}

Errors are ``ValueError`` naming the spec or file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..judges.base import FunctionJudge, Judge

__all__ = ["HTTP_FIELDS", "judge_from_config", "judge_from_spec", "read_config"]

_FILE_SUFFIXES = (".json", ".yaml", ".yml", ".toml")
HTTP_FIELDS = ("base_url", "model", "template", "task", "api", "temperature", "max_tokens",
               "top_p", "seed", "logprobs", "api_key_env", "concurrency", "rpm", "tpm",
               "timeout", "retries", "parse_retries")


def read_config(path: str | Path) -> dict[str, Any]:
    """The object in a JSON / YAML / TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"judge config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is bad input
        raise ValueError(f"judge config {path}: not valid {path.suffix[1:].upper()}: "
                         f"{exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"judge config {path}: expected an object, got "
                         f"{type(data).__name__}")
    return data


def judge_from_spec(spec: str | Path, *, template: str | None = None, task: str = "compare"
                    ) -> Judge:
    """A judge from a short spec or a config file (module docstring). ``template``
    overrides the config's for text judges; ``task`` picks the default template."""
    text = str(spec)
    if text.endswith(_FILE_SUFFIXES) and ":" not in text.split("/")[-1]:
        config = read_config(text)
        if template is not None:
            config = {**config, "template": template}
        return judge_from_config(config, where=f"judge config {text}", task=task)
    kind, _, arg = text.partition(":")
    if not arg:
        raise ValueError(f"judge {text!r}: expected a config file ({', '.join(_FILE_SUFFIXES)}) "
                         "or KIND:ARGUMENT (http:MODEL@URL, lab:TASK:NAME, rm:PATH, gold:TASK, "
                         "implicit:POLICY, python:module:function)")
    if kind == "http":
        from ..judges.http import parse_endpoint

        try:
            model, url = parse_endpoint(arg)
        except ValueError:
            raise ValueError(f"judge {text!r}: expected http:MODEL@http(s)://HOST:PORT/v1"
                             ) from None
        return judge_from_config({"backend": "http", "model": model, "base_url": url,
                                  "template": template}, where=f"judge {text!r}", task=task)
    if kind == "lab":
        from ..lab.simulated_judge import LAB_JUDGE_TEMPERATURE, lab_judge_pool
        from ..lab.tasks import get_task

        task_name, _, name = arg.partition(":")
        pool = {j.name: j for j in lab_judge_pool(get_task(task_name).gold_reward,
                                                  temperature=LAB_JUDGE_TEMPERATURE)}
        if name == "jury":
            from ..judges.jury import Jury

            return Jury(list(pool.values()), aggregate="majority")
        if name not in pool:
            raise ValueError(f"judge {text!r}: expected lab:TASK:NAME with NAME one of "
                             f"{', '.join(pool)} or jury")
        return pool[name]
    if kind in ("rm", "gold", "implicit"):
        from ..judges.reward import RewardJudge
        from .rewards import reward_from_spec

        return RewardJudge(reward_from_spec(text), text)
    if kind == "python":
        from ..importing import import_function

        return FunctionJudge(import_function(arg, kind="judge"), name=text)
    if kind == "genrm":
        from ..judges.genrm import GenRMJudge

        return GenRMJudge(arg)
    if kind == "hf":
        return _hf_judge(arg, template=template, task=task)
    raise ValueError(f"judge {text!r}: unknown kind {kind!r} (http, hf, genrm, lab, rm, "
                     "gold, implicit, python, or a config file)")


def judge_from_config(config: dict[str, Any], *, where: str = "judge config",
                      task: str = "compare") -> Judge:
    """A judge from a config object (module docstring)."""
    if "jury" in config:
        from ..judges.jury import Jury

        members = config["jury"]
        if not isinstance(members, list) or not members:
            raise ValueError(f"{where}: jury: expected a non-empty list of judges")
        judges = []
        for i, member in enumerate(members):
            inner = f"{where}: jury[{i}]"
            if isinstance(member, dict):
                judges.append(judge_from_config(member, where=inner, task=task))
            elif isinstance(member, str):
                try:
                    judges.append(judge_from_spec(member, task=task))
                except ValueError as exc:
                    raise ValueError(f"{inner}: {exc}") from None
            else:
                raise ValueError(f"{inner}: expected a spec string or an object")
        try:
            return Jury(judges, aggregate=config.get("aggregate", "majority"),
                        weights=config.get("weights"))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if "spec" in config:
        return judge_from_spec(config["spec"], template=config.get("template"), task=task)
    if config.get("backend") == "hf":
        options = {k: v for k, v in config.items() if k not in ("backend", "model")}
        if not config.get("model"):
            raise ValueError(f"{where}: model: required for the hf backend (a checkpoint "
                             "folder, a model file or lab:TASK)")
        try:
            return _hf_judge(config["model"], task=task, **options)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None
    backend = config.get("backend")
    if backend == "http":
        unknown = sorted(set(config) - {"backend", *HTTP_FIELDS})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (expected "
                             f"{', '.join(HTTP_FIELDS)})")
        for field in ("base_url", "model"):
            if not config.get(field):
                raise ValueError(f"{where}: {field}: required for the http backend")
        from ..judges.http import OpenAIJudge

        options = {k: v for k, v in config.items() if k != "backend" and v is not None}
        options.setdefault("task", task)
        try:
            return OpenAIJudge(**options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    raise ValueError(f"{where}: expected \"backend\": \"http\" or \"hf\", a \"spec\" or a "
                     f"\"jury\", got {sorted(config)}")


def _hf_judge(model: str, **options: Any) -> Judge:
    """A local transformers judge on ``model``: a checkpoint folder or tiny-model file, or
    ``lab:TASK`` (the lab's cached SFT model of that task, :func:`prefkit.specs.models.
    lab_model`)."""
    from ..judges.local import TransformersJudge

    if model.startswith("lab:"):
        from .models import lab_model

        policy, tokenizer = lab_model(model[4:])
        options.setdefault("name", f"hf:{model}")
        return TransformersJudge(policy.eval(), tokenizer, **options)
    return TransformersJudge.from_pretrained(model, **options)

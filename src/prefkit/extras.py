"""Which optional extra of prefkit brings which third-party module, so a command that needs a
missing one says what to install instead of failing with a bare ``ModuleNotFoundError``.

``pip install prefkit`` is the light core: records, the feedback store, arena rankings,
evaluation maths, API judges and the CLI for them (numpy, scipy, pyarrow, sqlalchemy, typer,
rich, pyyaml, matplotlib, orjson, httpx, jinja2). Training and local models need
``prefkit[train]``, the web app ``prefkit[serve]``, PostgreSQL stores ``prefkit[postgres]``.
Imports nothing itself."""

from __future__ import annotations

__all__ = ["EXTRA_OF_MODULE", "missing_extra", "missing_extra_message"]

EXTRA_OF_MODULE: dict[str, str] = {
    **dict.fromkeys(("torch", "transformers", "accelerate", "peft", "datasets", "tokenizers",
                     "safetensors"), "train"),
    **dict.fromkeys(("fastapi", "uvicorn", "starlette", "httptools", "uvloop", "multipart",
                     "python_multipart", "markdown_it", "nh3"), "serve"),
    "psycopg": "postgres",
    **dict.fromkeys(("math_verify", "jsonschema", "reasoning_gym"), "rl"),
}
"""Top-level module name -> the extra that installs it (the extras of pyproject.toml)."""


def missing_extra(exc: BaseException) -> str | None:
    """The extra whose module ``exc`` (a ``ModuleNotFoundError``) failed to find, or None when
    the missing module is not one an extra brings (then it is an ordinary error)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    return EXTRA_OF_MODULE.get(exc.name.split(".")[0])


def missing_extra_message(exc: BaseException) -> str | None:
    """``this command needs torch: pip install 'prefkit[train]'`` for a missing extra's module,
    else None."""
    extra = missing_extra(exc)
    if extra is None:
        return None
    return (f"this command needs {exc.name.split('.')[0]}, which the light install leaves out: "
            f"pip install 'prefkit[{extra}]'")

"""`prefkit serve-model MODEL`: a local causal LM behind an OpenAI-compatible API.

    prefkit serve-model runs/sft                        # http://127.0.0.1:8001/v1
    prefkit serve-model lab:sort --port 9000 --name sort-sft
    curl http://127.0.0.1:8001/v1/chat/completions -H 'content-type: application/json' \\
        -d '{"model": "runs/sft", "messages": [{"role": "user", "content": "hi"}]}'

Routes, request fields and the log-probs reported: :mod:`prefkit.serve.model_api`. Needs the
``serve`` extra (FastAPI, uvicorn).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import cli_errors, stderr

app = typer.Typer(add_completion=False)

DTYPES = ("float32", "bfloat16")
DEVICES = ("cpu", "cuda")


def load_served_model(spec: str, *, dtype: str = "float32", device: str = "cpu",
                      seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``spec``: a checkpoint directory or tiny-model file
    (:func:`prefkit.models.load.load_model`), or ``lab:TASK``, the lab's cached SFT base model
    of that task (built on first use, as ``prefkit train online --model lab:TASK`` does), in
    eval mode on ``device``. Raises ValueError naming ``spec`` when it is none of these."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if not spec.startswith("lab:") and not Path(spec).exists():
        raise ValueError(f"MODEL {spec!r}: no such checkpoint directory or model file (or use "
                         "lab:TASK for a lab task's SFT model)")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    if spec.startswith("lab:"):
        from ..specs.models import lab_model

        model, tokenizer = lab_model(spec[4:], seed=seed)
        model = model.to(getattr(torch, dtype))
    else:
        from ..models.load import load_model

        try:
            model, tokenizer = load_model(spec, dtype=dtype, seed=seed)
        except (ValueError, OSError) as exc:
            raise ValueError(f"MODEL {spec!r}: cannot load it: {exc}") from None
    return model.to(device).eval(), tokenizer


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@app.command("serve-model")
@cli_errors
def serve_model(
    model: Annotated[str, typer.Argument(help="A checkpoint directory, a tiny-model "
                                              ".json/.yaml file, or lab:TASK.")],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine "
                                           "only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8001,
    name: Annotated[str | None, typer.Option(
        help="The model id clients send (default: MODEL as given).")] = None,
    dtype: Annotated[str, typer.Option(help="Weight dtype: float32 | bfloat16.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
    max_batch: Annotated[int, typer.Option(
        help="Rows (prompts x n) per generate call within a request.", min=1)] = 8,
    max_tokens: Annotated[int, typer.Option(
        help="A chat answer's token cap when the request sets none.", min=1)] = 256,
) -> None:
    """Serve a local causal LM behind OpenAI-compatible /v1/chat/completions and
    /v1/completions (with log-probs) and /v1/models."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ValueError(f"serve-model needs the serve extra ({exc.name} is missing): "
                         "pip install 'prefkit[serve]'") from None
    from ..serve.model_api import create_model_app

    lm, tokenizer = load_served_model(model, dtype=dtype, device=device)
    served = name or model
    api = create_model_app(lm, tokenizer, served, max_batch=max_batch,
                           default_max_tokens=max_tokens)
    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    stderr.print(f"prefkit serve-model: http://{shown}:{port}/v1 serving {served!r} "
                 "(Ctrl-C stops)")
    server = uvicorn.Server(uvicorn.Config(api, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()

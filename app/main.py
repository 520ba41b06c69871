"""The FastAPI application: routes, error handlers and a lifespan that owns the engine pool."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.auth import ApiKeyMiddleware, ApiKeys
from app.errors import install_error_handlers
from app.limits import BodySizeLimitMiddleware
from app.metrics import ServerMetrics
from app.routes import (
    admin,
    anthropic,
    chat,
    completions,
    embeddings,
    health,
    metrics_route,
    models,
    ollama,
    responses,
    utility,
)
from app.serving.anthropic import AnthropicServing
from app.serving.chat import ChatServing
from app.serving.completions import CompletionServing
from app.serving.core import ServingCore
from app.serving.embeddings import EmbeddingServing
from app.serving.ollama import OllamaServing
from app.serving.responses import ResponsesServing
from app.serving.utility import UtilityServing
from app.settings import ServerSettings
from app.store import open_response_store
from engines.config import ModelsFile
from engines.pool import EnginePool, WorkerFactory

log = logging.getLogger("slmserve")


def build_app(
    settings: ServerSettings,
    models_file: ModelsFile,
    *,
    worker_factory: WorkerFactory | None = None,
) -> FastAPI:
    """The app serving `models_file`; `worker_factory` stands in for worker processes in tests."""

    api_keys = ApiKeys.load(settings.api_key, settings.api_key_file)
    admin_keys = ApiKeys.load(settings.admin_key, settings.admin_key_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = ServerMetrics()
        pool = EnginePool(
            models_file.models,
            pool_config=models_file.pool,
            worker_factory=worker_factory,
            log_level=settings.log_level.upper(),
            log_format=settings.log_format,
            on_model_loaded=metrics.model_loaded,
        )
        metrics.watch_pool(pool.statuses)
        app.state.metrics = metrics
        app.state.pool = pool
        core = ServingCore(pool, metrics, settings)
        app.state.chat_serving = ChatServing(core)
        app.state.completion_serving = CompletionServing(core)
        app.state.embedding_serving = EmbeddingServing(core)
        app.state.anthropic_serving = AnthropicServing(core)
        store = open_response_store(settings)
        app.state.responses_serving = ResponsesServing(core, store)
        app.state.utility_serving = UtilityServing(pool, settings)
        app.state.started_at = int(time.time())
        app.state.ollama_serving = OllamaServing(core, models_file.models, app.state.started_at)
        await pool.start()
        announce = asyncio.create_task(_announce_ready(pool))
        try:
            yield
        finally:
            announce.cancel()
            log.info("stopping model workers")
            await pool.close()
            store.close()

    app = FastAPI(title="slmserve", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    # Outermost last: CORS answers preflights, then keys are checked, then the body is limited.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(
        ApiKeyMiddleware,
        keys=api_keys,
        admin_keys=admin_keys,
        host=settings.host,
        metrics_require_api_key=settings.metrics_require_api_key,
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=settings.cors_allow_methods,
            allow_headers=settings.cors_allow_headers,
        )
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(responses.router)
    app.include_router(anthropic.router)
    app.include_router(utility.router)
    app.include_router(ollama.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(metrics_route.router)
    return app


async def _announce_ready(pool: EnginePool) -> None:
    await pool.wait_preloaded()
    for status in pool.statuses():
        log.info(
            "model %s: %s%s",
            status.name,
            status.state.value,
            f" ({status.reason})" if status.reason else "",
        )
    if pool.is_ready():
        log.info("ready: every preloaded model is loaded and warm")
    else:
        log.warning("not ready: a preloaded model failed to load (see above; /ready lists it)")


def report_draining(app: FastAPI) -> None:
    """SIGTERM, at once: report not ready (/ready 503) so load balancers stop sending; new
    requests are still served until `begin_drain` (after the drain grace)."""
    if not getattr(app.state, "draining", False):
        app.state.draining = True
        log.info("draining: /ready answers 503, new requests are still served for the grace")


def begin_drain(app: FastAPI) -> None:
    """SIGTERM, after the grace: refuse new generations (503 shutting_down) and report not
    ready; running ones continue."""
    report_draining(app)
    pool: EnginePool | None = getattr(app.state, "pool", None)
    if pool is not None:
        log.info("drain grace over: new requests are refused, running ones may finish")
        pool.begin_drain()

"""The FastAPI application of `tuneforge api` and the command that runs it with uvicorn.

(No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at run time.)"""


import hmac
import logging
import sys

from ...errors import ConfigError
from .errors import APIError
from .protocol import read_json
from .server import Handlers

logger = logging.getLogger("tuneforge")

OPEN_PATHS = {"/health"}  # answered without the API key, for load balancers and readiness probes


class _RequireKey:
    """ASGI middleware: every path but /health needs `Authorization: Bearer <key>`. (Plain ASGI rather than
    Starlette's BaseHTTPMiddleware, which would wrap `receive` and hide a client's disconnect from handlers.)"""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key):
            return await self.app(scope, receive, send)
        from fastapi.responses import JSONResponse

        error = APIError(401, "missing or wrong API key; send `Authorization: Bearer <key>`", code="invalid_api_key")
        await JSONResponse(error.body(), status_code=401)(scope, receive, send)


def create_app(settings, engine=None, reward=None):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    handlers = Handlers(settings, engine, reward)
    app = FastAPI(title="tuneforge", docs_url=None, redoc_url=None, openapi_url=None)

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    if settings.api_key:
        app.add_middleware(_RequireKey, key=settings.api_key)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return error(e)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return error(APIError(e.status_code, f"{e.detail}: {request.method} {request.url.path}"))

    @app.exception_handler(Exception)
    async def unexpected(request, e: Exception):
        logger.exception("request failed")
        return error(APIError(500, f"internal error: {type(e).__name__}: {e}"))

    async def body(request: Request) -> dict:
        return read_json(await request.body())

    def respond(result):
        if isinstance(result, dict):
            return result
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return handlers.models()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return respond(await handlers.chat(await body(request), request))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return respond(await handlers.completion(await body(request), request))

    @app.post("/v1/score")
    async def score(request: Request):
        return await handlers.score(await body(request))

    return app


def load_service(args, settings):
    """(engine, None) for a chat model; (None, RewardService) when the model is the output of stage: rm."""
    from ...models.value_head import is_reward_model_dir
    from ..engine import ChatEngine

    folder = (args.model.adapter_name_or_path or args.model.model_name_or_path or "").split(",")[-1].strip()
    if folder and is_reward_model_dir(folder):
        from ...data.templates import get_template
        from ...models.value_head import load_reward_model
        from .scoring import RewardService

        model, head, tokenizer = load_reward_model(folder, infer_dtype=args.model.infer_dtype)
        model.eval()
        template = get_template(args.data.template, tokenizer, default_system=args.data.default_system,
                                enable_thinking=args.data.enable_thinking)
        return None, RewardService(model, head, tokenizer, template, settings.max_batch_size)
    engine = ChatEngine.from_args(args, max_batch_size=settings.max_batch_size, max_waiting=settings.max_concurrent)
    return engine, None


def run_api(argv: list[str]) -> int:
    from ..serve_config import parse_serve_args, warn_if_exposed

    args, settings = parse_serve_args(argv, "api", default_port=8000)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigError("tuneforge api needs fastapi and uvicorn: pip install 'tuneforge[api]'") from None
    warn_if_exposed(settings.host, settings.api_key, "tuneforge api")
    engine, reward = load_service(args, settings)
    app = create_app(settings, engine, reward)
    kind = "reward model (POST /v1/score)" if reward else "chat model"
    print(f"tuneforge api: {settings.model_name} ({kind}) at http://{settings.host}:{settings.port}/v1",
          file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        if engine is not None:
            engine.close()
    return 0

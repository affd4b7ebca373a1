"""`regionspot-serve`: an HTTP server (FastAPI on uvicorn) that embeds an image once and answers many region queries.

    regionspot-serve --onnx EXPORT_DIR            # the torch-free predictor (regionspot-export onnx wrote EXPORT_DIR)
    regionspot-serve --config regionspot_bb [--adapter FILE]   # the torch predictor

POST /predict with JSON (see `regionspot.serve.requests.parse_query`): an image (base64) or an `image_id` from an
earlier answer, prompts and a vocabulary -> names, scores, boxes, COCO RLE masks (and captions / answers where the
torch model has those heads). GET /health -> the backend and the cache's counts. It listens on 127.0.0.1 unless
--host says otherwise. A refused request gets a 4xx with {"error": one line}; nothing a client sends takes the
worker down.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from regionspot.commands import argument_parser
from regionspot.serve.engine import Engine
from regionspot.serve.requests import BadRequest, Limits, parse_query

log = logging.getLogger(__name__)


def create_app(engine: Engine, *, limits: Limits | None = None) -> FastAPI:
    """The FastAPI app over `engine`: model calls on one worker thread, request parsing on the thread pool."""
    limits = limits or Limits()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regionspot-model")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        worker.shutdown(wait=False, cancel_futures=True)  # requests still queued at shutdown are dropped, not run

    app = FastAPI(
        title="regionspot",
        description="Name and segment any region of an image against any vocabulary.",
        lifespan=lifespan,
    )

    @app.exception_handler(BadRequest)
    async def refused(_request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(Exception)
    async def failed(_request: Request, err: Exception) -> JSONResponse:  # a bug: said in one line, and logged
        log.exception("request failed")
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "backend": engine.backend, "cache_size": engine.cache_size, **engine.counts}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await _read_body(request, limits.max_body_bytes)
        query = await run_in_threadpool(parse_query, body, limits)
        return await asyncio.get_running_loop().run_in_executor(worker, engine.answer, query)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (never held whole beyond it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body is {int(declared)} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the body is over {limit} bytes, the most this server takes")
        chunks.append(chunk)
    return b"".join(chunks)


def load_predictor(
    *,
    onnx: str | None,
    config: str | None,
    adapter: str | None,
    threads: int | None,
    providers: list[str] | None = None,
) -> Any:
    """The ONNX predictor of an export folder, or the torch predictor of a model config (torch imported only then)."""
    if (onnx is None) == (config is None):
        raise ValueError("give exactly one of --onnx EXPORT_DIR and --config MODEL_YAML")
    if onnx is not None:
        from regionspot.onnx import OnnxRegionPredictor

        return OnnxRegionPredictor(onnx, threads=threads, providers=providers)
    import torch

    from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot

    if threads is not None:
        torch.set_num_threads(threads)
    model_config = RegionSpotConfig.from_yaml(config)
    if adapter is not None:
        model_config.adapter.checkpoint = adapter
    return RegionSpotPredictor(build_regionspot(model_config))


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argument_parser("regionspot.serve", __doc__.split("\n\n")[0])
    source = parser.add_argument_group("model (one of)")
    source.add_argument("--onnx", help="a folder regionspot-export onnx wrote (serves without torch)")
    source.add_argument("--config", help="a model YAML or a packaged config's name (serves the torch predictor)")
    parser.add_argument("--adapter", help="with --config: trained adapter weights")
    parser.add_argument("--providers", nargs="+", help="with --onnx: onnxruntime's execution providers (default CPU)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--cache-size", type=int, default=32, help="image embeddings kept (default 32)")
    parser.add_argument("--threads", type=int, help="compute threads of the model (default: the backend's)")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels, help="largest image accepted")
    parser.add_argument("--max-regions", type=int, default=Limits.max_regions, help="most regions per request")
    parser.add_argument("--max-names", type=int, default=Limits.max_names, help="most class names per request")
    parser.add_argument("--max-body-mb", type=float, default=Limits.max_body_bytes / 2**20, help="largest request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        predictor = load_predictor(
            onnx=args.onnx, config=args.config, adapter=args.adapter, threads=args.threads, providers=args.providers
        )
        engine = Engine(predictor, cache_size=args.cache_size)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels,
                    max_regions=args.max_regions, max_names=args.max_names)  # fmt: skip
    uvicorn.run(create_app(engine, limits=limits), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""The ASGI application: the HTTP API, the page and the dataset review, around one loaded model.

``create_app(service, review=None, limits=Limits())`` takes a ready :class:`ModelService` (tests and
programs hand one over; ``instaseg serve`` loads it from ``--weights``). Routes:

* ``POST /v1/predict`` (multipart file or raw bytes; ``?overlay=1`` for a PNG), ``GET /v1/model``,
  ``GET /health``; ``GET /openapi.json`` describes them (the interactive ``/docs`` pages are off:
  they load their scripts from a CDN, and the server must work offline);
* ``GET /`` and ``/static/*``: the page (plain HTML/JS shipped in the package, no build step);
* ``GET /v1/review/status``, ``/v1/review/images``, ``/v1/review/images/{id}``,
  ``/v1/review/files/{path}``: the dataset review (404 without a dataset).

Every failure is a JSON ``{"detail": ...}`` answer: 4xx for bad input, 503 when the inference queue
is full, 500 (message only, the traceback goes to the server's log) for a bug; the server goes on.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from instaseg import __version__
from instaseg.serve.review import SORT_KEYS, DatasetReview
from instaseg.serve.schemas import Health, ModelInfo, Prediction, Problem, ReviewDetail, ReviewImage, ReviewStatus
from instaseg.serve.service import ModelService, ServerBusy
from instaseg.serve.uploads import UploadError, decode_upload, read_upload
from instaseg.viz.overlay import draw_detections

__all__ = ["Limits", "create_app", "STATIC_DIR"]

_LOG = logging.getLogger("instaseg.serve")
STATIC_DIR = Path(__file__).parent / "static"
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Problem} for code in (400, 404, 413, 415, 503)}
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string",
                                                                                 "format": "binary"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask: upload bytes, declared image pixels, and the default score threshold."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    score_threshold: float = 0.5


def _problem(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers or None)


def create_app(service: ModelService, review: DatasetReview | None = None, limits: Limits = Limits(),
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The application serving ``service`` (and ``review`` when a dataset is given).

    ``allowed_hosts``: Host header values accepted (``instaseg serve`` on a loopback address allows
    only local names, so a web page elsewhere cannot reach the server by DNS rebinding); None: any.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if review is not None:
            review.start()
        yield
        if review is not None:
            review.stop()

    app = FastAPI(title="instaseg serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Instance segmentation predictions from one loaded model, and a dataset review.")
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(Exception)
    async def _internal(_: Request, error: Exception) -> JSONResponse:
        _LOG.exception("request failed")
        return _problem(500, f"internal error ({type(error).__name__}); the server goes on")

    _add_api_routes(app, service, review, limits)
    _add_review_routes(app, review)
    return app


def _add_api_routes(app: FastAPI, service: ModelService, review: DatasetReview | None, limits: Limits) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health", response_model=Health, summary="Whether the server answers")
    async def health() -> dict[str, Any]:
        status = review.status() if review is not None else None
        return {"status": "ok", "review": None if status is None else f"{status['done']}/{status['total']}",
                "score_threshold": limits.score_threshold}

    @app.get("/v1/model", response_model=ModelInfo, summary="Preset, classes, input convention, weights' origin")
    async def model() -> dict[str, Any]:
        return service.info()

    @app.post("/v1/predict", response_model=Prediction, responses={**_ERRORS, 200: {"content": {"image/png": {}}}},
              openapi_extra=_UPLOAD_BODY, summary="Segment one image (multipart file field or raw bytes)")
    async def predict(request: Request, overlay: bool = Query(False, description="answer a PNG overlay instead"),
                      score_threshold: float | None = Query(None, ge=0.0, le=1.0,
                                                            description="default: the server's")) -> Any:
        threshold = limits.score_threshold if score_threshold is None else score_threshold
        try:
            service.gate.admit()
        except ServerBusy as error:
            return _problem(503, str(error), **{"Retry-After": "1"})
        try:
            data, name = await read_upload(request, limits.max_upload_bytes)
            return await run_in_threadpool(service.gate.run, _predict_upload, service, data, name, limits,
                                           threshold, overlay)
        except UploadError as error:
            return _problem(error.status, error.message)
        finally:
            service.gate.leave()


def _predict_upload(service: ModelService, data: bytes, name: str, limits: Limits, threshold: float,
                    overlay: bool) -> Response | dict[str, Any]:
    """Decode, predict and answer (JSON or a PNG overlay); run inside the gate, so at most ``workers``
    decoded images exist at once."""
    image = decode_upload(data, name, limits.max_pixels)
    found, seconds = service.predict(image)
    found = found[found.scores >= threshold]
    if overlay:
        skeleton = () if service.keypoints is None else service.keypoints.skeleton
        picture = draw_detections(image, found, service.names, skeleton, service.keypoint_threshold)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"X-Seconds": f"{seconds:.4f}"})
    height, width = image.shape[:2]
    return {"width": width, "height": height, "instances": service.to_json(found), "score_threshold": threshold,
            "seconds": seconds}


def _add_review_routes(app: FastAPI, review: DatasetReview | None) -> None:
    none = "no dataset: start the server with --dataset-json and --dataset-images"
    sort_help = f"one of {', '.join(SORT_KEYS)} (the worst images first)"

    @app.get("/v1/review/status", response_model=ReviewStatus, responses=_ERRORS,
             summary="Progress of the dataset's predictions (computed once, in the background)")
    async def review_status() -> Any:
        return _problem(404, none) if review is None else review.status()

    @app.get("/v1/review/images", response_model=list[ReviewImage], responses=_ERRORS,
             summary="The reviewed images with their errors, sorted and filtered")
    async def review_images(sort: str = Query("error", description=sort_help),
                            class_name: str | None = Query(None, description="keep images with this class"),
                            score_threshold: float | None = Query(None, ge=0.0, le=1.0)) -> Any:
        if review is None:
            return _problem(404, none)
        if sort not in SORT_KEYS:
            return _problem(400, f"sort must be {sort_help}, not {sort!r}")
        return review.summaries(sort, class_name, score_threshold)

    @app.get("/v1/review/images/{image_id}", response_model=ReviewDetail, responses=_ERRORS,
             summary="One image's ground truth and predictions")
    async def review_image(image_id: int, score_threshold: float | None = Query(None, ge=0.0, le=1.0)) -> Any:
        if review is None:
            return _problem(404, none)
        detail = review.detail(image_id, score_threshold)
        return _problem(404, f"image id {image_id} is not reviewed (yet)") if detail is None else detail

    @app.get("/v1/review/files/{file_path:path}", responses={**_ERRORS, 200: {"content": {"image/*": {}}}},
             summary="An image file of the dataset (only files under its image folder)")
    async def review_file(file_path: str) -> Any:
        path = None if review is None else review.image_path(file_path)
        if path is None:
            return _problem(404, "no such image in the dataset's image folder")
        return FileResponse(path)

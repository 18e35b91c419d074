"""`imageclf serve`: a web page and JSON API to try the model on your own photos.

FastAPI on uvicorn serves one static HTML page (no build step, nothing fetched from the internet) and the API:
`POST /predict` (multipart, one or more images in the field `files`; `?heatmap=1` adds each photo's Grad-CAM
heatmap), `GET /health`, `GET /info` (classes, the none-of-these scores and test metrics) and `GET /plots/<name>.png`.
The model is loaded once, and its PyTorch form at the first request for a heatmap (a heatmap needs gradients, which
ONNX Runtime does not give; a request without one stays on the fast path). Uploads are decoded in memory and never
written to disk, which is why the multipart body is parsed here instead of by Starlette (it spools files over 1 MB to
disk).
"""

import argparse
import asyncio
import base64
import errno
import io
import json
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from imageclf.core import paths
from imageclf.core.arguments import add_model_file_argument
from imageclf.core.errors import UserError, warn
from imageclf.data.images import IMAGE_FORMATS, open_rgb
from imageclf.data.views import DEFAULT_TTA
from imageclf.inference.photos import Prediction, labelled_result, predict_files
from imageclf.inference.predictor import PREDICTORS, Predictor, load_predictor
from imageclf.models.unknown import REASONS

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a phone photo is 2-12 MB
MAX_FILES = 32  # per request: what one page drop holds, and a bound on the memory one request takes
PAGE = Path(__file__).parent / "static" / "index.html"
# The pictures the evaluate stage draws that the page shows beside the predictions, by the name in /plots/<name>.png.
PLOTS = {
    "confusion_matrix": Path(paths.PLOTS_DIR) / paths.CONFUSION_MATRIX,
    "misclassified": Path(paths.PLOTS_DIR) / paths.MISCLASSIFIED,
}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class Upload:
    """One file part of the request: its name and bytes (None once it grew past MAX_UPLOAD_BYTES)."""

    name: str
    content: bytearray | None


class RequestError(Exception):
    """A request the server refuses as a whole (not multipart, malformed, too many files): one line, HTTP 4xx."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UploadParser:
    """Streams a multipart/form-data body into `Upload`s of the field `files`, keeping everything in memory and
    dropping the bytes of a file once it passes MAX_UPLOAD_BYTES (it is then refused, the others still read).

    A body refused as a whole (too many files, malformed) is still read to its end, its bytes dropped, and the
    refusal raised by `finish`: an answer sent before the client has sent everything makes the server close the
    connection, and the client sees "connection reset" instead of the reason.
    """

    def __init__(self, content_type: str):
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise RequestError(415, "send the images as multipart/form-data in the field 'files'")
        self.uploads: list[Upload] = []
        self.header_name, self.header_value, self.headers = b"", b"", {}
        self.current: Upload | None = None
        self.refusal: RequestError | None = None
        self.parser = MultipartParser(
            options[b"boundary"],
            {
                "on_part_begin": self.part_begin,
                "on_header_field": self.header_field,
                "on_header_value": self.header_value_data,
                "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished,
                "on_part_data": self.part_data,
            },
        )

    def part_begin(self) -> None:
        self.headers, self.current = {}, None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def header_value_data(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.header_name.lower()] = self.header_value
        self.header_name, self.header_value = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if options.get(b"name") != b"files":
            return
        if len(self.uploads) == MAX_FILES:
            raise RequestError(413, f"at most {MAX_FILES} files per request: send the others in another request")
        name = Path(options.get(b"filename", b"").decode(errors="replace")).name or f"file{len(self.uploads) + 1}"
        self.current = Upload(name, bytearray())
        self.uploads.append(self.current)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self.current
        if upload is None or upload.content is None:
            return
        upload.content += data[start:end]
        if len(upload.content) > MAX_UPLOAD_BYTES:
            upload.content = None

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body; after a refusal, only drain it."""
        if self.refusal is not None:
            return
        try:
            self.parser.write(chunk)
        except RequestError as error:
            self.refusal, self.uploads = error, []
        except Exception as error:
            self.refusal, self.uploads = RequestError(400, f"malformed multipart body: {error}"), []

    def finish(self) -> list[Upload]:
        if self.refusal is not None:
            raise self.refusal
        try:
            self.parser.finalize()
        except Exception as error:
            raise RequestError(400, f"malformed multipart body: {error}") from None
        if not self.uploads:
            raise RequestError(422, "no file in the field 'files': send one or more images")
        return self.uploads


def refusal(upload: Upload) -> tuple[int, str] | None:
    """Why an upload is refused before decoding (HTTP status, one line), or None when it may be predicted."""
    if upload.content is None:
        return 413, f"larger than {MAX_UPLOAD_BYTES // 2**20} MB: send a smaller photo"
    try:
        with Image.open(io.BytesIO(upload.content)) as image:
            image_format, pixels = image.format, image.width * image.height
    except Image.DecompressionBombError:
        return 413, f"more than {Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's limit): send a smaller photo"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 415, "not an image: send a JPEG, PNG, WebP, BMP, GIF or TIFF photo"
    if image_format not in IMAGE_FORMATS:
        return 415, f"{image_format} images are not read: send a JPEG, PNG, WebP, BMP, GIF or TIFF photo"
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        return 413, f"more than {Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's limit): send a smaller photo"
    return None


def prediction_json(model: Predictor, prediction: Prediction, name: str) -> dict:
    """The object `imageclf predict --json` prints for one file, the upload's name as its path."""
    upload = Prediction(Path(name), prediction.probabilities, unknown_reason=prediction.unknown_reason)
    return labelled_result(upload, Path(name), model.classes).as_json()


class Heatmaps:
    """Grad-CAM heatmaps (`models.heatmap`) of a model file's PyTorch model, loaded at the first request for one:
    torch and the architecture take seconds to load, which a server that is never asked for a heatmap skips."""

    def __init__(self, model_path: Path):
        self.model_path = model_path
        self.saved = None

    @property
    def available(self) -> bool:
        """An exported model (.onnx, .xml) has no PyTorch model to take gradients of."""
        return self.model_path.suffix.lower() not in PREDICTORS

    def data_url(self, content: bytes, target: int) -> str:
        """The photo as the model saw it, with the heatmap of class `target` over it, as a PNG data URL."""
        from imageclf.models.heatmap import heatmap
        from imageclf.models.model_file import load_model

        if self.saved is None:
            self.saved = load_model(self.model_path)
        saved = self.saved
        image = open_rgb(content, min_side=saved.preprocessing.image_size)
        overlay = heatmap(saved.classifier, saved.architecture, image, saved.preprocessing, target).overlay
        buffer = io.BytesIO()
        overlay.save(buffer, "PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class UploadClassifier:
    """The model, loaded once, its heatmaps, and a lock: one forward pass at a time (the runtime already uses every
    core for one)."""

    def __init__(self, model: Predictor, heatmaps: Heatmaps):
        self.model = model
        self.heatmaps = heatmaps
        self.lock = threading.Lock()

    def predict(self, uploads: list[Upload], with_heatmaps: bool = False) -> tuple[int, list[dict]]:
        """One result per upload, in order: the predict --json object (with `heatmap`, a PNG data URL, when asked),
        or {path, error}; 200, or the first refused file's 4xx."""
        refusals = [refusal(upload) for upload in uploads]
        accepted = [bytes(upload.content) for upload, refused in zip(uploads, refusals, strict=True) if not refused]
        with self.lock:
            predictions = iter(list(predict_files(self.model, accepted, DEFAULT_TTA, max(1, len(accepted)))))
        results, status = [], 200
        for upload, refused in zip(uploads, refusals, strict=True):
            if refused is None:
                prediction = next(predictions)
                if prediction.probabilities is not None:
                    result = prediction_json(self.model, prediction, upload.name)
                    if with_heatmaps:
                        with self.lock:
                            target = int(prediction.probabilities.argmax())
                            result["heatmap"] = self.heatmaps.data_url(bytes(upload.content), target)
                    results.append(result)
                    continue
                refused = 422, f"cannot decode the image: {prediction.error}"
            if status == 200:
                status = refused[0]
            results.append({"path": upload.name, "error": refused[1]})
        return status, results


def metrics_info(metrics_dir: Path) -> dict:
    """The test scores (evaluate's details) and the names of the pictures that exist, for the page; empty before
    `dvc repro`."""
    metrics_file = metrics_dir / paths.DETAILS_DIR / paths.EVALUATE_METRICS
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError):
        metrics = None
    return {
        "metrics": metrics,
        "plots": [name for name, path in PLOTS.items() if (metrics_dir / path).is_file()],
    }


def create_app(model: Predictor, model_path: Path, metrics_dir: Path) -> FastAPI:
    """The page and the API around one loaded model; `metrics_dir` holds evaluate's scores and pictures of it."""
    heatmaps = Heatmaps(model_path)
    classifier = UploadClassifier(model, heatmaps)
    app = FastAPI(title="imageclf", description="Try the trained model on your own photos.")

    @app.exception_handler(RequestError)
    async def refuse(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": str(model_path), "classes": model.classes}

    @app.get("/info")
    async def info() -> dict:
        return {
            "model": str(model_path),
            "architecture": model.architecture,
            "classes": model.classes,
            "image_size": model.preprocessing.image_size,
            "max_upload_mb": MAX_UPLOAD_BYTES // 2**20,
            "max_files": MAX_FILES,
            "unknown": {
                "scores": list(model.unknown_scores),
                "reasons": {name: REASONS[name] for name in model.unknown_scores},
                "note": model.unknown_note,
            },
            "heatmap": heatmaps.available,
        } | metrics_info(metrics_dir)

    @app.get("/plots/{name}.png")
    async def plot(name: str) -> FileResponse:
        path = metrics_dir / PLOTS[name] if name in PLOTS else None
        if path is None or not path.is_file():
            raise RequestError(404, f"no picture '{name}': choices: {', '.join(PLOTS)}")
        return FileResponse(path, media_type="image/png")

    @app.post("/predict")
    async def predict(request: Request, heatmap: bool = False) -> JSONResponse:
        parser = UploadParser(request.headers.get("content-type", ""))
        async for chunk in request.stream():
            parser.feed(chunk)
        uploads = parser.finish()
        if heatmap and not heatmaps.available:
            raise RequestError(400, f"heatmaps need the model.pt (PyTorch), not the export '{model_path.name}'")
        status, results = await run_in_threadpool(classifier.predict, uploads, heatmap)
        return JSONResponse(results, status_code=status)

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not (port in use, unknown host)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise UserError(f"cannot listen on '{host}': {error.strerror or error}; pass --host 127.0.0.1") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = "in use" if error.errno == errno.EADDRINUSE else error.strerror
        raise UserError(f"port {port} on {host} is {reason}: pass --port with another number") from None
    sock.listen(128)
    return sock


def serve_command(model_path: Path, host: str, port: int) -> int:
    """`imageclf serve`: load the model, bind, warm the model up, print the address, serve until Ctrl+C."""
    model = load_predictor(model_path)
    sock = bind(host, port)
    if host not in LOOPBACK_HOSTS:
        warn(f"listening on {host}: anyone who can reach this machine can upload photos")
    blank_png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(blank_png, "PNG")
    list(predict_files(model, [blank_png.getvalue()], DEFAULT_TTA, 1))  # the first forward pass is the slow one
    metrics_dir = paths.metrics_dir_of(model_path)
    config = uvicorn.Config(create_app(model, model_path, metrics_dir), log_level="warning")
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"serving {model_path} at http://{shown_host}:{bound_port} (Ctrl+C stops)", flush=True)
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
    return 0


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free port, printed at start)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {value}")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a page (drop or take photos, see each one's classes) and POST /predict, GET /health, until Ctrl+C."
    )
    add_model_file_argument(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=port_number, default=8000, help="0 picks a free one (default: 8000)")


def run(args: argparse.Namespace) -> int:
    return serve_command(args.model, args.host, args.port)

"""`imageclf serve`: the JSON API of a real server process on a free port, its limits, concurrency and start-up."""

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from imageclf.apps.serve import MAX_FILES, MAX_UPLOAD_BYTES
from imageclf.data.manifest import read_manifest
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import create_model
from imageclf.models.model_file import SavedModel, save_model
from tests.helpers import SampleModel, none_of_the_classes

pytestmark = pytest.mark.slow  # each test starts the imageclf command, which loads torch

SAMPLE = Path(__file__).parent.parent / "data/sample"
# This checkout's command (the installed `imageclf` script may belong to another one).
IMAGECLF = [sys.executable, "-m", "imageclf"]
METRICS = Path(__file__).parent.parent / "metrics"


def save_horse_leaning(path: Path) -> Path:
    """A model with random weights whose head favours horse: its probabilities still depend on the photo."""
    model = create_model("efficientnet_lite0", 3, 32, pretrained=False).eval()
    with torch.no_grad():
        model.head[-1].bias.add_(torch.tensor([0.0, 0.0, 4.0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(
        path,
        SavedModel(model, "efficientnet_lite0", ["cat", "dog", "horse"], preprocessing_for("efficientnet_lite0", 32)),
    )
    return path


def project_with_model(root: Path) -> Path:
    """models/model.pt and the repository's metrics/ (evaluate's scores, plots) side by side, as after `dvc repro`."""
    model = save_horse_leaning(root / "models/model.pt")
    for folder in ("plots", "details"):
        (root / "metrics" / folder).mkdir(parents=True)
    shutil.copy(METRICS / "details/evaluate.json", root / "metrics/details/evaluate.json")
    shutil.copy(METRICS / "plots/confusion_matrix.png", root / "metrics/plots/confusion_matrix.png")
    return model


@contextmanager
def running_server(model: Path, *options: str) -> Iterator[str]:
    """`imageclf serve` on a free port of 127.0.0.1 in a real process; yields its address, stops it after."""
    process = subprocess.Popen(
        [*IMAGECLF, "serve", "--model", str(model), "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("serving "), line + process.stderr.read()
        yield line.split(" at ")[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project_with_model(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[str]:
    with running_server(model) as address:
        yield address


def sample_photos(count: int) -> list[Path]:
    """`count` photos of the embedded sample, the classes taking turns."""
    per_class = [sorted((SAMPLE / label).glob("*.jpg")) for label in ("cat", "dog", "horse")]
    return [per_class[index % 3][index // 3] for index in range(count)]


def post(server: str, files: list[tuple[str, bytes]]) -> requests.Response:
    return requests.post(f"{server}/predict", files=[("files", file) for file in files], timeout=120)


def noise_png(size: tuple[int, int], seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def blank_png(size: tuple[int, int]) -> bytes:
    """A black 1-bit PNG: any number of pixels in a small file, as a decompression bomb is."""
    buffer = io.BytesIO()
    Image.new("1", size).save(buffer, "PNG")
    return buffer.getvalue()


def predicted_json(photos: list[Path], model: Path) -> list[dict]:
    """What `imageclf predict --json` prints for `photos`, each path shortened to its file name as uploads are."""
    printed = subprocess.run(
        [*IMAGECLF, "predict", *map(str, photos), "--model", str(model), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [entry | {"path": Path(entry["path"]).name} for entry in json.loads(printed)]


def assert_same_predictions(got: list[dict], expected: list[dict]) -> None:
    """The same objects (keys, paths, classes) with probabilities equal to float32 rounding."""
    assert [{**entry, "confidence": 0, "probabilities": 0} for entry in got] == [
        {**entry, "confidence": 0, "probabilities": 0} for entry in expected
    ]
    for got_entry, expected_entry in zip(got, expected, strict=True):
        assert got_entry["confidence"] == pytest.approx(expected_entry["confidence"], abs=1e-6)
        assert got_entry["probabilities"] == pytest.approx(expected_entry["probabilities"], abs=1e-6)


def test_predict_returns_the_objects_imageclf_predict_json_prints(tmp_path: Path, server: str, model: Path) -> None:
    cat, dog, horse = sample_photos(3)
    photos = [tmp_path / "horse_from_the_sample.jpg", tmp_path / cat.name, tmp_path / dog.name]
    for source, photo in zip((horse, cat, dog), photos, strict=True):
        shutil.copy(source, photo)
    response = post(server, [(photo.name, photo.read_bytes()) for photo in photos])
    assert response.status_code == 200, response.text

    assert_same_predictions(response.json(), predicted_json(photos, model))
    assert response.json()[0]["true_label"] == "horse" and "true_label" not in response.json()[1]
    assert len({entry["confidence"] for entry in response.json()}) == 3, "each photo is predicted, not one of them"


def test_an_image_of_none_of_the_classes_is_unknown_as_imageclf_predict_says_with_a_heatmap_when_asked(
    tmp_path: Path, sample_model: SampleModel
) -> None:
    uploads = none_of_the_classes()
    trained_on = sample_model.split / "train" / read_manifest(sample_model.split / "train")[0].path
    uploads["photo.jpg"] = trained_on.read_bytes()
    for name, content in uploads.items():
        (tmp_path / name).write_bytes(content)
    with running_server(sample_model.path) as address:
        response = post(address, list(uploads.items()))
        with_heatmaps = requests.post(
            f"{address}/predict?heatmap=1", files=[("files", file) for file in uploads.items()], timeout=120
        )
        info = requests.get(f"{address}/info", timeout=30).json()
        page = requests.get(address, timeout=30).text
    assert response.status_code == 200, response.text
    assert [(entry["label"], entry["unknown"], "knn" in entry["unknown_reason"]) for entry in response.json()] == [
        (None, True, True)
    ] * 4 + [(trained_on.parent.name, False, False)]
    assert_same_predictions(response.json(), predicted_json([tmp_path / name for name in uploads], sample_model.path))
    assert not any("heatmap" in entry for entry in response.json()), "only when asked: predict stays fast"
    assert info["unknown"]["scores"] == ["knn", "imagenet"] and info["heatmap"] is True
    assert "none of these" in page and "result.unknown" in page and "heatmap=1" in page

    assert with_heatmaps.status_code == 200, with_heatmaps.text
    for entry, plain in zip(with_heatmaps.json(), response.json(), strict=True):
        assert {key: value for key, value in entry.items() if key != "heatmap"} == plain
        prefix, encoded = entry["heatmap"].split(",", 1)
        assert prefix == "data:image/png;base64"
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as picture:
            assert picture.format == "PNG" and picture.size == (128, 128), "the photo as the model saw it"


def test_refused_files_get_a_4xx_and_one_line_each_and_the_others_are_still_predicted(server: str) -> None:
    photo = sample_photos(1)[0]
    alone = post(server, [(photo.name, photo.read_bytes())]).json()[0]
    truncated = photo.read_bytes()[: len(photo.read_bytes()) // 2]
    uploads = [
        ("big.png", noise_png((100, 100)) + bytes(MAX_UPLOAD_BYTES)),
        (photo.name, photo.read_bytes()),
        ("notes.txt", b"not a photo\n"),
        ("over_the_warning_limit.png", blank_png((9500, 9500))),
        ("over_the_error_limit.png", blank_png((14000, 14000))),
        ("truncated.jpg", truncated),
    ]
    response = post(server, uploads)
    assert response.status_code == 413, "the first refused file's status: too large"
    results = response.json()
    assert [result["path"] for result in results] == [name for name, _ in uploads]
    assert_same_predictions([results[1]], [alone])
    errors = {result["path"]: result["error"] for result in results if "error" in result}
    assert set(errors) == {
        "big.png",
        "notes.txt",
        "over_the_warning_limit.png",
        "over_the_error_limit.png",
        "truncated.jpg",
    }
    assert all("\n" not in error for error in errors.values())
    assert "larger than 20 MB" in errors["big.png"]
    assert "not an image" in errors["notes.txt"]
    assert "pixels (Pillow's limit)" in errors["over_the_warning_limit.png"]
    assert "pixels (Pillow's limit)" in errors["over_the_error_limit.png"]
    assert "cannot decode" in errors["truncated.jpg"]
    assert post(server, [("notes.txt", b"text")]).status_code == 415
    assert post(server, [("truncated.jpg", truncated)]).status_code == 422


def test_twenty_concurrent_requests_are_all_answered_correctly(server: str) -> None:
    uploads = [[(photo.name, photo.read_bytes())] for photo in sample_photos(20)]
    one_at_a_time = [post(server, files).json() for files in uploads]
    with ThreadPoolExecutor(20) as pool:
        at_once = list(pool.map(lambda files: post(server, files), uploads))
    assert [response.status_code for response in at_once] == [200] * 20
    for response, expected in zip(at_once, one_at_a_time, strict=True):
        assert_same_predictions(response.json(), expected)


def test_malformed_requests_get_one_line_and_the_server_keeps_answering(server: str) -> None:
    photo = sample_photos(1)[0]
    not_multipart = requests.post(f"{server}/predict", data={"files": "x"}, timeout=30)
    assert not_multipart.status_code == 415 and "multipart/form-data" in not_multipart.json()["error"]
    garbage = requests.post(
        f"{server}/predict",
        data=b"garbage",
        headers={"Content-Type": "multipart/form-data; boundary=zz"},
        timeout=30,
    )
    assert garbage.status_code == 400 and garbage.json()["error"].startswith("malformed multipart body")
    other_field = requests.post(f"{server}/predict", files={"photo": photo.read_bytes()}, timeout=30)
    assert other_field.status_code == 422 and "field 'files'" in other_field.json()["error"]
    too_many = post(server, [("x.png", b"x")] * (MAX_FILES + 1))
    assert too_many.status_code == 413 and f"at most {MAX_FILES} files" in too_many.json()["error"]

    host, port = server.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as connection:  # a client that hangs up mid-upload
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
            b"Content-Length: 1000000\r\n\r\n--zz\r\nContent-Disposition: form-data; name=files; filename=a.jpg\r\n\r\n"
            + photo.read_bytes()[:1000]
        )
    assert requests.get(f"{server}/health", timeout=30).json()["status"] == "ok"
    assert post(server, [(photo.name, photo.read_bytes())]).status_code == 200


def test_a_request_of_more_files_than_allowed_is_read_to_its_end_and_gets_its_413(server: str) -> None:
    """100 photos of 197 kB: far more than the sockets buffer, so an answer sent mid-upload would reset the
    connection instead of telling the client why."""
    photos = [(f"noise{index}.png", noise_png((256, 256), seed=index)) for index in range(100)]
    response = post(server, photos)
    assert response.status_code == 413
    assert response.json() == {"error": f"at most {MAX_FILES} files per request: send the others in another request"}
    assert [entry["path"] for entry in post(server, photos[:MAX_FILES]).json()] == [name for name, _ in photos[:32]]


def test_a_request_over_the_file_limit_is_answered_once_its_whole_body_is_read(server: str) -> None:
    """The answer waits for the last byte: sent while the client is still uploading, it comes with a closed
    connection, which a client sees as "connection reset" rather than the reason."""
    parts = [
        b"--zz\r\nContent-Disposition: form-data; name=files; filename=n%d.png\r\n\r\n" % index
        + noise_png((32, 32), seed=index)
        + b"\r\n"
        for index in range(MAX_FILES + 8)
    ]
    body = b"".join(parts) + b"--zz--\r\n"
    cut = len(b"".join(parts[: MAX_FILES + 4]))  # past the file over the limit, before the end
    host, port = server.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:cut]
        )
        connection.settimeout(1.0)
        with pytest.raises(TimeoutError):
            connection.recv(1)  # no answer while the body is still coming
        connection.sendall(body[cut:])
        connection.settimeout(30)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, content = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(content)["error"].startswith(f"at most {MAX_FILES} files per request")


def test_the_page_and_the_model_metrics_beside_it(server: str) -> None:
    page = requests.get(server, timeout=30).text
    assert 'type="file" accept="image/*" multiple' in page and 'capture="environment"' in page
    assert "http" not in page.replace(server, ""), "no asset from the internet"
    info = requests.get(f"{server}/info", timeout=30).json()
    assert info["classes"] == ["cat", "dog", "horse"] and info["image_size"] == 32
    assert info["max_files"] == MAX_FILES, "the page sends batches of at most this many"
    assert info["metrics"] == json.loads((METRICS / "details/evaluate.json").read_text())
    assert info["plots"] == ["confusion_matrix"], "only the pictures that exist"
    picture = requests.get(f"{server}/plots/confusion_matrix.png", timeout=30)
    assert picture.content == (METRICS / "plots/confusion_matrix.png").read_bytes()
    assert requests.get(f"{server}/plots/misclassified.png", timeout=30).status_code == 404
    assert requests.get(f"{server}/plots/..%2Fevaluate.png", timeout=30).status_code == 404


def test_an_unknown_model_or_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, model: Path) -> None:
    missing = subprocess.run(
        [*IMAGECLF, "serve", "--model", str(tmp_path / "none.pt")], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 1
    assert (
        missing.stderr
        == f"error: model file '{tmp_path / 'none.pt'}' not found: train one with dvc repro, or pass --model PATH\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = subprocess.run(
            [*IMAGECLF, "serve", "--model", str(model), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert in_use.returncode == 1
    assert in_use.stderr == f"error: port {port} on 127.0.0.1 is in use: pass --port with another number\n"


def test_it_listens_on_127_0_0_1_unless_told_and_warns_when_told_otherwise(server: str, model: Path) -> None:
    assert server.startswith("http://127.0.0.1:")
    process = subprocess.Popen(
        [*IMAGECLF, "serve", "--model", str(model), "--port", "0", "--host", "0.0.0.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().startswith(f"serving {model} at http://0.0.0.0:")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "warning: listening on 0.0.0.0: anyone who can reach this machine can upload photos" in process.stderr.read()

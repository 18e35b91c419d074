"""`imageclf fetch animals10` on a small zip in the Animals-10 layout, run as a user would."""

import importlib.util
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from imageclf.cli import main
from imageclf.data.folders import find_images
from tests.helpers import CLASSES, PROJECT, make_image_folder, set_params

ITALIAN = {"cat": "gatto", "dog": "cane", "horse": "cavallo", "spider": "ragno"}


def animals10_zip(tmp_path: Path) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """A zip laid out like Kaggle's download (raw-img/<Italian name>/...) and the photos each class should get."""
    photos = make_image_folder(tmp_path / "photos", per_class=3)
    make_image_folder(tmp_path / "spiders", per_class=2)
    expected = {
        label: {path.name: path.read_bytes() for path in sorted((photos / label).iterdir())} for label in CLASSES
    }
    path = tmp_path / "animals10.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("translate.py", "translate = {'cane': 'dog'}\n")
        for label, files in expected.items():
            for name, content in files.items():
                archive.writestr(f"raw-img/{ITALIAN[label]}/{name}", content)
        for spider in (tmp_path / "spiders/cat").iterdir():
            archive.writestr(f"raw-img/ragno/{spider.name}", spider.read_bytes())
        archive.writestr("raw-img/cane/.DS_Store", b"\0")
        archive.writestr("__MACOSX/raw-img/cane/._cat_0.jpg", b"\0")
    return path, expected


def project_with_params(tmp_path: Path, **params: object) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT / "params.yaml", project / "params.yaml")
    set_params(project, **params)
    return project


def fetch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `imageclf fetch` command, in a subprocess."""
    return subprocess.run(["imageclf", "fetch", *args], cwd=cwd, capture_output=True, text=True)


def fetch_here(
    *args: str, cwd: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """`imageclf fetch` in this process (the command's imports are slow to repeat): exit status, stdout, stderr."""
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exited:
        main(["fetch", *args])
    output = capsys.readouterr()
    return exited.value.code, output.out, output.err


def test_fetch_copies_the_configured_classes_under_english_names(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, expected = animals10_zip(tmp_path)
    project = project_with_params(tmp_path)

    result = fetch("animals10", "--source", str(archive), cwd=project)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "imported 9 files into data/raw/: cat 3, dog 3, horse 3",
        "track the folder with DVC:  dvc add data/raw",
        "point data.raw_dir at it:   set 'raw_dir: data/raw' under data: in params.yaml, then dvc repro",
    ]
    raw = project / "data/raw"
    assert sorted(path.name for path in raw.iterdir()) == CLASSES
    for label, files in expected.items():
        assert {path.name: path.read_bytes() for path in (raw / label).iterdir()} == files
    assert {label: len(paths) for label, paths in find_images(raw, CLASSES).items()} == {"cat": 3, "dog": 3, "horse": 3}

    extracted = tmp_path / "extracted"
    with zipfile.ZipFile(archive) as unpacked:
        unpacked.extractall(extracted)
    status, _, err = fetch_here(
        "animals10",
        "--source",
        str(extracted),
        "--dest",
        "elsewhere",
        cwd=project,
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    assert status == 0, err
    for label, files in expected.items():
        assert {path.name: path.read_bytes() for path in (project / "elsewhere" / label).iterdir()} == files


def test_fetch_imports_other_animals10_classes_when_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = animals10_zip(tmp_path)
    project = project_with_params(tmp_path, data__classes=["cat", "spider"])
    status, out, err = fetch_here(
        "animals10", "--source", str(archive), cwd=project, capsys=capsys, monkeypatch=monkeypatch
    )
    assert status == 0, err
    assert out.splitlines()[0] == "imported 5 files into data/raw/: cat 3, spider 2"
    assert sorted(path.name for path in (project / "data/raw").iterdir()) == ["cat", "spider"]


@pytest.mark.parametrize(
    ("params", "source", "message"),
    [
        ({"data__classes": ["cat", "unicorn"]}, "animals10.zip", "data.classes has 'unicorn', which Animals-10 does"),
        ({}, "nowhere.zip", "--source 'nowhere.zip' is neither a zip archive nor a folder"),
        ({}, "photos", "'photos' has no folder 'gatto' (or 'cat') with files: is it the Animals-10 download"),
        ({"data__learning_rte": 1}, "animals10.zip", "params.yaml: unknown key 'data.learning_rte'"),
    ],
    ids=["unknown-class", "no-source", "wrong-layout", "bad-params"],
)
def test_fetch_names_what_is_wrong_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    params: dict,
    source: str,
    message: str,
) -> None:
    archive, _ = animals10_zip(tmp_path)
    project = project_with_params(tmp_path, **params)
    shutil.copy(archive, project / "animals10.zip")
    (project / "photos/dogs").mkdir(parents=True)
    (project / "photos/dogs/a.jpg").write_bytes(b"x")
    status, _, err = fetch_here("animals10", "--source", source, cwd=project, capsys=capsys, monkeypatch=monkeypatch)
    assert status == 1
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {message}"), err
    assert not (project / "data").exists()


def test_fetch_with_kaggle_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_with_params(tmp_path)
    for name in [name for name in os.environ if name.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kaggle
    package_missing = importlib.util.find_spec("kaggle") is None

    status, _, err = fetch_here("animals10", "--kaggle", cwd=project, capsys=capsys, monkeypatch=monkeypatch)
    assert status == 1 and len(err.splitlines()) == 1
    assert ("the kaggle package (pip install kaggle)" in err) == package_missing
    assert "Kaggle credentials (~/.kaggle/kaggle.json, ~/.kaggle/access_token, KAGGLE_API_TOKEN, or " in err

    if package_missing:
        monkeypatch.setenv("KAGGLE_USERNAME", "someone")
        monkeypatch.setenv("KAGGLE_KEY", "secret")
        status, _, err = fetch_here("animals10", "--kaggle", cwd=project, capsys=capsys, monkeypatch=monkeypatch)
        assert err == (
            "error: --kaggle needs the kaggle package (pip install kaggle); or download alessiocorrado99/animals10 "
            "yourself and pass --source PATH\n"
        )

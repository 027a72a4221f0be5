"""An int8 model: the converted graph quantized by `verger quantize`, with what it was calibrated on.

Post-training quantization fixes each activation's int8 range from a set of calibration photos,
so an int8 feature depends on those photos as much as on the weights. The model therefore travels
as one folder (model.xml, model.bin, calibration.json). calibration.json names the weights, the
calibration photos with their sha256, the quantization settings and the model files' sha256; the
model's id, a hash of all of those, is part of the feature version of every row the model
extracts (two quantizations that came out different are two versions), and the files are checked
against it before the model is used.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

MODEL_XML = "model.xml"
MODEL_BIN = "model.bin"
CALIBRATION_JSON = "calibration.json"
MODEL_FILES = (MODEL_XML, MODEL_BIN, CALIBRATION_JSON)


class Int8ModelError(ValueError):
    """An int8 model folder that is missing, incomplete, altered or made from other weights."""


@dataclass(frozen=True)
class Int8Model:
    folder: str  # local
    model_id: str
    weights_sha256: str

    @property
    def xml(self) -> str:
        return os.path.join(self.folder, MODEL_XML)


def int8_model_id(weights_sha256: str, photos: dict[str, str], settings: dict, files: dict[str, str]) -> str:
    """12 hex digits naming (weights, calibration photos' contents, settings, model files): what
    the int8 model is made of and what came out. Photo names do not count, their bytes do.

    Examples
    --------
    >>> a = int8_model_id("ab" * 32, {"x.jpg": "01" * 32}, {"preset": "performance"}, {"model.bin": "02" * 32})
    >>> a == int8_model_id("ab" * 32, {"renamed.jpg": "01" * 32}, {"preset": "performance"}, {"model.bin": "02" * 32})
    True
    >>> a == int8_model_id("ab" * 32, {"x.jpg": "01" * 32}, {"preset": "performance"}, {"model.bin": "03" * 32})
    False
    """
    canonical = json.dumps({"weights_sha256": weights_sha256, "photos": sorted(photos.values()),
                            "settings": settings, "files": files}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def calibration_record(weights_sha256: str, photos: dict[str, str], settings: dict, folder: str) -> dict:
    """What calibration.json holds for the model files already saved in `folder`."""
    files = {name: file_sha256(os.path.join(folder, name)) for name in (MODEL_XML, MODEL_BIN)}
    return {"model_id": int8_model_id(weights_sha256, photos, settings, files), "weights_sha256": weights_sha256,
            "settings": settings, "photos": dict(sorted(photos.items())), "files": files}


def read_int8_model(folder: str) -> Int8Model:
    """The model in `folder`, after checking it is whole and unaltered; Int8ModelError otherwise."""
    missing = [name for name in MODEL_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise Int8ModelError(f"int8 model folder {folder} lacks {', '.join(missing)}: make one with "
                             "`verger quantize`")
    try:
        with open(os.path.join(folder, CALIBRATION_JSON), encoding="utf-8") as file:
            record = json.load(file)
        expected_id = int8_model_id(record["weights_sha256"], record["photos"], record["settings"], record["files"])
        recorded_files = record["files"]
        model_id = record["model_id"]
    except (ValueError, KeyError, TypeError) as error:
        raise Int8ModelError(f"{os.path.join(folder, CALIBRATION_JSON)} is not a calibration record: "
                             f"{error!r}") from error
    if model_id != expected_id:
        raise Int8ModelError(f"int8 model {folder}: its id {model_id} does not match its calibration record "
                             f"({expected_id})")
    for name in (MODEL_XML, MODEL_BIN):
        if file_sha256(os.path.join(folder, name)) != recorded_files.get(name):
            raise Int8ModelError(f"int8 model {folder}: {name} differs from the file it was saved as")
    return Int8Model(folder=folder, model_id=model_id, weights_sha256=record["weights_sha256"])


def check_made_from(model: Int8Model, weights_sha256: str) -> None:
    """An int8 model runs only with the weights it was quantized from."""
    if model.weights_sha256 != weights_sha256:
        raise Int8ModelError(f"int8 model {model.model_id} was quantized from weights {model.weights_sha256[:12]}, "
                             f"not from these ({weights_sha256[:12]}): quantize it again from them")

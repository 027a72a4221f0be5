"""`verger suggest` (labels for local photos) and `verger evaluate-suggestions` (held-out quality)."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from verger.suggest_evaluation import METHODS, SPLITS, evaluate, render_table


def add_commands(subparsers) -> None:
    suggest = subparsers.add_parser(
        "suggest", help="suggest labels for local photos",
        description="Top five labels for each photo from the warehouse's current classifier "
                    "(preprocessed as the job does), each with its label's exemplar photo.",
    )
    suggest.add_argument("photos", nargs="*", metavar="PHOTO")
    suggest.add_argument("--images", help="also every image below this folder")
    suggest.add_argument("--warehouse", required=True)
    suggest.add_argument("--weights", help="imagenet, a local .h5 path or an s3:// URI (default: $VERGER_WEIGHTS)")
    suggest.add_argument("--json", action="store_true", help="one JSON object per line")
    suggest.set_defaults(command=command_suggest)

    evaluate = subparsers.add_parser(
        "evaluate-suggestions", help="every suggestion method on splits that separate capture sessions",
        description="Fit each candidate method on the training part of each split and score the "
                    "held-out part: top-1, top-5, expected calibration error, one table. Splits: "
                    "block (last fifth of every rotation video), gap (middle fifth, a tenth either "
                    "side left out), series (train on the plain series, test on r*_), loso (leave "
                    "one series out). Methods are chosen on series and loso.",
    )
    evaluate.add_argument("--warehouse", required=True)
    evaluate.add_argument("--split", action="append", choices=SPLITS, help="repeatable (default: all)")
    evaluate.add_argument("--method", action="append", choices=tuple(METHODS), help="repeatable (default: all)")
    evaluate.add_argument("--json", action="store_true", help="the whole outcome as JSON")
    evaluate.set_defaults(command=command_evaluate)


def photo_paths(photos: list[str], images: str | None) -> list[str]:
    """The named photos, then every image below `images`, in sorted order."""
    from contract.layout import is_image_key
    from emr_job.folders import list_image_keys

    paths = list(photos)
    if images:
        if not os.path.isdir(images):
            raise FileNotFoundError(f"images folder not found: {images}")
        paths += [os.path.join(images, key) for key in list_image_keys(os.path.abspath(images))]
    if not paths:
        raise ValueError("no photos given: pass PHOTO... or --images DIR")
    unknown = [path for path in photos if not is_image_key(path)]
    if unknown:
        raise ValueError(f"not an image file name (.jpg, .jpeg, .png): {unknown[0]}")
    return paths


def read_photo(path: str):
    """Preprocessed pixels, or the Rejected outcome that says why not."""
    from emr_job.images import Reason, Rejected, preprocess

    try:
        with open(path, "rb") as handle:
            return preprocess(handle.read())
    except FileNotFoundError:
        return Rejected(Reason.MISSING, f"no such file: {path}")


def command_suggest(args: argparse.Namespace) -> int:
    from emr_job import pca, store
    from emr_job.engines import load_extractor
    from emr_job.suggest import current_classifier, suggest
    from emr_job.weights import resolve_weights

    paths = photo_paths(args.photos, args.images)
    model = current_classifier(store.open_catalog(args.warehouse), args.warehouse)
    projection = pca.load(store.warehouse_root(args.warehouse), model.pca_version)
    extractor = load_extractor(resolve_weights(args.weights), "onnx", os.cpu_count())
    pixels = {path: read_photo(path) for path in paths}
    good = [path for path in paths if isinstance(pixels[path], np.ndarray)]
    if good:
        features = np.vstack([extractor(np.stack([pixels[p] for p in good[i:i + 32]]))
                              for i in range(0, len(good), 32)])  # (n, 1280)
        found = suggest(model, features, projection)
    for path in paths:
        if path in good:
            row = good.index(path)
            print(render(path, found["labels"][row], found["scores"][row], bool(found["uncertain"][row]),
                         found["neighbour_keys"][row], found["neighbour_similarities"][row], args.json))
        else:
            rejected = pixels[path]
            print(json.dumps({"image": path, "error": rejected.reason, "detail": rejected.detail})
                  if args.json else f"{path}: cannot suggest ({rejected.reason}): {rejected.detail}")
    return 0 if len(good) == len(paths) else 1


def render(path, labels, scores, uncertain, neighbour_keys, neighbour_similarities, as_json: bool) -> str:
    if as_json:
        return json.dumps({
            "image": path,
            "suggestions": [{"label": label, "score": round(float(score), 6)} for label, score in zip(labels, scores)],
            "uncertain": uncertain,
            "neighbours": [{"image_key": key, "similarity": round(float(sim), 6)}
                           for key, sim in zip(neighbour_keys, neighbour_similarities)],
        }, ensure_ascii=False)
    ranked = ", ".join(f"{label} ({score:.3f})" for label, score in zip(labels, scores))
    return f"{path}: {ranked}{'  [uncertain]' if uncertain else ''}"


def command_evaluate(args: argparse.Namespace) -> int:
    from pyspark.sql import functions as F

    from emr_job import store
    from emr_job.readers import current_features
    from emr_job.session import get_session

    rows = (current_features(get_session("verger-evaluate-suggestions"), store.open_catalog(args.warehouse))
            .where(F.col("label").isNotNull()).select("image_key", "label", "features").toPandas())
    if rows.empty:
        raise ValueError(f"no labelled photos in {args.warehouse}: nothing to evaluate")
    outcome = evaluate(np.stack(rows["features"].to_numpy()), rows["label"].to_numpy(), rows["image_key"].to_numpy(),
                       tuple(args.split or SPLITS), tuple(args.method or METHODS))
    print(json.dumps(outcome, indent=1) if args.json else render_table(outcome["table"]))
    return 0

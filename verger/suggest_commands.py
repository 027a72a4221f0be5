"""`verger suggest` (labels for local photos) and `verger evaluate-suggestions` (held-out quality)."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

SPLITS = ("block", "series")
HELD_OUT_SHARE = 0.2
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FILE_PATTERN = r"^(r[0-9]*_)?([0-9]+)_"  # Fruits-360: [r_|r2_…]<frame>_<size>.jpg


def add_commands(subparsers) -> None:
    suggest = subparsers.add_parser(
        "suggest", help="suggest labels for local photos",
        description="Top five labels for each photo (preprocessed and projected as the job does), "
                    "with the nearest labelled images of the warehouse.",
    )
    suggest.add_argument("photos", nargs="*", metavar="PHOTO")
    suggest.add_argument("--images", help="also every image below this folder")
    suggest.add_argument("--warehouse", required=True)
    suggest.add_argument("--weights", help="imagenet, a local .h5 path or an s3:// URI (default: $VERGER_WEIGHTS)")
    suggest.add_argument("--json", action="store_true", help="one JSON object per line")
    suggest.set_defaults(command=command_suggest)

    evaluate = subparsers.add_parser(
        "evaluate-suggestions", help="top-1/top-5 accuracy on a held-out split of the stored photos",
        description="Fit the PCA on the training part only, suggest labels for the held-out part. "
                    "block: the last fifth of every (label, rotation series) by frame number; "
                    "series: train on the plain series, hold out every r_/r2_/r3_ series.",
    )
    evaluate.add_argument("--warehouse", required=True)
    evaluate.add_argument("--split", choices=SPLITS, default="block")
    evaluate.add_argument("--variance", type=float, default=None,
                          help="PCA variance target (default: the current model's)")
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
    from emr_job.readers import current_pca_version
    from emr_job.session import get_session
    from emr_job.suggest import labelled_points, suggest
    from emr_job.weights import resolve_weights

    paths = photo_paths(args.photos, args.images)
    catalog = store.open_catalog(args.warehouse)
    version = current_pca_version(catalog)
    if version is None:
        raise ValueError(f"no PCA model in {args.warehouse}: run a batch of labelled photos first")
    model = pca.load(store.warehouse_root(args.warehouse), version)
    extractor = load_extractor(resolve_weights(args.weights), "onnx", os.cpu_count())
    pixels = {path: read_photo(path) for path in paths}
    good = [path for path in paths if isinstance(pixels[path], np.ndarray)]
    if good:
        features = np.vstack([extractor(np.stack([pixels[p] for p in good[i:i + 32]]))
                              for i in range(0, len(good), 32)])  # (n, 1280)
        found = suggest(labelled_points(get_session("verger-suggest"), catalog), model.project(features))
    for path in paths:
        if path in good:
            row = good.index(path)
            print(render(path, found.labels[row], found.scores[row], bool(found.uncertain[row]),
                         found.neighbour_keys[row], found.neighbour_similarities[row], args.json))
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


def held_out(features, split: str):
    """Mark each labelled row `test` or not; rows whose name has no frame number stay in training."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    name = F.regexp_extract("image_key", r"([^/]*)$", 1)
    rows = (features.where(F.col("label").isNotNull())
            .withColumn("series", F.regexp_extract(name, FILE_PATTERN, 1))
            .withColumn("frame", F.regexp_extract(name, FILE_PATTERN, 2)))
    if split == "series":
        return rows.withColumn("test", (F.col("frame") != "") & (F.col("series") != ""))
    block = Window.partitionBy("label", "series").orderBy(F.col("frame").cast("int"), "image_key")
    share = F.row_number().over(block) / F.count("*").over(Window.partitionBy("label", "series"))
    return rows.withColumn("test", (F.col("frame") != "") & (share > 1 - HELD_OUT_SHARE))


def accuracy(labels: np.ndarray, scores: np.ndarray, truth: np.ndarray) -> dict:
    """Top-1, top-5 and, per threshold, what flagging `uncertain` below it would do."""
    correct = labels[:, 0] == truth
    table = []
    for threshold in THRESHOLDS:
        confident = scores[:, 0] >= threshold
        table.append({
            "threshold": threshold,
            "flagged_share": round(float(1 - confident.mean()), 4),
            "top1_when_confident": round(float(correct[confident].mean()), 4) if confident.any() else None,
            "wrong_flagged": int((~correct & ~confident).sum()),
            "right_flagged": int((correct & ~confident).sum()),
        })
    return {
        "top1": round(float(correct.mean()), 4),
        "top5": round(float((labels == truth[:, None]).any(axis=1).mean()), 4),
        "wrong": int((~correct).sum()),
        "uncertain_thresholds": table,
    }


def command_evaluate(args: argparse.Namespace) -> int:
    import time

    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from emr_job import pca, store
    from emr_job.readers import current_features, current_pca_version
    from emr_job.session import get_session
    from emr_job.suggest import METHOD, suggest

    started = time.perf_counter()
    spark = get_session("verger-evaluate-suggestions")
    catalog = store.open_catalog(args.warehouse)
    variance = args.variance
    if variance is None:
        version = current_pca_version(catalog)
        variance = pca.load(store.warehouse_root(args.warehouse), version).target if version else 0.95
    rows = held_out(current_features(spark, catalog), args.split).persist(StorageLevel.MEMORY_AND_DISK)
    train, test = rows.where(~F.col("test")), rows.where(F.col("test"))
    model = pca.fit(train, variance)  # fitted without the held-out photos
    project = F.udf(lambda features: model.project(np.array([features]))[0].tolist(), "array<float>")
    points = train.select("image_key", "label", project("features").alias("pca"))
    queries = test.select("label", project("features").alias("pca")).toPandas()
    if queries.empty:
        raise ValueError(f"the {args.split} split holds out no photos: are the file names Fruits-360's?")
    found = suggest(points, np.stack(queries["pca"].to_numpy()))
    outcome = {"split": args.split, "method": METHOD, "train": model.rows_fitted, "test": len(queries),
               "pca_k": model.k, **accuracy(found.labels, found.scores, queries["label"].to_numpy()),
               "seconds": round(time.perf_counter() - started, 1)}
    rows.unpersist()
    print(json.dumps(outcome, indent=1))
    return 0

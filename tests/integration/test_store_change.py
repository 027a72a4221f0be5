"""The store under change, on real images through the real job: removals, sweeps, a safe full
recompute, and re-runs that heal a batch killed between its commits."""
from __future__ import annotations

import glob
import json
import os
import shutil
import time
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract.manifest import ManifestItem, build_manifest
from emr_job import step, store
from emr_job.folders import file_md5
from emr_job.job import JobSettings, run_manifest
from emr_job.upkeep import Upkeep, maintain
from tests.integration.conftest import LABELS

LABELLED = LABELS[:3]


@pytest.fixture
def source(tmp_path, fruits):
    """A small bucket-like folder: 4 labelled photos of 3 labels and 2 inbox photos."""
    root = tmp_path / "source"
    for label in LABELLED:
        (root / label).mkdir(parents=True)
        for name in sorted((fruits / label).iterdir())[:4]:
            shutil.copy(name, root / label / name.name)
    (root / "inbox").mkdir()
    for index, name in enumerate(sorted((fruits / LABELS[4]).iterdir())[:2]):
        shutil.copy(name, root / "inbox" / f"photo-{index}.jpg")
    return root


def items(root, keys):
    return [ManifestItem(key, file_md5(str(root / key))) for key in keys]


def all_keys(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*.jpg"))


def live_keys(warehouse, table):
    loaded = store.load_table(store.open_catalog(warehouse), table)
    return set() if loaded is None else set(store.read_columns(loaded, ["image_key"]).column("image_key").to_pylist())


def keys_in_parquet_files(warehouse, table):
    """Every image key held by any Parquet file of the table on disk, live or not."""
    root = store.warehouse_root(warehouse)
    found = set()
    for path in glob.glob(f"{root}/**/*.parquet", recursive=True):
        if f"/{table}/" in path:
            found |= set(pq.read_table(path, columns=["image_key"]).column("image_key").to_pylist())
    return found


def test_a_removed_photo_leaves_every_table_and_after_expiry_every_data_file(spark, source, weights, tmp_path):
    # GIVEN a store holding the labelled and inbox photos (suggestions cite the labelled ones)
    warehouse, settings = str(tmp_path / "wh"), JobSettings(str(tmp_path / "wh"), weights)
    uri = f"file://{source}"
    run_manifest(spark, build_manifest("incremental", uri, items(source, all_keys(source))), settings)
    cited = store.read_columns(store.load_table(store.open_catalog(warehouse), "suggestions"), ["neighbour_keys"])
    victim = cited.column("neighbour_keys")[0].as_py()[0]  # a labelled photo an inbox suggestion cites
    assert all(victim in live_keys(warehouse, table) for table in ("features", "projections"))

    # WHEN the photo is deleted and its ObjectRemoved notification is processed
    (source / victim).unlink()
    removal = build_manifest("incremental", uri, [ManifestItem(victim, "", removed=True)])
    report = run_manifest(spark, removal, settings)

    # THEN it is gone from every table's current rows, no suggestion cites it any more
    assert report["erasure"]["photos_erased"] == 1 and report["erasure"]["suggestions_citing_them"] >= 1
    assert report["erasure"]["resuggested"]["action"] == "suggested"
    for table in ("features", "projections", "quarantine", "suggestions"):
        assert victim not in live_keys(warehouse, table)
    suggestions = store.read_columns(store.load_table(store.open_catalog(warehouse), "suggestions"),
                                     ["image_key", "neighbour_keys"]).to_pylist()
    assert suggestions and all(victim not in row["neighbour_keys"] for row in suggestions)
    # THEN its bytes stay in old files until upkeep expires the snapshots that read them …
    assert victim in keys_in_parquet_files(warehouse, "features")
    maintain(store.open_catalog(warehouse), warehouse, Upkeep(retention=timedelta(0), orphan_age=timedelta(0)))
    # … and after that no data file of any table holds it
    for table in ("features", "projections", "suggestions"):
        assert victim not in keys_in_parquet_files(warehouse, table)
    assert len(live_keys(warehouse, "features")) == len(all_keys(source))


def test_the_scheduled_upkeep_step_finishes_an_erasure_and_spares_a_commit_in_flight(
        spark, source, weights, tmp_path, monkeypatch):
    # GIVEN a store from which a photo was erased two days ago (its old files still hold it) …
    warehouse, settings = str(tmp_path / "wh"), JobSettings(str(tmp_path / "wh"), weights)
    uri = f"file://{source}"
    run_manifest(spark, build_manifest("incremental", uri, items(source, all_keys(source))), settings)
    victim = all_keys(source)[0]
    (source / victim).unlink()
    run_manifest(spark, build_manifest("incremental", uri, [ManifestItem(victim, "", removed=True)]), settings)
    two_days_ago = time.time() - 2 * 86400
    for path in glob.glob(f"{warehouse}/**/*.parquet", recursive=True):
        os.utime(path, (two_days_ago, two_days_ago))
    # … and the files of a batch being written now (not committed yet)
    in_flight = store.attempt_dir(warehouse, "features", "incr-inflight") + "/part-0.parquet"
    os.makedirs(os.path.dirname(in_flight))
    pq.write_table(pa.table({"image_key": ["inbox/in-flight.jpg"]}), in_flight)

    # WHEN the schedule's maintain manifest (retention 0 days) runs through the step entry point, without weights
    manifest = build_manifest("maintain", uri, [], nonce="2026-11-23T03:00:00Z", extra={"retention_days": 0})
    (tmp_path / "maintain.json").write_text(manifest.to_json())
    monkeypatch.delenv("VERGER_WEIGHTS", raising=False)
    code = step.main(["--manifest", f"file://{tmp_path / 'maintain.json'}", "--warehouse", warehouse])

    # THEN no data file holds the erased photo, every table keeps one snapshot and its rows,
    # the in-flight file is still there, and the report marks the run done
    assert code == 0
    for table in ("features", "projections", "suggestions"):
        assert victim not in keys_in_parquet_files(warehouse, table)
    assert live_keys(warehouse, "features") == set(all_keys(source))
    assert os.path.exists(in_flight)
    report = json.loads(open(store.report_uri(warehouse, manifest.batch_id)).read())
    assert report["status"] == "complete" and report["retention_days"] == 0
    assert all(outcome["after"]["snapshots"] == 1 for outcome in report["tables"].values())
    assert report["tables"]["features"]["files_deleted"] >= 1


def test_a_removal_processed_after_a_re_upload_keeps_the_new_version(spark, source, weights, tmp_path, executed_in):
    # GIVEN a stored photo that was deleted and uploaded again (other bytes) before the removal ran
    warehouse, settings = str(tmp_path / "wh"), JobSettings(str(tmp_path / "wh"), weights)
    uri = f"file://{source}"
    key = all_keys(source)[0]
    run_manifest(spark, build_manifest("incremental", uri, items(source, [key])), settings)
    shutil.copy(sorted((source / LABELLED[1]).iterdir())[0], source / key)
    run_manifest(spark, build_manifest("incremental", uri, items(source, [key])), settings)

    # WHEN the old removal notification is processed last
    run_manifest(spark, build_manifest("incremental", uri, [ManifestItem(key, "", removed=True)]), settings)

    # THEN the new version's row stays, and only it
    rows = store.read_columns(store.load_table(store.open_catalog(warehouse), "features"), ["image_key", "etag"])
    assert rows.to_pylist() == [{"image_key": key, "etag": file_md5(str(source / key))}]


def test_a_sweep_stores_what_notifications_missed_and_erases_what_the_source_lost(spark, source, weights, tmp_path):
    # GIVEN a store that saw only half the photos, and one stored photo deleted without a notification
    warehouse, settings = str(tmp_path / "wh"), JobSettings(str(tmp_path / "wh"), weights)
    uri = f"file://{source}"
    keys = all_keys(source)
    run_manifest(spark, build_manifest("incremental", uri, items(source, keys[::2])), settings)
    (source / keys[0]).unlink()

    # WHEN a sweep runs (the job lists the folder itself)
    sweep = build_manifest("sweep", uri, [], nonce="test")
    report = run_manifest(spark, sweep, settings)

    # THEN every photo present is stored once, the lost one is erased, the inbox photos are suggested
    assert report["images"]["new"] == len(keys) // 2
    assert live_keys(warehouse, "features") == set(keys[1:])
    assert {key for key in keys[1:] if key.startswith("inbox/")} <= live_keys(warehouse, "suggestions")


def test_a_full_recompute_keeps_a_photo_whose_refetch_fails_and_rows_committed_after_its_listing(
    spark, source, weights, tmp_path, monkeypatch
):
    # GIVEN a stored store
    warehouse, settings = str(tmp_path / "wh"), JobSettings(str(tmp_path / "wh"), weights)
    uri = f"file://{source}"
    keys = all_keys(source)
    run_manifest(spark, build_manifest("incremental", uri, items(source, keys)), settings)
    flaky = keys[1]

    # WHEN a full recompute runs, one re-fetch fails transiently, and an incremental batch commits
    # a new photo after the full recompute's listing
    from emr_job import job

    late = f"{LABELLED[2]}/late.jpg"
    real_plan = job.plan_batch

    def plan_then_interfere(spark_, catalog, manifest, ingested_at):
        planned = real_plan(spark_, catalog, manifest, ingested_at)
        if manifest.mode == "full":
            # a directory where the listed file was: reading it fails with an OSError (fetch_failed)
            (source / flaky).unlink()
            (source / flaky).mkdir()
            shutil.copy(sorted((source / LABELLED[2]).iterdir())[-1], source / late)
            run_manifest(spark_, build_manifest("incremental", uri, items(source, [late])), settings)
        return planned

    monkeypatch.setattr(job, "plan_batch", plan_then_interfere)
    report = run_manifest(spark, build_manifest("full", uri, [], nonce="test"), settings)

    # THEN the flaky photo keeps its previous row, the late photo is kept, and nothing is lost
    assert report["images"]["quarantined_by_reason"] == {"fetch_failed": 1}
    assert live_keys(warehouse, "features") == set(keys) | {late}
    rows = store.read_columns(store.load_table(store.open_catalog(warehouse), "features"), ["image_key"])
    assert rows.num_rows == len(keys) + 1


@pytest.mark.parametrize("killed_before", ["features", "projections", "suggestions"])
def test_a_batch_killed_between_commits_heals_on_re_run(spark, source, weights, tmp_path, monkeypatch, killed_before,
                                                        executed_in):
    # GIVEN a store with a PCA, and a batch of new labelled and inbox photos
    warehouse, settings = str(tmp_path / "wh"), JobSettings(str(tmp_path / "wh"), weights)
    uri = f"file://{source}"
    keys = all_keys(source)
    labelled = [key for key in keys if not key.startswith("inbox/")]
    run_manifest(spark, build_manifest("incremental", uri, items(source, labelled[:6])), settings)
    batch = build_manifest("incremental", uri, items(source, labelled[6:] + [k for k in keys if k.startswith("inbox/")]))

    # WHEN the batch dies as its commit to one table begins
    real_commit = store.commit_files

    def dying_commit(catalog, name, files, *args, **kwargs):
        if name == killed_before and files:
            raise SystemExit(f"killed before the {name} commit")
        return real_commit(catalog, name, files, *args, **kwargs)

    monkeypatch.setattr(store, "commit_files", dying_commit)
    with pytest.raises(SystemExit):
        run_manifest(spark, batch, settings)
    monkeypatch.setattr(store, "commit_files", real_commit)
    spark.catalog.clearCache()

    # THEN the same batch run again leaves every photo stored once, projected, and every inbox photo suggested
    run_manifest(spark, batch, settings)
    features = store.read_columns(store.load_table(store.open_catalog(warehouse), "features"), ["image_key"])
    assert sorted(features.column("image_key").to_pylist()) == keys
    assert live_keys(warehouse, "projections") == set(keys)
    assert live_keys(warehouse, "suggestions") == {key for key in keys if key.startswith("inbox/")}


def test_a_batch_killed_right_after_its_suggestions_commit_has_left_every_json_for_the_app(
    spark, source, weights, tmp_path, monkeypatch, executed_in
):
    # GIVEN a store with a PCA, and a batch of inbox photos
    from emr_job.suggest import json_uri

    warehouse, settings = str(tmp_path / "wh"), JobSettings(str(tmp_path / "wh"), weights)
    uri = f"file://{source}"
    keys = all_keys(source)
    inbox = [key for key in keys if key.startswith("inbox/")]
    run_manifest(spark, build_manifest("incremental", uri, items(source, [k for k in keys if k not in inbox])),
                 settings)
    batch = build_manifest("incremental", uri, items(source, inbox))

    # WHEN the batch dies just after its suggestions commit, and runs again
    real_commit = store.commit_files

    def commit_then_die(catalog, name, files, *args, **kwargs):
        real_commit(catalog, name, files, *args, **kwargs)
        if name == "suggestions" and files:
            raise SystemExit("killed after the suggestions commit")

    monkeypatch.setattr(store, "commit_files", commit_then_die)
    with pytest.raises(SystemExit):
        run_manifest(spark, batch, settings)
    monkeypatch.setattr(store, "commit_files", real_commit)
    run_manifest(spark, batch, settings)

    # THEN every inbox photo has the JSON the app reads (written before the commit that marks it done)
    assert inbox and all(os.path.exists(json_uri(uri, warehouse, key)) for key in inbox)

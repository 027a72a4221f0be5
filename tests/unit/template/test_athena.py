"""Athena over the store: what the job's tables carry in Glue (under moto), and what the template's
workgroup, saved queries and policies allow (read from the parsed template)."""
from __future__ import annotations

import fnmatch
import json
import re
from datetime import timedelta

import boto3
import botocore.client
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract import layout
from emr_job import blobs, store
from emr_job.upkeep import Upkeep, data_roots, maintain
from tests.unit.template.test_template_security import allowed, as_list, policy_documents, text
from verger.embedded import moto_server

BUCKET = "verger-athena-test"
REGION = "eu-west-3"
ACCOUNT = "123456789012"  # moto's default account
# The template's names for what a real stack substitutes.
SUBSTITUTIONS = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "BucketName": BUCKET,
                 "GlueDatabase": layout.NAMESPACE, "AthenaWorkGroup": "verger-verger"}


def resolve(value) -> str:
    """A template ARN or URI with the stack's names filled in."""
    return re.sub(r"\$\{([^}]+)\}", lambda m: SUBSTITUTIONS[m.group(1)], text(value))


def permits(statements: list[dict], action: str, resource: str, prefix: str | None = None) -> bool:
    """Whether some Allow statement covers the action on the resource (an s3:prefix condition
    must admit `prefix`); enough of IAM's evaluation for these policies, which use no Deny."""
    for statement in statements:
        if statement["Effect"] != "Allow" or not any(fnmatch.fnmatchcase(action, a) for a in as_list(statement["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(resource, resolve(r)) for r in as_list(statement["Resource"])):
            continue
        condition = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if condition is None or (prefix is not None and any(fnmatch.fnmatchcase(prefix, p) for p in as_list(condition))):
            return True
    return False


# ---------------------------------------------------------------- the job's tables in Glue (moto)
@pytest.fixture(scope="module")
def glue_store(tmp_path_factory):
    """Two tables committed by the job's own `store.commit_files` through pyiceberg's Glue catalog,
    with the warehouse on moto's S3; returns the Glue API calls made and the Glue tables."""
    calls: list[tuple[str, str]] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client, operation, params):
        calls.append((client.meta.service_model.signing_name, operation))
        return original(client, operation, params)

    with pytest.MonkeyPatch.context() as patch, moto_server() as endpoint:
        patch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
        for name, value in {"TYPE": "glue", "GLUE__REGION": REGION, "GLUE__ENDPOINT": endpoint,
                            "S3__REGION": REGION, "S3__ENDPOINT": endpoint}.items():
            patch.setenv(f"PYICEBERG_CATALOG__VERGER__{name}", value)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        blobs.s3.cache_clear()
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        glue = boto3.client("glue", region_name=REGION)
        glue.create_database(DatabaseInput={"Name": layout.NAMESPACE})  # the template's GlueDatabase
        warehouse = f"s3://{BUCKET}/warehouse"
        rows = {
            layout.FEATURES_TABLE: pa.table({"image_key": ["Kiwi/1.jpg"], "label": ["Kiwi"], "etag": ["e1"],
                                             "batch_id": ["b1"], "ingested_at": ["2026-01-01T00:00:00"],
                                             "features": pa.array([[0.5] * 4], pa.list_(pa.float32()))}),
            layout.QUARANTINE_TABLE: pa.table({"image_key": ["Kiwi/2.jpg"], "etag": ["e2"], "reason": ["empty"],
                                               "detail": ["the object has zero bytes"]}),
        }
        calls.clear()
        catalog = store.open_catalog(warehouse)
        for name, table in rows.items():
            # WHEN the job commits two batches' files (the first creates the table, the second appends)
            for batch_id in ("b1", "b2"):
                path = f"{store.attempt_dir(warehouse, name, batch_id)}/part-0.parquet"
                blobs.write_bytes(path, parquet_bytes(table))
                store.commit_files(catalog, name, [path], batch_id)
        tables = {name: glue.get_table(DatabaseName=layout.NAMESPACE, Name=name)["Table"] for name in rows}
        properties = {name: store.load_table(catalog, name).properties for name in rows}
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        job_calls = list(calls)
        # WHEN the scheduled upkeep runs on them, the retention and the safety window elapsed
        calls.clear()
        maintain(catalog, warehouse, Upkeep(retention=timedelta(0), orphan_age=timedelta(0)))
        upkeep_calls = list(calls)
        roots = [root for name in rows for root in data_roots(warehouse, store.load_table(catalog, name), name)]
        after = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        yield {"job_calls": job_calls, "calls": calls, "tables": tables, "rows": rows, "keys": keys,
               "warehouse": warehouse, "properties": properties, "upkeep_calls": upkeep_calls, "upkeep_roots": roots,
               "upkeep_deleted": sorted(set(keys) - set(after)), "upkeep_written": sorted(set(after) - set(keys))}
    blobs.s3.cache_clear()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_job_tables_carry_what_athena_needs_to_read_iceberg(glue_store):
    for name, table in glue_store["tables"].items():
        parameters = table["Parameters"]
        # THEN Glue knows the table as Iceberg, with the current metadata file in the warehouse
        assert parameters["table_type"] == "ICEBERG", name
        assert parameters["metadata_location"].startswith(f"s3://{BUCKET}/warehouse/")
        assert parameters["metadata_location"].endswith(".metadata.json")
        assert parameters.get("previous_metadata_location"), "the second commit moved the pointer"
        # AND the storage descriptor lists the columns the job wrote, in order, with Hive types
        columns = table["StorageDescriptor"]["Columns"]
        assert [c["Name"] for c in columns] == glue_store["rows"][name].column_names
        assert columns[0]["Type"] == "string"
        assert table["StorageDescriptor"]["Location"].startswith(f"s3://{BUCKET}/warehouse/")
        # AND Spark's Parquet files carry no Iceberg field ids: readers (Athena's Trino too) match
        # their columns by the name mapping pyiceberg's add_files records in the table metadata
        mapping = json.loads(glue_store["properties"][name]["schema.name-mapping.default"])
        assert [field["names"] for field in mapping] == [[column] for column in glue_store["rows"][name].column_names]
    features = {c["Name"]: c["Type"] for c in glue_store["tables"][layout.FEATURES_TABLE]["StorageDescriptor"]["Columns"]}
    assert features["features"] == "array<float>"


def test_job_policy_allows_every_glue_call_the_job_made(resources, glue_store):
    job = policy_documents(resources)["JobDataAccessPolicy"]
    glue_calls = {operation for service, operation in glue_store["job_calls"] if service == "glue"}
    assert {"CreateTable", "UpdateTable", "GetTable"} <= glue_calls
    # THEN each of them is allowed on the verger database's tables (or the database itself)
    table_arn = f"arn:aws:glue:{REGION}:{ACCOUNT}:table/{layout.NAMESPACE}/{layout.FEATURES_TABLE}"
    database_arn = f"arn:aws:glue:{REGION}:{ACCOUNT}:database/{layout.NAMESPACE}"
    for operation in glue_calls:
        assert permits(job, f"glue:{operation}", table_arn) or permits(job, f"glue:{operation}", database_arn), operation


def test_job_policy_allows_writing_every_object_the_commit_wrote(resources, glue_store):
    job = policy_documents(resources)["JobDataAccessPolicy"]
    # THEN data files and Iceberg metadata all lie where the job may write (and read back)
    assert any("/metadata/" in key for key in glue_store["keys"])
    for key in glue_store["keys"]:
        assert permits(job, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/{key}"), key


def test_job_policy_allows_what_the_scheduled_upkeep_did_on_s3_and_glue(resources, glue_store):
    job = policy_documents(resources)["JobDataAccessPolicy"]
    # THEN upkeep rewrote files and deleted the replaced ones (compaction, expiry, orphans) …
    assert any(key.endswith(".parquet") for key in glue_store["upkeep_deleted"])
    assert any(key.endswith(".parquet") for key in glue_store["upkeep_written"])
    # … and the job's policy allows every Glue call, deletion, write and listing it made
    table_arn = f"arn:aws:glue:{REGION}:{ACCOUNT}:table/{layout.NAMESPACE}/{layout.FEATURES_TABLE}"
    for operation in {operation for service, operation in glue_store["upkeep_calls"] if service == "glue"}:
        assert permits(job, f"glue:{operation}", table_arn), operation
    for key in glue_store["upkeep_deleted"]:
        assert permits(job, "s3:DeleteObject", f"arn:aws:s3:::{BUCKET}/{key}"), key
    for key in glue_store["upkeep_written"]:
        assert permits(job, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/{key}"), key
    for root in glue_store["upkeep_roots"]:  # where it looked for unreferenced files
        prefix = root.removeprefix(f"s3://{BUCKET}/") + "/"
        assert permits(job, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", prefix=prefix), prefix


def test_notebook_reads_the_glue_store_on_s3_read_only(glue_store):
    from verger import explore

    warehouse = glue_store["warehouse"]
    blobs.write_bytes(f"{warehouse}/{layout.REPORTS_DIR}/b2.json", b'{"batch_id": "b2", "ingested_at": "2"}')
    blobs.write_bytes(f"{warehouse}/{layout.REPORTS_DIR}/b1.json", b'{"batch_id": "b1", "ingested_at": "1"}')
    calls_before = len(glue_store["calls"])
    # WHEN the notebook's reader opens the same warehouse on S3 through Glue
    data = explore.open_store(warehouse)
    photos = explore.photos(data)
    reports = explore.batch_reports(data)
    # THEN it sees both commits' rows, one current row per photo, and the reports oldest first
    assert len(data.read(layout.FEATURES_TABLE, ("image_key",))) == 2
    assert photos["image_key"].tolist() == ["Kiwi/1.jpg"]
    assert [r["batch_id"] for r in reports] == ["b1", "b2"]
    assert data.tables[layout.SUGGESTIONS_TABLE] is None
    # AND it only read the catalog (no CreateDatabase, which a read-only user may not call)
    glue_calls = {op for service, op in glue_store["calls"][calls_before:] if service == "glue"}
    assert glue_calls == {"GetTable"}


@pytest.fixture(scope="module")
def athena_statements(resources):
    return policy_documents(resources)["AthenaQueryPolicy"]


def test_athena_users_may_read_every_table_and_file_athena_opens(athena_statements, glue_store):
    for name, table in glue_store["tables"].items():
        # THEN the catalog entry, the metadata file and the data under the table's location are readable
        assert permits(athena_statements, "glue:GetTable", f"arn:aws:glue:{REGION}:{ACCOUNT}:table/{layout.NAMESPACE}/{name}")
        assert permits(athena_statements, "glue:GetDatabase", f"arn:aws:glue:{REGION}:{ACCOUNT}:database/{layout.NAMESPACE}")
        metadata_key = table["Parameters"]["metadata_location"].removeprefix(f"s3://{BUCKET}/")
        assert permits(athena_statements, "s3:GetObject", f"arn:aws:s3:::{BUCKET}/{metadata_key}")
        assert permits(athena_statements, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", prefix=metadata_key)
    for key in glue_store["keys"]:
        assert permits(athena_statements, "s3:GetObject", f"arn:aws:s3:::{BUCKET}/{key}"), key


def test_athena_users_cannot_change_the_store_or_read_the_photos(athena_statements):
    # THEN no write reaches the warehouse or the photos, no Glue change is possible, and photos stay private
    for key in ("warehouse/verger.db/features/metadata/00001.metadata.json", "warehouse/reports/b.json", "raw/Kiwi/1.jpg"):
        for action in ("s3:PutObject", "s3:DeleteObject"):
            assert not permits(athena_statements, action, f"arn:aws:s3:::{BUCKET}/{key}")
    assert not permits(athena_statements, "s3:GetObject", f"arn:aws:s3:::{BUCKET}/raw/Kiwi/1.jpg")
    assert not permits(athena_statements, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", prefix="raw/")
    glue_actions = {a for s in athena_statements for a in as_list(s["Action"]) if a.startswith("glue:")}
    assert glue_actions and all(a.startswith("glue:Get") for a in glue_actions)


def test_athena_users_write_query_results_only_under_the_workgroup_prefix(athena_statements, resources):
    output = resources["AthenaWorkGroup"]["Properties"]["WorkGroupConfiguration"]["ResultConfiguration"]["OutputLocation"]
    results = resolve(output).removeprefix(f"s3://{BUCKET}/")
    writes = allowed(athena_statements, "s3:PutObject")
    assert {resolve(r) for s in writes for r in as_list(s["Resource"])} == {f"arn:aws:s3:::{BUCKET}/{results}*"}


def test_athena_users_run_queries_only_in_the_verger_workgroup(athena_statements):
    athena = [s for s in athena_statements if any(a.startswith("athena:") for a in as_list(s["Action"]))]
    workgroup = f"arn:aws:athena:{REGION}:{ACCOUNT}:workgroup/{SUBSTITUTIONS['AthenaWorkGroup']}"
    assert {resolve(r) for s in athena for r in as_list(s["Resource"])} == {workgroup}
    assert permits(athena_statements, "athena:StartQueryExecution", workgroup)
    assert permits(athena_statements, "athena:GetNamedQuery", workgroup)


# ---------------------------------------------------------------- the workgroup and its queries
@pytest.fixture(scope="module")
def workgroup(resources):
    return resources["AthenaWorkGroup"]["Properties"]


def test_workgroup_results_stay_in_the_bucket_encrypted_and_enforced(workgroup):
    configuration = workgroup["WorkGroupConfiguration"]
    results = configuration["ResultConfiguration"]
    # THEN results go under the stack's bucket, encrypted, and users cannot override that
    assert resolve(results["OutputLocation"]) == f"s3://{BUCKET}/athena-results/"
    assert results["EncryptionConfiguration"]["EncryptionOption"] in {"SSE_S3", "SSE_KMS"}
    assert results["ExpectedBucketOwner"] == {"Ref": "AWS::AccountId"}
    assert configuration["EnforceWorkGroupConfiguration"] is True
    assert configuration["EngineVersion"]["SelectedEngineVersion"] == "Athena engine version 3"
    assert "BytesScannedCutoffPerQuery" in configuration


def test_query_results_expire_under_their_prefix_only(resources, workgroup, template):
    rules = {r.get("Prefix"): r for r in resources["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}
    prefix = resolve(workgroup["WorkGroupConfiguration"]["ResultConfiguration"]["OutputLocation"]).removeprefix(f"s3://{BUCKET}/")
    # THEN a lifecycle rule expires exactly the results prefix, after a parameter's days
    assert rules[prefix]["Status"] == "Enabled"
    assert rules[prefix]["ExpirationInDays"] == {"Ref": "AthenaResultRetentionDays"}
    assert template["Parameters"]["AthenaResultRetentionDays"]["MinValue"] >= 1


def named_queries(resources) -> dict[str, dict]:
    return {r["Properties"]["Name"]: r["Properties"] for r in resources.values() if r["Type"] == "AWS::Athena::NamedQuery"}


def test_saved_queries_answer_the_users_questions_in_the_verger_workgroup(resources):
    queries = named_queries(resources)
    # THEN the four questions are there, each run in the workgroup against the verger database
    assert set(queries) == {"photos-per-label", "latest-batches", "quarantine-reasons", "photos-waiting-for-a-suggestion"}
    for query in queries.values():
        assert query["WorkGroup"] == {"Ref": "AthenaWorkGroup"}
        assert query["Database"] == {"Ref": "GlueDatabase"}
        assert query["Description"]


def test_batch_reports_table_reads_the_reports_folder_the_job_writes(resources):
    table = resources["BatchReportsTable"]["Properties"]
    descriptor = table["TableInput"]["StorageDescriptor"]
    # THEN it is the report folder of the warehouse, read with the Ion SerDe (multi-line JSON)
    assert resolve(descriptor["Location"]) == f"s3://{BUCKET}/warehouse/{layout.REPORTS_DIR}/"
    assert descriptor["SerdeInfo"]["SerializationLibrary"] == "com.amazon.ionhiveserde.IonHiveSerDe"
    assert table["DatabaseName"] == {"Ref": "GlueDatabase"}
    columns = {c["Name"] for c in descriptor["Columns"]}
    assert {"batch_id", "mode", "source", "ingested_at", "images", "seconds", "pca", "images_per_second"} <= columns

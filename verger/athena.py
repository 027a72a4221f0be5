"""`verger query`: run one of the stack's saved Athena queries in its workgroup and print the rows.

The workgroup enforces where results go (encrypted, under the bucket), so the command passes
only the workgroup and the query; it waits for the result and says why when Athena refused it.
"""
from __future__ import annotations

import time

POLL_SECONDS = 1.0
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")


class QueryFailed(ValueError):
    """Athena ended the query without a result; the message carries Athena's reason."""


def add_command(subparsers) -> None:
    query = subparsers.add_parser(
        "query", help="run a saved Athena query of the deployed stack",
        description="Run one of the stack's saved queries (photos-per-label, latest-batches, "
                    "quarantine-reasons, photos-waiting-for-a-suggestion) and print its rows as tab-separated text.",
    )
    query.add_argument("name", nargs="?", help="the saved query; none: list them")
    query.add_argument("--stack", default="verger", help="the stack whose workgroup holds the queries (default: verger)")
    query.add_argument("--work-group", help="the workgroup itself (skips looking it up in the stack's outputs)")
    query.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the result")
    query.set_defaults(command=command_query)


def command_query(args) -> int:
    import boto3

    athena = boto3.client("athena")
    workgroup = args.work_group or stack_output(boto3.client("cloudformation"), args.stack, "AthenaWorkGroupName")
    queries = saved_queries(athena, workgroup)
    if not args.name:
        for name, query in sorted(queries.items()):
            print(f"{name}\t{query.get('Description', '')}")
        return 0
    if args.name not in queries:
        raise ValueError(f"no saved query {args.name!r} in workgroup {workgroup}: one of {', '.join(sorted(queries))}")
    for row in run(athena, workgroup, queries[args.name], args.timeout):
        print("\t".join("" if value is None else value for value in row))
    return 0


def stack_output(cloudformation, stack: str, key: str) -> str:
    (described,) = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    for output in described.get("Outputs", []):
        if output["OutputKey"] == key:
            return output["OutputValue"]
    raise ValueError(f"stack {stack} has no output {key}: deploy the current template.yaml")


def saved_queries(athena, workgroup: str) -> dict[str, dict]:
    """name → the NamedQuery (Name, Database, QueryString, Description) of the workgroup."""
    ids = [i for page in athena.get_paginator("list_named_queries").paginate(WorkGroup=workgroup)
           for i in page["NamedQueryIds"]]
    queries = (athena.get_named_query(NamedQueryId=i)["NamedQuery"] for i in ids)
    return {query["Name"]: query for query in queries}


def run(athena, workgroup: str, query: dict, timeout: float) -> list[list[str | None]]:
    """Start the query, wait for it, and return every row (the header first)."""
    execution = athena.start_query_execution(
        QueryString=query["QueryString"], WorkGroup=workgroup,
        QueryExecutionContext={"Database": query["Database"]},
    )["QueryExecutionId"]
    deadline = time.monotonic() + timeout
    while True:
        status = athena.get_query_execution(QueryExecutionId=execution)["QueryExecution"]["Status"]
        if status["State"] in FINISHED:
            break
        if time.monotonic() > deadline:
            athena.stop_query_execution(QueryExecutionId=execution)
            raise QueryFailed(f"query {execution} still {status['State']} after {timeout:g} s: stopped")
        time.sleep(POLL_SECONDS)
    if status["State"] != "SUCCEEDED":
        raise QueryFailed(f"query {execution} {status['State']}: {status.get('StateChangeReason', 'no reason given')}")
    pages = athena.get_paginator("get_query_results").paginate(QueryExecutionId=execution)
    return [[cell.get("VarCharValue") for cell in row["Data"]] for page in pages for row in page["ResultSet"]["Rows"]]


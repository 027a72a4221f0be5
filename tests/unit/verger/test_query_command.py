"""`verger query` against moto's Athena and CloudFormation: it finds the stack's workgroup, runs the
saved query there and prints the rows (moto does not execute SQL; its result queue stands in)."""
from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws
from moto.athena.models import QueryResults, athena_backends

from verger.cli import main
from verger.explore import saved_queries

REGION = "eu-west-3"
WORKGROUP = "verger-verger"


@pytest.fixture
def stack(monkeypatch):
    """A stack whose outputs name the workgroup, which holds the template's saved queries."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        body = {"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
                "Outputs": {"AthenaWorkGroupName": {"Value": WORKGROUP}}}
        boto3.client("cloudformation").create_stack(StackName="verger", TemplateBody=json.dumps(body))
        athena = boto3.client("athena")
        athena.create_work_group(Name=WORKGROUP, Configuration={
            "ResultConfiguration": {"OutputLocation": "s3://verger-photos/athena-results/"}})
        for name, query in saved_queries().items():
            athena.create_named_query(Name=name, Description=query["Description"], Database="verger",
                                      QueryString=query["QueryString"], WorkGroup=WORKGROUP)
        yield athena_backends["123456789012"][REGION]


def result(*rows: tuple[str, ...]) -> QueryResults:
    return QueryResults(rows=[{"Data": [{"VarCharValue": value} for value in row]} for row in rows],
                        column_info=[])


def test_query_runs_the_saved_sql_in_the_stacks_workgroup_and_prints_the_rows(stack, capsys):
    stack.query_results_queue.append(result(("label", "photos"), ("Kiwi", "16"), ("(inbox)", "6")))
    # WHEN a user asks for the photos per label of the stack
    code = main(["query", "photos-per-label", "--stack", "verger"])
    # THEN the rows come back tab-separated, header first
    assert code == 0
    assert capsys.readouterr().out.splitlines() == ["label\tphotos", "Kiwi\t16", "(inbox)\t6"]
    # AND Athena ran the saved SQL, in the workgroup, against the verger database
    (execution,) = stack.executions.values()
    assert execution.query == saved_queries()["photos-per-label"]["QueryString"]
    assert execution.workgroup.name == WORKGROUP and execution.context["Database"] == "verger"


def test_query_without_a_name_lists_the_saved_queries(stack, capsys):
    assert main(["query", "--work-group", WORKGROUP]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == sorted(saved_queries())


def test_an_unknown_query_is_named_with_the_ones_that_exist(stack, capsys):
    assert main(["query", "photos-per-fruit", "--stack", "verger"]) == 2
    error = capsys.readouterr().err
    assert "no saved query 'photos-per-fruit'" in error and "latest-batches" in error

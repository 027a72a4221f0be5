"""EventBridge's EMR events: the documented shapes in events/ parse; anything else is named."""
from __future__ import annotations

import copy

import pytest

from functions.events import EventKind, UnsupportedEvent, event_kind
from functions.run_events import MalformedEvent, failure_from_step_event


def test_the_documented_events_are_told_apart(load_event):
    assert event_kind(load_event("emr-step-failed.json")) is EventKind.EMR_STEP_CHANGE
    assert event_kind(load_event("serverless-job-run-failed.json")) is EventKind.SERVERLESS_RUN_CHANGE
    assert event_kind(load_event("scheduled-reconcile.json")) is EventKind.RECONCILE
    assert event_kind({"action": "rerun", "batch_id": "incr-1"}) is EventKind.RERUN


def test_a_failed_step_event_names_the_batch_the_attempt_and_the_error(load_event):
    failure = failure_from_step_event(load_event("emr-step-failed.json"))
    assert (failure.batch_id, failure.attempt, failure.run_id, failure.state) == (
        "incr-5405bf9fa873921a06ef", 1, "s-1YCEXAMPLE", "FAILED")
    assert failure.reason.startswith("Step s-1YCEXAMPLE")


@pytest.mark.parametrize("change", [{"state": "COMPLETED"}, {"name": "CustomJAR"}, {"name": "verger-incr-1"}])
def test_completed_steps_and_steps_not_named_by_verger_are_no_failure(load_event, change):
    event = load_event("emr-step-failed.json")
    event["detail"].update(change)
    assert failure_from_step_event(event) is None


def test_a_step_event_missing_a_documented_field_is_named(load_event):
    event = copy.deepcopy(load_event("emr-step-failed.json"))
    del event["detail"]["stepId"]
    with pytest.raises(MalformedEvent, match="lacks detail.stepId"):
        failure_from_step_event(event)


def test_another_eventbridge_event_is_refused_by_name(load_event):
    event = load_event("emr-step-failed.json")
    event["detail-type"] = "EMR Cluster State Change"
    with pytest.raises(UnsupportedEvent, match="EMR Cluster State Change"):
        event_kind(event)

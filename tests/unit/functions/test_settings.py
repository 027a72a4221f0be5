"""Settings come from the environment template.yaml sets; a wrong one is named."""
from __future__ import annotations

import importlib

import pytest

from functions.settings import load_settings, SettingsError

DEPLOYED = {"BucketName": "verger-photos-example", "ExistingClusterId": "j-ABC"}
INT8_MODEL = "int8-0a1b2c3d4e5f"


def test_the_template_handler_is_the_importable_handler(template_handler):
    # GIVEN the Handler of the template's function
    module_name, function_name = template_handler.rsplit(".", 1)

    # WHEN / THEN it names a callable in this repository
    assert callable(getattr(importlib.import_module(module_name), function_name))


def test_the_template_environment_loads_into_settings_with_its_defaults(template_environment):
    # GIVEN the environment the template sets with its parameter defaults
    environment = template_environment(DEPLOYED)

    # WHEN it is loaded
    settings = load_settings(environment)

    # THEN the settings are those the template states
    assert (settings.bucket, settings.launcher, settings.emr_cluster_id) == ("verger-photos-example", "emr", "j-ABC")
    assert settings.job_entrypoint == "s3://verger-photos-example/code/step.py"
    assert settings.variance_target == float(environment["VERGER_VARIANCE_TARGET"])
    assert settings.max_images_per_manifest == int(environment["VERGER_MAX_IMAGES_PER_MANIFEST"])
    assert (settings.max_attempts, settings.reconcile_grace_minutes) == (3, 120)
    assert settings.alert_topic_arn.startswith("arn:aws:sns:")
    assert (settings.precision, settings.int8_model_uri) == ("fp32", None)


def test_the_default_deployment_needs_no_cluster_id_and_names_its_own_cluster(template_environment):
    # GIVEN the template rendered with its defaults (no ExistingClusterId)
    environment = template_environment({"BucketName": "verger-photos-example", "EmrServiceRole": "svc",
                                        "EmrInstanceProfile": "profile", "ClusterSecurityConfiguration": "sec"})

    # WHEN it is loaded
    settings = load_settings(environment)

    # THEN no cluster id is required and the cluster the trigger will create is named after the stack
    assert settings.emr_cluster_id is None
    assert environment["VERGER_CLUSTER_NAME"] == "verger-verger"


def test_the_serverless_flavour_of_the_template_loads_too(template_environment):
    # GIVEN the template rendered with Launcher=emr-serverless and the job's image
    environment = template_environment(
        {**DEPLOYED, "Launcher": "emr-serverless", "ServerlessApplication": "00app",
         "ImageUri": "123456789012.dkr.ecr.eu-west-3.amazonaws.com/verger-job:emr-7.13.0-0123456789abcdef",
         "ServerlessJobRole.Arn": "arn:aws:iam::123456789012:role/job"}
    )

    # WHEN / THEN its settings name the application and role, and no cluster
    settings = load_settings(environment)
    assert (settings.launcher, settings.emr_application_id, settings.emr_cluster_id) == ("emr-serverless", "00app", None)


def test_before_an_image_is_given_the_serverless_trigger_names_the_missing_application(template_environment):
    # GIVEN the first deploy with Launcher=emr-serverless: the repository exists, no image yet, so no application
    environment = template_environment(
        {**DEPLOYED, "Launcher": "emr-serverless", "ServerlessJobRole.Arn": "arn:aws:iam::123456789012:role/job"}
    )
    # WHEN / THEN the trigger refuses to start, naming what is missing (records retry, then wait in the DLQ)
    with pytest.raises(SettingsError, match="VERGER_EMR_APPLICATION_ID is required"):
        load_settings(environment)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_each_precision_but_int8_deploys_without_a_model(precision, template_environment):
    # GIVEN the template rendered with Precision set and no Int8ModelName
    environment = template_environment({**DEPLOYED, "Precision": precision})

    # WHEN / THEN the settings carry the precision and no int8 model
    settings = load_settings(environment)
    assert (settings.precision, settings.int8_model_uri) == (precision, None)


def test_int8_with_its_model_name_points_the_job_at_the_staged_folder(template_environment):
    # GIVEN the template rendered with Precision=int8 and the folder staging printed
    environment = template_environment({**DEPLOYED, "Precision": "int8", "Int8ModelName": INT8_MODEL})

    # WHEN / THEN the settings carry int8 and the model's prefix under models/
    settings = load_settings(environment)
    assert settings.precision == "int8"
    assert settings.int8_model_uri == f"s3://verger-photos-example/models/{INT8_MODEL}"


def test_int8_without_its_model_is_refused_saying_how_to_make_and_stage_one(template_environment):
    # GIVEN Precision=int8 deployed without Int8ModelName (the template's rule stops that; a hand-set
    # environment or a stack updated around the rule does not)
    environment = template_environment({**DEPLOYED, "Precision": "int8"})
    assert environment["VERGER_INT8_MODEL_URI"] == ""

    # WHEN / THEN loading names the variable, verger quantize and the staging command
    with pytest.raises(SettingsError, match="VERGER_INT8_MODEL_URI is required when VERGER_PRECISION=int8") as error:
        load_settings(environment)
    assert "verger quantize" in str(error.value)
    assert "python -m bootstrap.stage --int8-model DIR" in str(error.value)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_an_int8_model_with_another_precision_is_refused(precision, template_environment):
    # GIVEN an int8 model left configured after the precision changed
    environment = template_environment({**DEPLOYED, "Precision": precision, "Int8ModelName": INT8_MODEL})

    # WHEN / THEN loading refuses it, naming both variables, rather than run a precision the stack did not ask for
    with pytest.raises(SettingsError, match=f"VERGER_INT8_MODEL_URI is for VERGER_PRECISION=int8 only, not {precision}"):
        load_settings(environment)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"VERGER_BUCKET": ""}, "VERGER_BUCKET is not set"),
        ({"VERGER_WEIGHTS_URI": None}, "VERGER_WEIGHTS_URI is not set"),
        ({"VERGER_LAUNCHER": "glue"}, "VERGER_LAUNCHER='glue' is not supported"),
        ({"VERGER_MAX_ATTEMPTS": "0"}, "VERGER_MAX_ATTEMPTS='0' must be at least 1"),
        ({"VERGER_LAUNCHER": "emr-serverless"}, "VERGER_EMR_APPLICATION_ID is required"),
        ({"VERGER_VARIANCE_TARGET": "high"}, "VERGER_VARIANCE_TARGET='high' is not a number"),
        ({"VERGER_VARIANCE_TARGET": "1.5"}, r"must be in \(0, 1\]"),
        ({"VERGER_MAX_IMAGES_PER_MANIFEST": "0"}, "must be at least 1"),
        ({"VERGER_MAX_IMAGES_PER_MANIFEST": "lots"}, "is not an integer"),
        ({"VERGER_PRECISION": "fp16"},
         "VERGER_PRECISION='fp16' is not supported: expected one of fp32, bf16, int8, auto"),
        ({"VERGER_PRECISION": "int8", "VERGER_INT8_MODEL_URI": "/models/int8-0a1b2c3d4e5f"},
         "VERGER_INT8_MODEL_URI='/models/int8-0a1b2c3d4e5f' must be an s3:// prefix"),
    ],
)
def test_a_wrong_setting_is_named(change, message, template_environment):
    # GIVEN the deployed environment with one variable wrong or missing
    environment = template_environment(DEPLOYED)
    for name, value in change.items():
        if value is None:
            del environment[name]
        else:
            environment[name] = value

    # WHEN / THEN loading names it
    with pytest.raises(SettingsError, match=message):
        load_settings(environment)


def test_optional_settings_fall_back_to_their_defaults():
    # GIVEN only the required variables, for the local launcher
    environment = {"VERGER_BUCKET": "b", "VERGER_LAUNCHER": "local", "VERGER_JOB_ENTRYPOINT": "emr_job/step.py",
                   "VERGER_WAREHOUSE_URI": "/tmp/wh", "VERGER_WEIGHTS_URI": "/tmp/w.h5"}

    # WHEN / THEN the defaults apply
    settings = load_settings(environment)
    assert (settings.variance_target, settings.max_images_per_manifest, settings.spark_submit) == (0.95, 5000, "spark-submit")
    assert (settings.precision, settings.int8_model_uri) == ("fp32", None)

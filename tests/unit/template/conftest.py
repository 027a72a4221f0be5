"""The parsed SAM template, with CloudFormation's short-form tags (`!Ref`, `!Sub`, …) kept as the
long-form dictionaries (`{"Ref": …}`, `{"Fn::Sub": …}`) that the tests inspect."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

# The mutation check (test_template_mutations.py) points the security tests at a mutated copy.
TEMPLATE_ENV = "VERGER_TEMPLATE_UNDER_TEST"
TEMPLATE = Path(os.environ.get(TEMPLATE_ENV) or Path(__file__).resolve().parents[3] / "template.yaml")


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns `!Tag value` into `{"Fn::Tag": value}` (and `!Ref x` into `{"Ref": x}`)."""


def _construct_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict:
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Condition" if suffix == "Condition" else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path = TEMPLATE) -> dict:
    return yaml.load(path.read_text(), Loader=CfnLoader)


@pytest.fixture(scope="session")
def template() -> dict:
    return load_template()


@pytest.fixture(scope="session")
def resources(template: dict) -> dict:
    return template["Resources"]

"""Read `template.yaml` so the one-machine demo builds exactly what the stack declares.

Only the intrinsics the demo's resources use are evaluated (`Ref`, `GetAtt`, `Sub`, `If` and the
condition functions); anything else raises `TemplateError` naming it, rather than guessing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"
NO_VALUE = "AWS::NoValue"


class TemplateError(ValueError):
    """The template lacks something the demo needs, or uses an intrinsic it cannot evaluate."""


@dataclass(frozen=True)
class CfnTag:
    """A CloudFormation intrinsic (`!Ref`, `!Sub`, …) kept as data instead of failing the load."""

    name: str
    value: Any


class _CfnLoader(yaml.SafeLoader):
    pass


def _construct_tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> CfnTag:
    if isinstance(node, yaml.ScalarNode):
        return CfnTag(suffix, loader.construct_scalar(node))
    if isinstance(node, yaml.SequenceNode):
        return CfnTag(suffix, loader.construct_sequence(node, deep=True))
    return CfnTag(suffix, loader.construct_mapping(node, deep=True))


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    if not path.is_file():
        raise TemplateError(f"template not found at {path}")
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)


def resource_properties(template: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        return template["Resources"][name].get("Properties", {})
    except KeyError:
        raise TemplateError(f"template.yaml has no resource {name!r}") from None


class Resolver:
    """Evaluates intrinsics with given values for references; parameters fall back to their Default.

    Parameters
    ----------
    template : dict
        The loaded template.
    refs : dict
        Values for `Ref` / `GetAtt` targets (`BucketName`, `UploadQueue.Arn`, `AWS::Region`, …);
        they win over the parameters' defaults, which is how a caller overrides a parameter.
    """

    def __init__(self, template: dict[str, Any], refs: dict[str, str]) -> None:
        defaults = {
            name: str(spec["Default"])
            for name, spec in template.get("Parameters", {}).items()
            if "Default" in spec
        }
        self.refs = {**defaults, **refs}
        self.conditions = template.get("Conditions", {})

    def resolve(self, node: Any) -> Any:
        """The node with every intrinsic evaluated; `!Ref AWS::NoValue` entries are removed."""
        if isinstance(node, dict):
            resolved = {key: self.resolve(value) for key, value in node.items()}
            return {key: value for key, value in resolved.items() if value is not _NO_VALUE}
        if isinstance(node, list):
            return [item for item in map(self.resolve, node) if item is not _NO_VALUE]
        if not isinstance(node, CfnTag):
            return node
        if node.name == "Ref":
            return _NO_VALUE if node.value == NO_VALUE else self._ref(node.value)
        if node.name == "GetAtt":
            return self._ref(node.value if isinstance(node.value, str) else ".".join(node.value))
        if node.name == "Sub":
            text, local = (node.value, {}) if isinstance(node.value, str) else node.value
            local = {name: str(self.resolve(value)) for name, value in local.items()}
            return re.sub(r"\$\{([^}]+)\}", lambda match: local.get(match.group(1)) or self._ref(match.group(1)), text)
        if node.name == "If":
            condition, when_true, when_false = node.value
            return self.resolve(when_true if self.condition(condition) else when_false)
        raise TemplateError(f"the demo cannot evaluate !{node.name} in template.yaml")

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            raise TemplateError(f"template.yaml has no condition {name!r}")
        return self._truth(self.conditions[name])

    def _truth(self, node: CfnTag) -> bool:
        if node.name == "Equals":
            left, right = (str(self.resolve(part)) for part in node.value)
            return left == right
        if node.name == "And":
            return all(self._truth(part) for part in node.value)
        if node.name == "Or":
            return any(self._truth(part) for part in node.value)
        if node.name == "Not":
            return not self._truth(node.value[0])
        if node.name == "Condition":
            return self.condition(node.value)
        raise TemplateError(f"the demo cannot evaluate condition !{node.name} in template.yaml")

    def _ref(self, name: str) -> str:
        if name not in self.refs:
            raise TemplateError(f"template.yaml refers to {name!r}, which the demo has no value for")
        return self.refs[name]


_NO_VALUE = object()


def function_environment(template: dict[str, Any], function: str, resolver: Resolver) -> dict[str, str]:
    """The function's environment as deployed: `Globals` merged with its own variables."""
    globals_ = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    own = resource_properties(template, function).get("Environment", {}).get("Variables", {})
    return {name: str(value) for name, value in resolver.resolve({**globals_, **own}).items()}

"""AWS identity-policy evaluation, for the subset of the policy language the shipped policies use.

    decide(policies, "s3:ListBucket", "arn:aws:s3:::bucket", {"s3:prefix": "repsub/runs/x/"}) -> "allow"

The rules (AWS IAM's policy evaluation logic for identity policies of one account): an explicit Deny in any
statement wins; otherwise some Allow statement must apply; otherwise the request is implicitly denied. A
statement applies when its Action (or NotAction) matches the action (case-insensitive), its Resource (or
NotResource) matches the resource, and every condition holds. Wildcards: `*` any run of characters (`/`
included), `?` one character. Conditions: StringEquals, StringLike and their ...IfExists forms; a key the
request context lacks fails the condition (IfExists: passes). Any other operator is refused, so a policy
using one is never evaluated wrongly in silence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SUPPORTED_OPERATORS = ("StringEquals", "StringLike")


class UnsupportedPolicy(ValueError):
    """The policy uses an element or operator this evaluator does not implement."""


def _listed(value) -> list[str]:
    return value if isinstance(value, list) else [value]


def wildcard_match(pattern: str, value: str, case_sensitive: bool = True) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


def _condition_holds(conditions: dict, context: dict[str, str]) -> bool:
    for operator, keys in conditions.items():
        base = operator.removesuffix("IfExists")
        if base not in SUPPORTED_OPERATORS:
            raise UnsupportedPolicy(
                f"condition operator {operator} (supported: {', '.join(SUPPORTED_OPERATORS)})"
            )
        for key, expected in keys.items():
            if key not in context:
                if operator.endswith("IfExists"):
                    continue
                return False
            actual = context[key]
            if base == "StringEquals" and actual not in _listed(expected):
                return False
            if base == "StringLike" and not any(wildcard_match(p, actual) for p in _listed(expected)):
                return False
    return True


def statement_applies(statement: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    unknown = set(statement) - {
        "Sid",
        "Effect",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
    if unknown:
        raise UnsupportedPolicy(f"statement elements {sorted(unknown)}")
    if "Action" in statement:
        if not any(wildcard_match(a, action, case_sensitive=False) for a in _listed(statement["Action"])):
            return False
    elif any(wildcard_match(a, action, case_sensitive=False) for a in _listed(statement["NotAction"])):
        return False
    if "Resource" in statement:
        if not any(wildcard_match(r, resource) for r in _listed(statement["Resource"])):
            return False
    elif any(wildcard_match(r, resource) for r in _listed(statement["NotResource"])):
        return False
    return _condition_holds(statement.get("Condition", {}), context)


def decide(
    policies: Iterable[dict], action: str, resource: str, context: dict[str, str] | None = None
) -> str:
    """'allow', 'explicit deny' or 'implicit deny' for one action on one resource."""
    allowed = False
    for policy in policies:
        for statement in _listed(policy["Statement"]):
            if statement_applies(statement, action, resource, context or {}):
                if statement["Effect"] == "Deny":
                    return "explicit deny"
                allowed = True
    return "allow" if allowed else "implicit deny"


def allowed(
    policies: Iterable[dict], action: str, resource: str, context: dict[str, str] | None = None
) -> bool:
    return decide(policies, action, resource, context) == "allow"

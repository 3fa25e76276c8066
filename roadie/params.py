"""The types of the values a job accepts over REST, checked before the flow does any I/O.

Prefect checks a run's parameters twice, both before any of roadie's code runs:
- the server, when `create_flow_run` is POSTed, against the deployment's JSON schema (made from these types):
  a wrong type, an unknown format, a malformed id or an unknown field is answered 409 with the field's name;
- the flow engine, against the flow's signature, when the run starts (also for a run created with
  `enforce_parameter_schema: false`, or from Python): the run ends Failed with "Validation of flow parameters
  failed", the field and the reason, and no task has run.

The values stay plain strings (what the REST caller sent, a UUID in its canonical lower-case form), so the
flows' bodies and what the platform's API sends do not change.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Annotated, Literal, get_args

from annotated_types import GroupedMetadata
from pydantic import AfterValidator, Field

from roadie.settings import FORMATS

_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_FLOW_RUN = r"^(prefect\.flow-run\.)?" + _UUID[1:]


def _canonical_uuid(value: str) -> str:
    if not re.fullmatch(_UUID, value):
        raise ValueError(f"{value[:80]!r} is not a UUID (expected the form 123e4567-e89b-12d3-a456-426614174000)")
    return str(uuid.UUID(value))


_FLOW_RUN_PREFIX = "prefect.flow-run."


def _canonical_flow_run(value: str) -> str:
    prefix = _FLOW_RUN_PREFIX
    return prefix + _canonical_uuid(value[len(prefix) :]) if value.startswith(prefix) else _canonical_uuid(value)


def flow_run_uuid(value: str) -> uuid.UUID:
    """The run's id from a FlowRunId: bare, or an event's resource id (`prefect.flow-run.<uuid>`)."""
    return uuid.UUID(_canonical_uuid(value.removeprefix(_FLOW_RUN_PREFIX)))


# A track version's id, as the platform's API registered it.
# The pattern is in the JSON schema (the server checks it); the flow's own check says what a UUID looks like.
VersionId = Annotated[
    str,
    Field(description="A track version id (UUID).", json_schema_extra={"pattern": _UUID}),
    AfterValidator(_canonical_uuid),
]
# A flow run id, bare or as an event's resource id (prefect.flow-run.<uuid>).
FlowRunId = Annotated[
    str,
    Field(description="A flow run id (UUID).", json_schema_extra={"pattern": _FLOW_RUN}),
    AfterValidator(_canonical_flow_run),
]
# One HLS rendition; the first in a list is the primary (playable first).
Format = Literal["hls_opus", "hls_aac", "hls_alac"]
Formats = (
    Annotated[
        list[Format],
        Field(
            min_length=1,
            max_length=len(FORMATS),
            description="Renditions, primary first (default: the configured ones).",
        ),
    ]
    | None
)
_DAY = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_MONTH = r"^[0-9]{4}-[0-9]{2}$"


class _Shaped(GroupedMetadata):
    """An optional string's shape: its pattern and description in the JSON schema (the server checks it), and the
    flow's own check, which says what was expected."""

    def __init__(self, pattern: str, description: str, what: str) -> None:
        self.pattern, self.description, self.what = pattern, description, what

    def __iter__(self) -> Iterator[object]:
        yield Field(description=self.description, json_schema_extra={"pattern": self.pattern})
        yield AfterValidator(self.check)

    def check(self, value: str) -> str:
        if not re.fullmatch(self.pattern, value):
            raise ValueError(f"{value[:80]!r} is not {self.what}")
        return value


# A UTC day and a calendar month; whether the date exists is checked by the flow, still before any I/O.
Day = Annotated[str, _Shaped(_DAY, "A UTC day, YYYY-MM-DD.", "a day (expected YYYY-MM-DD)")] | None
Month = Annotated[str, _Shaped(_MONTH, "A month, YYYY-MM.", "a month (expected YYYY-MM)")] | None

assert set(get_args(Format)) == set(FORMATS), "roadie.params.Format is out of step with roadie.settings.FORMATS"

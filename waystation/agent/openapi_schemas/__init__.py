"""The contract's objects as JSON Schemas, for the OpenAPI document (agent/openapi.py).

The document is kept by hand for what types cannot say (descriptions, patterns, bounds); its
enums come from waystation/contract/'s Literals, and tests/test_openapi_contract.py checks every
schema's properties, required fields and enums against the contract's TypedDicts both ways. A
module per part of the contract, as waystation/contract/ is split: tasks (the error body, tasks,
receipts), station (status and models), turns (turns and the OpenAI-compatible endpoint).
"""

from waystation.agent.openapi_schemas.primitives import ID_PATTERN, Schema, enum, ref
from waystation.agent.openapi_schemas.station import STATION_SCHEMAS
from waystation.agent.openapi_schemas.tasks import TASK_SCHEMAS
from waystation.agent.openapi_schemas.turns import TURN_SCHEMAS

__all__ = ["ID_PATTERN", "SCHEMAS", "Schema", "enum", "ref"]

# In the document's order: the components appear as they did when this was one module.
SCHEMAS: dict[str, Schema] = {**TASK_SCHEMAS, **STATION_SCHEMAS, **TURN_SCHEMAS}

"""``GET /v1/tools``: the tools the agent may call on calls and in chats.

What the model is offered, in its order: the HTTP tools of the agent's YAML
(``tools.http``) and the music tools of the platforms this server is
configured for. Each entry is the tool's name, its description and the JSON
schema of its arguments, with the rules it runs under (time budget, whether
barge-in may cancel it). Needs the ``calls`` scope where API keys are required.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field

from signaling.openapi import error_responses
from signaling.state import ApiError, State

router = APIRouter(prefix="/v1/tools", tags=["tools"])


class ToolOut(BaseModel):
    """One tool as the model sees it, and how it runs."""

    name: str
    description: str
    parameters: dict[str, Any] = Field(description="The JSON schema of its arguments.")
    timeout_s: float = Field(description="Its time budget; past it the call fails.")
    cancellable: bool = Field(description="Whether barge-in may cancel it while it runs.")


class ToolsOut(BaseModel):
    """The agent's tools, in the order the model is offered them."""

    tools: list[ToolOut]


@router.get("", response_model=ToolsOut, responses=error_responses(401, 403, 503))
async def list_tools(
    st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """The tools the agent may call (name, description, parameters)."""
    await st.access.require(authorization, "calls")
    if st.tools is None:
        raise ApiError(503, "unavailable", "the server is starting; retry later")
    return ToolsOut(
        tools=[
            ToolOut(
                name=tool.name,
                description=tool.spec.description,
                parameters=dict(tool.spec.parameters),
                timeout_s=tool.timeout_s,
                cancellable=tool.cancellable,
            )
            for tool in st.tools
        ]
    ).model_dump()

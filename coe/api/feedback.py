"""`POST /v1/feedback`: an outcome for a completion this service gave, from the key that asked for it."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coe import metrics
from coe.api.errors import ApiError
from coe.api.schemas import ErrorResponse, well_formed
from coe.api.security import query_caller
from coe.auth import Caller
from coe.core.routes import load_routes_if_present
from coe.feedback import Feedback

router = APIRouter(tags=["feedback"], responses={s: {"model": ErrorResponse} for s in (400, 401, 404, 429)})


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100, description="the completion's id (chatcmpl-...)")
    score: float | None = Field(None, ge=0, le=1, description="how good the answer was, 0 to 1")
    thumbs: Literal["up", "down"] | None = Field(None, description="instead of a score: up is 1, down is 0")
    comment: str | None = Field(None, max_length=2000)
    route: str | None = Field(None, max_length=100, description="the route that should have answered (a routes.yaml name)")
    expert: str | None = Field(None, max_length=100, description="the expert that should have answered")

    unicode_text = field_validator("id", "comment", "route", "expert")(well_formed)

    @model_validator(mode="after")
    def _one_outcome(self) -> "FeedbackRequest":
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("give either score (0 to 1) or thumbs ('up' or 'down')")
        return self


class FeedbackOut(BaseModel):
    id: str
    score: float
    stored: bool = True


@router.post("/v1/feedback", status_code=201, response_model=FeedbackOut)
async def give_feedback(body: FeedbackRequest, request: Request, caller: Caller = Depends(query_caller)) -> FeedbackOut:
    """Attach an outcome to a completion given in the last 7 days; only the key that asked may rate it."""
    service = request.app.state.service
    served = await service.feedback.served(body.id)
    if served is None or (served.caller is not None and served.caller != caller.identity and not caller.admin):
        raise ApiError(404, f"no completion '{body.id}' to give feedback on (unknown, older than 7 days, or "
                            "not yours)", "completion_not_found", param="id")
    if body.expert is not None and body.expert not in service.registry.experts:
        raise ApiError(400, f"expert: '{body.expert}' is not an expert here ({', '.join(service.registry.names)})",
                       "invalid_value", param="expert")
    routes = load_routes_if_present(service.settings.routes_path)
    if body.route is not None and routes is not None and body.route not in routes.names:
        raise ApiError(400, f"route: '{body.route}' is not a route of {routes.path.name}", "invalid_value", param="route")
    score = body.score if body.score is not None else float(body.thumbs == "up")
    await service.feedback.add(Feedback(body.id, score, body.comment, body.route, body.expert, time.time()))
    metrics.observe_feedback(served.experts, score)
    bandit = service.pipeline.bandit if service.pipeline is not None else None
    if bandit is not None and served.bandit_route is not None:
        await bandit.learn(body.id, served.bandit_route, served.experts[0], score)
    return FeedbackOut(id=body.id, score=score)

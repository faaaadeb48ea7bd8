"""Admin endpoints (need COE_ADMIN_KEY): register and remove experts at run time, reload experts.yaml."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from coe.admin import Change, RegistryChangeRejected, RegistryEditor
from coe.api.errors import error_body
from coe.api.schemas import ErrorResponse, RegistryChangeOut, RegistryErrorResponse
from coe.api.security import admin_caller
from coe.pipeline_types import Unavailable
from coe.core.registry import NAME_PATTERN, ExpertConfig

RESPONSES = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
             409: {"model": RegistryErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": RegistryErrorResponse},
             500: {"model": RegistryErrorResponse}, 503: {"model": ErrorResponse}}

router = APIRouter(prefix="/v1/experts", tags=["admin"], dependencies=[Depends(admin_caller)], responses=RESPONSES)


def _editor(request: Request) -> RegistryEditor:
    if request.app.state.service.pipeline is None:
        raise Unavailable("the service is still starting")
    return request.app.state.editor


def _out(change: Change) -> RegistryChangeOut:
    return RegistryChangeOut(experts=change.registry.names, added=change.added, removed=change.removed,
                             router=change.router, backup=str(change.backup) if change.backup else None,
                             registry_version=change.version)


def _rejected(exc: RegistryChangeRejected) -> JSONResponse:
    if exc.status == 404:
        return JSONResponse(error_body(404, exc.message, "name", "expert_not_found"), status_code=404)
    code = {409: "registry_conflict", 500: "registry_not_writable"}.get(exc.status, "invalid_registry")
    body = error_body(exc.status, exc.message, code=code)
    body["error"]["problems"] = exc.problems
    return JSONResponse(body, status_code=exc.status)


@router.post("", status_code=201, response_model=RegistryChangeOut)
async def add_expert(expert: ExpertConfig, request: Request):
    """Register an expert: checked like experts.yaml, written back to it (old file kept as .bak) or, with Redis,
    to the registry every replica and worker shares; live at once here, within 2 s everywhere."""
    try:
        return _out(await _editor(request).add(expert.model_dump(mode="json", exclude_unset=True)))
    except RegistryChangeRejected as exc:
        return _rejected(exc)


@router.post("/reload", response_model=RegistryChangeOut)
async def reload_experts(request: Request):
    """Take up experts.yaml as it is on disk (with Redis: everywhere); an invalid file changes nothing (422)."""
    try:
        return _out(await _editor(request).reload())
    except RegistryChangeRejected as exc:
        return _rejected(exc)


@router.delete("/{name}", response_model=RegistryChangeOut)
async def remove_expert(request: Request, name: str = Path(pattern=NAME_PATTERN)):
    """Remove an expert; requests already using it finish first."""
    try:
        return _out(await _editor(request).remove(name))
    except RegistryChangeRejected as exc:
        return _rejected(exc)

"""`/dashboard` (needs COE_ADMIN_KEY): the live page, and the JSON it refreshes from (coe/dashboard.py); its script,
styles and Chart.js are public files."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse

from coe.api.errors import ApiError
from coe.api.schemas import ErrorResponse
from coe.api.security import dashboard_caller
from coe.dashboard import DashboardData, asset, render_page, snapshot

router = APIRouter(prefix="/dashboard", tags=["admin"], dependencies=[Depends(dashboard_caller)],
                   responses={s: {"model": ErrorResponse} for s in (401, 403)})


@router.get("", response_class=HTMLResponse, include_in_schema=False)  # a page for browsers, not an API operation
async def dashboard_page(request: Request) -> HTMLResponse:
    """Requests per endpoint, route and expert, router confidence, latency per stage, models per device, feedback,
    caches and budgets, refreshed every 2 s."""
    return HTMLResponse(render_page(await snapshot(request.app.state.service)))


@router.get("/data", response_model=DashboardData)
async def dashboard_data(request: Request) -> DashboardData:
    """What the page shows, as JSON: counts since this process started."""
    return await snapshot(request.app.state.service)


files = APIRouter(prefix="/dashboard/static", tags=["admin"], include_in_schema=False)


@files.get("/{name}")
async def dashboard_file(name: str) -> FileResponse:
    path = asset(name)
    if path is None:
        raise ApiError(404, f"no dashboard file '{name}'", "not_found")
    return FileResponse(path, headers={"Cache-Control": "max-age=3600"})

"""Admin endpoints (need COE_ADMIN_KEY): what each client key has used of its budget in the current window."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request

from coe.api.errors import ApiError
from coe.api.schemas import BudgetCap, BudgetList, BudgetOut, ErrorResponse
from coe.api.security import admin_caller
from coe.budgets import NANO, Ledger, Standing
from coe.pipeline_types import Unavailable

router = APIRouter(prefix="/v1/budgets", tags=["admin"], dependencies=[Depends(admin_caller)],
                   responses={s: {"model": ErrorResponse} for s in (401, 403, 404, 503)})


def _ledger(request: Request) -> Ledger:
    ledger = request.app.state.service.budgets
    if ledger is None:
        raise Unavailable("the service is still starting")
    return ledger


def _out(standing: Standing, low_share: float) -> BudgetOut:
    b, lim = standing.books, standing.limits
    return BudgetOut(
        key=standing.identity, window_s=lim.window_s, resets_at=standing.window.ends_at,
        tokens=BudgetCap(cap=lim.tokens, used=b.tokens, reserved=b.held_tokens),
        cost=BudgetCap(cap=lim.cost, used=b.cost / NANO, reserved=b.held_cost / NANO),
        left=round(standing.left_share, 6), cost_aware=standing.left_share < low_share)


@router.get("", response_model=BudgetList)
async def list_budgets(request: Request) -> BudgetList:
    """Every client key that has a budget (COE_API_KEYS with COE_BUDGETS), as the books stand now."""
    service, ledger = request.app.state.service, _ledger(request)
    out = []
    for identity in request.app.state.keys.identities:
        standing = await ledger.standing(identity)
        if standing is not None:
            out.append(_out(standing, service.settings.budget_low_share))
    return BudgetList(data=out)


@router.get("/{key}", response_model=BudgetOut)
async def read_budget(request: Request, key: str = Path(pattern=r"^key-[0-9a-f]{16}$")) -> BudgetOut:
    """One key's budget, by its identity (key-<first 16 hex digits of the key's SHA-256>)."""
    service = request.app.state.service
    standing = await _ledger(request).standing(key)
    if standing is None:
        raise ApiError(404, f"key '{key}' has no budget (COE_BUDGETS), or its books cannot be read now",
                       "budget_not_found", param="key")
    return _out(standing, service.settings.budget_low_share)

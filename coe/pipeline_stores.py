"""What a pipeline keeps beside its routers: session routes, the semantic cache, the budgets' books and the bandit's
statistics. A registry change builds a new pipeline over the same stores (coe/admin.py), so none of them starts over.
"""

from __future__ import annotations

from dataclasses import dataclass

from coe.bandit import Bandit
from coe.budgets import Ledger
from coe.core.settings import Settings
from coe.semantic_cache import SemanticCache, make_semantic_cache
from coe.sessions import SessionStore, make_session_store


@dataclass
class Stores:
    sessions: SessionStore
    cache: SemanticCache
    budgets: Ledger
    bandit: Bandit | None  # None: the bandit is off (COE_BANDIT)

    @classmethod
    def from_settings(cls, settings: Settings, budgets: Ledger | None = None) -> "Stores":
        """New stores as the settings say; `budgets`: the service's books, when it keeps them (GET /v1/budgets)."""
        return cls(make_session_store(settings.session_ttl_s, settings.redis_url), make_semantic_cache(settings),
                   budgets or Ledger(settings), Bandit.from_settings(settings) if settings.bandit else None)

    async def close(self) -> None:
        """Let go of the sessions, the cache and the bandit (the budgets' books are closed by whoever made them)."""
        await self.sessions.close()
        await self.cache.close()
        if self.bandit is not None:
            await self.bandit.close()

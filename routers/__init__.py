"""Routing policies behind one interface, registered by name so a setting string picks one."""

from routers.base import ROUTERS, RouteDecision, Router, RouterContext, build_router, register

__all__ = ["ROUTERS", "RouteDecision", "Router", "RouterContext", "build_router", "register"]

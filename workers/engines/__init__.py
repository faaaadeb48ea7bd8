"""Engines run a batch of chats on one set of weights."""

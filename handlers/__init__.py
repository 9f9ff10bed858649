"""Thin handlers for the claude and codex CLIs, behind nex's Handler protocol.

Loaded lazily through `nexpy.routing.HANDLERS`; they import only nexpy's shared pieces, never
the agent loop or the provider, so a `claude:` or `codex:` run never loads litellm.
"""

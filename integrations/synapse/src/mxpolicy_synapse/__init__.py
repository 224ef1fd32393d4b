"""mxpolicy's policies (consent, erasure, media ownership) in an unmodified Synapse, through
`mxpolicy serve`. Synapse loads `MxpolicyModule` from its ``modules:`` config; see README.md."""

from .module import MxpolicyModule

__all__ = ["MxpolicyModule"]

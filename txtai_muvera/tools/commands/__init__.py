"""
Command line commands: one module per sub-command, each with `configure(subparsers)` and `run(args)`
"""

from .documents import Documents, queries
from .errors import UsageError

"""Registry cases for the multisample estimators (see cases.py for the Case contract).

Kept in its own file so that each family's cases are added without touching the others'.
"""

from __future__ import annotations

CASES: list = []

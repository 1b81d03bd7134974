"""What `mitmdump -s addons/budget.py` loads: Tollgate's addon chain."""

import os
import sys

# Importable from a plain checkout too, not only after `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tollgate.gateway import BudgetGuard  # noqa: E402

addons = [BudgetGuard()]

"""Put this directory first on PYTHONPATH to run Python as the privileged jobs do: with only the
packages of requirements/publish.lock installed. `PUBLISHER_LOCK_ONLY` holds their names
(comma-separated, normalised); importing any other installed distribution fails, as it would in
a job that installed the lock alone (optional imports then take their fallback, as they would
there). publisher itself and the standard library import as usual.
"""

import os
import re
import sys
from importlib import metadata

_ALLOWED = {n for n in os.environ.get("PUBLISHER_LOCK_ONLY", "").split(",") if n}
_OWNERS = metadata.packages_distributions()


class OnlyLocked:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        dists = _OWNERS.get(top)
        if top == "publisher" or top in sys.stdlib_module_names or not dists:
            return None
        if any(re.sub(r"[-_.]+", "-", d).lower() in _ALLOWED for d in dists):
            return None
        raise ModuleNotFoundError(f"{name} is not in requirements/publish.lock", name=name)


if _ALLOWED:
    sys.meta_path.insert(0, OnlyLocked())

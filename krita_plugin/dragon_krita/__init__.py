"""DragonDiffusion for Krita: select an object, draw an arrow, get the edit back as a new layer.

Importing this package inside Krita registers the docker; anywhere else it registers nothing, so the
plain-Python modules (arrows, pixels, region, edit, jobs, client) can be used and tested on their own.
`deps/` next to this file, filled by `dragon install-plugin`, holds pyzmq, msgpack and the protocol
package when Krita's own Python lacks them.
"""

import os
import sys

DEPS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deps")
if os.path.isdir(DEPS_DIR) and DEPS_DIR not in sys.path:
    sys.path.insert(0, DEPS_DIR)

try:
    import krita  # noqa: F401 (only present inside Krita)
except ImportError:
    pass
else:
    from .plugin import register

    register()

"""difflab ↔ other projects' weights (docs/interop.md).

From Python, what ``difflab import`` and ``difflab export`` do::

    from difflab.interop import export_diffusers, import_source, write_run
    write_run(import_source("~/models/stable-diffusion-v1-5", image_size=512), "runs/sd15")
    export_diffusers("runs/fashion-mnist-16-cfg", "exported/fm16")
"""

from .exporter import export_diffusers
from .importer import import_source, write_run

__all__ = ["export_diffusers", "import_source", "write_run"]

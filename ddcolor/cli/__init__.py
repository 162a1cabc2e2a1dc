"""The command-line application around the library: ``python -m ddcolor``.

Everything here uses only the library's public face (``ddcolor.__all__`` and
the modules in ``ddcolor.PUBLIC_MODULES``); nothing in the library imports it
(tests/test_imports.py checks both).

* ``commands``: argument parsing and the commands (colorize, download, info, queue);
* ``image_step``: the per-image step (read, colorize, write), the same for the local and the Ray run;
* ``models``: the device, and a published checkpoint fetched with a progress bar;
* ``batch``: inputs, output names, Ctrl-C, progress and the summary shared by batch commands;
* ``imageio``: image files in and out, written atomically;
* ``video``: video files and frame folders as jobs (the engine is ``ddcolor.video``, shared with the node);
* ``comfy_client``: driving a running ComfyUI through its HTTP API;
* ``ray_runner``: ``colorize --ray``, the same batch on a Ray cluster (imported only then);
* ``finetune``: the finetune command; the training itself is ddcolor/finetune/, imported only then.
"""

from .commands import main

__all__ = ["main"]

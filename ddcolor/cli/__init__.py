"""The command-line application around the library: ``python -m ddcolor``.

Everything here uses the library's public interface (``ddcolor.load_model``,
``ddcolor.colorize``); nothing in the library imports it.

* ``commands``: argument parsing and the commands (colorize, download, info, queue);
* ``batch``: inputs, output names, Ctrl-C, progress and the summary shared by batch commands;
* ``imageio``: image files in and out, written atomically;
* ``video``: video files and frame folders as jobs (the engine is ``ddcolor.video``, shared with the node);
* ``comfy_client``: driving a running ComfyUI through its HTTP API;
* ``ray_runner``: ``colorize --ray``, the same batch on a Ray cluster (imported only then);
* ``finetune``: the finetune command; the training itself is ddcolor/finetune/, imported only then.
"""

from .commands import main

__all__ = ["main"]

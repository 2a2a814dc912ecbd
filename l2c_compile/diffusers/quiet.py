"""diffusers' and transformers' own advice and progress bars, silenced while we import or load.

Loading a folder or resolving a lazily imported pipeline class makes both libraries print (install
accelerate, torchvision is missing, "Loading weights" bars); a command's output is ours. Errors
still raise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """diffusers' and transformers' loading advice (install accelerate, torchvision, …) and progress
    bars are not ours to print; errors still raise."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components…" bars are not ours either
    try:  # the text encoders print "Loading weights" bars; importing a pipeline, backend advice
        from transformers.utils import logging as transformers_logging
    except ImportError:
        transformers_logging = None
    if transformers_logging is not None:
        transformers_level = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.enable_progress_bar()
        diffusers_logging.set_verbosity(level)
        if transformers_logging is not None:
            transformers_logging.enable_progress_bar()
            transformers_logging.set_verbosity(transformers_level)

"""Applications built on the library: the end-to-end demo (``demo.py``) and sample-quality
evaluation (``evaluate.py``). The CLI commands ``demo`` and ``eval`` only print what these return.
"""

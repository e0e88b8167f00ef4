"""Face: how a person or a scheduler starts a run.

``cli`` (the ``reconcile-audit`` command), ``runner`` (papermill execution, the lease, the exit
code), ``run`` (the ``RunContext`` every notebook cell shares, and the delivery sequence) and
``demo`` (the embedded default: a synthetic source database and the emulator). The notebook
itself, ``notebooks/reconcile_escrow.ipynb``, is Face too. Only ``demo`` imports the emulator.
"""

"""Driver: the command and the order of everything.

Owns: the ``rooftop`` command (``app.py``: precheck of the command line, exit codes, the
``calibrate`` and ``compare`` verbs), the config schema (``config.py``: structured-config
dataclasses in Hydra's ConfigStore, range checks), the pipeline (``pipeline.py``: validate,
import, one pass manager, run context, analysis, emit, report, staging and locking), the
speculative draft (``draft.py``), multiruns and search summaries (``sweep.py``), report
comparison (``compare.py``) and artifact provenance (``provenance.py``).

May import: anything (it sits on top of every other package, ``reports`` included).
"""

"""Reports: the analysis result rendered, never recomputed.

Owns: ``report.json`` (``report.py``), ``report.md`` (``markdown.py``) and the self-contained
``report.html`` (``html.py``) with its figures (``plots.py``), the serving / planning blocks
(``planning.py``), the dynamic-execution blocks (``dynamic.py``), the compression section
(``compression.py``) and the shared formatting helpers (``format.py``). Pure functions of the
report dict: the same report gives the same bytes.

May import: :mod:`compiler.ir`, :mod:`compiler.perf`, :mod:`compiler.analysis` and the base
modules.
"""

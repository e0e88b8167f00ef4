"""Compute: the stages that turn settings into frames and findings, and keep them.

settings -> extract -> resolve -> ledger -> classify -> history -> persist, with the frame schemas
(``schemas``), the run's vocabulary (classes, counts, statuses), the money formatters
(``amounts``), the one contract strkey checker (``strkey``), database access (``db``) and the
run's result (``result.AuditResult``). Compute never imports Output or Face, and never the emulator
(import-linter checks both in ``make lint``).

A new reason code goes into ``classify`` (its docstring table, ``REASON_CODES`` and
``sql/classify.sql``); a new frame column into ``schemas`` first.
"""

"""Output: what a run's result becomes for people and machines.

``emit`` (one structured warning per drift), ``report`` (the view model and the jinja2 rendering
of the HTML and text report), ``summary`` (``RunFacts`` and the versioned ``summary.json``
contract), ``notebook_views`` (the notebook's small HTML charts and tables), ``deliver`` (artifact
files and the email) and ``metrics`` (Prometheus). Output reads Compute's result types only and
never imports Face. A new report section goes into ``report._view`` and ``templates/report.*.j2``.
"""

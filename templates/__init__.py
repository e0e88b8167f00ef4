"""The report templates, shipped in the wheel as ``reconcile_audit.templates`` (see ``reconcile_audit.resources``)."""

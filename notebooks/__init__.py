"""The audit notebook, shipped in the wheel as ``reconcile_audit.notebooks`` (see ``reconcile_audit.resources``)."""

"""What a run leaves to read: its run directory's own files checked as untrusted input (``rundir``), the numbers
gathered into ``results.json`` (``results``), and ``report.md``/``report.html`` with their figures (``report``,
``plots``)."""

"""Reports: what a run produced (RunResult), report.json, results.csv, report.md, plots, the console, and
the verdict summaries they share."""

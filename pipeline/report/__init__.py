"""Reports: report.json, report.md, plots, the console, and the verdict summaries they share."""

"""What a run reports: the data quality report, eval result files, and the end-of-run report."""

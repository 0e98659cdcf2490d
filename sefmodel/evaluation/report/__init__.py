"""What the toolkit draws and writes about a detector's results: :mod:`~sefmodel.evaluation.report.charts` (matplotlib
charts: bars, ROC and robustness curves) and :mod:`~sefmodel.evaluation.report.results` (the files of ``sefmodel eval``:
results.md, the CSV files, results.json's model index, the plots). Markdown tables and the ``n/a`` of a missing number
come from :mod:`sefcore.markdown`."""

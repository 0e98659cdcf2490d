"""Scoring detectors on benchmarks: benchmark definitions, perturbations and robustness presets, metrics
(scikit-learn), decision thresholds, golden sets, and the reports (``results.md``, CSV, plots) an evaluation
writes."""

"""CPU analysis of run folders and shared tables: aggregates, statistics, figures. Never imports torch
or `animacy.collect`."""

BACKENDS = ("python", "lme4", "statsmodels")  # mixed-model backends (analysis.mixed)

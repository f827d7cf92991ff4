"""Package data: the report source (report.qmd, _quarto.yml)."""

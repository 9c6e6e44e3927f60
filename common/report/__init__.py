"""The report: tables, plots, privacy accounting and the generated analyses, from records only."""

"""``videoiq bench``: benchmarks that print figures measured in one run, compared as ratios."""

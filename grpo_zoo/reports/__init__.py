"""Reports about this project's own experiments: the paper's claims (paper_claims.py, which
knows the paper's run names) and RESULTS.md's leaderboard section (leaderboard.py). The
generic tables, plots and statistics live in grpo_zoo/analysis."""

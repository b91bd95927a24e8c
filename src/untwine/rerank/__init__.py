"""Re-rank: business rules, MMR and DPP diversification of a ranked list."""

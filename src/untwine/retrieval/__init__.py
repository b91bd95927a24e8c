"""Recall channels of the funnel: two-tower, ItemCF, Swing, popularity, tags, cold start; ANN indexes; merging."""

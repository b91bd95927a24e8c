"""Exported bundles and the HTTP service of the whole funnel."""

"""Analysis tools over trained runs: dimensional collapse (information abundance) and interest entanglement."""

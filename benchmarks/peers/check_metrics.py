"""Check peerkit.metrics against scikit-learn (run with the peers venv python)."""
import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from peerkit.metrics import auc, gauc, logloss

rng = np.random.default_rng(0)
for n, levels in [(50, 3), (1000, 10), (5000, 1000), (20000, None)]:
    y = rng.random(n) < 0.3
    s = rng.random(n) if levels is None else rng.integers(0, levels, n) / levels  # many ties
    assert abs(auc(y, s) - roc_auc_score(y, s)) < 1e-12, (n, auc(y, s), roc_auc_score(y, s))
    p = np.clip(s, 1e-3, 1 - 1e-3)
    assert abs(logloss(y, p) - log_loss(y, p)) < 1e-9
g = rng.integers(0, 30, 3000)
y = rng.random(3000) < 0.4
s = rng.random(3000)
y[g == 0] = True  # a one-class group is skipped
ref, w = 0.0, 0
for k in np.unique(g):
    m = g == k
    if y[m].all() or not y[m].any():
        continue
    ref += roc_auc_score(y[m], s[m]) * m.sum()
    w += m.sum()
r = gauc(y, s, g)
assert abs(r["gauc"] - ref / w) < 1e-12 and r["groups_skipped"] == 1, r
print("metrics ok")

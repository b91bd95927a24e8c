"""Reference tests for the numeric encoders (MNSE, integer mapping, buckets, scaled, the per-schema encoder)
against naive Python / numpy computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from untwine.core.features import NumericStats
from untwine.core.schema import Feature, NumericEncoding
from untwine.nn.numeric import (MNSE, BucketEmbedding, NumericFieldEncoder, NumericToInteger, ScaledNumeric,
                                mnse_digits, num_positions)

D = 4
QUANTILE_PROBS = np.linspace(0, 1, 1001)


def stats_of(values: np.ndarray, transform: str = "standard") -> NumericStats:
    """NumericStats as the encoder fits them, from a finite sample (NaN ignored)."""
    x = values[np.isfinite(values)].astype(np.float64)
    return NumericStats(transform=transform, mean=float(x.mean()), std=float(x.std()) or 1.0, min=float(x.min()),
                        max=float(x.max()), count=x.size, missing=int((~np.isfinite(values)).sum()),
                        quantiles=tuple(np.quantile(x, QUANTILE_PROBS).tolist()),
                        integer=bool(np.all(x == np.round(x))))


def hand_stats(lo: float, hi: float, quantiles: tuple[float, ...] = (), transform: str = "standard") -> NumericStats:
    return NumericStats(transform=transform, mean=0.0, std=1.0, min=lo, max=hi, count=10, missing=0,
                        quantiles=quantiles)


def digits_divmod(v: int, base: int, positions: int) -> list[int]:
    out = []
    for _ in range(positions):
        v, d = divmod(v, base)
        out.append(d)
    return out


def naive_mnse(m: MNSE, v: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
    """Per sample and field: sum the (field, base, position, digit) rows read off the documented layout
    (per field: each base's positions x digits in order, then the missing row)."""
    w = m.table.weight
    sizes = [b * num_positions(m.max_value, b) for b in m.bases]
    per_field = sum(sizes) + 1
    B, F = v.shape
    out = torch.zeros(B, F, m.dim)
    for i in range(B):
        for f in range(F):
            start = f * per_field
            if missing is not None and missing[i, f]:
                out[i, f] = w[start + per_field - 1]
                continue
            x = min(max(int(v[i, f]), 0), m.max_value)
            per_base = []
            base_start = start
            for b, size in zip(m.bases, sizes):
                digits = digits_divmod(x, b, size // b)
                per_base.append(sum(w[base_start + k * b + d] for k, d in enumerate(digits)))
                base_start += size
            if m.combine == "sum":
                out[i, f] = sum(per_base)
            else:
                out[i, f] = torch.cat(per_base) @ m.weight[f] + m.bias[f]
    return out


# ---------------------------------------------------------------- digits

@pytest.mark.parametrize("base", [2, 3, 7, 10])
def test_mnse_digits_equal_repeated_divmod(base):
    positions = num_positions(2000, base)
    got = mnse_digits(torch.arange(2001), base, positions)
    assert got.shape == (2001, positions)
    expected = torch.tensor([digits_divmod(v, base, positions) for v in range(2001)])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("base", [2, 3, 7, 10])
def test_num_positions_at_powers(base):
    assert num_positions(0, base) == num_positions(1, base) == 1
    for k in range(1, 6):
        assert num_positions(base ** k - 1, base) == k
        assert num_positions(base ** k, base) == k + 1
    for m in [5, 99, 100, 1000, 12345]:
        assert num_positions(m, base) == len(np.base_repr(m, base))


# ---------------------------------------------------------------- MNSE

@pytest.mark.parametrize("bases", [(2,), (2, 3, 10)])
def test_position_is_part_of_the_key(bases):
    # 51 = 110011b and 60 = 111100b hold the same digits: only their positions tell them apart
    assert sorted(digits_divmod(51, 2, 6)) == sorted(digits_divmod(60, 2, 6))
    torch.manual_seed(0)
    m = MNSE(1, 100, D, bases, init_std=1.0)
    enc = m(torch.tensor([[51], [60]]))
    assert (enc[0] - enc[1]).abs().max() > 1e-3


@pytest.mark.parametrize("bases,combine", [((2,), "sum"), ((3,), "sum"), ((2, 3, 10), "sum"), ((2, 5), "concat")])
def test_every_value_gets_a_distinct_encoding(bases, combine):
    torch.manual_seed(0)
    m = MNSE(2, 40, D, bases, combine, init_std=1.0)
    for f in range(2):
        t = m.value_table(f).detach()
        assert t.shape == (41, D)
        dist = torch.cdist(t, t) + torch.eye(41) * 1e9
        assert dist.min() > 1e-3


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_forward_equals_naive_sum_of_digit_vectors(combine):
    torch.manual_seed(0)
    m = MNSE(3, 50, D, (2, 3, 10), combine, init_std=1.0)
    g = torch.Generator().manual_seed(1)
    v = torch.randint(-5, 60, (7, 3), generator=g)  # includes values to clamp on both sides
    missing = torch.rand(7, 3, generator=g) < 0.3
    torch.testing.assert_close(m(v, missing), naive_mnse(m, v, missing))
    torch.testing.assert_close(m(v), naive_mnse(m, v, None))
    # missing cells are the field's missing vector whatever their value
    per_field = m.table.num_embeddings // 3
    for i, f in missing.nonzero().tolist():
        torch.testing.assert_close(m(v, missing)[i, f], m.table.weight[(f + 1) * per_field - 1])


def test_clamping_and_value_table():
    torch.manual_seed(0)
    m = MNSE(2, 30, D, (2, 3), "concat", init_std=1.0)
    tables = [m.value_table(f) for f in range(2)]
    for f, t in enumerate(tables):
        v = torch.zeros(31, 2, dtype=torch.long)
        v[:, f] = torch.arange(31)
        torch.testing.assert_close(t, m(v)[:, f])
    out = m(torch.tensor([[-4, 99], [99, -4]]))
    torch.testing.assert_close(out, torch.stack([torch.stack([tables[0][0], tables[1][30]]),
                                                 torch.stack([tables[0][30], tables[1][0]])]))


def test_forward_is_one_lookup():
    m = MNSE(4, 1000, D, (2, 3, 10), "concat")
    calls = []
    m.table.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    v = torch.randint(0, 1001, (5, 4))
    m(v, torch.rand(5, 4) < 0.5)
    assert calls == [torch.Size([5, 4, sum(num_positions(1000, b) for b in (2, 3, 10))])]


def test_mnse_gradient_rows_are_the_digits_and_missing_rows():
    torch.manual_seed(0)
    m = MNSE(2, 20, D, (2, 10))
    v = torch.tensor([[13, 5], [20, 7]])
    missing = torch.tensor([[False, True], [False, False]])
    m(v, missing).sum().backward()
    rows = set(torch.nonzero(m.table.weight.grad.abs().sum(1)).flatten().tolist())
    per_field = 2 * 5 + 10 * 2 + 1
    expected = {per_field * 2 - 1}  # field 1's missing row
    for x, f in [(13, 0), (20, 0), (7, 1)]:
        expected |= {f * per_field + k * 2 + d for k, d in enumerate(digits_divmod(x, 2, 5))}
        expected |= {f * per_field + 10 + k * 10 + d for k, d in enumerate(digits_divmod(x, 10, 2))}
    assert rows == expected


# ---------------------------------------------------------------- NumericToInteger

def test_identity_keeps_integers_within_range_and_scales_wide_ranges():
    stats = [hand_stats(3.0, 50.0), hand_stats(-10.0, 390.0)]  # ranges 47 <= M and 400 > M = 100
    raw = torch.tensor([[3.0, -10.0], [17.0, 90.0], [50.0, 390.0], [60.0, 500.0], [0.0, -20.0], [8.6, 0.0]])
    v, missing = NumericToInteger(stats, 100, "identity")(raw)
    x = raw.numpy().astype(np.float64)
    expected = np.stack([x[:, 0] - 3.0, (x[:, 1] + 10.0) * 100 / 400], axis=1)
    assert torch.equal(v, torch.from_numpy(np.clip(np.round(expected), 0, 100).astype(np.int64)))
    assert v.dtype == torch.long and not missing.any()
    assert v[:, 0].tolist() == [0, 14, 47, 57, 0, 6]


def test_log1p_against_numpy():
    stats = [hand_stats(0.0, 1e6), hand_stats(5.0, 5.0 + math.e ** 3 - 1)]
    raw = torch.tensor([[0.0, 5.0], [1.0, 6.0], [1e3, 10.0], [1e6, 25.0], [2e6, 100.0], [-3.0, 0.0]])
    v, _ = NumericToInteger(stats, 1000, "log1p")(raw)
    x = raw.numpy().astype(np.float64)
    expected = np.stack([1000 * np.log1p(np.maximum(x[:, 0], 0)) / np.log1p(1e6),
                         1000 * np.log1p(np.maximum(x[:, 1] - 5.0, 0)) / 3.0], axis=1)
    assert torch.equal(v, torch.from_numpy(np.clip(np.round(expected), 0, 1000).astype(np.int64)))
    assert v[3, 0] == 1000 and v[4, 0] == 1000 and v[5, 0] == 0  # the max, above it, below the min


def test_log1p_standard_stats_are_read_on_the_raw_scale():
    # a log1p_standard feature's stats hold sign(x) * log1p(|x|); the integer map works on raw values
    st = hand_stats(math.log1p(2.0), math.log1p(102.0), transform="log1p_standard")
    v, _ = NumericToInteger([st], 100, "identity")(torch.tensor([[2.0], [52.0], [102.0]]))
    assert v.flatten().tolist() == [0, 50, 100]


def test_quantile_hand_case_with_ties():
    # quantiles at p = 0, .25, .5, .75, 1: value 0 fills the first three (an atom of sparse counts)
    st = hand_stats(0.0, 10.0, (0.0, 0.0, 0.0, 5.0, 10.0))
    raw = torch.tensor([[-1.0], [0.0], [2.5], [5.0], [7.5], [10.0], [11.0]]).float()
    v, _ = NumericToInteger([st], 1000, "quantile")(raw)
    # 0 -> mid-rank of p in {0, .25, .5}; 2.5 halfway from p=.5 (last 0) to .75; 5 -> .75; 7.5 -> .875
    assert v.flatten().tolist() == [0, 250, 625, 750, 875, 1000, 1000]


def test_quantile_matches_empirical_mid_cdf():
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.5, 20_000).astype(np.float64)  # heavy ties
    cont = rng.normal(10.0, 3.0, 20_000)
    stats = [stats_of(counts), stats_of(cont)]
    probe_counts = np.arange(0, 8, dtype=np.float64)
    probe_cont = np.quantile(cont, [0.03, 0.2, 0.5, 0.77, 0.98]) + 1e-3
    raw = torch.tensor(np.stack([np.resize(probe_counts, 8), np.resize(probe_cont, 8)], axis=1), dtype=torch.float32)
    v, _ = NumericToInteger(stats, 1000, "quantile")(raw)
    data = [counts, cont]
    for f in range(2):
        for x, got in zip(raw[:, f].double().numpy(), v[:, f].tolist()):
            mid_cdf = ((data[f] < x).mean() + (data[f] <= x).mean()) / 2
            assert abs(got - 1000 * mid_cdf) <= 2.5, (f, x, got, 1000 * mid_cdf)


def test_nan_is_missing_and_degenerate_fields_give_no_nan():
    stats = [hand_stats(4.0, 4.0, (4.0,) * 11), hand_stats(0.0, 1.0, ()), hand_stats(-1.0, 3.0, (-1.0, 0.0, 3.0))]
    raw = torch.tensor([[4.0, 0.5, float("nan")], [float("nan"), 7.0, 0.0], [3.0, float("nan"), 5.0],
                        [5.0, -1.0, -2.0]])
    expected_missing = torch.isnan(raw)
    for transform in ["identity", "log1p", "quantile"]:
        v, missing = NumericToInteger(stats, 100, transform)(raw)
        assert torch.equal(missing, expected_missing)
        assert v.dtype == torch.long and v.min() >= 0 and v.max() <= 100
    v, _ = NumericToInteger(stats, 100, "quantile")(raw)
    assert v[:, 1].tolist() == [0, 0, 0, 0]  # no training values: everything maps to 0
    assert v[0, 0] == 50 and v[2, 0] == 0 and v[3, 0] == 100  # a constant: its atom's mid-rank, below, above
    v, _ = NumericToInteger(stats, 100, "identity")(raw)
    assert v[:, 0].tolist()[::2] == [0, 0]  # x == min == max, and below it


# ---------------------------------------------------------------- BucketEmbedding

def captured_ids(module: torch.nn.Module, *args) -> torch.Tensor:
    ids = []
    handle = module.table.register_forward_hook(lambda mod, inp, out: ids.append(inp[0]))
    module(*args)
    handle.remove()
    assert len(ids) == 1
    return ids[0]


def test_buckets_are_equal_frequency_and_nan_is_row_zero():
    rng = np.random.default_rng(0)
    lognormal = rng.lognormal(0.0, 1.5, 10_000)
    sparse = np.where(rng.random(10_000) < 0.6, 0.0, rng.poisson(3.0, 10_000) + 1.0)  # 60% zeros
    values = np.stack([lognormal, sparse], axis=1)
    torch.manual_seed(0)
    be = BucketEmbedding([stats_of(lognormal), stats_of(sparse)], 10, D, init_std=1.0)
    raw = torch.tensor(values, dtype=torch.float32)
    ids = captured_ids(be, raw)
    offsets = be.offsets.tolist()
    bins = ids - torch.tensor(offsets) - 1
    counts = torch.bincount(bins[:, 0], minlength=10)
    assert be.num_bins[0] == 10
    assert ((counts - 1000).abs() <= 100).all(), counts
    # the sparse field's ties merge bins; its zeros all share the first one, and no value is missing
    assert be.num_bins[1] < 10
    assert torch.equal(bins[:, 1] == 0, torch.from_numpy(sparse == 0))
    assert (bins >= 0).all()
    # NaN -> the field's row 0
    raw[:3, 0] = float("nan")
    raw[5, 1] = float("nan")
    out = be(raw)
    for i, f in [(0, 0), (1, 0), (2, 0), (5, 1)]:
        torch.testing.assert_close(out[i, f], be.table.weight[offsets[f]])
    torch.testing.assert_close(out[10, 1], be.table.weight[offsets[1] + 1 + int(bins[10, 1])])


def test_bucket_bins_against_numpy_digitize():
    rng = np.random.default_rng(1)
    data = rng.gamma(2.0, 3.0, 5000)
    be = BucketEmbedding([stats_of(data)], 8, D)  # k / 8 falls on the 1001-point quantile grid
    bounds = np.unique(np.quantile(data, np.arange(1, 8) / 8).astype(np.float32))
    probe = np.concatenate([rng.gamma(2.0, 3.0, 500), bounds, [-1.0, 1e9]]).astype(np.float32)
    ids = captured_ids(be, torch.from_numpy(probe).unsqueeze(1))[:, 0]
    expected = np.searchsorted(bounds, probe, side="left") + 1  # bin i: b_(i-1) < x <= b_i
    assert ids.tolist() == expected.tolist()


# ---------------------------------------------------------------- ScaledNumeric

def test_scaled_is_value_times_vector_or_missing_vector():
    torch.manual_seed(0)
    sn = ScaledNumeric(3, D, init_std=1.0)
    x = torch.randn(5, 3)
    missing = torch.rand(5, 3) < 0.4
    out = sn(x, missing)
    for i in range(5):
        for f in range(3):
            ref = sn.missing[f] if missing[i, f] else x[i, f] * sn.weight[f]
            torch.testing.assert_close(out[i, f], ref)


# ---------------------------------------------------------------- NumericFieldEncoder

MNSE_A = NumericEncoding(name="mnse", max_value=100, transform="quantile")
MNSE_B = NumericEncoding(name="mnse", max_value=50, bases=(2, 7), transform="log1p", combine="concat")
BUCKET = NumericEncoding(name="bucket", buckets=5)
SCALED = NumericEncoding(name="scaled")


def mixed_setup(n: int = 64):
    rng = np.random.default_rng(2)
    names = ["a", "b", "c", "d", "e", "f"]
    encodings = [MNSE_A, SCALED, BUCKET, NumericEncoding.model_validate({"name": "mnse", "max_value": 100}),
                 MNSE_B, SCALED]
    raw = rng.lognormal(1.0, 1.0, (n, len(names)))
    raw[rng.random(raw.shape) < 0.15] = np.nan
    raw[0] = np.nan  # every field has a missing value
    stats = {name: stats_of(raw[:, j]) for j, name in enumerate(names)}
    features = [Feature(name=name, kind="numeric") for name in names]
    mean = np.nanmean(raw, axis=0)
    std = np.nanstd(raw, axis=0)
    numeric = np.where(np.isnan(raw), 0.0, (raw - mean) / std)
    return (features, stats, encodings, torch.tensor(numeric, dtype=torch.float32),
            torch.tensor(raw, dtype=torch.float32))


def test_encoder_fuses_identical_encodings_and_keeps_feature_order():
    features, stats, encodings, numeric, raw = mixed_setup()
    torch.manual_seed(0)
    enc = NumericFieldEncoder(features, stats, encodings, D, init_std=1.0)
    out = enc(numeric, raw)
    assert out.shape == (64, 6, D)
    # a, d (equal encodings, one spelled as a dict) share one MNSE; b, f share one ScaledNumeric
    assert len(enc.groups) == 4
    members = {0: [0, 3], 1: [1, 5], 2: [2], 3: [4]}
    kinds = {0: MNSE, 1: ScaledNumeric, 2: BucketEmbedding, 3: MNSE}
    for g, cols in members.items():
        module = enc.groups[g]
        inner = module.mnse if hasattr(module, "mnse") else module
        assert isinstance(inner, kinds[g])
        missing = torch.isnan(raw[:, cols])
        if isinstance(inner, ScaledNumeric):
            ref = inner(numeric[:, cols], missing)
        elif isinstance(inner, BucketEmbedding):
            ref = inner(raw[:, cols])
        else:
            to_int = NumericToInteger([stats[features[j].name] for j in cols], inner.max_value,
                                      encodings[cols[0]].transform)
            ref = inner(*to_int(raw[:, cols]))
        for k, j in enumerate(cols):
            torch.testing.assert_close(out[:, j], ref[:, k])


def test_encoder_gradients_reach_every_parameter():
    features, stats, encodings, numeric, raw = mixed_setup()
    enc = NumericFieldEncoder(features, stats, encodings, D)
    w = torch.rand(64, 6, D, generator=torch.Generator().manual_seed(0)) + 0.5
    (enc(numeric, raw) * w).sum().backward()
    names = [name for name, _ in enc.named_parameters()]
    assert any(name.endswith("mnse.weight") for name in names) and any("missing" in name for name in names)
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_encoder_same_seed_same_output():
    features, stats, encodings, numeric, raw = mixed_setup()
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(NumericFieldEncoder(features, stats, encodings, D)(numeric, raw))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(4)
    assert not torch.equal(outs[0], NumericFieldEncoder(features, stats, encodings, D)(numeric, raw))


@pytest.mark.parametrize("encoding", [SCALED, MNSE_A, BUCKET])
def test_single_encoding_encoder_equals_its_one_module(encoding):
    """With one encoding for every field the encoder skips the gather / concat / reorder: same values."""
    features, stats, _, numeric, raw = mixed_setup()
    torch.manual_seed(0)
    enc = NumericFieldEncoder(features, stats, [encoding] * len(features), D, init_std=1.0)
    assert enc.single_group and len(enc.groups) == 1
    out = enc(numeric, raw)
    module = enc.groups[0]
    ref = module(numeric, torch.isnan(raw)) if isinstance(module, ScaledNumeric) else module(raw)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_encoder_without_fields():
    enc = NumericFieldEncoder([], {}, [], D)
    assert enc(torch.zeros(3, 0), torch.zeros(3, 0)).shape == (3, 0, D)


# ---------------------------------------------------------------- training shapes the geometry

def near_far_cosine(table: torch.Tensor) -> tuple[float, float]:
    """Mean cosine similarity over pairs of values with 0 < |a - b| <= 2 and with |a - b| >= 50."""
    e = torch.nn.functional.normalize(table, dim=1)
    cos = e @ e.T
    v = torch.arange(table.shape[0])
    gap = (v.unsqueeze(1) - v.unsqueeze(0)).abs()
    return cos[(gap > 0) & (gap <= 2)].mean().item(), cos[gap >= 50].mean().item()


def test_training_makes_nearby_values_alike():
    torch.manual_seed(0)
    m = MNSE(1, 100, 8)
    head = torch.nn.Linear(8, 1)
    values = torch.arange(101)
    target = torch.sin(2 * math.pi * values / 100).unsqueeze(1)  # smooth in v, changes sign
    near0, far0 = near_far_cosine(m.value_table(0).detach())
    opt = torch.optim.Adam([*m.parameters(), *head.parameters()], lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, 101, (64,), generator=g)
        loss = (head(m(idx.unsqueeze(1))[:, 0]) - target[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05  # the target's variance is 0.5
    near, far = near_far_cosine(m.value_table(0).detach())
    # shared leading digits already make neighbours alike at init; training must widen that gap a lot
    assert near > far + 0.5
    assert near - far > (near0 - far0) + 0.5

"""Embeddings of every input field from one fused table.

All vocabulary-owning features (categorical, multi-valued, sequences) live in one ``nn.Embedding``
at per-feature row offsets, so a batch's categorical block costs one lookup; a sequence declared
with ``vocab_from`` reads its target field's rows (shared embeddings). Each kind keeps its prior
through its encoder (the feature's ``encoding`` in the schema, else the model's default):

- numeric: ``scaled`` / ``bucket`` / ``mnse`` fields (:mod:`untwine.nn.numeric`), or passed through raw
  to the dense part (``numeric_mode="raw"``, as DeepCTR does);
- sequence: ``pool`` / ``din`` / ``tim`` (:mod:`untwine.nn.sequence`); a behaviour is its item embedding
  concatenated with its side-field embeddings, so a sequence with S side fields gives 1 + S fields
  (one more for TIM's concatenated time encoding);
- vector: ``project`` (linear), ``similarity`` (cosine to its ``pair``, MNSE-encoded) or ``drop``.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.core.schema import Feature, NumericEncoding, SequenceEncoding, VectorEncoding
from untwine.nn.numeric import MNSE, NumericFieldEncoder
from untwine.nn.sequence import (DINAttention, HistorySimilarity, TemporalInterest, cosine_to_target, gap_buckets,
                                 log_gap_boundaries, masked_pool, recency_positions)

NumericMode = Literal["embed", "raw"]
POOL = SequenceEncoding(name="pool")
PROJECT = VectorEncoding(name="project")
SCALED = NumericEncoding(name="scaled")


def masked_mean(emb: Tensor, ids: Tensor, pooling: str = "mean") -> Tensor:
    """Pool (B, L, D) over positions whose id is not padding (0). Empty rows pool to zeros."""
    return masked_pool(emb, ids > 0, pooling)


def flatten_fields(fields: Tensor, dense: Tensor | None) -> Tensor:
    """(B, F, D) fields and optional (B, F_num) raw numerics -> (B, F * D [+ F_num])."""
    flat = fields.flatten(1)
    return flat if dense is None else torch.cat([flat, dense], dim=1)


class SequenceField(nn.Module):
    """One behaviour sequence -> (B, n_fields, D) with its encoder; built by FieldEmbedding."""

    def __init__(self, f: Feature, enc: SequenceEncoding, space: FeatureSpace, dim: int,
                 cat_index: dict[str, int], init_std: float = 1e-4) -> None:
        super().__init__()
        schema = space.schema
        self.name, self.pooling = f.name, f.pooling
        self.owner = schema.vocab_owner(f)
        self.sides = [(f"{f.name}.{side}", schema.vocab_owner(schema.feature(ref)), ref)
                      for side, ref in f.side_fields.items()]
        parts = 1 + len(self.sides)
        self.n_fields = parts
        self.dim = dim
        self.encoder: nn.Module | None = None
        self.similarity: HistorySimilarity | None = None
        self.similarity_tables: list[str] = []
        if enc.similarity != "none":
            self._init_similarity(f, enc, space, dim, cat_index, init_std)
        if enc.name == "pool":
            self.n_fields = parts + len(self.similarity_tables)
            return
        target = enc.target or f.vocab_from
        refs = [target] + [ref for _, _, ref in self.sides]
        bad = [r for r in refs if r not in cat_index]
        if bad:
            raise ValueError(f"sequence {f.name!r}: encoder {enc.name!r} compares each behaviour with the target's "
                             f"categorical features, but {bad} {'is' if len(bad) == 1 else 'are'} not categorical "
                             f"features (set encoding.target or vocab_from to the target id feature)")
        self.register_buffer("target_columns", torch.tensor([cat_index[r] for r in refs]), persistent=False)
        if enc.name == "din":
            self.encoder = DINAttention(parts * dim, enc.attention_hidden)
            self.n_fields = parts + len(self.similarity_tables)
            return
        self.timestamps = f"{f.name}.ts" if f.timestamps else None
        if self.timestamps and enc.temporal_encoding and not schema.timestamp:
            raise ValueError(f"sequence {f.name!r} has timestamps but the schema has no sample timestamp column "
                             f"(schema.timestamp) to measure the gap t_target - t_i from")
        positions = enc.time_buckets if self.timestamps else f.max_len + 1
        self.register_buffer("boundaries", log_gap_boundaries(enc.time_buckets, enc.time_base, enc.time_unit),
                             persistent=False)
        self.encoder = TemporalInterest(parts * dim, positions, temporal=enc.temporal_encoding,
                                        target_aware=enc.target_aware_representation, combine=enc.time_combine,
                                        time_dim=dim, normalise=enc.attention_norm,
                                        keep_history=enc.keep_history)
        self.n_fields = self.encoder.repr_dim // dim + len(self.similarity_tables)

    def _init_similarity(self, f: Feature, enc: SequenceEncoding, space: FeatureSpace, dim: int,
                         cat_index: dict[str, int], init_std: float) -> None:
        tables = space.schema.tables_for(self.owner, enc.similarity_tables)
        if not tables:
            raise ValueError(f"sequence {f.name!r}: similarity {enc.similarity!r} needs a vector table keyed by "
                             f"{self.owner!r} (schema.vector_tables)")
        target = enc.target or f.vocab_from
        if target not in cat_index:
            raise ValueError(f"sequence {f.name!r}: similarity compares each item with the target {target!r}, "
                             f"which is not a categorical feature (set encoding.target or vocab_from)")
        self.similarity_target = cat_index[target]
        self.similarity_tables = [t.name for t in tables]
        rows = space.vocab_size(self.owner)
        for t in tables:  # filled from the encoded data (set_vector_table); saved with the weights
            self.register_buffer(f"vector_table_{t.name}", torch.zeros(rows, t.dim))
        self.similarity = HistorySimilarity(len(tables), dim, enc.similarity, enc.similarity_bins,
                                            enc.similarity_max_value, init_std)

    def set_vector_table(self, name: str, rows: Tensor) -> None:
        """Copy the vector table ``name`` (aligned with the owner's ids) into this field's buffer, each row
        L2-normalised (only cosines are read; zero rows, values without a vector, stay zero)."""
        buf = getattr(self, f"vector_table_{name}")
        if tuple(rows.shape) != tuple(buf.shape):
            raise ValueError(f"vector table {name!r} has shape {tuple(rows.shape)}, sequence {self.name!r} expects "
                             f"{tuple(buf.shape)} (vocabulary of {self.owner!r} x dim)")
        buf.copy_(rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # up to this many (batch x vocabulary) cosines, s_i is read from target @ table^T (one matmul)
    # instead of gathering every history item's vector (L x dim floats per sample)
    GRAM_LIMIT = 1 << 25

    def similarity_fields(self, batch: Batch) -> Tensor:
        """(B, P, D): the target-vs-history similarity fields, one per vector table."""
        ids, target = batch.seq[self.name], batch.categorical[:, self.similarity_target]
        mask = ids > 0
        sims, valid = [], []
        for name in self.similarity_tables:
            table = getattr(self, f"vector_table_{name}")
            if len(ids) * len(table) <= self.GRAM_LIMIT:
                has = table.abs().sum(dim=1) > 0
                s = torch.gather(table[target] @ table.T, 1, ids).clamp(-1.0, 1.0)
                v = mask & has[ids] & has[target].unsqueeze(1)
            else:
                s, v = cosine_to_target(table[target], table[ids], mask)
            sims.append(s)
            valid.append(v)
        return self.similarity(torch.stack(sims, -1), torch.stack(valid, -1), mask)

    def _parts(self, table: nn.Embedding, offsets: dict[str, int], batch: Batch) -> list[tuple[Tensor, Tensor]]:
        """(embedded (B, L, D), ids (B, L)) of the items, then of each side field."""
        keys = [(self.name, self.owner)] + [(key, owner) for key, owner, _ in self.sides]
        return [(table(batch.seq[key] + offsets[owner]), batch.seq[key]) for key, owner in keys]

    def time_positions(self, batch: Batch, mask: Tensor) -> Tensor:
        if self.timestamps:
            return gap_buckets(batch.timestamp.unsqueeze(1) - batch.seq[self.timestamps], self.boundaries)
        return recency_positions(mask)

    def _attend(self, parts: list[tuple[Tensor, Tensor]], batch: Batch, cat_emb: Tensor,
                return_attention: bool = False):
        """The attention encoder over behaviours [item; sides] (B, L, (1 + S) D) against the target."""
        behaviour = torch.cat([emb for emb, _ in parts], dim=-1) if len(parts) > 1 else parts[0][0]
        mask = parts[0][1] > 0
        target = cat_emb[:, self.target_columns].flatten(1)  # (B, (1 + S) D), same layout as a behaviour
        if isinstance(self.encoder, DINAttention):
            return self.encoder(target, behaviour, mask)
        positions = self.time_positions(batch, mask) if self.encoder.temporal or return_attention else None
        out = self.encoder(target, behaviour, mask, positions if self.encoder.temporal else None,
                           return_attention=return_attention)
        return (*out, positions, mask) if return_attention else out

    def attention(self, table: nn.Embedding, offsets: dict[str, int], batch: Batch,
                  cat_emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """TIM's weights for analysis: (alpha (B, L), time bucket or recency position (B, L), mask (B, L))."""
        if not isinstance(self.encoder, TemporalInterest):
            raise ValueError(f"sequence {self.name!r} is not encoded by TIM")
        _, alpha, positions, mask = self._attend(self._parts(table, offsets, batch), batch, cat_emb,
                                                 return_attention=True)
        return alpha, positions, mask

    def forward(self, table: nn.Embedding, offsets: dict[str, int], batch: Batch, cat_emb: Tensor | None) -> Tensor:
        parts = self._parts(table, offsets, batch)
        if self.encoder is None:  # pooling keeps each part's own padding mask
            out = torch.stack([masked_mean(emb, ids, self.pooling) for emb, ids in parts], dim=1)
        else:
            u = self._attend(parts, batch, cat_emb)
            out = u.view(u.shape[0], self.n_fields - len(self.similarity_tables), self.dim)
        if self.similarity is None:
            return out
        return torch.cat([out, self.similarity_fields(batch)], dim=1)


class FieldEmbedding(nn.Module):
    """Maps a Batch to field embeddings (B, F, D) and, in raw numeric mode, dense values (B, F_num).

    Args:
        space: the feature space (schema + vocabulary sizes + numeric statistics).
        dim: embedding width D.
        numeric_mode: ``"embed"`` (numerics become fields) or ``"raw"`` (returned as dense input).
        init_std: std of the normal initialisation of embedding rows.
        sparse: produce sparse gradients for the table (for SparseAdam / Adagrad).
        numeric_encoding, sequence_encoding, vector_encoding: defaults for features whose schema entry
            sets no ``encoding``.
        linear: first-order use (LR weights): every feature pooled / projected / scaled, encodings ignored.
    """

    def __init__(self, space: FeatureSpace, dim: int, numeric_mode: NumericMode = "embed",
                 init_std: float = 1e-4, sparse: bool = False, numeric_encoding: NumericEncoding = SCALED,
                 sequence_encoding: SequenceEncoding = POOL, vector_encoding: VectorEncoding = PROJECT,
                 linear: bool = False) -> None:
        super().__init__()
        schema = space.schema
        self.space_schema = schema
        self.linear = linear  # first-order weights, not an embedding table (collapse analysis skips it)
        self.dim, self.numeric_mode = dim, numeric_mode
        offsets: dict[str, int] = {}
        rows = 0
        for f in space.sparse_features():
            if f.vocab_from is None:
                offsets[f.name] = rows
                rows += space.vocab_size(f)
        for f in space.sparse_features():
            if f.vocab_from is not None:
                offsets[f.name] = offsets[f.vocab_from]
        self.offsets = offsets
        self.table = nn.Embedding(max(rows, 1), dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=init_std)
        self.register_buffer("cat_offsets", torch.tensor([offsets[f.name] for f in schema.categorical],
                                                         dtype=torch.long), persistent=False)
        self.multi = [(f.name, f.pooling) for f in schema.multi_categorical]
        if linear:
            numeric_encoding, sequence_encoding, vector_encoding = SCALED, POOL, PROJECT

        def chosen(f: Feature, default):
            return default if linear or f.encoding is None else f.encoding

        cat_index = {f.name: j for j, f in enumerate(schema.categorical)}
        self.sequences = nn.ModuleList(SequenceField(f, chosen(f, sequence_encoding), space, dim, cat_index, init_std)
                                       for f in schema.sequences)
        self.num_numeric = len(schema.numeric)
        self.numeric = None
        if numeric_mode == "embed" and self.num_numeric:
            encodings = [chosen(f, numeric_encoding) for f in schema.numeric]
            self.numeric = NumericFieldEncoder(schema.numeric, space.numeric_stats, encodings, dim, init_std)
        vec_enc = {f.name: chosen(f, vector_encoding) for f in schema.vectors}
        # similarity pairs (user side, item side), then every other kept vector projected
        self.pairs = [(f.name, f.pair) for f in schema.vectors if f.pair and vec_enc[f.name].name == "similarity"]
        paired = {n for pair in self.pairs for n in pair}
        self.vector_proj = nn.ModuleDict({f.name: nn.Linear(f.dim, dim) for f in schema.vectors
                                          if f.name not in paired and vec_enc[f.name].name != "drop"})
        self.similarity = None
        if self.pairs:
            enc = vec_enc[self.pairs[0][0]]
            differ = [a for a, _ in self.pairs if vec_enc[a] != enc]
            if differ:  # the pairs share one MNSE (one field each): they need the same M, bases and combine
                raise ValueError(f"similarity pairs {[a for a, _ in self.pairs]} must share one encoding; "
                                 f"{differ} differ from {self.pairs[0][0]!r}'s {enc}")
            self.similarity = MNSE(len(self.pairs), enc.max_value, dim, enc.bases, enc.combine, init_std)
        self.num_fields = (len(schema.categorical) + len(self.multi) + sum(s.n_fields for s in self.sequences)
                           + len(self.vector_proj) + len(self.pairs)
                           + (self.num_numeric if numeric_mode == "embed" else 0))
        self.dense_dim = self.num_numeric if numeric_mode == "raw" else 0

    def field_names(self) -> list[str]:
        """One name per output field, in ``forward``'s order (a sequence's parts as ``seq.side`` or
        ``seq#k``, a similarity pair as ``user~item``)."""
        schema = self.space_schema
        names = [f.name for f in schema.categorical] + [n for n, _ in self.multi]
        for seq in self.sequences:
            parts = [seq.name] + [key for key, _, _ in seq.sides]
            n = seq.n_fields - len(seq.similarity_tables)
            names += parts if n == len(parts) else [f"{seq.name}#{k}" for k in range(n)]
            names += [f"{seq.name}~{t}" for t in seq.similarity_tables]
        names += list(self.vector_proj) + [f"{a}~{b}" for a, b in self.pairs]
        if self.numeric is not None:
            names += [f.name for f in schema.numeric]
        return names

    def field_features(self) -> list[str]:
        """The schema feature behind each output field (a pair counts as its first, user-side vector)."""
        return [n.split("#")[0].split("~")[0].split(".")[0] for n in self.field_names()]

    @property
    def output_dim(self) -> int:
        """Width of ``flat(batch)``: F * D plus the raw numerics."""
        return self.num_fields * self.dim + self.dense_dim

    def similarity_codes(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Cosine similarity of each pair mapped from [-1, 1] to integers in [0, M]; missing where either
        vector is all zeros. -> ((B, P) int64, (B, P) bool)."""
        codes, missing = [], []
        for a, b in self.pairs:
            u, v = batch.vectors[a], batch.vectors[b]
            nu, nv = u.norm(dim=1), v.norm(dim=1)
            cos = (u * v).sum(dim=1) / (nu * nv).clamp_min(1e-12)
            codes.append(torch.round((cos.clamp(-1, 1) + 1) / 2 * self.similarity.max_value).long())
            missing.append((nu == 0) | (nv == 0))
        return torch.stack(codes, dim=1), torch.stack(missing, dim=1)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Returns (fields (B, F, D), dense (B, F_num) or None)."""
        parts: list[Tensor] = []
        cat_emb = None
        if batch.categorical is not None and batch.categorical.shape[1]:
            cat_emb = self.table(batch.categorical + self.cat_offsets)  # (B, F_cat, D)
            parts.append(cat_emb)
        for name, pooling in self.multi:
            ids = batch.multi[name]
            parts.append(masked_mean(self.table(ids + self.offsets[name]), ids, pooling).unsqueeze(1))
        for seq in self.sequences:
            parts.append(seq(self.table, self.offsets, batch, cat_emb))
        dense = None
        if self.num_numeric:
            if self.numeric is not None:
                parts.append(self.numeric(batch.numeric, batch.numeric_raw))  # (B, F_num, D)
            elif self.numeric_mode == "raw":
                dense = batch.numeric
        for name, proj in self.vector_proj.items():
            parts.append(proj(batch.vectors[name]).unsqueeze(1))
        if self.similarity is not None:
            parts.append(self.similarity(*self.similarity_codes(batch)))
        if not parts:  # e.g. a numeric-only schema in raw mode: no fields, only the dense block
            return self.table.weight.new_zeros(len(batch), 0, self.dim), dense
        rows = max(p.shape[0] for p in parts)
        if rows > 1:  # a one-row block is shared by every row (serving: the request's pooled history)
            parts = [p.expand(rows, *p.shape[1:]) if p.shape[0] == 1 else p for p in parts]
        fields = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return fields, dense

    def sequence_attention(self, batch: Batch, name: str) -> tuple[Tensor, Tensor, Tensor]:
        """Attention weights of the TIM-encoded sequence ``name`` (see :meth:`SequenceField.attention`)."""
        for seq in self.sequences:
            if seq.name == name:
                return seq.attention(self.table, self.offsets, batch, self.table(batch.categorical + self.cat_offsets))
        raise KeyError(f"no sequence feature {name!r}; sequences: {[s.name for s in self.sequences]}")

    def flat(self, batch: Batch) -> Tensor:
        """(B, F * D [+ F_num]): fields flattened, raw numerics appended."""
        return flatten_fields(*self(batch))

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters that are row-sparse by nature (the table), for the embedding optimizer."""
        return [self.table.weight]


class MultiEmbedding(nn.ModuleList):
    """K independent :class:`FieldEmbedding` tables over the same fields, one width per table (asymmetric
    widths allowed), each fused (one lookup per table per batch) with the foundation's PAD / OOV rows.
    K = 1 is the single embedding: built under the same seed it holds the same table.

    Example::

        >>> # tables = MultiEmbedding([FieldEmbedding(space, d) for d in (10, 20)])
        >>> # [fields.shape for fields, _ in tables(batch)]  ->  [(B, F, 10), (B, F, 20)]
    """

    def __init__(self, tables: list[FieldEmbedding]) -> None:
        super().__init__(tables)
        names = {tuple(t.field_names()) for t in tables}
        if len(names) != 1:
            raise ValueError("multi-embedding tables must embed the same fields in the same order")

    @property
    def dims(self) -> list[int]:
        return [t.dim for t in self]

    def forward(self, batch: Batch) -> list[tuple[Tensor, Tensor | None]]:
        return [table(batch) for table in self]

    def embed(self, batch: Batch) -> list[tuple[Tensor, Tensor]]:
        """Per table: (fields (B, F, D_k), flat (B, F * D_k [+ F_num]))."""
        return [(fields, flatten_fields(fields, dense)) for fields, dense in self(batch)]

"""Embeddings of every input field from one fused table.

All vocabulary-owning features (categorical, multi-valued, sequences) live in one ``nn.Embedding``
at per-feature row offsets, so a batch's categorical block costs one lookup; a sequence declared
with ``vocab_from`` reads its target field's rows (shared embeddings). Numeric features are either
embedded (one learned vector per field scaled by the normalised value, as FuxiCTR does) or passed
through raw to the dense part (as DeepCTR does); vector features get a linear projection.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.core.schema import FeatureKind

NumericMode = Literal["embed", "raw"]


def masked_mean(emb: Tensor, ids: Tensor, pooling: str = "mean") -> Tensor:
    """Pool (B, L, D) over positions whose id is not padding (0). Empty rows pool to zeros."""
    mask = (ids > 0).unsqueeze(-1).to(emb.dtype)  # (B, L, 1)
    total = (emb * mask).sum(dim=1)
    if pooling == "sum":
        return total
    return total / mask.sum(dim=1).clamp_min(1.0)


class FieldEmbedding(nn.Module):
    """Maps a Batch to field embeddings (B, F, D) and, in raw numeric mode, dense values (B, F_num).

    Args:
        space: the feature space (schema + vocabulary sizes).
        dim: embedding width D.
        numeric_mode: ``"embed"`` (numerics become fields) or ``"raw"`` (returned as dense input).
        init_std: std of the normal initialisation of embedding rows.
        sparse: produce sparse gradients for the table (for SparseAdam / Adagrad).
    """

    def __init__(self, space: FeatureSpace, dim: int, numeric_mode: NumericMode = "embed",
                 init_std: float = 1e-4, sparse: bool = False) -> None:
        super().__init__()
        schema = space.schema
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
        # a sequence contributes its pooled ids and one pooled field per side field (e.g. categories),
        # each read from the rows of the feature whose vocabulary it uses
        self.sequences = [(f.name, f.name, f.pooling) for f in schema.sequences]
        self.sequences += [(f"{f.name}.{side}", ref, f.pooling) for f in schema.sequences
                           for side, ref in f.side_fields.items()]
        self.num_numeric = len(schema.numeric)
        if numeric_mode == "embed" and self.num_numeric:
            self.numeric_weight = nn.Parameter(torch.empty(self.num_numeric, dim))
            nn.init.normal_(self.numeric_weight, std=init_std)
        self.vector_proj = nn.ModuleDict({f.name: nn.Linear(f.dim, dim) for f in schema.vectors})
        self.num_fields = (len(schema.categorical) + len(self.multi) + len(self.sequences) + len(self.vector_proj)
                           + (self.num_numeric if numeric_mode == "embed" else 0))
        self.dense_dim = self.num_numeric if numeric_mode == "raw" else 0

    @property
    def output_dim(self) -> int:
        """Width of ``flat(batch)``: F * D plus the raw numerics."""
        return self.num_fields * self.dim + self.dense_dim

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Returns (fields (B, F, D), dense (B, F_num) or None)."""
        parts: list[Tensor] = []
        if batch.categorical is not None and batch.categorical.shape[1]:
            parts.append(self.table(batch.categorical + self.cat_offsets))  # (B, F_cat, D)
        for name, pooling in self.multi:
            ids = batch.multi[name]
            parts.append(masked_mean(self.table(ids + self.offsets[name]), ids, pooling).unsqueeze(1))
        for key, owner, pooling in self.sequences:
            ids = batch.seq[key]
            parts.append(masked_mean(self.table(ids + self.offsets[owner]), ids, pooling).unsqueeze(1))
        dense = None
        if self.num_numeric:
            if self.numeric_mode == "embed":
                parts.append(batch.numeric.unsqueeze(-1) * self.numeric_weight)  # (B, F_num, D)
            else:
                dense = batch.numeric
        for name, proj in self.vector_proj.items():
            parts.append(proj(batch.vectors[name]).unsqueeze(1))
        if not parts:  # e.g. a numeric-only schema in raw mode: no fields, only the dense block
            return self.table.weight.new_zeros(len(batch), 0, self.dim), dense
        fields = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return fields, dense

    def flat(self, batch: Batch) -> Tensor:
        """(B, F * D [+ F_num]): fields flattened, raw numerics appended."""
        fields, dense = self(batch)
        flat = fields.flatten(1)
        return flat if dense is None else torch.cat([flat, dense], dim=1)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters that are row-sparse by nature (the table), for the embedding optimizer."""
        return [self.table.weight]

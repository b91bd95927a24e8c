"""DIN: the DNN with every behaviour sequence read through DIN's target attention."""
from __future__ import annotations

from untwine.core.schema import SequenceEncoding
from untwine.models.base import MODELS, MLPConfig
from untwine.models.dnn import DNN


class DINConfig(MLPConfig):
    sequence_encoder: SequenceEncoding = SequenceEncoding(name="din")


@MODELS.register("din", config=DINConfig, paper="Zhou et al., Deep Interest Network for Click-Through Rate Prediction, KDD 2018",
                 inputs="sequence (target attention; needs vocab_from or encoding.target), categorical, multi-valued, numeric, vector")
class DIN(DNN):
    """An MLP over the target, user and context fields plus u = sum_i w_i b_i, w_i = MLP([b_i, a, b_i - a, b_i * a])."""

"""TIN: the DNN with every behaviour sequence read through the Temporal Interest Module."""
from __future__ import annotations

from untwine.core.schema import SequenceEncoding
from untwine.models.base import MODELS, MLPConfig
from untwine.models.dnn import DNN


class TINConfig(MLPConfig):
    sequence_encoder: SequenceEncoding = SequenceEncoding(name="tim")


@MODELS.register("tin", config=TINConfig, paper="Zhou et al., Temporal Interest Network for User Response Prediction, WWW 2024",
                 inputs="sequence (target-aware temporal encoding and attention; timestamps optional), categorical, "
                        "multi-valued, numeric, vector")
class TIN(DNN):
    """An MLP over the target, user and context fields plus u_TIM = (sum_i alpha_i b~_i) * a~ (see
    :class:`untwine.nn.sequence.TemporalInterest`); ablations through ``sequence_encoder``."""

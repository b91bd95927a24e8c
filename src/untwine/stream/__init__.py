"""Online learning from an event stream (SPEC 5): sources, the label joiner, the incremental learner."""

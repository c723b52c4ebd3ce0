"""Sampling: few-shot episodes and their batching, and the epoch-seeded, class-balanced and shard samplers
(every draw a function of seeds and the epoch, so a resumed fit sees what the straight one saw). No Lightning here."""

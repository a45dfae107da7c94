"""Circuit datasets: the built-in generator, the on-disk format, building, loading, QoR labels, SQuAD."""

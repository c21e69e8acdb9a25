"""What lf-multilr shows: the start-of-training table, the plan as JSON, the per-module plots."""

"""What happens during training: schedules, per-module metrics, the first-step check, resuming, several ranks."""

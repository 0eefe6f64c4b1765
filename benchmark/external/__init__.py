"""Models, and adversarial queries, made outside hashbench: loaded and checked, then run as any victim or attack."""

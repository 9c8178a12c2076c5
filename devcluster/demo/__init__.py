"""`make demo`: a real fine-tuning iteration on a devcluster, watched as it happens."""

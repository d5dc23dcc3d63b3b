"""Zero-shot evaluation: metrics (numpy), evaluate() on val/test organ embeddings, reports, `totalfm train eval`."""

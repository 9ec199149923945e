"""Read distillation features (attentions, queries/keys/values, hidden states) out of BERT-family encoders."""

"""Adaptor registry, Lightning modules (fine-tuner, distillers), config and checkpoint I/O."""

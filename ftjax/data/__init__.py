"""Data: TFDS builders (ArrayRecord), tokenisation and Grain pipelines.

The trainer's entry points are `ftjax.data.classification.load_classification_data` and
`ftjax.data.classification.load_tokenizer`.
"""
